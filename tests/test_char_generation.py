"""The character-level generation notebook (09): its checks on the solution and on each catalogued mistake, its metrics on
hand-computed examples, seeded generation, and the text helpers of shared.char_text.

Cells run in this process (tools/notebooks.run_cells): the setup cell, every answer and given cell of the exercises (one of
them edited as a mistake's catalogue entry says), then one check cell.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import nbformat
import pytest
import torch

import notebooks
from conftest import ROOT
from shared import char_text
from shared.checks import CheckFailed
from submissions import named

ASSIGNMENT = "09_char_generation"
NOTEBOOK = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
GRADED = {c.id: c.metadata["nbgrader"] for c in NOTEBOOK.cells if c.metadata.get("nbgrader", {}).get("grade")}
CHECK_CELLS = [cell_id for cell_id in GRADED if NOTEBOOK.cells[[c.id for c in NOTEBOOK.cells].index(cell_id)].cell_type == "code"]
EXERCISES = ["setup"] + [c.id for c in NOTEBOOK.cells if c.cell_type == "code" and c.id != "setup"
                         and c.metadata.get("nbgrader", {}).get("grade_id") and not c.metadata["nbgrader"].get("grade")]


def namespace_with(replace: dict[str, str] | None = None) -> dict:
    """The exercises' namespace after running the setup, answer and given cells (`replace`: other sources for some)."""
    return notebooks.run_cells(ASSIGNMENT, EXERCISES, replace=replace).namespace


@pytest.fixture(scope="module")
def solved() -> dict:
    return namespace_with()


def test_parts_and_points_are_those_of_the_brief():
    assert sum(meta["points"] for meta in GRADED.values()) == 100
    assert {k: v["points"] for k, v in GRADED.items() if k.startswith("answer_")} == {"answer_code": 10, "answer_temperature": 5,
                                                                                      "answer_design": 10}
    assert len(CHECK_CELLS) == 12


@pytest.mark.parametrize("check", CHECK_CELLS)
def test_every_check_cell_passes_on_the_solution(check, solved):
    printed = notebooks.run_cells(ASSIGNMENT, [check], namespace=dict(solved)).printed
    assert "✓" in printed


def test_hidden_checks_pass_and_nothing_warns(solved):
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()) as stderr:
        warnings.simplefilter("error")
        notebooks.run_cells(ASSIGNMENT, CHECK_CELLS, hidden=True, namespace=dict(solved))
    assert stderr.getvalue() == ""


CATALOGUE = notebooks.mistakes(ASSIGNMENT)


