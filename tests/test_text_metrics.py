"""shared.text_metrics against values computed by hand on tiny inputs, edge cases included."""

import math
import random

import pytest

from shared.text_metrics import bleu, distinct_n, entropy, ngrams, repetition_ratio, self_bleu, sliding_ttr, summarize


def test_ngrams_in_order_and_none_when_too_short():
    assert ngrams("a b c", 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        ngrams("a b", 0)


@pytest.mark.parametrize(("tokens", "n", "expected"), [
    ("a b a b", 1, 2 / 4),
    ("a b a b", 2, 2 / 3),   # ab, ba, ab
    ("a b a b", 3, 2 / 2),   # aba, bab
    ("a a a a", 2, 1 / 3),
    (["a"], 1, 1.0),
    (["a"], 2, 0.0),         # no bigram at all
    ([], 1, 0.0),
    ("", 1, 0.0),
])
def test_distinct_n(tokens, n, expected):
    assert distinct_n(tokens, n) == pytest.approx(expected)


@pytest.mark.parametrize(("tokens", "expected"), [
    ("a a b b b", 3 / 4),   # pairs aa ab bb bb
    ("a b c", 0.0),
    ("x x", 1.0),
    (["a"], 0.0),
    ([], 0.0),
])
def test_repetition_ratio(tokens, expected):
    assert repetition_ratio(tokens) == pytest.approx(expected)


@pytest.mark.parametrize(("tokens", "expected"), [
    ("a a b b", math.log(2)),
    ("a b c d", math.log(4)),
    ("a a a b", -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
    (["a"], 0.0),
    ([], 0.0),
])
def test_entropy_in_nats(tokens, expected):
    assert entropy(tokens) == pytest.approx(expected)


@pytest.mark.parametrize(("tokens", "window", "expected"), [
    ("a b a c", 2, 1.0),           # ab ba ac
    ("a b a c", 3, (2 / 3 + 1) / 2),  # aba bac
    ("a a a a", 2, 0.5),
    ("a a b", 50, 2 / 3),          # shorter than the window: the whole list
    (["a"], 50, 1.0),
    ([], 50, 0.0),
])
def test_sliding_ttr(tokens, window, expected):
    assert sliding_ttr(tokens, window) == pytest.approx(expected)


def test_sliding_ttr_matches_a_direct_count_on_random_text():
    rng = random.Random(3)
    tokens = [rng.choice("abcdefg") for _ in range(300)]
    direct = [len(set(tokens[i:i + 20])) / 20 for i in range(len(tokens) - 19)]
    assert sliding_ttr(tokens, 20) == pytest.approx(sum(direct) / len(direct))


def test_bleu_by_hand():
    # p1 = 3/4; bigrams ab bc cd vs ab bc ce: (2 + 1) / (3 + 1) = 3/4; equal lengths: no penalty
    assert bleu("a b c d", ["a b c e"], max_n=2) == pytest.approx(0.75)
    # clipping: "the" counts at most once, as in the reference
    assert bleu("the the the the", ["the cat"], max_n=1) == pytest.approx(0.25)
    # brevity penalty exp(1 - r/c) with c = 2, r = 4
    assert bleu("a b", ["a b c d"], max_n=1) == pytest.approx(math.exp(-1))
    # the closest reference length decides, ties to the shorter one (2, not 4, for a length-3 hypothesis)
    assert bleu("a b c", ["a b", "a b c d"], max_n=1) == pytest.approx(1.0)
    # clipping uses the largest count in any one reference
    assert bleu("a a", ["a b", "a a"], max_n=1) == pytest.approx(1.0)
    # a one-token hypothesis has no bigrams: add-one smoothing makes those precisions 1
    assert bleu(["a"], [["a"]], max_n=4) == pytest.approx(1.0)
    assert bleu("x y", ["a b"]) == 0.0
    assert bleu([], ["a b"]) == 0.0


def test_self_bleu_by_hand():
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "a b c e"], max_n=2) == pytest.approx(0.75)
    assert self_bleu(["a b", "a b c d"], max_n=1) == pytest.approx((math.exp(-1) + 0.5) / 2)
    # with three texts, each is scored against the other two
    texts = ["a b", "a b c d", "x y"]
    expected = (bleu("a b", ["a b c d", "x y"], 1) + bleu("a b c d", ["a b", "x y"], 1) + bleu("x y", ["a b", "a b c d"], 1)) / 3
    assert self_bleu(texts, max_n=1) == pytest.approx(expected)
    assert self_bleu(["a b c"]) == 0.0 and self_bleu([]) == 0.0
    assert self_bleu(["", "a b"]) == 0.0


def test_summarize_averages_over_generations_and_accepts_strings_or_token_lists():
    row = summarize(["a b a b", "c c"])
    expected = {
        "length": 3.0,
        "distinct_1": 0.5,
        "distinct_2": (2 / 3 + 1) / 2,
        "distinct_3": (1 + 0) / 2,
        "repetition_ratio": (0 + 1) / 2,
        "entropy": math.log(2) / 2,
        "sliding_ttr": 0.5,
        "self_bleu": 0.0,
    }
    assert row == pytest.approx(expected)
    assert list(row) == list(expected)
    assert summarize([["a", "b", "a", "b"], ["c", "c"]]) == row
    assert all(isinstance(value, float) for value in row.values())
    assert summarize([]) == dict.fromkeys(expected, 0.0)
