"""Train the 08 notebook's reference LSTM language model on TinyStories: tokens/second and perplexity.

The model, batching and training loop are the solution notebook's own cells, run here with the
reference configuration of the settings cell (VSize = 5000, N = 256, one layer, frozen 50-d GloVe),
once without and once with attention, each for the same wall-clock budget. Targets (issue 5), on
the shared TinyStories slice and 10 minutes of training on a 2-core CPU: validation perplexity
<= 24 and >= 4,000 training tokens/second.

The data comes from data/tiny/ when `make data` has prepared it, else it is prepared into a
temporary folder from $TINYSTORIES_DIR (default: ../shared/data/tinystories beside the repository).

Usage: python bench/lstm_lm.py [--minutes 10] [--attention both|on|off] [--threads N]
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from notebooks import run_cells  # noqa: E402
from shared import glove, tinystories  # noqa: E402
from shared.data import length_bucketed_batches  # noqa: E402
from shared.training import timed_warmup_cosine  # noqa: E402

ASSIGNMENT = "08_tinystories_lstm"
CELLS = ["setup", "collate_stories", "real_positions", "lstm_lm", "compute_loss", "shuffled_batches", "train", "evaluate"]
# The defaults of the notebook's settings cell (full mode).
REFERENCE = {"VSize": 5000, "N": 256, "H": 1, "B": 4, "lr": 3e-3, "packed": False}
TARGET_PERPLEXITY, TARGET_TOKENS_PER_SECOND = 24.0, 4000.0


def prepared_splits() -> tuple[list, list]:
    """(train, valid) token lists, from data/tiny/ or prepared now from the local TinyStories slice."""
    if not tinystories.split_path("train").exists():
        source = os.environ.get("TINYSTORIES_DIR", str(ROOT.parent / "shared" / "data" / "tinystories"))
        os.environ["COURSE_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-data-")
        tinystories.prepare(source, log=lambda text: None)
    return tinystories.load_split("train"), tinystories.load_split("valid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--attention", choices=["both", "on", "off"], default="both")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    ns = run_cells(ASSIGNMENT, CELLS, hidden=True).namespace
    torch.set_num_threads(args.threads)  # after the setup cell, whose thread policy would otherwise decide
    settings = REFERENCE
    train_tokens, valid_tokens = prepared_splits()
    vocab = glove.build_vocabulary(train_tokens, settings["VSize"])
    embeddings = glove.embedding_matrix(vocab)
    train_ids, valid_ids = glove.encode_stories(train_tokens, vocab), glove.encode_stories(valid_tokens, vocab)
    print(f"train {sum(len(s) for s in train_ids):,} tokens, valid {sum(len(s) for s in valid_ids):,} tokens | "
          f"{settings} | {args.minutes} min per run, {args.threads} threads", flush=True)

    rows = []
    for attention in {"both": [False, True], "on": [True], "off": [False]}[args.attention]:
        torch.manual_seed(0)
        model = ns["LSTMLM"](embeddings, settings["N"], settings["H"], attention=attention, packed=settings["packed"])
        history = ns["train"](model, train_ids, None, epochs=100, batch_size=settings["B"], lr=settings["lr"],
                              max_minutes=args.minutes, batches=length_bucketed_batches,
                              schedule=lambda optimizer: timed_warmup_cosine(optimizer, args.minutes), log=None)
        tokens_per_second = sum(history["tokens"]) / history["seconds"]
        started = time.monotonic()
        perplexity = ns["evaluate"](model, valid_ids, 64)
        rows.append((attention, len(history["loss"]), sum(history["tokens"]), tokens_per_second, perplexity,
                     time.monotonic() - started))
        print(f"attention={attention}: {rows[-1][1]:,} steps, {tokens_per_second:,.0f} tokens/s, "
              f"validation perplexity {perplexity:.2f}", flush=True)

    print(f"\n{'attention':>9}  {'steps':>7}  {'tokens':>11}  {'tokens/s':>9}  {'vs 4,000':>8}  {'valid ppl':>9}  {'target 24':>9}")
    for attention, steps, tokens, speed, perplexity, _ in rows:
        print(f"{str(attention):>9}  {steps:>7,}  {tokens:>11,}  {speed:>9,.0f}  {speed / TARGET_TOKENS_PER_SECOND:>7.2f}x  "
              f"{perplexity:>9.2f}  {'met' if perplexity <= TARGET_PERPLEXITY else 'missed':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
