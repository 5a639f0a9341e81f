"""The second pass's sandboxed zygote (autograder/harness.py, harness_zygote.py), driven directly."""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "autograder"))
import harness  # noqa: E402


@pytest.mark.skipif(not shutil.which("bwrap"), reason="the second pass runs in a bubblewrap sandbox")
def test_a_child_that_dies_in_a_cell_is_replayed_without_it_with_a_course_folder_bound_under_tmp(tmp_path, monkeypatch):
    # A course data folder under /tmp is bound into the sandbox, over the /tmp it wipes between runs: the wipe must
    # leave it, or the replay never happens (the answers after the fatal cell would all score 0).
    data = Path(tempfile.mkdtemp(prefix="course-data-", dir="/tmp"))
    (data / "stories.txt").write_text("once upon a time\n")
    data.chmod(0o755)
    monkeypatch.setenv("COURSE_DATA_DIR", str(data))
    submission = tmp_path / "submission"
    submission.mkdir()
    cells = [{"kind": "given", "grade_id": "setup", "source": "x = 1"},
             {"kind": "solution", "grade_id": "dies", "source": "import os\nos._exit(1)"},
             {"kind": "test", "grade_id": "after", "source": "assert x == 1\nassert open(__import__('os').environ['COURSE_DATA_DIR'] + '/stories.txt').read()"}]
    second_pass = harness.Harness(tmp_path / "output/.grading/harness/test", 1.0, True, {}, output=tmp_path / "output")
    try:
        folder, ended = second_pass.finish(second_pass.start("03_rnn_lstm", cells, submission, harness.run_limits(30, 60, 120)))
        statuses = {cell["grade_id"]: cell["status"] for cell in harness.read_report(folder / "report.json")["cells"]}
    finally:
        second_pass.close()
        shutil.rmtree(data, ignore_errors=True)
    assert ended == "ended"  # the last child, the replay, ran to the end
    assert statuses["after"] == "ok" and statuses.get("dies") != "ok"


def test_a_zygote_launched_before_a_worker_was_forked_is_seen_to_end_from_the_worker(tmp_path):
    # The driver launches each worker's zygotes, then forks the workers. In a worker, Popen.poll() of such a process
    # says it has ended at once (only its parent may wait for it), which would relaunch every zygote for nothing.
    import os
    import select
    import subprocess

    launched = harness.Launched(subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE))
    seen = tmp_path / "seen"
    worker = os.fork()
    if worker == 0:
        try:
            running_at_first = not launched.ended()
            exit_signal = os.dup(launched.exit)
            launched.kill()  # as a worker ends the zygote it took, to launch another
            ended = bool(select.select([exit_signal], [], [], 30)[0])
            seen.write_text(f"{running_at_first} {ended}")
        finally:
            os._exit(0)
    os.waitpid(worker, 0)
    assert seen.read_text() == "True True"  # running while it ran, and ended by the worker
    assert launched.ended()
    launched.kill()  # its launcher collects it
    assert launched.popen.returncode is not None and launched.exit is None
