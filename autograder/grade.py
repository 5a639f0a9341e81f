"""Autograde every submission with nbgrader, then write grades.csv, grades_by_test.csv and feedback.

Run through `make grade` (optionally SUBMISSIONS=dir, GRADING_OUTPUT=dir). Submissions follow
nbgrader's layout, <submissions>/<student>/<assignment>/<notebook>.ipynb. Each submission is
graded on its own: one that cannot be graded (invalid JSON, ...) gets 0 with the reason written
down, and the run goes on.

Hidden checks are scored here, not in the student's kernel: while nbgrader runs a submission, its
hidden checks only write their values to an outbox folder; afterwards this script compares them
with autograder/references/<assignment>.pt and gives 0 to every test cell with a hidden check that
failed or never ran (autograder/references/<assignment>.cells.json maps checks to cells).

Submissions are graded by --workers processes at once, all writing to nbgrader's one SQLite
gradebook. After a submission is graded, a fingerprint of everything its grade depends on (the
submitted files, the source notebook, the hidden references and cell map, the grading code) is saved
under <output>/.grading/. A later run skips submissions whose fingerprint is unchanged, so an
interrupted run picks up where it stopped, and a rerun gives the same grades; --force regrades all.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # isolation.py and sandbox.py, when grade.py is imported rather than run
ANSI = re.compile(r"\x1b\[[0-9;]*m")
IMAGE_WITHOUT_ALT = re.compile(r"<img (?![^>]*\balt=)")


def load_api():
    """An NbGraderAPI configured by autograder/nbgrader_config.py (reads $SUBMISSIONS, $GRADING_OUTPUT)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(HERE)).load_config()
    # Once the last cell has run, every output and hidden-check value is in: stop the kernel at once.
    # A graceful shutdown waits a second per submission for the kernel's exit hooks, with the core idle.
    config.Execute.shutdown_kernel = "immediate"
    return NbGraderAPI(config=config)


def find_submissions(submitted: Path) -> list[tuple[str, str]]:
    """(assignment, student) pairs present under submitted/<student>/<assignment>/, sorted."""
    pairs = []
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for assignment_dir in sorted(p for p in student_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pairs.append((assignment_dir.name, student_dir.name))
    return pairs


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


def first_error_line(text: str) -> str:
    """The last line of a traceback or log that names an exception, without colour codes."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Died|Timeout)\b", line)]
    return (named or lines or ["unknown error"])[-1][:300]


def cell_notes(autograded_dir: Path) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str | None], str]]:
    """({(notebook, grade_id): reason} for graded cells whose autograded output holds an error,
    {(notebook, grade_id, or None for every row): what anomalies.py put right})."""
    import nbformat

    notes, anomalies = {}, {}
    for path in sorted(autograded_dir.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for anomaly in notebook.metadata.get("course_grading", {}).get("anomalies", []):
            key = (path.stem, anomaly["grade_id"])
            anomalies[key] = "; ".join(filter(None, [anomalies.get(key), anomaly["note"]]))
        for cell in notebook.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if grade_id and errors:
                error = errors[-1]
                summary = (error.get("evalue", "").strip().splitlines() or [""])[0]
                notes[(path.stem, grade_id)] = ANSI.sub("", f"{error.get('ename', '')}: {summary}")[:300]
    return notes, anomalies


def fingerprint(submitted: Path, assignment: str, student: str) -> str:
    """SHA-256 over everything the grade of one submission depends on."""
    digest = hashlib.sha256()
    inputs = [submitted / student / assignment, HERE.parent / "solutions" / assignment]
    files = [f for folder in inputs for f in sorted(folder.rglob("*")) if f.is_file()]
    references = [HERE / "references" / f"{assignment}{suffix}" for suffix in (".pt", ".cells.json", ".mistakes.pt")]
    grading_code = [HERE / name for name in ("grade.py", "nbgrader_config.py", "preprocessors.py", "sandbox.py", "isolation.py", "anomalies.py")]
    files += references + grading_code + [HERE.parent / "shared" / "checks.py"]  # checks.compare scores hidden checks
    for path in files:
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def marker(output: Path, assignment: str, student: str) -> Path:
    return output / ".grading" / assignment / f"{student}.sha256"


_API = None


def _start_worker() -> None:
    global _API
    warnings.filterwarnings("ignore", message=".*not in session.*")
    _API = load_api()


MAX_OUTBOX_FILE = 64 * 2**20


def received_hidden_values(outbox: Path) -> dict[str, dict]:
    """{check name: message} from the files a kernel wrote to `outbox`; the last one of a name wins."""
    import torch

    received = {}
    for path in sorted(outbox.glob("*.pt")):
        if path.stat().st_size > MAX_OUTBOX_FILE:
            continue
        try:
            message = torch.load(path, weights_only=True)
        except Exception:  # a file the student's code wrote or damaged: ignore it
            continue
        if isinstance(message, dict) and isinstance(message.get("name"), str):
            received[message["name"]] = message
    return received


@functools.cache
def hidden_references(assignment: str) -> tuple[dict, dict, dict]:
    """(hidden references, recorded mistakes, {test cell: check names}) of an assignment, read once per worker."""
    import torch

    references = torch.load(HERE / "references" / f"{assignment}.pt", weights_only=True)
    mistakes_file = HERE / "references" / f"{assignment}.mistakes.pt"
    mistakes = torch.load(mistakes_file, weights_only=True) if mistakes_file.exists() else {}
    cells = json.loads((HERE / "references" / f"{assignment}.cells.json").read_text())
    return references, mistakes, cells


def hidden_check_failures(assignment: str, outbox: Path) -> dict[str, str]:
    """{test cell grade_id: reason} for each test cell with a hidden check that failed or did not run."""
    from shared.checks import compare, matching_mistake, mistake_message

    references, mistakes, cells = hidden_references(assignment)
    received = received_hidden_values(outbox)
    failures = {}
    for grade_id, names in cells.items():
        for name in names:
            message, reference = received.get(name), references[name]
            if message is None:
                failures[grade_id] = f"hidden check '{name}' did not run"
            elif "error" in message:
                failures[grade_id] = f"hidden check '{name}': {message['error']}"
            else:
                try:
                    compare(name, message.get("value"), reference["value"], rtol=reference["rtol"], atol=reference["atol"])
                    continue
                except AssertionError as error:
                    mistake = matching_mistake(message.get("value"), mistakes.get(name, []), reference["rtol"], reference["atol"])
                    # A named mistake keeps its hint (one line); otherwise the first line says what differs.
                    lines = mistake_message(name, mistake).split("\n") if mistake else str(error).strip().splitlines()[:1]
                    detail = " ".join(line.strip() for line in lines).strip().removeprefix(f"Check '{name}': ")
                    failures[grade_id] = f"hidden check '{name}': {detail}"
            break
    return failures


def apply_hidden_check_failures(assignment: str, student: str, failures: dict[str, str]) -> None:
    """Zero the failing cells in the gradebook and show why in the autograded notebook (so in feedback too)."""
    import nbformat
    from nbgrader.api import Gradebook

    if not failures:  # the usual case: nothing to change, so no need to open the gradebook and the notebook
        return
    with Gradebook(_API.coursedir.db_url) as gradebook:
        for grade_id in failures:
            gradebook.find_grade(grade_id, assignment, assignment, student).auto_score = 0.0
        gradebook.db.commit()
    path = Path(_API.coursedir.format_path(_API.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        reason = failures.get(cell.metadata.get("nbgrader", {}).get("grade_id"))
        already_failed = any(output.get("output_type") == "error" for output in cell.get("outputs", []))
        if reason and not already_failed:  # an error in the cell already explains its 0 better
            cell.outputs.append(nbformat.v4.new_output("error", ename="HiddenCheckFailed", evalue=reason, traceback=[f"HiddenCheckFailed: {reason}"]))
    replace_notebook(path, notebook)


def replace_notebook(path: Path, notebook) -> None:
    """Write `notebook` over `path` through a new file, keeping its mode.

    nbgrader leaves autograded notebooks read-only (0444), which only root may open for writing; and the
    folder is the kernel's, so whatever stands at `path` is replaced, never followed.
    """
    import nbformat

    mode = path.lstat().st_mode & 0o777
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".rewrite-", suffix=".ipynb")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            nbformat.write(notebook, stream)
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@functools.cache
def feedback_converter_class():
    """nbgrader's GenerateFeedback keeping one HTML exporter per worker, so its templates compile once, not per submission."""
    from nbconvert.exporters import HTMLExporter, TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
    from nbconvert.writers import FilesWriter
    from nbgrader.converters import GenerateFeedback

    class FeedbackHTMLExporter(HTMLExporter):
        """HTMLExporter without its final BeautifulSoup pass over the page (0.6 s per feedback page, most of the time).

        That pass gives images an alt text and makes JupyterLab-template cells focusable; nbgrader's feedback
        template has no such cells, so a substitution adds the alt text and the page is otherwise the same.
        """

        def from_notebook_node(self, nb, resources=None, **kw):
            language = nb.metadata.get("language_info", {})
            self.register_filter("highlight_code", Highlight2HTML(pygments_lexer=language.get("pygments_lexer", language.get("name")), parent=self))
            resources = self._init_resources(resources)
            self.register_filter("filter_data_type", WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources))
            html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            return IMAGE_WITHOUT_ALT.sub('<img alt="a figure the notebook drew" ', html), resources

    class FeedbackWithOneExporter(GenerateFeedback):
        exporters: dict = {}

        def init_assignment(self, assignment_id: str, student_id: str) -> None:
            """Copy no files beside the feedback page: the graded folder is the kernel's, which may have left
            anything there (a gigabyte, a link to a file of the instructor's), and the page embeds its figures."""

        def start(self) -> None:
            self.init_notebooks()
            self.writer = FilesWriter(parent=self, config=self.config)
            if "html" not in self.exporters:
                self.exporters["html"] = FeedbackHTMLExporter(parent=self, config=self.config)
                for preprocessor in self.preprocessors:
                    self.exporters["html"].register_preprocessor(preprocessor)
            self.exporter = self.exporters["html"]
            here = os.getcwd()
            os.chdir(self.coursedir.root)
            try:
                self.convert_notebooks()
            finally:
                os.chdir(here)

    return FeedbackWithOneExporter


def generate_feedback(api, assignment: str, student: str) -> dict:
    """What `nbgrader generate_feedback --assignment A --student S --force` does, with this process's one exporter."""
    from nbgrader.utils import capture_log, temp_attrs
    from traitlets.config import Config

    with temp_attrs(api.coursedir, assignment_id=assignment, student_id=student):
        converter = feedback_converter_class()(coursedir=api.coursedir, parent=api)
        converter.update_config(Config({"HTMLExporter": {"template_name": "feedback"}}))
        converter.force = True
        return capture_log(converter)


def grade_one(assignment: str, student: str) -> tuple[str, str, str, float]:
    """Autograde one submission and write its feedback; returns (assignment, student, failure reason or '', seconds)."""
    started = time.monotonic()
    outbox = Path(os.environ["GRADING_OUTPUT"]) / ".grading" / "outbox" / assignment / student
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir(parents=True)
    os.environ["COURSE_GRADING_OUTBOX"] = str(outbox)  # the kernel nbgrader starts inherits it
    answers_file = Path(os.environ["GRADING_OUTPUT"]) / ".grading" / assignment / f"{student}.answers.json"
    reviewed = reviewed_answers(assignment, student) if answers_file.exists() else set()
    result = _API.autograde(assignment, student, force=True, create=True)
    reason = ""
    if not result["success"]:
        reason = first_error_line(result.get("error", "") + "\n" + result.get("log", ""))
    else:
        try:
            apply_hidden_check_failures(assignment, student, hidden_check_failures(assignment, outbox))
            keep_reviewed_answers(assignment, student, reviewed, answers_file)
        except Exception as error:  # a grader bug must not stop the class: report it on this submission
            result["success"], reason = False, f"grader error after autograding: {error!r}"
    if result["success"]:
        feedback = generate_feedback(_API, assignment, student)
        if not feedback["success"]:
            reason = "feedback failed: " + first_error_line(feedback.get("error", ""))
    return assignment, student, reason, time.monotonic() - started


def reviewed_answers(assignment: str, student: str) -> set[str]:
    """grade_ids of this submission's cells that a person has scored by hand and nothing has asked to review since."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(_API.coursedir.db_url) as gradebook:
        try:
            notebooks = gradebook.find_submission(assignment, student).notebooks
        except MissingEntry:
            return set()
        return {g.name for n in notebooks for g in n.grades if g.manual_score is not None and not g.needs_manual_grade}


def keep_reviewed_answers(assignment: str, student: str, reviewed: set[str], answers_file: Path) -> None:
    """Clear nbgrader's review flag on hand-scored answers whose text is the one that was scored; remember the texts.

    nbgrader asks for every hand-given score to be reviewed again after any autograde; only an answer the
    student changed since it was scored needs a person's look.
    """
    import nbformat
    from nbgrader.api import Gradebook

    path = Path(_API.coursedir.format_path(_API.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    cells = nbformat.read(path, as_version=4).cells
    # Answers graded by hand: the student writes in the graded cell itself. (A hand-changed score of a test cell
    # stays flagged: its locked text never changes, but what it tests may have.)
    answers = [c for c in cells if c.metadata.get("nbgrader", {}).get("grade") and c.metadata["nbgrader"].get("solution")]
    texts = {c.metadata["nbgrader"]["grade_id"]: hashlib.sha256(c.source.encode()).hexdigest() for c in answers}
    scored_texts = json.loads(answers_file.read_text()) if answers_file.exists() else {}
    unchanged = {grade_id for grade_id in reviewed if grade_id in texts and scored_texts.get(grade_id) == texts[grade_id]}
    if unchanged:
        with Gradebook(_API.coursedir.db_url) as gradebook:
            for grade_id in unchanged:
                gradebook.find_grade(grade_id, assignment, assignment, student).needs_manual_grade = False
            gradebook.db.commit()
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    answers_file.write_text(json.dumps(texts, indent=1, sort_keys=True))


def pending(pairs: list[tuple[str, str]], submitted: Path, output: Path, force: bool) -> tuple[list[tuple[str, str]], dict]:
    """(the pairs to grade: new, changed, or all with `force`; {pair: fingerprint})."""
    prints = {(assignment, student): fingerprint(submitted, assignment, student) for assignment, student in pairs}
    todo = []
    for assignment, student in pairs:
        done = marker(output, assignment, student)
        if force or not done.exists() or done.read_text() != prints[(assignment, student)]:
            done.unlink(missing_ok=True)
            todo.append((assignment, student))
    return todo, prints


def preload(assignments: list[str]) -> None:
    """Import in this process what every worker needs, so workers forked from it start with it loaded."""
    from shared import checks  # noqa: F401  (imports torch)

    for assignment in assignments:
        try:
            hidden_references(assignment)
        except Exception:  # missing or damaged: each submission reports it when it is scored
            pass
    feedback_converter_class()


def start_workers(count: int) -> ProcessPoolExecutor:
    """`count` worker processes, started now; on Linux forked, so they share what `preload` loaded."""
    method = "fork" if sys.platform == "linux" else "spawn"  # macOS's system libraries are not safe to fork
    pool = ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context(method), initializer=_start_worker)
    for _ in range(count):
        pool.submit(int)  # a no-op job makes the pool start a process
    return pool


def grade(pool: ProcessPoolExecutor, todo: list[tuple[str, str]], prints: dict, output: Path) -> dict[tuple[str, str], str]:
    """Grade `todo` in the pool's workers; returns {(assignment, student): failure reason}."""
    failures = {}
    jobs = [pool.submit(grade_one, assignment, student) for assignment, student in todo]
    for number, job in enumerate(as_completed(jobs), 1):
        assignment, student, reason, seconds = job.result()
        if reason:
            failures[(assignment, student)] = reason
        else:
            done = marker(output, assignment, student)
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(prints[(assignment, student)])
        status = f"FAILED: {reason}" if reason else "ok"
        print(f"[{number}/{len(todo)}] {assignment} / {student}: {status} ({seconds:.1f} s)", flush=True)
    return failures


def hand_marks(gradebook, assignment: str, student: str) -> list[tuple]:
    """The scores, extra credit and comments given by hand (in formgrader) to one submission; None where none was given."""
    from nbgrader.api import MissingEntry

    try:
        notebooks = gradebook.find_submission(assignment, student).notebooks
    except MissingEntry:  # graded before, but the gradebook was replaced since: nothing given by hand
        return []
    marks = [("grade", n.name, g.name, g.manual_score, g.extra_credit) for n in notebooks for g in n.grades]
    marks += [("comment", n.name, c.name, c.manual_comment) for n in notebooks for c in n.comments]
    return sorted(marks, key=lambda mark: mark[:3])


def refresh_feedback(api, pairs: list[tuple[str, str]], output: Path) -> int:
    """Rewrite the feedback of graded submissions whose hand-given marks changed since it was written; returns how many.

    Manual grading happens in formgrader after this script wrote the feedback, and a rerun skips the
    submission, so without this the feedback would keep showing the written answers ungraded.
    """
    from nbgrader.api import Gradebook

    graded = [(assignment, student) for assignment, student in pairs if marker(output, assignment, student).exists()]
    with Gradebook(api.coursedir.db_url) as gradebook:  # one connection for the class, not one per submission
        marks_of = {pair: hand_marks(gradebook, *pair) for pair in graded}
    refreshed = 0
    for assignment, student in graded:
        done, marks = marker(output, assignment, student), marks_of[(assignment, student)]
        stamp, digest = done.with_suffix(".hand"), hashlib.sha256(repr(marks).encode()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest:
            continue
        if stamp.exists() or any(value is not None for mark in marks for value in mark[3:]):
            result = generate_feedback(api, assignment, student)
            if not result["success"]:
                print(f"{assignment} / {student}: feedback failed: {first_error_line(result.get('error', ''))}", file=sys.stderr)
                continue
            refreshed += 1
        stamp.write_text(digest)
    return refreshed


def export(api, pairs, failures, output: Path) -> None:
    """Write grades.csv (one row per submission) and grades_by_test.csv (one row per graded cell)."""
    from nbgrader.api import Gradebook, MissingEntry

    totals, by_test = [], []
    with Gradebook(api.coursedir.db_url) as gradebook:
        for assignment, student in pairs:
            try:
                submission = gradebook.find_submission(assignment, student)
            except MissingEntry:
                submission = None
            max_score = gradebook.find_assignment(assignment).max_score
            reason = failures.get((assignment, student), "")
            if submission is None or reason:
                totals.append([student, assignment, 0.0, max_score])
                for notebook in gradebook.find_assignment(assignment).notebooks:
                    for cell in notebook.grade_cells:
                        by_test.append([student, assignment, notebook.name, cell.name, 0.0, cell.max_score, f"submission not graded: {reason}"])
                continue
            notes, anomalies = cell_notes(Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment)))
            totals.append([student, assignment, round(submission.score, 4), max_score])
            for notebook in submission.notebooks:
                for grade_entry in sorted(notebook.grades, key=lambda g: cell_order(assignment, notebook.name, g.name)):
                    score = grade_entry.score
                    note = notes.get((notebook.name, grade_entry.name), "")
                    if grade_entry.needs_manual_grade and grade_entry.manual_score is None:
                        note = note or "needs manual grading"
                    elif grade_entry.needs_manual_grade:  # nbgrader keeps a manual score through a regrade, to be reviewed
                        note = note or "manual score given before regrading: review it in formgrader"
                    # Said after the reason the cell lost points, so that reason still comes first.
                    extra = [anomalies.get((notebook.name, grade_entry.name)), anomalies.get((notebook.name, None))]
                    note = "; ".join(filter(None, [note, *extra]))
                    by_test.append([student, assignment, notebook.name, grade_entry.name, score, grade_entry.max_score, note])
    write_csv(output / "grades.csv", ["student_id", "assignment", "score", "max_score"], totals)
    write_csv(output / "grades_by_test.csv", ["student_id", "assignment", "notebook", "grade_id", "score", "max_score", "note"], by_test)


def cell_order(assignment: str, notebook: str, grade_id: str) -> int:
    """Position of a graded cell in the source notebook, so CSV rows follow the notebook."""
    import nbformat

    key = (assignment, notebook)
    if key not in _ORDER:
        source = nbformat.read(HERE.parent / "solutions" / assignment / f"{notebook}.ipynb", as_version=4)
        ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in source.cells]
        _ORDER[key] = {grade_id: index for index, grade_id in enumerate(ids) if grade_id}
    return _ORDER[key].get(grade_id, len(_ORDER[key]))


_ORDER: dict[tuple[str, str], dict[str, int]] = {}


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(path)


def use_sandbox(output: Path, cpus_per_kernel: int) -> bool:
    """Route kernels through sandbox.py when bubblewrap is here; returns whether it is used."""
    if os.environ.get("GRADING_SANDBOX") == "0" or not shutil.which("bwrap"):
        return False
    kernels = output / ".grading" / "kernels" / "course-sandbox"
    kernels.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, str(HERE / "sandbox.py"), "--cpus", str(cpus_per_kernel), "{connection_file}"],
            "display_name": "Python 3 (grading sandbox)", "language": "python", "interrupt_mode": "message"}
    (kernels / "kernel.json").write_text(json.dumps(spec, indent=1))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(output / ".grading"), os.environ.get("JUPYTER_PATH")]))
    # Unix socket paths are short-lived and must stay under ~100 characters: a short folder in /tmp.
    os.environ["JUPYTER_RUNTIME_DIR"] = runtime = tempfile.mkdtemp(prefix="grading-")
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)  # forked workers leave through os._exit: only this process
    os.environ["GRADING_KERNEL"] = "course-sandbox"
    return True


def isolation_in_force(sandboxed: bool, cpus_per_kernel: int) -> str:
    """One line for the run summary: what separates a student's kernel from the grader and from classmates."""
    import isolation
    import sandbox

    if not sandboxed:
        return "none (no bubblewrap): kernels run as this user, with the per-cell time limit only"
    parts = ["bubblewrap sandbox (no network, own process tree, instructor's folders hidden)"]
    if os.geteuid() == 0:
        parts.append("a user id per kernel")
        groups = isolation.available()
        limits = f"{cpus_per_kernel} CPU, {sandbox.MEMORY_BYTES // 2**20} MiB, {sandbox.EXTRA_PROCESSES} processes in all"
        parts.append(f"a {groups} group per kernel ({limits})" if groups else "no cgroups on this machine: memory and processes limited per process")
    else:
        parts.append("user nobody in a user namespace; no cgroups without root: memory and processes limited per process")
    parts.append(f"kernels at nice {sandbox.KERNEL_NICENESS}, every process a cell leaves running killed when it ends")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", default=os.environ.get("SUBMISSIONS", str(HERE.parent / "submitted")))
    parser.add_argument("--output", default=os.environ.get("GRADING_OUTPUT", str(HERE.parent)))
    parser.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or os.cpu_count() or 1))
    parser.add_argument("--force", action="store_true", default=os.environ.get("FORCE") == "1", help="regrade everything")
    args = parser.parse_args()

    submitted, output = Path(args.submissions).resolve(), Path(args.output).resolve()
    if not submitted.is_dir():
        print(f"No submissions folder at {submitted}: put submissions in <student>/<assignment>/<notebook>.ipynb.", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    os.environ["SUBMISSIONS"], os.environ["GRADING_OUTPUT"] = str(submitted), str(output)
    # nbgrader runs tools installed beside it (alembic): find them even when the venv is not activated.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # Share the cores between the workers' kernels: more math threads than cores would oversubscribe them.
    cpus_per_kernel = max(1, (os.cpu_count() or 1) // max(args.workers, 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpus_per_kernel))
    sandboxed = use_sandbox(output, cpus_per_kernel)
    if not sandboxed:
        print("WARNING: bubblewrap (bwrap) is not available: students' kernels run without a sandbox, so they could"
              " read files such as autograder/references/. Install bubblewrap to grade a real class.", file=sys.stderr)
    print(f"Isolation: {isolation_in_force(sandboxed, cpus_per_kernel)}.", flush=True)
    pairs = [pair for pair in find_submissions(submitted) if not args.assignment or pair[0] in args.assignment]
    known = {p.name for p in (HERE.parent / "solutions").iterdir() if p.is_dir()}
    unknown = sorted({assignment for assignment, _ in pairs} - known)
    if unknown:
        print(f"Skipping folders that are not assignments in solutions/: {', '.join(unknown)}", file=sys.stderr)
        pairs = [pair for pair in pairs if pair[0] in known]
    started = time.monotonic()
    todo, prints = pending(pairs, submitted, output, args.force)
    if len(todo) < len(pairs):
        print(f"{len(pairs) - len(todo)} submissions are already graded with the same inputs; grading the other {len(todo)}.")
    # nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every submission: noise, not errors.
    warnings.filterwarnings("ignore", message=".*not in session.*")
    api = load_api()
    assignments = sorted({assignment for assignment, _ in todo})
    pool = None
    try:
        if todo:
            preload(assignments)
            pool = start_workers(min(max(args.workers, 1), len(todo)))  # before any gradebook connection exists
        for assignment in assignments:
            register_assignment(api, assignment)
        register_students(api, sorted({student for _, student in pairs}))
        failures = grade(pool, todo, prints, output) if pool is not None else {}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if sandboxed and os.geteuid() == 0:
        import isolation

        isolation.remove_empty()
    refreshed = refresh_feedback(api, pairs, output)
    if refreshed:
        print(f"Rewrote the feedback of {refreshed} submissions with marks given by hand since it was written.")
    export(api, pairs, failures, output)
    elapsed = time.monotonic() - started
    print(f"Graded {len(pairs)} submissions in {elapsed:.1f} s with {args.workers} workers{', sandboxed' if sandboxed else ''}; "
          f"{len(failures)} could not be graded. Wrote {output / 'grades.csv'} and {output / 'grades_by_test.csv'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
