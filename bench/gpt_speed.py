"""Training-step time of the 07_gpt models next to equal-size models built from PyTorch's own layers.

  GPT         the solution notebook's GPT (its cells executed here) vs the same architecture from
              nn.TransformerEncoderLayer (pre-norm, GELU, causal mask) + sinusoidal positions
  LSTM LM     shared.lstm_lm.LSTMLM (itself built on nn.LSTM) vs embedding + nn.LSTM + linear written inline

One step = forward, the notebook's get_loss_and_accuracy, backward, AdamW. The models of each pair
are timed in alternation (several rounds, median per step) so load changes hit both alike.
Target: each ratio <= 1.25 at the defaults (d = 128, L = 2, 4 heads, B = 512, p = 31).

Usage: python bench/gpt_speed.py [--d 128] [--layers 2] [--heads 4] [--batch 512] [--steps 20] [--rounds 5] [--threads N]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CELLS = ["layer_norm", "multi_headed_attention", "block", "gpt_embedding", "gpt", "loss_and_accuracy"]

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from notebooks import run_cells  # noqa: E402
from shared.arithmetic import get_arithmetic_dataset  # noqa: E402
from shared.lstm_lm import LSTMLM  # noqa: E402


class TorchGPT(nn.Module):
    """The notebook's GPT rebuilt from nn.TransformerEncoderLayer: same sizes, sinusoidal positions, causal."""

    def __init__(self, num_heads, num_layers, d, vocabulary_size, sequence_length, position_encoding):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, d)
        self.register_buffer("position_encoding", position_encoding)
        layer = nn.TransformerEncoderLayer(d, num_heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, vocabulary_size)

    def forward(self, x):
        S = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(S)
        hidden = self.encoder(self.embedding(x) + self.position_encoding[:S], mask=mask, is_causal=True)
        return self.classifier(self.norm(hidden)), None


class TorchLSTMLM(nn.Module):
    """Embedding -> nn.LSTM -> linear, written inline."""

    def __init__(self, vocabulary_size, d, num_layers):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, d)
        self.lstm = nn.LSTM(d, d, num_layers, batch_first=True)
        self.classifier = nn.Linear(d, vocabulary_size)

    def forward(self, x):
        output, state = self.lstm(self.embedding(x))
        return self.classifier(output), state


def step_times(models: dict, batch, loss_fn, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per training step of each model, timing `steps` steps per model in each of `rounds` rounds."""
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1.0) for name, m in models.items()}
    inputs, targets, eq_positions, mask = batch

    def step(name):
        logits = models[name](inputs)[0]
        loss, _ = loss_fn(logits, targets, eq_positions, mask)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in models:  # warm-up
        for _ in range(3):
            step(name)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            started = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--p", type=int, default=31)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    given = {"math": __import__("math"), "torch": torch, "nn": nn, "F": nn.functional}  # what the setup cell would import
    ns = run_cells("07_gpt", CELLS, hidden=True, namespace=given).namespace
    (train_set, _), tokenizer, max_length, _ = get_arithmetic_dataset(args.p, "+", r_train=1.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(train_set), (args.batch,), generator=generator)
    batch = [t[index] for t in train_set.tensors]
    V, S = len(tokenizer), max_length - 1

    torch.manual_seed(0)
    gpt = ns["GPT"](args.heads, args.layers, args.d, V, S)
    torch_gpt = TorchGPT(args.heads, args.layers, args.d, V, S, gpt.embedding.position_encoding.clone())
    lstm = LSTMLM(V, args.d, args.d, args.layers)
    torch_lstm = TorchLSTMLM(V, args.d, args.layers)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731

    print(f"d={args.d} L={args.layers} heads={args.heads} B={args.batch} S={S} V={V} threads={torch.get_num_threads()} "
          f"| median of {args.rounds} rounds x {args.steps} steps")
    loss_fn = ns["get_loss_and_accuracy"]
    pairs = [("GPT (solution)", gpt, "nn.TransformerEncoderLayer", torch_gpt),
             ("LSTMLM (shared)", lstm, "nn.LSTM inline", torch_lstm)]
    print(f"{'model':<18}{'params':>10}{'ms/step':>10}   {'reference':<28}{'params':>10}{'ms/step':>10}{'ratio':>8}")
    for name, model, reference_name, reference in pairs:
        times = step_times({name: model, reference_name: reference}, batch, loss_fn, args.steps, args.rounds)
        ratio = times[name] / times[reference_name]
        print(f"{name:<18}{count(model):>10,}{1000 * times[name]:>10.1f}   {reference_name:<28}{count(reference):>10,}"
              f"{1000 * times[reference_name]:>10.1f}{ratio:>8.2f}" + ("" if ratio <= 1.25 else "  > 1.25"))


if __name__ == "__main__":
    main()
