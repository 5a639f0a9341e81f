"""Plots used by the notebooks (matplotlib)."""

import matplotlib.pyplot as plt
import torch


def plot_losses(losses: list[float], title: str = "training loss", smoothing: int = 10) -> plt.Figure:
    """Plot per-step losses and their moving average over `smoothing` steps."""
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot(losses, alpha=0.35, label="per step")
    if len(losses) >= smoothing:
        smoothed = torch.tensor(losses).unfold(0, smoothing, 1).mean(dim=1)
        axes.plot(range(smoothing - 1, len(losses)), smoothed, label=f"mean of {smoothing} steps")
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.legend()
    figure.tight_layout()
    return figure


def plot_attention(
    weights: torch.Tensor | list[torch.Tensor],
    *,
    xlabels: list | None = None,
    ylabels: list | None = None,
    titles: list[str] | None = None,
    xlabel: str = "keys",
    ylabel: str = "queries",
    panel_size: float = 2.6,
) -> plt.Figure:
    """Heatmaps of attention weights: one panel per matrix of `weights`, a tensor (n, m) or (k, n, m)
    or a list of (n_i, m_i) tensors.

    `xlabels` / `ylabels` label the columns / rows: one list of strings for every panel, or a list
    of such lists (one per panel). Colours run from 0 (white) to the largest weight shown.
    """
    if isinstance(weights, torch.Tensor) and weights.dim() == 2:
        weights = [weights]
    panels = [matrix.detach().cpu().float().numpy() for matrix in weights]

    def per_panel(labels):
        return [labels] * len(panels) if labels and isinstance(labels[0], str) else labels

    xlabels, ylabels = per_panel(xlabels), per_panel(ylabels)
    figure, axes = plt.subplots(1, len(panels), figsize=(panel_size * len(panels) + 1, panel_size), squeeze=False,
                                layout="constrained")
    vmax = max(max(float(matrix.max()) for matrix in panels), 1e-12)
    for k, (ax, matrix) in enumerate(zip(axes[0], panels)):
        image = ax.imshow(matrix, cmap="Reds", vmin=0, vmax=vmax)
        if xlabels is not None:
            ax.set_xticks(range(matrix.shape[1]), xlabels[k], rotation=90)
        if ylabels is not None:
            ax.set_yticks(range(matrix.shape[0]), ylabels[k])
        ax.set_xlabel(xlabel)
        if k == 0:
            ax.set_ylabel(ylabel)
        if titles is not None:
            ax.set_title(titles[k])
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return figure


