"""The course's thread policy (shared.device): its decisions, how it is applied, and that every notebook's setup applies it."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch

from conftest import ROOT
from shared import device
from shared.device import ThreadChoice, choose_threads, thread_choice, threads_for, use_threads

NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb")) + sorted((ROOT / "notebooks").glob("*/*.ipynb"))
LARGE_MODEL_NOTEBOOKS = {"07_gpt", "08_tinystories_lstm"}  # full-size runs whose steps are big enough for several threads


@pytest.fixture(autouse=True)
def restored_threads():
    """Each test may change PyTorch's thread count; the next one starts from the same one."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cores, fast, large_model, busy, expected", [
    (2, True, False, 0.0, 1),     # fast mode: a smoke test of small models
    (16, True, True, 0.0, 1),     # fast mode shrinks the large model too
    (16, False, False, 0.0, 1),   # a small model on an idle machine with many cores
    (1, False, True, 0.0, 1),     # one core
    (2, False, True, 0.2, 2),     # a large model on an idle machine: every core
    (8, False, True, None, 8),    # unknown (Windows): every core
    (2, False, True, 1.0, 1),     # one of two cores busy
    (16, False, True, 5.4, 11),   # five of sixteen busy
    (2, False, True, 6.5, 1),     # more busy programs than cores: still one thread
])
def test_the_policy_picks_one_thread_for_small_work_and_the_free_cores_for_a_large_model(cores, fast, large_model, busy, expected):
    count, reason = choose_threads(cores, fast=fast, large_model=large_model, busy=busy)
    assert count == expected and reason


def test_the_reasons_say_why():
    assert choose_threads(2, fast=True, large_model=False)[1].startswith("fast mode")
    assert choose_threads(4, fast=False, large_model=False)[1] == "small models run fastest on one thread"
    assert choose_threads(4, fast=False, large_model=True, busy=0.1)[1] == "all 4 cores"
    assert choose_threads(4, fast=False, large_model=True, busy=2.2)[1] == "2 of 4 cores: other programs keep 2.2 busy"


def test_a_thread_variable_the_grader_set_is_kept_before_anything_else():
    for fast, large_model, override in ((True, False, None), (False, True, "3"), (False, False, "1")):
        assert choose_threads(8, fast=fast, large_model=large_model, busy=0.0, override=override, inherited="OMP_NUM_THREADS=2") == (
            None, "OMP_NUM_THREADS=2 is set: kept")


@pytest.mark.parametrize("override, expected", [("3", 3), (" 12 ", 12), ("1", 1)])
def test_course_threads_overrides_the_policy(override, expected):
    assert choose_threads(2, fast=True, large_model=False, override=override) == (expected, f"COURSE_THREADS={expected}")


@pytest.mark.parametrize("override", ["0", "-2", "two", "1.5"])
def test_a_course_threads_that_is_not_a_count_is_ignored_with_a_note(override):
    count, reason = choose_threads(2, fast=True, large_model=False, override=override)
    assert count == 1 and reason.startswith("fast mode")
    assert f"COURSE_THREADS={override!r} ignored: not a whole number of at least 1" in reason


def test_an_empty_course_threads_counts_as_unset():
    assert choose_threads(2, fast=True, large_model=False, override="") == choose_threads(2, fast=True, large_model=False)


def test_thread_choice_reads_the_environment_it_is_given(monkeypatch):
    measured = []
    monkeypatch.setattr(device, "TORCH_DEFAULT_THREADS", 4)
    monkeypatch.setattr(device, "busy_cores", lambda: measured.append(1) or 1.2)
    assert thread_choice(large_model=True, fast=False, environ={}) == (3, "3 of 4 cores: other programs keep 1.2 busy")
    assert len(measured) == 1
    assert thread_choice(large_model=True, fast=True, environ={}) == (1, "fast mode: small models run fastest on one thread")
    assert thread_choice(fast=False, environ={"COURSE_THREADS": "2"}) == (2, "COURSE_THREADS=2")
    assert thread_choice(fast=False, environ={"MKL_NUM_THREADS": "3", "COURSE_THREADS": "2"})[0] is None
    assert len(measured) == 1  # only a large model at full size waits to measure the other programs
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert thread_choice(large_model=True, environ={})[0] == 1  # fast mode from the environment


def test_busy_cores_counts_the_busy_ticks_of_every_cpu_less_this_process(monkeypatch):
    ticks = iter([1000, 1000 + 150])  # 1.5 s of CPU time in all, over 1 s
    own = iter([os.times_result((2.0, 1.0, 0, 0, 0)), os.times_result((2.3, 1.2, 0, 0, 0))])  # 0.5 s of it is ours
    clock = iter([10.0, 11.0])
    monkeypatch.setattr(device, "busy_ticks", lambda: next(ticks))
    monkeypatch.setattr(device.os, "times", lambda: next(own))
    monkeypatch.setattr(device.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(device.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(device.time, "sleep", lambda seconds: None)
    assert device.busy_cores(1.0) == pytest.approx(1.0)


def test_busy_cores_falls_back_on_the_load_average_then_on_unknown(monkeypatch):
    def missing(*arguments):
        raise OSError("no such file")

    monkeypatch.setattr(device, "busy_ticks", missing)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (2.5, 1.0, 0.5))
    assert device.busy_cores() == 2.5
    monkeypatch.setattr(device.os, "getloadavg", missing)
    assert device.busy_cores() is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_busy_ticks_reads_this_machines_cpu_time():
    first = device.busy_ticks()
    assert first > 0 and device.busy_ticks() >= first
    assert 0.0 <= device.busy_cores(0.05) <= (os.cpu_count() or 1) + 0.5


def test_use_threads_sets_pytorch_and_says_so(monkeypatch):
    for name in device.INHERITED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_THREADS", "1")
    torch.set_num_threads(2)
    choice = use_threads(large_model=True)
    assert choice == ThreadChoice(1, "COURSE_THREADS=1") and torch.get_num_threads() == 1
    assert str(choice) == "1 (COURSE_THREADS=1)"


def test_use_threads_keeps_the_graders_setting(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert use_threads() == ThreadChoice(2, "OMP_NUM_THREADS=2 is set: kept") and torch.get_num_threads() == 2


def test_threads_for_applies_the_policy_on_the_cpu_only_and_restores_the_setting(monkeypatch):
    for name in device.INHERITED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_THREADS", "1")
    torch.set_num_threads(2)
    with threads_for(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads_for(torch.device("meta")):  # an accelerator's work: the CPU threads stay as they are
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads_for(torch.device("cpu")):
        raise RuntimeError("a failing training step")
    assert torch.get_num_threads() == 2


def setup_cell(path: Path) -> nbformat.NotebookNode:
    """The notebook's first code cell, which must be its locked setup cell."""
    cell = next(cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    assert cell.metadata.get("nbgrader", {}).get("grade_id") == "setup", path
    return cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_notebooks_setup_applies_the_policy_in_its_pytorch_line(path):
    source = setup_cell(path).source
    large = path.parent.name in LARGE_MODEL_NOTEBOOKS
    call = "shared.use_threads(large_model=True)" if large else "shared.use_threads()"
    assert source.count("use_threads(") == 1
    assert re.search(r'^print\("PyTorch", torch\.__version__, .*"\| threads:", ' + re.escape(call) + r"\)$", source, re.MULTILINE), source
    others = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code" and cell.source != source]
    assert not [cell.id for cell in others if "set_num_threads" in cell.source or "use_threads" in cell.source]


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*/*.ipynb")), ids=lambda path: path.parent.name)
def test_every_setup_cell_prints_the_threads_it_chose(path, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    for name in (*device.INHERITED_ENV, "COURSE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(path.parent)
    torch.set_num_threads(2)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(setup_cell(path).source, {})
    line = next(line for line in printed.getvalue().splitlines() if line.startswith("PyTorch"))
    assert line.endswith("| threads: 1 (fast mode: small models run fastest on one thread)"), line
    assert torch.get_num_threads() == 1
