"""Generation-quality metrics on token lists (a string is split on whitespace).

Edge cases, chosen so that a table of generations never holds NaN: a metric that has nothing to
measure returns 0.0. distinct_n with fewer than n tokens, repetition_ratio with fewer than 2 tokens,
entropy of 0 or 1 distinct tokens, sliding_ttr of an empty list, self_bleu of fewer than 2 texts:
all 0.0. An empty hypothesis scores BLEU 0.0 inside self_bleu, and summarize([]) gives 0.0 everywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str] | str


def _tokens(text: Tokens) -> list[str]:
    """A token list; a string is split on whitespace."""
    return text.split() if isinstance(text, str) else list(text)


def ngrams(tokens: Tokens, n: int) -> list[tuple[str, ...]]:
    """All n-grams of `tokens`, in order (none when there are fewer than n tokens)."""
    tokens = _tokens(tokens)
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return list(zip(*(tokens[i:] for i in range(n))))


def distinct_n(tokens: Tokens, n: int) -> float:
    """Unique n-grams / all n-grams (0.0 when there are fewer than n tokens)."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_ratio(tokens: Tokens) -> float:
    """Fraction of adjacent token pairs that are the same token (0.0 with fewer than 2 tokens)."""
    tokens = _tokens(tokens)
    pairs = len(tokens) - 1
    return sum(a == b for a, b in zip(tokens, tokens[1:])) / pairs if pairs > 0 else 0.0


def entropy(tokens: Tokens) -> float:
    """Shannon entropy in nats of the unigram distribution (0.0 for an empty list)."""
    counts = Counter(_tokens(tokens))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def sliding_ttr(tokens: Tokens, window: int = 50) -> float:
    """Mean type-token ratio over every window of `window` tokens (the whole list when shorter; 0.0 if empty)."""
    tokens = _tokens(tokens)
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens) if tokens else 0.0
    counts = Counter(tokens[:window])
    total = len(counts)
    for start in range(1, len(tokens) - window + 1):
        leaving, entering = tokens[start - 1], tokens[start + window - 1]
        counts[leaving] -= 1
        if counts[leaving] == 0:
            del counts[leaving]
        counts[entering] += 1
        total += len(counts)
    return total / window / (len(tokens) - window + 1)


def bleu(hypothesis: Tokens, references: Sequence[Tokens], max_n: int = 4) -> float:
    """Sentence BLEU: clipped n-gram precisions (add-one smoothing for n > 1), geometric mean, brevity penalty."""
    hypothesis = _tokens(hypothesis)
    references = [_tokens(r) for r in references]
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        most = Counter()
        for reference in references:
            most |= Counter(ngrams(reference, n))  # per n-gram, its largest count in any one reference
        clipped = sum(min(count, most[gram]) for gram, count in counts.items())
        total = sum(counts.values())
        if n == 1:
            if clipped == 0:
                return 0.0
            log_precision += math.log(clipped / total)
        else:
            log_precision += math.log((clipped + 1) / (total + 1))
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    penalty = 1.0 if length > closest else math.exp(1 - closest / length)
    return penalty * math.exp(log_precision / max_n)


def self_bleu(texts: Sequence[Tokens], max_n: int = 4) -> float:
    """Mean over texts of the BLEU of each against all the others (higher = less diverse; 0.0 for < 2 texts)."""
    texts = [_tokens(t) for t in texts]
    if len(texts) < 2:
        return 0.0
    return sum(bleu(t, texts[:i] + texts[i + 1:], max_n) for i, t in enumerate(texts)) / len(texts)


def summarize(texts: Sequence[Tokens], window: int = 50) -> dict[str, float]:
    """All metrics for a list of generations, per-text ones averaged over the texts (one row of a table)."""
    texts = [_tokens(t) for t in texts]
    per_text = {
        "length": len,
        "distinct_1": lambda t: distinct_n(t, 1),
        "distinct_2": lambda t: distinct_n(t, 2),
        "distinct_3": lambda t: distinct_n(t, 3),
        "repetition_ratio": repetition_ratio,
        "entropy": entropy,
        "sliding_ttr": lambda t: sliding_ttr(t, window),
    }
    row = {name: (sum(float(metric(t)) for t in texts) / len(texts) if texts else 0.0) for name, metric in per_text.items()}
    row["self_bleu"] = self_bleu(texts)
    return row