def plot_gradient_norms(
    lengths: list[int], norms: dict[str, list[float]], *, ylabel: str = "gradient norm", title: str = ""
) -> plt.Figure:
    """One curve per model of a gradient norm, on a log scale, against the sequence length."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, values in norms.items():
        if len(values) != len(lengths):
            raise ValueError(f"{name!r} has {len(values)} norms for {len(lengths)} lengths")
        axes.semilogy(lengths, values, marker="o", markersize=3, label=name)
    axes.set(xlabel="sequence length T", ylabel=ylabel, title=title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


# Training runs of the GPT notebook (histories from shared.experiments) -----------------------------


def _mean_std_curves(histories, name):
    values = torch.tensor([getattr(h, name) for h in histories], dtype=torch.float64)
    return values.mean(0), values.std(0, unbiased=False) if len(histories) > 1 else torch.zeros(values.shape[1])


def plot_training_curves(runs: dict, title: str = "") -> plt.Figure:
    """Loss (log scale) and accuracy, training and validation, against the step: one row per model.

    `runs` is {model name: [History, ...]} (several seeds: the mean is drawn with a ± std band; the
    runs of one model must have been logged at the same steps).
    """
    figure, axes = plt.subplots(len(runs), 2, figsize=(10, 3 * len(runs)), squeeze=False, layout="constrained")
    for row, (model, histories) in zip(axes, runs.items()):
        steps = histories[0].steps
        for column, kind in enumerate(("loss", "accuracy")):
            ax = row[column]
            for split, colour in (("train", "tab:blue"), ("valid", "tab:orange")):
                mean, std = _mean_std_curves(histories, f"{split}_{kind}")
                label = f"{'training' if split == 'train' else 'validation'} (mean of {len(histories)})" if len(histories) > 1 else (
                    "training" if split == "train" else "validation")
                ax.plot(steps, mean, color=colour, label=label)
                ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
            if kind == "loss":
                ax.set_yscale("log")
            ax.set(xlabel="step t", ylabel=kind, title=f"{model}: {kind}")
            ax.grid(True, alpha=0.3)
            ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def plot_runs_by_value(runs: dict, name: str, *, title: str = "") -> plt.Figure:
    """Curves of several runs of one model, coloured by a hyperparameter: `runs` is {value: History}.

    Four panels: training / validation loss (log scale) and accuracy against the step; `name` labels the colour bar.
    """
    import matplotlib as mpl

    values = sorted(runs)
    norm = mpl.colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = plt.get_cmap("viridis")
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.2), layout="constrained")
    panels = [("train_loss", "training loss"), ("valid_loss", "validation loss"),
              ("train_accuracy", "training accuracy"), ("valid_accuracy", "validation accuracy")]
    for ax, (metric, label) in zip(axes, panels):
        for value in values:
            history = runs[value]
            ax.plot(history.steps, getattr(history, metric), color=cmap(norm(value)))
        if metric.endswith("loss"):
            ax.set_yscale("log")
        ax.set(xlabel="step t", title=label)
        ax.grid(True, alpha=0.3)
    figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.tolist(), label=name, shrink=0.9)
    if title:
        figure.suptitle(title)
    return figure


def plot_metrics_against(xs: list, results: dict, xlabel: str, *, title: str = "") -> plt.Figure:
    """Best losses / accuracies of runs and the first step reaching them, against a hyperparameter.

    `results` is {model name: [extrema dict (shared.experiments.extrema) for each x in xs]}.
    Top row: min training / validation loss (log scale), max training / validation accuracy;
    bottom row: the first step t_f at which each is reached.
    """
    return plot_best_against({model: (xs, per_x) for model, per_x in results.items()}, xlabel, title=title)


def plot_attention_grid(attentions: torch.Tensor, tokens: list[str], *, title: str = "", panel_size: float = 2.4) -> plt.Figure:
    """Attention weights of one sequence, a layers × heads grid of (query × key) heatmaps.

    `attentions` is (num_layers, num_heads, S, S) (one example of a GPT's `attentions`); `tokens`
    labels the S positions (queries on the rows, keys on the columns). Colours run from 0 to 1.
    """
    num_layers, num_heads, S, _ = attentions.shape
    if len(tokens) != S:
        raise ValueError(f"{len(tokens)} token labels for {S} positions")
    weights = attentions.detach().cpu().float().numpy()
    figure, axes = plt.subplots(num_layers, num_heads, figsize=(panel_size * num_heads + 1, panel_size * num_layers),
                                squeeze=False, layout="constrained")
    for layer in range(num_layers):
        for head in range(num_heads):
            ax = axes[layer, head]
            image = ax.imshow(weights[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(S), tokens, rotation=90)
            ax.set_yticks(range(S), tokens)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            if layer == num_layers - 1:
                ax.set_xlabel("key")
            if head == 0:
                ax.set_ylabel("query")
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    if title:
        figure.suptitle(title)
    return figure


# The TinyStories language model (08) ----------------------------------------------------------------


def plot_generation_metrics(table, metrics: list[str], *, x: str = "temperature", hue: str = "fpenalty",
                            title: str = "") -> plt.Figure:
    """One panel per metric of a table of generations (a pandas DataFrame with columns x, hue and the
    metrics, one row per setting): the metric against `x`, one line per value of `hue`."""
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3 * rows), squeeze=False, layout="constrained")
    for ax, metric in zip(axes.ravel(), metrics):
        for value, group in table.groupby(hue, sort=True):
            group = group.sort_values(x)
            ax.plot(group[x], group[metric], marker="o", label=f"{hue} = {value:g}")
        ax.set(xlabel=x, title=metric)
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def plot_loss_curves(runs: dict, *, smoothing: int = 100, title: str = "") -> plt.Figure:
    """Training loss (moving average of `smoothing` steps) and validation loss against the tokens seen,
    one colour per run: `runs` is {name: history} with the keys "loss", "tokens" and "valid" [(step, loss)]
    that the 08 notebook's `train` returns."""
    figure, axes = plt.subplots(figsize=(7, 3.5), layout="constrained")
    for k, (name, history) in enumerate(runs.items()):
        colour = f"C{k}"
        seen = torch.tensor(history["tokens"], dtype=torch.float64).cumsum(0)
        losses = torch.tensor(history["loss"], dtype=torch.float64)
        window = max(1, min(smoothing, len(losses)))
        if len(losses):
            smoothed = losses.unfold(0, window, 1).mean(dim=1)
            axes.plot(seen[window - 1:], smoothed, color=colour, label=f"{name}: training (mean of {window} steps)")
        valid = [(float(seen[step - 1]), loss) for step, loss in history.get("valid", []) if step >= 1]
        if valid:
            axes.plot(*zip(*valid), "o", color=colour, markersize=7, label=f"{name}: validation")
    axes.set(xlabel="tokens seen", ylabel="cross-entropy (nats)", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


# More of 07's experiments: runs told apart by a label, any curve against the step, best values against any x ----


_PANELS = [("train_loss", "training loss"), ("valid_loss", "validation loss"),
           ("train_accuracy", "training accuracy"), ("valid_accuracy", "validation accuracy")]


def plot_runs_by_label(runs: dict, *, title: str = "") -> plt.Figure:
    """Curves of several runs told apart by a label (a legend, no colour bar): `runs` is {label: History}.

    Four panels: training / validation loss (log scale) and accuracy against the step.
    """
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.2), layout="constrained")
    for ax, (metric, label) in zip(axes, _PANELS):
        for k, (name, history) in enumerate(runs.items()):
            ax.plot(history.steps, getattr(history, metric), color=f"C{k}", label=name)
        if metric.endswith("loss"):
            ax.set_yscale("log")
        ax.set(xlabel="step t", title=label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def plot_curves_by_value(curves: dict, name: str, *, ylabel: str, logy: bool = False, title: str = "") -> plt.Figure:
    """One quantity against the step for several runs, coloured by a hyperparameter with a colour bar.

    `curves` is {value: (steps, values)} (two equal-length sequences per run); `name` labels the colour bar.
    """
    import matplotlib as mpl

    values = sorted(curves)
    norm = mpl.colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = plt.get_cmap("viridis")
    figure, axes = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for value in values:
        steps, ys = curves[value]
        if len(steps) != len(ys):
            raise ValueError(f"{name} = {value}: {len(steps)} steps for {len(ys)} values")
        axes.plot(steps, ys, color=cmap(norm(value)))
    if logy:
        axes.set_yscale("log")
    axes.set(xlabel="step t", ylabel=ylabel, title=title)
    axes.grid(True, alpha=0.3)
    figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=name)
    return figure


