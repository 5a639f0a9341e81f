"""Graded kernels forked from their worker's zygote (the default; GRADING_KERNEL_ZYGOTE=0 turns it off) are as
separate as kernels bubblewrap starts afresh.

One class graded with `make grade` and one worker, so that every kernel comes from the same zygote, one after the
other: the first student's cells leave files in /tmp and /dev/shm and a detached process behind; the second's
look for them. Each kernel also reports what it is: a fork of the zygote, its user, capabilities, control group, the
processes it can see and whether the zygote's socket is within its reach.
"""

from __future__ import annotations

import json
import os
import sys

import nbformat
import psutil
import pytest

from conftest import ROOT, make
from submissions import insert_code_cell, read_csv, solved, submit

sys.path.insert(0, str(ROOT / "autograder"))
import isolation  # noqa: E402
import sandbox  # noqa: E402

ASSIGNMENT = "04_attention"
STUDENTS = ("first", "second")
LEFT_BEHIND = "sleep 6173"  # the first kernel's detached process, by its unusual argument
PROBE = r"""import json, os, subprocess, sys
cmdline = open("/proc/self/cmdline").read().split("\0")
status = open("/proc/self/status").read()
socket_path = cmdline[-2] if cmdline[-1] == "" else cmdline[-1]
def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
facts = {
    "forked": any(part.endswith("kernel_zygote.py") for part in cmdline),
    "uid": os.getuid(),
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    "imported_already": [name for name in ("torch._dynamo", "sympy") if name in sys.modules],
    "capabilities": int(status.split("CapEff:")[1].split()[0], 16),
    "cgroup": open("/proc/self/cgroup").read(),
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and alive(p)),
    "me": os.getpid(),
    "socket_reachable": os.path.exists(socket_path) or os.path.exists(os.path.dirname(socket_path) + "/kernels.sock"),
    "tmp": sorted(os.listdir("/tmp")),
    "shm": sorted(os.listdir("/dev/shm")),
    "strays": [open(f"/proc/{p}/cmdline").read().replace("\0", " ") for p in os.listdir("/proc") if p.isdigit() and alive(p)],
}
for folder in ("/tmp", "/dev/shm"):
    open(f"{folder}/left-by-{os.getuid()}-{os.getpid()}", "w").write("secret")
subprocess.run(["setsid", "-f", "sh", "-c", "exec SLEEP"])
print("FACTS" + json.dumps(facts))
import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0])  # shown inline at the cell's end, as in a kernel started afresh
""".replace("SLEEP", LEFT_BEHIND)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    submissions, output = tmp_path_factory.mktemp("submitted"), tmp_path_factory.mktemp("graded")
    for student in STUDENTS:
        submit(submissions, student, ASSIGNMENT, insert_code_cell(solved(ASSIGNMENT), "setup", PROBE))
    result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=1")
    facts = {}
    for student in STUDENTS:
        notebook = nbformat.read(output / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
        text = "".join(o.get("text", "") for cell in notebook.cells if "FACTS" in cell.source for o in cell.outputs)
        facts[student] = json.loads(text.split("FACTS", 1)[1].splitlines()[0])
        facts[student]["figures"] = sum("image/png" in o.get("data", {}) for cell in notebook.cells if "FACTS" in cell.source
                                        for o in cell.outputs)
    return output, result, facts


def test_every_kernel_is_forked_from_the_zygote_and_scores_in_full(graded):
    output, result, facts = graded
    assert all(facts[student]["forked"] for student in STUDENTS), facts
    assert all(facts[student]["figures"] == 1 for student in STUDENTS)  # matplotlib's inline figures reach the notebook
    full = {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv")}
    assert full["first"] == full["second"] > 0
    assert "forked from a zygote per worker" in result.stdout


def test_openmp_threads_sleep_while_they_wait(graded):
    # OpenMP reads it when torch loads it, in the zygote, whose sandbox starts with the same variables as the kernel's
    # (sandbox.sandbox_environment): spinning threads would burn a cell's CPU limit on a loaded machine.
    _, _, facts = graded
    assert all(facts[student]["omp_wait_policy"] == "PASSIVE" for student in STUDENTS)


def test_what_torch_imports_on_first_use_is_imported_once_in_the_zygote(graded):
    # A cell's first optimizer imports torch._dynamo (and sympy with it): a second of CPU in every kernel otherwise.
    _, _, facts = graded
    assert all(facts[student]["imported_already"] == ["torch._dynamo", "sympy"] for student in STUDENTS), facts


def test_a_forked_kernel_has_no_privilege_and_cannot_reach_the_zygote(graded):
    _, _, facts = graded
    for student in STUDENTS:
        seen = facts[student]
        assert seen["capabilities"] == 0
        assert not seen["socket_reachable"]
        # Its own pid namespace: the namespace's init (pid 1), the kernel and what the probe cell started.
        assert 1 in seen["processes"] and seen["me"] in seen["processes"] and len(seen["processes"]) <= 4, seen["processes"]
    if os.geteuid() == 0:
        uids = [facts[student]["uid"] for student in STUDENTS]
        assert all(uid >= sandbox.FIRST_UID for uid in uids) and uids[0] != uids[1]
        if isolation.available():
            assert all(f"{isolation.PARENT}/kernel-" in facts[student]["cgroup"] for student in STUDENTS)


def test_the_next_kernel_finds_nothing_an_earlier_one_left(graded):
    _, _, facts = graded
    later = facts["second"]
    assert not [name for name in later["tmp"] + later["shm"] if name.startswith("left-by-")]
    assert not [line for line in later["strays"] if LEFT_BEHIND in line]
    assert not [p for p in psutil.process_iter(["cmdline"]) if LEFT_BEHIND in " ".join(p.info["cmdline"] or [])]
