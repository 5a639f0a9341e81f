"""The check helpers: what a student reads when a value is wrong, and how references are stored."""

import itertools

import pytest
import torch

from shared import checks
from shared.checks import CheckFailed, Checker, compare
from shared.grading_contract import HIDDEN_REFERENCES as HIDDEN_ENV, OUTBOX as OUTBOX_ENV, RECORD_REFERENCES as RECORD_ENV

TIGHT = {"rtol": 1e-6, "atol": 1e-9}


def failure(got, expected, **tolerance) -> str:
    with pytest.raises(CheckFailed) as raised:
        compare("demo", got, expected, **(tolerance or TIGHT))
    return str(raised.value)


def test_matching_values_pass_within_tolerance():
    expected = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
    compare("demo", expected + 1e-12, expected, **TIGHT)
    compare("demo", {"h": expected, "c": [expected, 3]}, {"h": expected, "c": (expected, 3)}, **TIGHT)


def test_wrong_shape_names_both_shapes_and_suggests_a_transpose():
    message = failure(torch.zeros(5, 3), torch.zeros(3, 5))
    assert "Check 'demo'" in message and "expected shape (3, 5), got (5, 3)" in message
    assert "transpose" in message


def test_missing_batch_dimension_is_pointed_out():
    message = failure(torch.zeros(5), torch.zeros(1, 5))
    assert "expected shape (1, 5), got (5)" in message and "number of elements is right" in message


def test_wrong_dtype_says_where_dtypes_come_from():
    message = failure(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64))
    assert "expected torch.float64, got torch.float32" in message and "dtype=x.dtype" in message


def test_wrong_values_report_count_worst_element_and_side_by_side_rows():
    expected = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    got = expected.clone()
    got[2, 1] += 5.0
    got[0, 3] += 0.5
    message = failure(got, expected)
    assert "2 of 12 elements are off" in message
    assert "worst at index (2, 1): abs error 5" in message
    assert "(0, 3)" in message and "3.5" in message  # second mismatch shown with got and expected
    assert "allowed: |got - expected| <= 1e-09 + 1e-06 * |expected|" in message


def test_nan_is_called_out():
    expected = torch.ones(4, dtype=torch.float64)
    got = expected.clone()
    got[1] = float("nan")
    message = failure(got, expected)
    assert "is NaN somewhere" in message and "worst at index (1)" in message


def test_structure_mismatch_lists_both_structures():
    message = failure(torch.zeros(2), (torch.zeros(2), torch.zeros(2)))
    assert "wrong structure" in message and "output[0]" in message and "a tensor of shape (2)" in message


def test_part_of_a_dict_is_named_in_the_message():
    message = failure({"h": torch.ones(2), "c": torch.zeros(2)}, {"h": torch.ones(2), "c": torch.ones(2)})
    assert "output['c']" in message and "output['h']" not in message


def test_integers_compare_exactly_and_floats_are_not_integers():
    compare("count", 120, 120, rtol=0, atol=0)
    assert "expected exactly 120, got 121" in failure(121, 120, rtol=0, atol=0)
    assert "expected exactly 120" in failure(120.0, 120, rtol=0, atol=0)
    assert "should be a tensor" in failure(3, torch.tensor([3]))


def test_integer_tensors_compare_exactly():
    message = failure(torch.tensor([1, 2, 4]), torch.tensor([1, 2, 3]), rtol=0, atol=0)
    assert "1 of 3 elements are off" in message and "worst at index (2)" in message


def test_tensors_pass_exactly_when_torch_testing_assert_close_passes():
    # the witness: torch.testing.assert_close, which the checks no longer call (its first use imports for half a second)
    special = [1.0, 2.0, float("nan"), float("inf"), -float("inf")]
    values = [torch.tensor(special), torch.tensor(special) + 1e-6, torch.tensor([1.0, 2.0, 0.0, float("inf"), float("inf")])]
    compared = 0
    for got, expected in itertools.product(values, values):
        for dtype, (rtol, atol), equal_nan in itertools.product(
                (torch.float32, torch.float64, torch.bfloat16, torch.complex64), [(0.0, 0.0), (1e-5, 1e-8), (1e-3, 1e-3)], (False, True)):
            got_, expected_ = got.to(dtype), expected.to(dtype)
            try:
                torch.testing.assert_close(got_, expected_, rtol=rtol, atol=atol, equal_nan=equal_nan)
                witness = True
            except AssertionError:
                witness = False
            try:
                compare("demo", got_, expected_, rtol=rtol, atol=atol, equal_nan=equal_nan)
                ours = True
            except CheckFailed:
                ours = False
            assert ours == witness, (got_, expected_, rtol, atol, equal_nan)
            compared += 1
    assert compared == 9 * 4 * 3 * 2


def test_a_sparse_tensor_is_a_clear_failure_not_a_crash():
    assert "should be a plain (dense) tensor" in failure(torch.eye(3).to_sparse(), torch.eye(3))


def test_record_then_compare_round_trip(tmp_path, monkeypatch):
    value = {"h": torch.randn(2, 3, dtype=torch.float64), "n": 7}
    monkeypatch.setenv(RECORD_ENV, str(tmp_path))
    recorder = Checker("99_demo")
    recorder.check("public_one", value, **TIGHT)
    recorder.check_hidden("hidden_one", value["h"] * 2, **TIGHT)
    assert (tmp_path / "shared/references/99_demo.pt").exists()
    assert (tmp_path / "autograder/references/99_demo.pt").exists()

    monkeypatch.delenv(RECORD_ENV)
    monkeypatch.setenv(HIDDEN_ENV, str(tmp_path / "autograder/references"))
    monkeypatch.setattr("shared.checks.PUBLIC_DIR", tmp_path / "shared/references")
    checker = Checker("99_demo")
    checker.check("public_one", value, **TIGHT)
    checker.check_hidden("hidden_one", value["h"] * 2, **TIGHT)
    with pytest.raises(CheckFailed, match="differs"):
        checker.check_hidden("hidden_one", value["h"], **TIGHT)
    with pytest.raises(CheckFailed, match="No reference is recorded for check 'other'"):
        checker.check("other", value, **TIGHT)


def test_missing_hidden_references_say_they_exist_only_when_grading(tmp_path, monkeypatch):
    monkeypatch.setenv(HIDDEN_ENV, str(tmp_path))
    with pytest.raises(CheckFailed, match="only on the grading machine"):
        Checker("03_rnn_lstm").check_hidden("rnn_step/101", torch.zeros(1), **TIGHT)


def test_public_references_ship_inside_the_package():
    import shared.checks

    assert (shared.checks.PUBLIC_DIR / "03_rnn_lstm.pt").exists()
    references = torch.load(shared.checks.PUBLIC_DIR / "03_rnn_lstm.pt", weights_only=True)
    assert "rnn_step" in references and not any("/" in name for name in references)


def test_while_grading_hidden_checks_only_send_their_values_out(tmp_path, monkeypatch):
    """In the student's kernel a hidden check never compares (nothing there to patch): the grader does."""
    monkeypatch.setenv(HIDDEN_ENV, str(tmp_path / "nowhere"))  # no hidden references needed, none read
    monkeypatch.setenv(OUTBOX_ENV, str(tmp_path))
    checker = Checker("03_rnn_lstm")
    checker.check_hidden("rnn_step/101", torch.ones(2), **TIGHT)  # would fail a comparison: no error here
    checker.check_hidden("rnn_step/102", "not a tensor", **TIGHT)
    messages = [torch.load(path, weights_only=True) for path in sorted(tmp_path.glob("*.pt"))]
    assert [m["name"] for m in messages] == ["rnn_step/101", "rnn_step/102"]
    assert torch.equal(messages[0]["value"], torch.ones(2))
    assert "str 'not a tensor'" in messages[1]["error"]


def test_the_mode_is_chosen_once_from_the_contract_variables(tmp_path):
    """A checker's mode comes from the variables its kernel was started with, read when the checker is made."""
    assert isinstance(checks.mode_from_environment({}), checks.Compare)
    assert type(checks.mode_from_environment({OUTBOX_ENV: str(tmp_path)})) is checks.SendHiddenToOutbox
    assert type(checks.mode_from_environment({RECORD_ENV: str(tmp_path), OUTBOX_ENV: str(tmp_path)})) is checks.RecordReferences
    assert checks.mode_from_environment({HIDDEN_ENV: str(tmp_path)}).hidden_dir == tmp_path


def test_a_recorded_mistake_keeps_the_checks_outputs_under_its_id(tmp_path):
    checker = Checker("99_demo", mode=checks.RecordMistake(tmp_path, "wrong_sign"))
    checker.check("public_one", torch.ones(2), **TIGHT)
    checker.check_hidden("hidden_one", torch.zeros(3), **TIGHT)
    recorded = torch.load(tmp_path / "mistakes-recorded/99_demo.pt", weights_only=True)
    assert set(recorded["wrong_sign"]) == {"public", "hidden"}
    assert torch.equal(recorded["wrong_sign"]["hidden"]["hidden_one"]["value"], torch.zeros(3))
    assert not (tmp_path / "shared/references/99_demo.pt").exists()  # a mistake's output is never a reference