def test_every_exercise_has_catalogued_mistakes_with_their_expected_check():
    """tests/test_mistakes.py makes each entry and asserts that its `check` fails first, naming it, with its `message`."""
    answers = {c.id for c in NOTEBOOK.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    assert {mistake.cell for mistake in CATALOGUE} == answers
    assert all(m.expect == "named" and m.check in CHECK_CELLS and m.message.startswith("Check '") for m in CATALOGUE)


def test_a_mistake_made_by_hand_is_named_by_its_check():
    """One entry run here end to end: the dataset's targets left unshifted."""
    mistake = next(m for m in CATALOGUE if m.id == "targets_not_shifted")
    wrong = notebooks.with_mistake(notebooks.solution_sources(ASSIGNMENT)[mistake.cell], mistake)
    with pytest.raises(CheckFailed) as failure:
        notebooks.run_cells(ASSIGNMENT, [mistake.check], namespace=namespace_with({mistake.cell: wrong}))
    assert str(failure.value).startswith(mistake.message + " " + named(ASSIGNMENT, mistake.id)), str(failure.value)


# The metrics on examples worked out by hand --------------------------------------------------------------------------

HAND = [
    ("distinctness", ("The cat the dog",), 3 / 4),
    ("distinctness", ("",), 0.0),
    ("repetition_ratio", ("the the the and the",), 2 / 4),
    ("repetition_ratio", ("Go go GO",), 1.0),
    ("repetition_ratio", ("alone",), 0.0),
    ("average_word_length", ("a bb ccc.",), 7 / 3),
    ("average_word_length", ("   ",), 0.0),
    ("sentence_count", ("Hi! How are you? Fine. ...",), 6),
    ("sentence_count", ("no marks",), 0),
    ("average_sentence_length", ("one two. three. ",), 1.5),
    ("average_sentence_length", ("...",), 0.0),
    ("vocabulary_size", ("A a b B c",), 3),
    ("perplexity_from_loss", (math.log(47),), 47.0),
    ("perplexity_from_loss", (0.0,), 1.0),
    ("self_bleu_score", (["a b c", "a b d"], 1), 0.5),
    ("self_bleu_score", (["a b c", "A B D"], 2), 1 / 3),
    ("self_bleu_score", (["a", "a", "b"], 1), 1 / 3),
    ("self_bleu_score", (["a", "b c"], 2), 0.0),
    ("self_bleu_score", (["only one"], 1), 0.0),
]


@pytest.mark.parametrize("name, arguments, expected", HAND, ids=[f"{name}{arguments}" for name, arguments, _ in HAND])
def test_metrics_on_examples_computed_by_hand(solved, name, arguments, expected):
    value = solved[name](*arguments)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert type(value) is (int if isinstance(expected, int) else float)


# Generation and the dataset with the real model ------------------------------------------------------------------------


class ContextSpy(torch.nn.Module):
    """Wraps a model and records the length of every context it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.lengths = model, []

    def forward(self, x, hidden=None):
        self.lengths.append(x.shape[1])
        return self.model(x, hidden)


def test_generation_is_deterministic_given_a_generator_and_reads_the_last_window(solved):
    dataset = solved["TextDataset"]("once upon a time there was a cat.\n", seq_length=6)
    torch.manual_seed(0)
    spy = ContextSpy(solved["LSTMTextGenerator"](len(dataset.chars), 4, 8, 2, 0.3))
    generate = solved["generate_text"]
    texts = [generate(spy, dataset, "the ca", 30, 1.0, "cpu", torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert texts[0] == texts[1] != texts[2]
    assert all(text.startswith("the ca") and len(text) == 36 and set(text) <= set(dataset.chars) for text in texts)
    assert set(spy.lengths) == {6} and not spy.model.training  # a full window every step, evaluation mode
    spy.lengths.clear()
    generate(spy, dataset, "th", 6, 0.7, "cpu", torch.Generator().manual_seed(3))
    assert spy.lengths == [2, 3, 4, 5, 6, 6]


def test_the_dataset_shares_a_vocabulary_and_refuses_unknown_characters(solved):
    TextDataset = solved["TextDataset"]
    train = TextDataset("abcab", seq_length=2)
    valid = TextDataset("ba", seq_length=1, chars=train.chars)
    assert valid.chars == ["a", "b", "c"] and valid.encoded.tolist() == [1, 0] and valid.encoded.dtype == torch.long
    x, y = train[len(train) - 1]
    assert train.decode(x) == "ca" and train.decode(y) == "ab"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TextDataset("abd", seq_length=1, chars=train.chars)


# shared.char_text ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, text", [
    ("<bos> she said , \" hi , tom ! \" and smiled . <eos>", 'she said, "hi, tom!" and smiled.'),
    ("lily did n't want her dog 's toy ...", "lily didn't want her dog's toy..."),
    ("\" yes \" , said ( he ) : ok ; fine ?", '"yes", said (he): ok; fine?'),
    ("", ""),
])
def test_story_text_joins_the_prepared_tokens_as_written(tokens, text):
    assert char_text.story_text(tokens.split()) == text


def test_load_text_gives_one_story_per_line_in_the_alphabet():
    text = char_text.load_text("valid", max_stories=3)
    assert text.count("\n") == 3 and text.endswith("\n") and set(text) <= set(char_text.ALPHABET)
    assert "<bos>" not in text and " ." not in text
    assert set(char_text.load_text("valid", max_stories=3, alphabet="abc \n")) <= set("abc \n")


def test_char_codes_are_code_points():
    assert char_text.char_codes("a\n!").tolist() == [97, 10, 33] and char_text.char_codes("").shape == (0,)
