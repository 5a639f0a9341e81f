"""Grade a class on a Dask cluster: `make grade SCHEDULER=tcp://host:8786`.

Each submission is one Dask task. The worker that runs it grades the submission exactly as `make grade` grades a
class of one, in a scratch folder of its own with its own gradebook (grade.py, the same sandbox, hidden checks
and references), and sends back the graded notebook, the feedback and the scores. This process, the client, alone
writes the class's gradebook, its files and the fingerprints that make a run resumable: SQLite has one writer,
and a worker needs nothing of the class but the submission it grades.

The scheduler and the workers run from the same course checkout and environment, at the same path on every machine,
with autograder/ on their Python path (the scheduler unpickles the tasks too): `make dask-scheduler` and
`make dask-worker SCHEDULER=tcp://host:8786` start them so (README: "Grading on a cluster"). A worker that dies
mid-task has its task run on another; the scheduler gives up on a task after ALLOWED_FAILURES + 1 deaths (its setting
`distributed.scheduler.allowed-failures`, which make dask-scheduler sets), and that submission is graded 0 with a note.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALLOWED_FAILURES = 1  # so a submission that kills two workers is given up: tell the scheduler (README)
CONNECT_TIMEOUT_S = 30


def _die_with_parent() -> None:
    """In the grading subprocess: be killed when the worker dies, so a killed worker leaves no grading behind (Linux)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def ping() -> str:
    """A task that only answers: the client's check that the cluster can run this module's tasks."""
    return "ok"


def grade_on_worker(course: str, assignment: str, student: str, files: dict[str, bytes]) -> dict:
    """Runs on a Dask worker: grade one submission as a class of one; returns what the client records.

    {"failure": why it could not be graded or "", "grades": [[notebook, grade_id, auto_score]],
     "comments": [[notebook, name, auto_comment]], "autograded": {path: bytes}, "feedback": {path: bytes}, "log": str}
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dask-grading-") as scratch:
        work = Path(scratch)
        os.chmod(work, 0o755)  # graded kernels run under user ids of their own and must reach their folder
        folder = work / "submitted" / student / assignment
        for relative, content in files.items():
            target = folder / relative
            if not target.resolve().is_relative_to(folder.resolve()):
                continue  # the client sends the files of one folder; nothing may land outside it
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        output = work / "graded"
        command = [sys.executable, str(Path(course) / "autograder" / "grade.py"), "--submissions", str(work / "submitted"),
                   "--output", str(output), "--workers", "1", "--assignment", assignment]
        run = subprocess.run(command, cwd=course, capture_output=True, text=True, preexec_fn=_die_with_parent)
        log = (run.stdout + run.stderr)[-6000:]
        if run.returncode != 0:
            return {"failure": f"the grader on the worker stopped (exit status {run.returncode})", "log": log}
        return {"failure": _failure(output), "log": log, **_gradebook_rows(output, assignment, student),
                "autograded": _files(output / "autograded" / student / assignment),
                "feedback": _files(output / "feedback" / student / assignment)}


def _failure(output: Path) -> str:
    """Why the worker's run could not grade the submission ('' if it did), from its grades_by_test.csv."""
    import csv

    with (output / "grades_by_test.csv").open(newline="") as handle:
        notes = [row["note"].lstrip("'") for row in csv.DictReader(handle)]
    prefix = "submission not graded: "
    return notes[0].removeprefix(prefix) if notes and all(note.startswith(prefix) for note in notes) else ""


def _gradebook_rows(output: Path, assignment: str, student: str) -> dict:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{output / 'gradebook.db'}") as gradebook:
        try:
            notebooks = gradebook.find_submission(assignment, student).notebooks
        except MissingEntry:
            return {"grades": [], "comments": []}
        return {"grades": [[n.name, g.name, g.auto_score] for n in notebooks for g in n.grades],
                "comments": [[n.name, c.name, c.auto_comment] for n in notebooks for c in n.comments]}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()} if folder.is_dir() else {}


# The client ----------------------------------------------------------------------------------------------------

def connect(scheduler: str):
    """A Dask client of the scheduler, or a clear stop when it cannot be reached."""
    try:
        from distributed import Client
    except ImportError:
        raise SystemExit("Grading on a cluster needs dask's distributed package: run make setup (it is in requirements.txt).")
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise SystemExit(f"Could not reach the Dask scheduler at {scheduler} ({error}). Start one with `dask scheduler` and "
                         "workers with `dask worker <address> --nthreads 1` (README: Grading on a cluster).")


def submission_payload(submitted: Path, assignment: str, student: str) -> tuple[dict[str, bytes], list[str]]:
    """(the files of one submission folder the grader accepts, by relative path; what it refused, as grade.py says it)."""
    import collect

    files, refused = collect.submission_files(submitted / student / assignment)
    folder = submitted / student / assignment
    return {str(relative): (folder / relative).read_bytes() for relative in files}, refused


def record(api, output: Path, assignment: str, student: str, result: dict, refused: list[str]) -> None:
    """Write one worker's result into the class: graded notebook and feedback files, then the gradebook's scores."""
    import record as recording
    from nbgrader.api import Gradebook

    coursedir = api.coursedir
    for kind, directory in (("autograded", coursedir.autograded_directory), ("feedback", coursedir.feedback_directory)):
        folder = Path(coursedir.format_path(directory, student, assignment))
        if folder.exists():
            for path in folder.rglob("*"):
                if not path.is_symlink():  # a link is never followed
                    path.chmod(0o755 if path.is_dir() else 0o644)  # nbgrader leaves what it wrote read-only
            shutil.rmtree(folder)
        for relative, content in result[kind].items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    answers_file = output / ".grading" / assignment / f"{student}.answers.json"
    reviewed = recording.reviewed_answers(api, assignment, student) if answers_file.exists() else set()
    with Gradebook(coursedir.db_url) as gradebook:
        gradebook.update_or_create_submission(assignment, student)
        for notebook, grade_id, auto_score in result["grades"]:
            entry = gradebook.find_grade(grade_id, notebook, assignment, student)
            entry.auto_score = auto_score
            entry.needs_manual_grade = entry.manual_score is not None or auto_score is None  # as nbgrader's autograde sets it
        for notebook, name, auto_comment in result["comments"]:
            gradebook.find_comment(name, notebook, assignment, student).auto_comment = auto_comment
        gradebook.db.commit()
    if refused:
        recording.note_refused_files(api, assignment, student, refused)
    recording.keep_reviewed_answers(api, assignment, student, reviewed, answers_file)


def grade_on_cluster(config, api, todo: list[tuple[str, str]], prints: dict) -> dict:
    """Grade `todo` as tasks on config.scheduler's cluster; record each result as it arrives; returns {(assignment, student): failure reason}."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    import collect

    scheduler, submitted, output = config.scheduler, config.submissions, config.output
    client = connect(scheduler)
    try:
        client.submit(ping, pure=False).result(timeout=CONNECT_TIMEOUT_S * 4)
    except Exception as error:
        client.close()
        raise SystemExit(f"The Dask cluster at {scheduler} cannot run the grader's tasks ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}). Start the scheduler with make dask-scheduler and "
                         "each worker with make dask-worker SCHEDULER=..., from this course's checkout at the same path "
                         "(they need autograder/ on their Python path), and at least one worker.")
    workers = len(client.scheduler_info().get("workers", {}))
    print(f"Dask scheduler {scheduler}: {workers} workers.", flush=True)
    course = str(HERE.parent)
    failures, jobs = {}, {}
    try:
        for assignment, student in todo:
            files, refused = submission_payload(submitted, assignment, student)
            key = f"grade-{assignment}-{hashlib.sha256(student.encode()).hexdigest()[:16]}-{time.time_ns()}"
            job = client.submit(grade_on_worker, course, assignment, student, files, key=key, pure=False, retries=0)
            jobs[job] = (assignment, student, refused, time.monotonic())
        for number, job in enumerate(as_completed(list(jobs)), 1):
            assignment, student, refused, started = jobs[job]
            try:
                result = job.result()
                reason = result["failure"]
                if not reason and not result["autograded"]:
                    reason = "the worker returned no graded notebook"
            except KilledWorker:
                reason = (f"grading this submission stopped {ALLOWED_FAILURES + 1} grading workers (a kernel that used up the "
                          f"machine's memory, for instance); it was not graded")
                result = None
            except (FutureCancelledError, OSError) as error:
                reason, result = f"the cluster lost this task ({type(error).__name__}); run make grade again to retry it", None
            except Exception as error:  # a grader bug on the worker: this submission only
                reason, result = f"grader error on the worker: {error!r}", None
            try:
                if not reason:
                    record(api, output, assignment, student, result, refused)
            except Exception as error:
                reason = f"grader error while recording: {error!r}"
            if reason:
                failures[(assignment, student)] = reason
                zero(api, assignment, student)
            else:
                done = collect.marker(output, assignment, student)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(prints[(assignment, student)])
            status = f"FAILED: {reason}" if reason else "ok"
            print(f"[{number}/{len(todo)}] {assignment} / {student}: {status} ({time.monotonic() - started:.1f} s)", flush=True)
    finally:
        client.close()
    return failures


def zero(api, assignment: str, student: str) -> None:
    """A submission the cluster could not grade: in the gradebook, with every automatic score 0 (grades.csv says 0 too)."""
    import record
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        gradebook.update_or_create_submission(assignment, student)
    record.withhold_all_points(api, assignment, student)

