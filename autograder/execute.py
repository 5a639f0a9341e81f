"""Stages 2 and 3, execute and score: run each submission with nbgrader in the sandbox while its clean second pass runs
its answers with the hidden checks, then score those checks (scoring.py) and record the outcome (record.py).

A `Worker` is one grading process's state: its nbgrader API, its kernel zygote and its second pass. The driver
(grade.py) launches each worker's zygotes first, as a `Seat`, so that their interpreters start while it imports
nbgrader and torch on one core; it forks the workers after `preload`, and each takes a seat and makes its Worker once,
from the run configuration it is handed.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import collect
import harness
import record
import scoring
from feedback import feedback_converter_class, generate_feedback
from run_config import RunConfig, set_course_directories, set_time_limits

HERE = Path(__file__).resolve().parent
ZYGOTE_STARTUP_SECONDS = 600  # importing torch on a machine under load
FORKED_WORKERS = sys.platform == "linux"  # elsewhere (macOS) workers are spawned: its system libraries are not safe to fork


def load_api(config: RunConfig, seat: str = "driver"):
    """An NbGraderAPI configured by autograder/nbgrader_config.py, pointed at this run's folders, limits and kernels
    (those of the worker in `seat`)."""
    leave_out_iri_grammar()
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    c = PyFileConfigLoader("nbgrader_config.py", path=str(HERE)).load_config()
    set_course_directories(c, config.output, config.submissions)
    set_time_limits(c, config.cell_timeout, config.notebook_timeout)
    # Once the last cell has run, every output and hidden-check value is in: stop the kernel at once.
    # A graceful shutdown waits a second per submission for the kernel's exit hooks, with the core idle.
    c.Execute.shutdown_kernel = "immediate"
    c.ResilientExecute.kernel_environment = config.kernel_environment
    if config.sandboxed:
        c.Execute.kernel_name = config.kernel_name
        c.ResilientExecute.kernel_dirs = [str(config.kernels_dir)]
        # The sandbox has no network, so the kernel talks to nbgrader over Unix sockets instead of TCP. An absolute
        # socket prefix (a relative one resolves differently for kernel and client), in a folder per grading process:
        # the sandbox lets the kernel write there and nowhere else in the runtime folder.
        sockets = sockets_folder(config, seat)
        sockets.mkdir(exist_ok=True)
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = str(sockets / "kernel")
        c.ResilientExecute.connection_dir = str(config.runtime_dir)
    return NbGraderAPI(config=c)


def leave_out_iri_grammar() -> None:
    """Have jsonschema, which nbgrader imports through nbformat, skip the optional rfc3987_syntax package.

    Importing it compiles an IRI grammar (0.9 s of CPU here, 3 s on a loaded machine: half of nbgrader's import, on the
    driver's serial start) for jsonschema's "iri" format check, which nothing in grading uses (nbformat validates no
    formats). A module marked absent in sys.modules is one jsonschema's optional import goes without."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)


def sockets_folder(config: RunConfig, seat: str) -> Path:
    """The folder for the sockets of the sandboxed kernels of the worker in `seat`."""
    return config.runtime_dir / f"sockets-{seat}"


def create_gradebook(db_url: str) -> None:
    """Make the gradebook at `db_url`, unless it has tables, exactly as nbgrader's Gradebook makes it on first use.

    nbgrader asks a separate `alembic heads` process for the schema version to stamp it with: a Python start and the
    import of nbgrader again, seconds before the first submission. Alembic reads the same version in this process.
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.api import Base
    from nbgrader.dbutil import ALEMBIC_DIR
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(db_url, future=True)
    try:
        if inspect(engine).get_table_names():
            return
        alembic = Config()
        alembic.set_main_option("script_location", ALEMBIC_DIR)
        version = ScriptDirectory.from_config(alembic).get_current_head()
        Base.metadata.create_all(bind=engine)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:version)"), {"version": version})
    finally:
        engine.dispose()


def register_assignment(api, assignment: str) -> None:
    """Record the assignment's graded cells in the gradebook without touching notebooks/."""
    from nbgrader.utils import temp_attrs

    with tempfile.TemporaryDirectory() as scratch, temp_attrs(api.coursedir, release_directory=scratch):
        result = api.generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise SystemExit(f"Could not register assignment {assignment} from solutions/:\n{result.get('log', '')}\n{result.get('error', '')}")


def register_students(api, students: list[str]) -> None:
    """Create every student in the gradebook up front: parallel workers creating one student race."""
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        for student in students:
            gradebook.update_or_create_student(student)


def prepare_sandbox(config: RunConfig) -> RunConfig:
    """The configuration with kernels routed through sandbox.py when bubblewrap is here and wanted; else unchanged.

    Writes the sandbox's kernelspec under the grading output and makes the short runtime folder its sockets need.
    """
    if not config.sandbox_wanted or config.scheduler or not shutil.which("bwrap"):
        return config  # on a cluster, each worker's own grader decides
    import sandbox

    failure = sandbox.sandbox_failure()
    if failure:
        raise SystemExit(f"bubblewrap is installed but cannot start a sandbox on this machine: {failure}\n"
                         "Grading stopped before any kernel ran, so no grade was touched. In a container, bwrap needs user "
                         "namespaces (or, as root, permission to create mount namespaces). To grade without the sandbox "
                         "(students' kernels could then read autograder/references/), run with GRADING_SANDBOX=0.")
    sandboxed = replace(config, sandboxed=True)
    kernels = sandboxed.kernels_dir / sandboxed.kernel_name
    kernels.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, str(HERE / "sandbox.py"), "--cpus", str(config.kernel_threads), "--memory-mb",
                     str(config.memory_mb), "--output", str(config.output), "{connection_file}"],
            "display_name": "Python 3 (grading sandbox)", "language": "python", "interrupt_mode": "message"}
    (kernels / "kernel.json").write_text(json.dumps(spec, indent=1))
    # Unix socket paths must stay under ~100 characters: a short folder in /tmp.
    runtime = Path(tempfile.mkdtemp(prefix="grading-"))
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)  # forked workers leave through os._exit: only this process
    return replace(sandboxed, runtime_dir=runtime)


class KernelZygote:
    """A worker's kernel zygote (kernel_zygote.py, in its sandbox): launched with its seat, again whenever it has died."""

    def __init__(self, config: RunConfig, slot: Path, seat: str):
        self.config, self.slot, self.seat = config, slot, seat
        self.folder = config.runtime_dir / f"zygote-{seat}"  # its socket: a short path, out of every kernel's reach
        self.process: harness.Launched | None = None
        self.ready = False

    def folder_if_ready(self) -> str:
        """The folder launchers find it in (sandbox.py --zygote), once it is ready (started if need be); '' if it
        cannot start, and kernels then start on their own."""
        if self.process is None or self.process.ended():
            self.launch()
        if not self.ready:
            out = self.process.popen.stdout
            ready, _, _ = select.select([out], [], [], ZYGOTE_STARTUP_SECONDS)
            self.ready = bool(ready) and out.readline() == b"ready\n"
            if not self.ready:
                self.stop()
        return str(self.folder) if self.ready else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def launch(self) -> None:
        """Start it, without waiting for it to be ready (folder_if_ready waits)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o700)
        self.slot.mkdir(parents=True, exist_ok=True)
        sockets = sockets_folder(self.config, self.seat)
        sockets.mkdir(exist_ok=True)
        command = [sys.executable, str(HERE / "sandbox.py"), "--kernel-zygote", str(self.folder), "--scratch", str(self.slot),
                   "--sockets", str(sockets), "--output", str(self.config.output), "--memory-mb", str(self.config.memory_mb)]
        self.process = harness.Launched(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                         stderr=subprocess.DEVNULL, env={**os.environ, **self.config.kernel_environment}))
        self.ready = False


class Seat:
    """What one grading worker works with besides nbgrader: the folder its kernels work in (the one folder of
    submissions its zygote sees), its kernel zygote (None when kernels start afresh) and its clean second pass.

    The driver launches every worker's seat before it imports nbgrader and torch, so that the zygotes' own imports run
    on the core the driver leaves idle; each worker, forked later, takes one seat and lets go of the others.
    """

    def __init__(self, config: RunConfig, name: str):
        self.name = name
        self.slot = config.grading_dir / "scratch" / name
        self.zygote = KernelZygote(config, self.slot, name) if config.sandboxed and config.kernel_zygote else None
        rules = {f"{assignment}/{grade_id}": names for assignment in collect.course_assignments()
                 for grade_id, names in collect.from_scratch_rules(assignment).items()}
        self.harness = harness.Harness(config.grading_dir / "harness" / name, float(config.kernel_threads), config.sandboxed,
                                       rules, output=config.output, memory_mb=config.memory_mb,
                                       environment=config.kernel_environment)

    def launch(self) -> "Seat":
        """Start both zygotes, without waiting for them (each waits when it is first needed)."""
        if self.zygote is not None:
            self.zygote.launch()
        self.harness.launch()
        return self

    def let_go(self) -> None:
        """In a worker that took another seat: close this one's pipes, which only its own worker reads and writes."""
        for launched in (self.zygote and self.zygote.process, self.harness.process):
            if launched is not None:
                launched.let_go()

    def stop(self) -> None:
        """End both zygotes, and what they started."""
        if self.zygote is not None:
            self.zygote.stop()
        self.harness.close()


def launch_seats(config: RunConfig, count: int) -> list[Seat]:
    """The seats of `count` local workers, their zygotes starting; none for a cluster run (each worker has its own
    grader) or where workers are not forked (a spawned worker cannot inherit a seat, and launches its own)."""
    if config.scheduler or not FORKED_WORKERS:
        return []
    (config.grading_dir / "scratch").mkdir(parents=True, exist_ok=True)
    return [Seat(config, f"worker-{index}").launch() for index in range(count)]


class Worker:
    """One grading process: its nbgrader API and its seat (kernel zygote and clean second pass), for every submission
    it grades."""

    def __init__(self, config: RunConfig):
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's gradebook trips SQLAlchemy's autoflush warnings
        import torch

        torch.set_num_threads(config.kernel_threads)  # this process's own tensor work (scoring) shares the cores too
        self.config = config
        self.seat: Seat | None = None

    def take(self, seat: Seat | None) -> None:
        """Grade in `seat` (None: in a seat of its own, launched now), its second pass ready before the first submission."""
        self.seat = seat or Seat(self.config, f"worker-{os.getpid()}").launch()
        self.api = load_api(self.config, self.seat.name)
        self.slot, self.zygote, self.harness = self.seat.slot, self.seat.zygote, self.seat.harness
        try:
            self.harness.ensure_started()
        except (RuntimeError, OSError):  # tried again for the first submission, which reports it if it fails again
            pass

    def grade_one(self, assignment: str, student: str) -> tuple[str, str, str, float]:
        """Autograde one submission and write its feedback; returns (assignment, student, failure reason or '', seconds)."""
        started = time.monotonic()
        if self.seat is None:
            self.take(None)
        try:
            reason = self.autograde_and_score(assignment, student)
        except Exception as error:  # a grader bug must not stop the class: report it on this submission
            reason = f"grader error: {error!r}"
        if reason:
            try:
                record.withhold_all_points(self.api, assignment, student)
            except Exception:  # no gradebook entry to zero: grades.csv says 0 anyway
                pass
        return assignment, student, reason, time.monotonic() - started

    def autograde_and_score(self, assignment: str, student: str) -> str:
        """The stages of grading one submission: stage a safe copy, autograde it, score its hidden checks, write feedback.

        Returns why it could not be graded, or ''.
        """
        from nbgrader.utils import temp_attrs

        api, grading = self.api, self.config.grading_dir
        scratch = self.slot / assignment / student  # the kernel's working folder (sandbox.py)
        self.slot.mkdir(parents=True, exist_ok=True)
        for left in self.slot.iterdir():  # the slot's kernels see it whole: only this submission may be there
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
        scratch.mkdir(parents=True)
        answers_file = grading / assignment / f"{student}.answers.json"
        reviewed = record.reviewed_answers(api, assignment, student) if answers_file.exists() else set()
        refused = collect.stage_submission(self.config.submissions, grading / "staged", assignment, student)
        staged = grading / "staged" / student / assignment
        if not (staged / f"{assignment}.ipynb").is_file():
            why = next((note for note in refused if note.startswith((f"{assignment}.ipynb ", assignment + " "))), "")
            return f"no notebook {assignment}.ipynb to grade" + (f": {why}" if why else "")
        # The second pass runs while nbgrader runs the kernel: each fills the other's waits.
        second = self.start_second_pass(assignment, staged)
        api.config.ResilientExecute.sandbox_scratch = str(scratch) if self.config.sandboxed else ""
        api.config.ResilientExecute.kernel_zygote = self.zygote.folder_if_ready() if self.zygote else ""
        with temp_attrs(api.coursedir, submitted_directory=str(grading / "staged")):
            result = api.autograde(assignment, student, force=True, create=True)
        verdicts = self.finish_second_pass(assignment, second)
        shutil.rmtree(scratch, ignore_errors=True)  # what the kernel wrote is not kept, nor shown in feedback
        if not result["success"]:
            return record.first_error_line(result.get("error", "") + "\n" + result.get("log", ""))
        if refused:
            record.note_refused_files(api, assignment, student, refused)
        record.grant_points(api, assignment, student, verdicts)
        shutil.rmtree(staged, ignore_errors=True)  # graded: the copy is not needed again
        record.keep_reviewed_answers(api, assignment, student, reviewed, answers_file)
        feedback = generate_feedback(api, assignment, student)
        return "" if feedback["success"] else "feedback failed: " + record.first_error_line(feedback.get("error", ""))

    def start_second_pass(self, assignment: str, submission: Path) -> dict:
        """Start running the submission's answers with the course's test cells in the clean harness (harness.py)."""
        limits = self.api.config.ResilientExecute
        cells = harness.clean_run_cells(HERE.parent / "solutions" / assignment / f"{assignment}.ipynb", submission / f"{assignment}.ipynb")
        return self.harness.start(assignment, cells, submission, harness.run_limits(limits.cpu_time_limit, limits.wall_time_limit, limits.notebook_time_limit))

    def finish_second_pass(self, assignment: str, job: dict) -> dict[str, str | None]:
        """Wait for the second pass and score what its hidden checks sent: {test cell grade_id: None if all passed, else why not}."""
        folder, ended = self.harness.finish(job)
        try:
            verdicts = scoring.hidden_check_verdicts(assignment, folder / "outbox")
            report = harness.read_report(folder / "report.json")
        finally:
            harness.remove(folder)
        forbidden = collect.from_scratch_rules(assignment)
        raised = {cell["grade_id"]: harness.error_summary(cell["status"], forbidden) for cell in report.get("cells", [])
                  if cell.get("kind") == "test" and cell.get("status") != "ok"}
        for grade_id, note in verdicts.items():
            if note and grade_id in raised:  # the cell's error in the grading run says more (a from-scratch violation, ...)
                verdicts[grade_id] = f"{note}; in the grading run the cell raised {raised[grade_id]}"
            elif note and ended != "ended":
                verdicts[grade_id] = f"{note} (the grading run of the answers {ended})"
        return verdicts


@functools.cache
def worker(config: RunConfig) -> Worker:
    """This process's Worker for `config`."""
    return Worker(config)


def start_worker(config: RunConfig, seats: list[Seat], taken) -> None:
    """A pool's initializer: make this process's Worker in the next seat of `seats` that no worker has taken (`taken`,
    a shared count), letting go of the others; past the last seat, in a seat of its own."""
    with taken.get_lock():
        mine = seats[taken.value] if taken.value < len(seats) else None
        taken.value += 1
    for seat in seats:
        if seat is not mine:
            seat.let_go()
    worker(config).take(mine)


def grade_one(config: RunConfig, assignment: str, student: str) -> tuple[str, str, str, float]:
    """A pool job: grade one submission in this worker process."""
    return worker(config).grade_one(assignment, student)


def preload(assignments: list[str]) -> None:
    """Import in this process what every worker needs, so workers forked from it start with it loaded."""
    import torch  # noqa: F401
    from shared import checks  # noqa: F401

    for assignment in assignments:
        try:
            scoring.hidden_references(assignment)
        except Exception:  # missing or damaged: each submission reports it when it is scored
            pass
    feedback_converter_class()


def start_workers(config: RunConfig, count: int, seats: list[Seat]) -> ProcessPoolExecutor:
    """`count` worker processes, started now, each with its Worker made in one of `seats` (launch_seats) or, past
    those, in a seat of its own; on Linux forked, so they share what `preload` loaded."""
    context = multiprocessing.get_context("fork" if FORKED_WORKERS else "spawn")
    taken = context.Value("i", 0)  # how many of the seats the workers have taken
    pool = ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=start_worker, initargs=(config, seats, taken))
    for _ in range(count):
        pool.submit(int)  # a no-op job makes the pool start a process
    return pool


def grade(pool: ProcessPoolExecutor, config: RunConfig, todo: list[tuple[str, str]], prints: dict,
          when_draining: Callable[[], None] = lambda: None) -> dict[tuple[str, str], str]:
    """Grade `todo` in the pool's workers; returns {(assignment, student): failure reason}. `when_draining` is called
    once, as soon as fewer submissions are left than there are workers (a core is then idle until the run ends)."""
    failures = {}
    jobs = [pool.submit(grade_one, config, assignment, student) for assignment, student in todo]
    workers = min(config.workers, len(todo))  # as many as the pool has (start_workers)
    if workers < 2:
        workers = 0  # one worker leaves no core idle before the end: nothing to call early
    for number, job in enumerate(as_completed(jobs), 1):
        if workers and len(todo) - number == workers - 1:
            when_draining()
        assignment, student, reason, seconds = job.result()
        if reason:
            failures[(assignment, student)] = reason
        else:
            done = collect.marker(config.output, assignment, student)
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(prints[(assignment, student)])
        status = f"FAILED: {reason}" if reason else "ok"
        print(f"[{number}/{len(todo)}] {assignment} / {student}: {status} ({seconds:.1f} s)", flush=True)
    return failures


def isolation_in_force(config: RunConfig) -> str:
    """One line for the run summary: what separates a student's kernel from the grader and from classmates."""
    import isolation
    import sandbox

    if not config.sandboxed:
        return "none (no bubblewrap): kernels run as this user, with the per-cell time limit only"
    parts = ["bubblewrap sandbox (no network, own process tree, instructor's folders hidden)"]
    if os.geteuid() == 0:
        parts.append("a user id per kernel")
        groups = isolation.available()
        limits = f"{config.kernel_threads} CPU, {config.memory_mb} MiB, {sandbox.EXTRA_PROCESSES} processes in all"
        parts.append(f"a {groups} group per kernel ({limits})" if groups else "no cgroups on this machine: memory and processes limited per process")
    else:
        parts.append("user nobody in a user namespace; no cgroups without root: memory and processes limited per process")
    parts.append(f"kernels at nice {sandbox.KERNEL_NICENESS}, every process a cell leaves running killed when it ends")
    if config.kernel_zygote:
        parts.append("each kernel forked from a zygote per worker (torch already imported) into a pid namespace of its own")
    return "; ".join(parts)
