"""Autograde every submission with nbgrader, then write grades.csv, grades_by_test.csv and feedback.

Run through `make grade` (optionally SUBMISSIONS=dir, GRADING_OUTPUT=dir). Submissions follow
nbgrader's layout, <submissions>/<student>/<assignment>/<notebook>.ipynb. Each submission is
graded on its own: one that cannot be graded (invalid JSON, ...) gets 0 with the reason written
down, and the run goes on.

Hidden checks are scored here, never in the student's kernel, which does not even receive them: while
nbgrader runs a submission's notebook for its outputs and visible checks, a clean second pass
(harness.py) runs its answers with the course's test cells, and its hidden checks only write their
values to an outbox folder. scoring.py compares them with autograder/references/<assignment>.pt and
gives 0 to every test cell with a hidden check that failed or never ran
(autograder/references/<assignment>.cells.json maps checks to cells).

Submissions are graded by --workers processes at once, all writing to nbgrader's one SQLite
gradebook. A later run skips submissions whose fingerprint is unchanged, so an interrupted run picks
up where it stopped, and a rerun gives the same grades; --force regrades all.

This file is the driver; each stage is a module with one job, and all of them take the one RunConfig
(run_config.py) made here:
  collect.py   which submissions there are, a safe copy of each, and which are already graded
  execute.py   nbgrader in the sandbox and the clean second pass, in worker processes (or cluster.py)
  scoring.py   the hidden checks, scored outside every kernel
  record.py    scores and notes into the gradebook and the autograded notebook
  feedback.py  feedback pages
  export.py    grades.csv and grades_by_test.csv (then reports.py: the course reports)
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the stage modules, when grade.py is imported rather than run

import collect  # noqa: E402
import execute  # noqa: E402
from export import export  # noqa: E402
from feedback import refresh_feedback  # noqa: E402
from run_config import RunConfig, parse_arguments  # noqa: E402


def select_submissions(config: RunConfig) -> list[tuple[str, str]]:
    """The (assignment, student) pairs to consider: those asked for, of assignments the course has."""
    pairs = [pair for pair in collect.find_submissions(config.submissions) if not config.assignments or pair[0] in config.assignments]
    known = set(collect.course_assignments())
    unknown = sorted({assignment for assignment, _ in pairs} - known)
    if unknown:
        print(f"Skipping folders that are not assignments in solutions/: {', '.join(unknown)}", file=sys.stderr)
    return [pair for pair in pairs if pair[0] in known]


def grade_submissions(config: RunConfig, api, pairs: list[tuple[str, str]], todo: list[tuple[str, str]], prints: dict,
                      seats: list) -> dict:
    """Register what the gradebook needs, then grade `todo` in local workers (in `seats`) or on the cluster; returns the
    failures."""
    assignments = sorted({assignment for assignment, _ in todo})
    pool = None
    try:
        # Registered while the zygotes still start on the other core; each step closes its gradebook connection, so
        # the workers forked next inherit none.
        execute.create_gradebook(api.coursedir.db_url)
        for assignment in assignments:
            execute.register_assignment(api, assignment)
        execute.register_students(api, sorted({student for _, student in pairs}))
        if todo and not config.scheduler:
            execute.preload(assignments)
            pool = execute.start_workers(config, min(config.workers, len(todo)), seats)
        if config.scheduler and todo:
            import cluster

            return cluster.grade_on_cluster(config, api, todo, prints)
        return execute.grade(pool, config, todo, prints, when_draining=import_reports_aside) if pool is not None else {}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def import_reports_aside() -> None:
    """Import the course reports' libraries (pandas, matplotlib: most of a second) in a thread, on the core that the last
    submissions leave idle, rather than after the run. A failure here is left for write_reports to report."""
    def load() -> None:
        try:
            import reports  # noqa: F401
            from matplotlib.backends import backend_agg  # noqa: F401
            from matplotlib import figure  # noqa: F401
        except Exception:
            pass

    threading.Thread(target=load, name="import-reports", daemon=True).start()


def stop_seats(config: RunConfig, seats: list) -> None:
    """End the workers' zygotes, once the workers have gone, and remove what they used: their second-pass folders and,
    as root, the control groups left empty."""
    for seat in seats:
        seat.stop()
    shutil.rmtree(config.grading_dir / "harness", ignore_errors=True)
    if config.sandboxed and os.geteuid() == 0:
        import isolation

        isolation.remove_empty()


def main(argv: list[str] | None = None) -> int:
    config = parse_arguments(argv)
    if not config.submissions.is_dir():
        print(f"No submissions folder at {config.submissions}: put submissions in <student>/<assignment>/<notebook>.ipynb.", file=sys.stderr)
        return 2
    config.output.mkdir(parents=True, exist_ok=True)
    config = execute.prepare_sandbox(config)
    if not config.sandboxed and not config.scheduler:
        print("WARNING: bubblewrap (bwrap) is not available: students' kernels run without a sandbox, so they could"
              " read files such as autograder/references/. Install bubblewrap to grade a real class.", file=sys.stderr)
    isolation_line = ("on each Dask worker, as its own make grade would (see a worker's log)" if config.scheduler
                      else execute.isolation_in_force(config))
    print(f"Isolation: {isolation_line}.", flush=True)
    config.grading_dir.mkdir(exist_ok=True)
    (config.grading_dir / "isolation.txt").write_text(isolation_line + "\n")  # for summaries (make demo)

    pairs = select_submissions(config)
    started = time.monotonic()
    todo, prints = collect.pending(pairs, config.submissions, config.output, config.force)
    if len(todo) < len(pairs):
        print(f"{len(pairs) - len(todo)} submissions are already graded with the same inputs; grading the other {len(todo)}.")
    # The workers' zygotes start now, on the core left idle while this process imports nbgrader and torch.
    seats = execute.launch_seats(config, min(config.workers, len(todo)))
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's gradebook trips SQLAlchemy's autoflush warnings
    try:
        api = execute.load_api(config)
        failures = grade_submissions(config, api, pairs, todo, prints, seats)
    finally:
        stop_seats(config, seats)
    refreshed = refresh_feedback(api, pairs, config.output)
    if refreshed:
        print(f"Rewrote the feedback of {refreshed} submissions with marks given by hand since it was written.")
    export(api, pairs, failures, config.output)
    elapsed = time.monotonic() - started
    where = (f"on the Dask cluster {config.scheduler}" if config.scheduler
             else f"with {config.workers} workers{', sandboxed' if config.sandboxed else ''}")
    print(f"Graded {len(pairs)} submissions in {elapsed:.1f} s {where}; {len(failures)} could not be graded. "
          f"Wrote {config.output / 'grades.csv'} and {config.output / 'grades_by_test.csv'}.")
    try:  # the course reports (reports.py); the grades are written whatever happens to them
        from reports import write_reports

        write_reports(config.output)
    except Exception as error:
        print(f"WARNING: the course reports were not written ({type(error).__name__}: {error}); the grades are fine; retry with make report.", file=sys.stderr)
    return 0


def with_tools_on_path() -> None:
    """Run this script again with this Python's folder on PATH if it is not there: nbgrader runs tools installed beside
    it (alembic) by name, and `make grade` works without the environment activated. Nothing else is changed."""
    tools = str(Path(sys.executable).parent)
    if shutil.which("alembic") is None and (Path(tools) / "alembic").exists():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PATH": os.pathsep.join([tools, os.environ.get("PATH", "")])})


if __name__ == "__main__":
    with_tools_on_path()
    sys.exit(main())
