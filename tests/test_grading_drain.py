"""execute.grade calls its `when_draining` hook once, as soon as fewer submissions are left than workers (grade.py then
imports the reports' libraries on the idle core), and never with one worker, where no core is idle before the end."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "autograder"))
import execute  # noqa: E402
from run_config import RunConfig  # noqa: E402


def graded_lines_before_draining(tmp_path, monkeypatch, capsys, submissions: int, workers: int) -> list[int]:
    """Grade `submissions` stand-in submissions with `workers` workers; for each call of the hook, how many submissions
    had been reported graded by then."""
    monkeypatch.setattr(execute, "grade_one", lambda config, assignment, student: (assignment, student, "", 0.0))
    config = RunConfig(submissions=tmp_path / "submitted", output=tmp_path / "out", workers=workers)
    todo = [("03_rnn_lstm", f"student{index}") for index in range(submissions)]
    prints = {pair: "fingerprint" for pair in todo}
    calls = []
    with ThreadPoolExecutor(max_workers=min(workers, submissions)) as pool:
        failures = execute.grade(pool, config, todo, prints,
                                 when_draining=lambda: calls.append(capsys.readouterr().out.count(" ok (")))
    out = capsys.readouterr().out
    assert failures == {}
    assert sum(calls) + out.count(" ok (") == submissions  # every submission reported, once
    return calls


@pytest.mark.parametrize("submissions, workers", [(20, 2), (5, 3), (2, 2)])
def test_called_once_when_fewer_are_left_than_workers(tmp_path, monkeypatch, capsys, submissions, workers):
    # After submissions - workers + 1 results, workers - 1 are left; that result is reported just after the hook.
    assert graded_lines_before_draining(tmp_path, monkeypatch, capsys, submissions, workers) == [submissions - workers]


def test_not_called_with_one_worker(tmp_path, monkeypatch, capsys):
    assert graded_lines_before_draining(tmp_path, monkeypatch, capsys, 4, 1) == []