def plot_best_against(series: dict, xlabel: str, *, logx: bool = False, colour_by: dict | None = None,
                      colour_label: str = "", title: str = "") -> plt.Figure:
    """Best losses / accuracies and the first step reaching them, one line per series, each with its own x values.

    `series` is {name: (xs, [extrema dict (shared.experiments.extrema) for each x])}. Top row: min training /
    validation loss (log scale), max training / validation accuracy; bottom row: the first step t_f reaching each.
    `colour_by` {name: number} colours the lines by a number with a colour bar (else a legend names them).
    """
    import matplotlib as mpl

    metrics = ["train_loss", "valid_loss", "train_accuracy", "valid_accuracy"]
    labels = {"train_loss": "L_train", "valid_loss": "L_val", "train_accuracy": "A_train", "valid_accuracy": "A_val"}
    figure, axes = plt.subplots(2, 4, figsize=(15, 6), layout="constrained")
    if colour_by:
        low, high = min(colour_by.values()), max(colour_by.values())
        norm = mpl.colors.Normalize(low, high if high > low else low + 1)
        cmap = plt.get_cmap("viridis")
    for k, (name, (xs, per_x)) in enumerate(series.items()):
        if len(per_x) != len(xs):
            raise ValueError(f"{name!r} has {len(per_x)} results for {len(xs)} values of {xlabel}")
        colour = cmap(norm(colour_by[name])) if colour_by else f"C{k}"
        for column, metric in enumerate(metrics):
            axes[0, column].plot(xs, [e[metric] for e in per_x], marker="o", color=colour, label=name)
            axes[1, column].plot(xs, [e[f"t_{metric}"] for e in per_x], marker="o", color=colour, label=name)
    for column, metric in enumerate(metrics):
        if metric.endswith("loss"):
            axes[0, column].set_yscale("log")
        axes[0, column].set(xlabel=xlabel, title=f"{labels[metric]} ({'min' if metric.endswith('loss') else 'max'})")
        axes[1, column].set(xlabel=xlabel, ylabel="step", title=f"t_f({labels[metric]})")
        for ax in axes[:, column]:
            if logx:
                ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
    if colour_by:
        figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), label=colour_label, shrink=0.9)
    else:
        axes[0, 0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure
