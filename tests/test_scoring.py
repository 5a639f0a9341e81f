"""Hidden-check scoring fails closed: hostile outbox files and values cost their own cells, never the run."""

import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "autograder"))

import scoring  # noqa: E402

REFERENCES = {
    "count": {"value": 2586, "rtol": 0.0, "atol": 0.0},
    "states": {"value": {"H": torch.arange(6.0).reshape(2, 3), "C": torch.ones(2, 3)}, "rtol": 1e-6, "atol": 1e-9},
}
CELLS = {"test_count": ["count"], "test_states": ["states"]}


def send(outbox: Path, message, name: str | None = None) -> None:
    torch.save(message, outbox / (name or f"{time.time_ns()}.pt"))


def verdicts(outbox: Path, mistakes=None) -> dict:
    return scoring.score_hidden_checks(scoring.read_outbox(outbox), CELLS, REFERENCES, mistakes or {})


def honest(outbox: Path) -> None:
    send(outbox, {"name": "count", "value": 2586})
    send(outbox, {"name": "states", "value": {"H": torch.arange(6.0).reshape(2, 3), "C": torch.ones(2, 3)}})


def test_right_values_pass_and_a_replayed_identical_value_is_accepted(tmp_path):
    honest(tmp_path)
    send(tmp_path, {"name": "count", "value": 2586})  # a replay after a kernel restart
    assert verdicts(tmp_path) == {"test_count": None, "test_states": None}


def test_notes_say_what_is_wrong_without_the_hidden_expected_values(tmp_path):
    send(tmp_path, {"name": "count", "value": 0})
    send(tmp_path, {"name": "states", "value": {"H": torch.zeros(2, 3), "C": torch.ones(2, 3)}})
    notes = verdicts(tmp_path)
    assert notes["test_count"] == "hidden check 'count': the result differs from the reference"
    assert "2586" not in notes["test_count"]
    assert notes["test_states"] == "hidden check 'states': 5 of 6 values of output['H'] differ from the reference"


def test_missing_duplicated_and_reported_errors_fail_their_cell(tmp_path):
    send(tmp_path, {"name": "states", "value": {"H": torch.zeros(2, 3), "C": torch.ones(2, 3)}})
    send(tmp_path, {"name": "states", "value": {"H": torch.arange(6.0).reshape(2, 3), "C": torch.ones(2, 3)}})  # a forged second value
    notes = verdicts(tmp_path)
    assert notes["test_count"] == "hidden check 'count' did not run"
    assert "recorded 2 times with different values" in notes["test_states"]
    send(tmp_path, {"name": "count", "error": "the result is str 'x', not a tensor"})
    assert verdicts(tmp_path)["test_count"].startswith("hidden check 'count': the result is str")


def test_links_fifos_and_oversized_files_in_the_outbox_are_not_read(tmp_path):
    outbox, secret = tmp_path / "outbox", tmp_path / "secret.pt"
    outbox.mkdir()
    torch.save({"name": "count", "value": 2586}, secret)
    (outbox / "a-link.pt").symlink_to(secret)
    os.mkfifo(outbox / "b-fifo.pt")  # opening it for reading without O_NONBLOCK would block for ever
    (outbox / "c-huge.pt").write_bytes(b"\0" * (scoring.MAX_FILE_BYTES + 1))
    started = time.monotonic()
    assert scoring.read_outbox(outbox) == []
    assert time.monotonic() - started < 60
    assert verdicts(outbox)["test_count"] == "hidden check 'count' did not run"
    assert scoring.read_outbox(tmp_path / "no-such-folder") == []


def test_a_value_nested_thousands_deep_costs_its_cell_only(tmp_path):
    deep = 0
    for _ in range(5000):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # as a student's cell can, to save it at all
    try:
        send(tmp_path, {"name": "count", "value": deep})
    finally:
        sys.setrecursionlimit(limit)
    send(tmp_path, {"name": "states", "value": {"H": torch.arange(6.0).reshape(2, 3), "C": torch.ones(2, 3)}})
    notes = verdicts(tmp_path)
    assert notes == {"test_count": "hidden check 'count' did not run", "test_states": None}


def test_shared_sub_lists_are_refused_before_any_exponential_walk(tmp_path):
    shared = [0]
    for _ in range(40):  # 2**40 leaves if walked as a tree; a few hundred bytes on disk
        shared = [shared, shared]
    send(tmp_path, {"name": "count", "value": shared})
    started = time.monotonic()
    with pytest.raises(scoring.Malformed, match="more than"):
        scoring.check_shape_of_value(shared)
    assert verdicts(tmp_path)["test_count"] == "hidden check 'count' did not run"
    assert time.monotonic() - started < 120


def test_objects_other_than_tensors_and_numbers_are_refused():
    for value in ["text", {"H": object.__new__(type("Odd", (), {}))}, {(1, 2): 3}, torch.zeros(2).to_sparse()]:
        with pytest.raises(scoring.Malformed):
            scoring.check_shape_of_value(value)


def test_a_child_that_dies_fails_the_cell_in_progress_and_the_others_are_still_scored(tmp_path, monkeypatch):
    honest(tmp_path)
    real = scoring.cell_verdict

    def dies_on_count(grade_id, *arguments):
        if grade_id == "test_count":
            os._exit(9)  # as a segfault or the kernel's OOM killer would end it
        return real(grade_id, *arguments)

    monkeypatch.setattr(scoring, "cell_verdict", dies_on_count)
    notes = verdicts(tmp_path)
    assert notes == {"test_count": "scoring its hidden checks ran past its budget (time or memory)", "test_states": None}


def test_a_scoring_step_past_its_cpu_budget_fails_its_cell(tmp_path, monkeypatch):
    honest(tmp_path)
    real = scoring.cell_verdict

    def spins_on_states(grade_id, *arguments):
        while grade_id == "test_states":
            pass
        return real(grade_id, *arguments)

    monkeypatch.setattr(scoring, "CPU_SECONDS_PER_ITEM", 1)
    monkeypatch.setattr(scoring, "cell_verdict", spins_on_states)
    notes = verdicts(tmp_path)
    assert notes == {"test_count": None, "test_states": "scoring its hidden checks used more than its CPU budget"}
