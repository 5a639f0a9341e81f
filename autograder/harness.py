"""The clean second pass: hidden checks run where the student's code cannot see or forge them.

The student's kernel runs the whole notebook for its outputs and feedback, but anything there can be
subverted: a cell can register IPython hooks that re-run or rewrite later cells, swallow errors, read the
test code as it runs, or write into the hidden-check outbox. So a test cell earns its points only when its
hidden checks pass here too: in a plain Python process (no IPython, so no hooks), sandboxed like the kernel
(sandbox.py --harness), which runs the submission's answer cells, the course's own given cells and the
test cells from the source notebook (visible and hidden checks), and, of the course's other cells, those
that define something a later cell uses. Cells the student added are not run here.

One harness process per grading worker (harness_zygote.py) imports torch once and forks a fresh child per
submission, so the second pass costs the cells' own time, not another interpreter start.
"""

from __future__ import annotations

import ast
import builtins
import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from shared import grading_contract as contract

HERE = Path(__file__).resolve().parent
STARTUP_SECONDS = 600  # importing torch on a machine under load


def cell_kind(cell) -> str:
    """'solution', 'test', 'given' (locked course code), 'course' (unlocked course code) or 'markdown'."""
    info = cell.metadata.get("nbgrader", {})
    if cell.cell_type != "code":
        return "markdown"
    if info.get("solution"):
        return "solution"
    if info.get("grade"):
        return "test"
    return "given" if info.get("locked") else "course"


def python_source(source: str) -> str:
    """A cell's source as plain Python (IPython's magics and shell escapes become calls that do nothing here)."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # leave it: compiling it reports the error in this cell alone
        return source


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names a cell binds at its top level, names it reads anywhere)."""
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return bound, read


@functools.cache
def course_plan(source_notebook: Path) -> tuple[tuple[str, str, str], ...]:
    """((kind, grade_id or cell id, source)) of the source notebook's code cells the second pass runs, in order.

    The course's unlocked cells (training, plots) are kept only when a later cell reads a name they bind.
    """
    import nbformat

    cells = [c for c in nbformat.read(source_notebook, as_version=4).cells if cell_kind(c) != "markdown"]
    plan, needed = [], set()
    for cell in reversed(cells):
        kind, source = cell_kind(cell), python_source(cell.source)
        try:
            bound, read = _names(ast.parse(source))
        except SyntaxError:
            bound, read = set(), set()
        if kind == "course" and not bound & needed:
            continue
        needed |= read
        name = cell.metadata.get("nbgrader", {}).get("grade_id") or cell.get("id") or f"cell-{len(plan)}"
        plan.append((kind, name, source))
    return tuple(reversed(plan))


def clean_run_cells(source_notebook: Path, submitted_notebook: Path) -> list[dict]:
    """The cells of one submission's second pass: its answers in the course's cells, in the source's order."""
    import nbformat

    answers = {}
    for cell in nbformat.read(submitted_notebook, as_version=4).cells:
        info = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and info.get("solution") and info.get("grade_id"):
            answers.setdefault(info["grade_id"], python_source(cell.source))
    return [{"kind": kind, "grade_id": name, "source": answers.get(name, "") if kind == "solution" else source}
            for kind, name, source in course_plan(source_notebook)]


class Launched:
    """A zygote's process, launched by one grading process and used by it or by a worker forked from it later.

    Only the process that launched it may wait for it (elsewhere Popen takes it for ended), so whether it has ended is
    asked of a pidfd, which any process holding it can ask (on Linux; elsewhere of Popen, in the launcher itself).
    """

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.exit = os.pidfd_open(popen.pid) if hasattr(os, "pidfd_open") else None  # readable once the process has ended

    def ended(self) -> bool:
        if self.exit is None:
            return self.popen.poll() is not None
        ready, _, _ = select.select([self.exit], [], [], 0)
        return bool(ready)

    def kill(self, group: bool = False) -> None:
        """End it (`group`: with the process group it leads), and let go of it."""
        try:
            if group:
                os.killpg(self.popen.pid, signal.SIGKILL)
            elif self.exit is not None:  # Popen.kill signals nothing where Popen takes the process for ended
                signal.pidfd_send_signal(self.exit, signal.SIGKILL)
            else:
                self.popen.kill()
        except OSError:
            pass
        self.popen.wait()  # in a worker forked after the launch, at once: its launcher collects it
        self.let_go()

    def let_go(self) -> None:
        """Close this process's ends of its pipes and of its pidfd (the process itself goes on)."""
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        if self.exit is not None:
            os.close(self.exit)
            self.exit = None


class Harness:
    """A worker's sandboxed zygote (harness_zygote.py), launched ahead (Seat) or on first use, again after any trouble."""

    def __init__(self, root: Path, cpus: float, sandboxed: bool, rules: dict[str, list[str]], *, output: Path,
                 memory_mb: int = 4096, environment: dict[str, str] | None = None):
        """`rules`: the from-scratch rule of every assignment, {"<assignment>/<answer grade_id>": [forbidden built-ins]};
        `output`: the grading output `root` is in; `environment`: variables the zygote starts with, on top of ours."""
        self.root, self.cpus, self.sandboxed, self.rules = root, cpus, sandboxed, rules
        self.output, self.memory_mb, self.environment = output, memory_mb, environment or {}
        self.process: Launched | None = None
        self.ready = False
        self.jobs = itertools.count(1)

    def ensure_started(self) -> None:
        """Have the zygote running and ready, launching it if need be (RuntimeError if it cannot start)."""
        if self.process is None or self.process.ended():
            self.launch()
        if not self.ready:
            self.ready = self._reply(STARTUP_SECONDS) == {"ready": True}
            if not self.ready:
                self.close()
                raise RuntimeError("the clean second pass could not start")

    def launch(self) -> None:
        """Start the zygote, without waiting for it to be ready (ensure_started waits)."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        if self.sandboxed:
            command = [sys.executable, str(HERE / "sandbox.py"), "--harness", str(self.root), "--cpus", str(self.cpus),
                       "--memory-mb", str(self.memory_mb), "--output", str(self.output)]
        else:  # no bubblewrap: as unprotected as the kernel, but still without IPython and from the course's cells
            command = [sys.executable, "-I", "-B", str(HERE / "harness_zygote.py")]
        self.process = Launched(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                 cwd=self.root, text=True, bufsize=1, start_new_session=True,
                                                 env={**os.environ, **self.environment}))
        self.ready = False
        self.process.popen.stdin.write(json.dumps({"guard": self.rules}) + "\n")
        self.process.popen.stdin.flush()

    def _reply(self, seconds: float) -> dict | None:
        """The zygote's next line, or None if it says nothing valid within `seconds`."""
        out = self.process.popen.stdout
        ready, _, _ = select.select([out], [], [], seconds)
        line = out.readline() if ready else ""
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def _user(self) -> int | None:
        """The user id the zygote runs as when grading as root (sandbox.py gives it FIRST_UID + its launcher's pid)."""
        import sandbox

        return sandbox.FIRST_UID + self.process.popen.pid if self.sandboxed and os.geteuid() == 0 else None

    def start(self, assignment: str, cells: list[dict], files: Path, limits: dict) -> dict:
        """Start running `cells` in a fresh child, in a copy of the regular files of `files`; returns the job, for finish().

        The job's folder holds `outbox/` (the hidden-check values) and `report.json` (each cell's status). The child runs
        while the grader does other work (nbgrader running the student's kernel): finish() waits for it.
        """
        self.ensure_started()
        number = next(self.jobs)
        folder = self.root / f"job-{number}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "outbox").mkdir(parents=True)
        for entry in files.iterdir():
            if entry.is_file() and not entry.is_symlink() and entry.suffix != ".ipynb":
                shutil.copyfile(entry, folder / entry.name)
        uid = self._user()
        if uid is not None:
            for path in [folder, *folder.iterdir(), *(folder / "outbox").iterdir()]:
                os.chown(path, uid, uid, follow_symlinks=False)
        job = {"id": number, "folder": str(folder), "report": str(folder / "report.json"), "cells": cells,
               "environment": {contract.OUTBOX: str(folder / "outbox"), contract.GRADING_EXECUTION: "autograde"},
               "assignment": assignment, "forbidden": {key.split("/", 1)[1]: names for key, names in self.rules.items()
                                                        if key.startswith(assignment + "/")}, **limits}
        try:
            self.process.popen.stdin.write(json.dumps(job) + "\n")
            self.process.popen.stdin.flush()
            job["sent"] = time.monotonic()
        except OSError:
            self.close()
        return job

    def finish(self, job: dict) -> tuple[Path, str]:
        """Wait for a started job; returns (the job's folder, how its child ended)."""
        folder = Path(job["folder"])
        if "sent" not in job or self.process is None:
            return folder, "the second pass stopped"
        reply = self._reply(max(0.0, job["sent"] + job["wall_seconds"] + 60 - time.monotonic()))
        if reply is None or reply.get("job") != job["id"]:
            self.close()
            return folder, f"the second pass stopped after {time.monotonic() - job['sent']:.0f} s"
        if not reply.get("clean"):
            self.close()  # something it could not wipe: the next submission gets a fresh sandbox
        return folder, reply["ended"]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill(group=True)
            self.process = None
        self.ready = False


MAX_REPORT_BYTES = 1_000_000
# Errors a note may name. The report is the child's: anything it says beyond a known name could be words the
# student's code hid there (say, hidden test code read from its own stack), meant for the feedback page.
KNOWN_ERRORS = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)}
KNOWN_ERRORS |= {"CheckFailed", "CellLimit", "FromScratchViolation"}


def error_summary(status: str, forbidden: dict[str, list[str]]) -> str:
    """What a note may say of a cell's error in the second pass: a known error's name, with the built-ins named in it."""
    name = status.split(":", 1)[0].strip()
    if name not in KNOWN_ERRORS:
        return "an error"
    if name == "FromScratchViolation":
        used = sorted({built_in for names in forbidden.values() for built_in in names if re.search(re.escape(built_in) + r"\b", status)})
        return f"{name} (it calls {', '.join(used)}, which the exercise asks you to write yourself)" if used else name
    return name


def read_report(path: Path) -> dict:
    """The child's report.json ({"cells": [...], "violations": [...]}), read without following a link; {} if unusable."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(handle, "rb") as stream:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return {}
        try:
            report = json.loads(stream.read(MAX_REPORT_BYTES).decode("utf-8", "replace"))
        except ValueError:
            return {}
    cells = report.get("cells") if isinstance(report, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) and all(isinstance(v, str) for v in c.values()) for c in cells):
        return {}
    return {"cells": [{key: value[:300] for key, value in cell.items()} for cell in cells]}


def remove(folder: Path) -> None:
    """Delete a job's folder, whatever modes its child left on it."""
    def writable_again(function, path, _):
        os.chmod(os.path.dirname(path), 0o700)
        function(path)

    if folder.exists():
        shutil.rmtree(folder, onerror=writable_again)


def run_limits(cpu_time_limit: float, wall_time_limit: float, notebook_time_limit: float) -> dict:
    """The job limits of a second pass, from the kernel's: the same per cell, and the notebook's budget in all."""
    return {"cell_cpu_seconds": cpu_time_limit, "cell_wall_seconds": wall_time_limit,
            "cpu_seconds": notebook_time_limit, "wall_seconds": notebook_time_limit}
