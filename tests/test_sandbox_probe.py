"""make grade stops before any kernel runs when bubblewrap is installed but cannot make a sandbox (a locked-down container)."""

import os
import sqlite3
import stat

from conftest import make
from submissions import solved, submit


def test_grading_stops_with_a_clear_message_when_bwrap_cannot_sandbox(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    bwrap = fake / "bwrap"  # what bwrap says in a container without user namespaces
    bwrap.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
                     "non-privileged user namespaces.' >&2\nexit 1\n")
    bwrap.chmod(bwrap.stat().st_mode | stat.S_IEXEC)
    submitted, output = tmp_path / "submitted", tmp_path / "graded"
    submit(submitted, "ada", "04_attention", solved("04_attention"))
    result = make("grade", f"SUBMISSIONS={submitted}", f"GRADING_OUTPUT={output}",
                  env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}, check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "bubblewrap is installed but cannot start a sandbox on this machine: bwrap: No permissions" in said
    assert "GRADING_SANDBOX=0" in said and "Traceback" not in said
    assert not (output / "grades.csv").exists() and not (output / "autograded").exists()
    if (output / "gradebook.db").exists():
        with sqlite3.connect(output / "gradebook.db") as db:
            assert db.execute("select count(*) from submitted_assignment").fetchone()[0] == 0
