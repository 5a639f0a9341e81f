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
