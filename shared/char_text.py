"""Character-level text for notebook 09: the prepared TinyStories splits as plain text, strings as codes for checks, plots.

`make data` stores each story as lowercase tokens (`shared.tinystories.tokenize`: punctuation split off, `did n't`,
`lily 's`). A character-level model should read text as people write it, so `story_text` joins the tokens again:
punctuation and clitics go back onto their word and straight double quotes onto the words they enclose.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from shared.tinystories import BOS, EOS, load_split

# The characters 09's texts keep (any other is dropped): what the prepared splits hold, less a handful of rare symbols.
ALPHABET = "\n !\"',-.0123456789:;?abcdefghijklmnopqrstuvwxyz"
_ATTACH_LEFT = {",", ".", "!", "?", ";", ":", "...", ")", "n't", "'s", "'re", "'ll", "'ve", "'d", "'m"}


def story_text(tokens: Iterable[str]) -> str:
    """One prepared story (tokens, <bos>/<eos> optional) as text: 'she said , " hi ! "' -> 'she said, "hi!"'."""
    pieces: list[str] = []
    glue = True  # no space before the next token (start of text, or after an opening quote or bracket)
    quote_open = False
    for token in tokens:
        if token in (BOS, EOS):
            continue
        if token == '"':
            quote_open = not quote_open
            if quote_open:
                pieces.append(("" if glue else " ") + token)
                glue = True
            else:
                pieces.append(token)
            continue
        pieces.append(token if glue or token in _ATTACH_LEFT else " " + token)
        glue = token == "("
    return "".join(pieces)


def load_text(split: str, max_stories: int | None = None, alphabet: Iterable[str] = ALPHABET) -> str:
    """The first `max_stories` stories of a prepared split ("train", "valid", "test") as one text, a story per line,
    keeping only the characters of `alphabet`."""
    keep = set(alphabet)
    text = "".join(story_text(tokens) + "\n" for tokens in load_split(split, max_stories=max_stories))
    return "".join(char for char in text if char in keep)


def char_codes(text: str) -> torch.Tensor:
    """LongTensor (len(text),) of the code points of `text`: how the checks compare strings."""
    return torch.tensor([ord(char) for char in text], dtype=torch.long)


def plot_against(table, x: str, metrics: list[str], *, hue: str | None = None, title: str = ""):
    """One panel per metric of a pandas table: the metric against column `x`, one line per value of `hue` (if given)."""
    import matplotlib.pyplot as plt

    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False, layout="constrained")
    groups = table.groupby(hue, sort=False) if hue else [(None, table)]
    for ax, metric in zip(axes.ravel(), metrics):
        for value, group in groups:
            group = group.sort_values(x)
            ax.plot(group[x], group[metric], marker="o", label=None if value is None else str(value))
        ax.set(xlabel=x, title=metric)
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    if hue:
        axes[0, 0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure
