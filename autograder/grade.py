"""Autograde every submission with nbgrader, then write grades.csv, grades_by_test.csv and feedback.

Run through `make grade` (optionally SUBMISSIONS=dir, GRADING_OUTPUT=dir). Submissions follow
nbgrader's layout, <submissions>/<student>/<assignment>/<notebook>.ipynb. Each submission is
graded on its own: one that cannot be graded (invalid JSON, ...) gets 0 with the reason written
down, and the run goes on.

Hidden checks are scored here, never in the student's kernel, which does not even receive them: while
nbgrader runs a submission's notebook for its outputs and visible checks, a clean second pass
(harness.py) runs its answers with the course's test cells, and its hidden checks only write their
values to an outbox folder. This script compares them with autograder/references/<assignment>.pt and
gives 0 to every test cell with a hidden check that failed or never ran
(autograder/references/<assignment>.cells.json maps checks to cells).

Submissions are graded by --workers processes at once, all writing to nbgrader's one SQLite
gradebook. After a submission is graded, a fingerprint of everything its grade depends on (the
submitted files, the source notebook, the hidden references and cell map, the grading code) is saved
under <output>/.grading/. A later run skips submissions whose fingerprint is unchanged, so an
interrupted run picks up where it stopped, and a rerun gives the same grades; --force regrades all.
"""

from __future__ import annotations

import argparse
import ast
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
    """(assignment, student) pairs present under submitted/<student>/<assignment>/, sorted.

    A student folder that is a link is not followed; an assignment folder that is a link is listed, and refused
    when it is graded (stage_submission).
    """
    pairs = []
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
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


MAX_SUBMISSION_FILES = 10_000
# formgrader serves every file of a graded submission from the Jupyter server's own origin, typed by its suffix:
# a student's page or script there would run in the instructor's session.
ACTIVE_SUFFIXES = {".html", ".htm", ".xhtml", ".shtml", ".svg", ".svgz", ".xml", ".xsl", ".xslt", ".js", ".mjs", ".swf"}
MAX_SUBMISSION_BYTES = 2**30


def submission_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(the regular files under `folder`, relative to it, sorted; notes on every other entry, which is never followed).

    A student's folder may hold symbolic links (to the solutions, the hidden references, a classmate's notebook),
    FIFOs or devices: root would read through them, so they are left out, and said so.
    """
    if folder.is_symlink() or not folder.is_dir():
        return [], [f"{folder.name} is a symbolic link or not a folder"]
    files, refused, pending = [], [], [Path()]
    while pending:
        relative = pending.pop()
        with os.scandir(folder / relative) as entries:
            for entry in sorted(entries, key=lambda entry: entry.name):
                path = relative / entry.name
                if entry.is_symlink():
                    refused.append(f"{path} (a symbolic link)")
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif not entry.is_file(follow_symlinks=False):
                    refused.append(f"{path} (not a regular file)")
                elif path.suffix.lower() in ACTIVE_SUFFIXES:
                    refused.append(f"{path} (a web page or script, which formgrader would serve to the instructor's browser)")
                elif len(files) >= MAX_SUBMISSION_FILES:
                    refused.append(f"{path} (more than {MAX_SUBMISSION_FILES:,} files)")
                else:
                    files.append(path)
    return sorted(files), refused


def stage_submission(submitted: Path, staged: Path, assignment: str, student: str) -> list[str]:
    """Copy a submission's regular files to `staged`/<student>/<assignment>, never through a link; notes on what was left out.

    nbgrader copies a submission to the autograded folder as root, following links: it is given this copy instead.
    """
    source, target = submitted / student / assignment, staged / student / assignment
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files, refused = submission_files(source)
    total = 0
    for relative in files:
        try:
            handle = os.open(source / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            refused.append(f"{relative} ({error.strerror.lower()})")
            continue
        with os.fdopen(handle, "rb") as stream:
            size = os.fstat(handle).st_size
            if total + size > MAX_SUBMISSION_BYTES:
                refused.append(f"{relative} (the submission is over {MAX_SUBMISSION_BYTES // 2**20} MB)")
                continue
            total += size
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            with open(target / relative, "xb") as copy:
                shutil.copyfileobj(stream, copy)
    return refused


def needs_a_look(autograded_dir: Path, assignment: str) -> dict[tuple[str, str], str]:
    """{(notebook, test cell grade_id): what from_scratch.py's static reading found in the student's code it uses}.

    An answer cell's findings go to the test cells that name it; those of cells the student added, to every test cell.
    """
    import nbformat
    from from_scratch import static_flags
    from harness import cell_kind

    rules = from_scratch_rules(assignment)
    everything = sorted({name for names in rules.values() for name in names})
    looks = {}
    for path in sorted(autograded_dir.glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        source_cells = nbformat.read(HERE.parent / "solutions" / assignment / path.name, as_version=4).cells
        courses = {c.source for c in source_cells if cell_kind(c) == "course"}  # the course's own unlocked cells, as given
        context = "\n".join(c.source for c in cells if cell_kind(c) == "given")
        answers, added = {}, []
        for cell in cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell_kind(cell) == "solution" and grade_id:
                answers[grade_id] = static_flags(cell.source, rules.get(grade_id, []), context=context)
            elif cell_kind(cell) == "course" and not grade_id and cell.source not in courses:
                added += [f"a cell of the student's: {flag}" for flag in static_flags(cell.source, everything, context=context)]
        for cell in cells:
            if cell_kind(cell) == "test" and cell.metadata.get("nbgrader", {}).get("grade_id"):
                used = {node.id for node in ast.walk(parsed(cell.source)) if isinstance(node, ast.Name)}
                flags = [f"{grade_id}: {flag}" for grade_id, found in answers.items() if grade_id in used for flag in found]
                if flags or added:
                    looks[(path.stem, cell.metadata.nbgrader.grade_id)] = "; ".join(dict.fromkeys(flags + added))[:1000]
    return looks


def parsed(source: str) -> ast.AST:
    """The syntax tree of a cell's source, or an empty module if it does not parse."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])


def fingerprint(submitted: Path, assignment: str, student: str) -> str:
    """SHA-256 over everything the grade of one submission depends on."""
    digest = hashlib.sha256()
    folder = submitted / student / assignment
    files, refused = submission_files(folder)
    digest.update(repr(refused).encode())  # a link replaced by a file, or the reverse, is a change
    paths = [folder / relative for relative in files]
    paths += sorted(f for f in (HERE.parent / "solutions" / assignment).rglob("*") if f.is_file())
    references = [HERE / "references" / f"{assignment}{suffix}" for suffix in (".pt", ".cells.json", ".mistakes.pt")]
    grading_code = [HERE / name for name in ("grade.py", "nbgrader_config.py", "preprocessors.py", "sandbox.py", "isolation.py", "anomalies.py", "scoring.py", "harness.py", "harness_zygote.py", "from_scratch.py", "inert.py")]
    paths += references + grading_code + [HERE.parent / "shared" / "checks.py"]  # checks.compare scores hidden checks
    for path in paths:
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def marker(output: Path, assignment: str, student: str) -> Path:
    return output / ".grading" / assignment / f"{student}.sha256"


_API = None
_HARNESS = None  # this worker's clean second pass (harness.py), started on first use


def _start_worker() -> None:
    global _API
    warnings.filterwarnings("ignore", message=".*not in session.*")
    _API = load_api()


@functools.cache
def hidden_references(assignment: str) -> tuple[dict, dict, dict]:
    """(hidden references, recorded mistakes, {test cell: check names}) of an assignment, read once per worker."""
    import torch

    references = torch.load(HERE / "references" / f"{assignment}.pt", weights_only=True)
    mistakes_file = HERE / "references" / f"{assignment}.mistakes.pt"
    mistakes = torch.load(mistakes_file, weights_only=True) if mistakes_file.exists() else {}
    cells = json.loads((HERE / "references" / f"{assignment}.cells.json").read_text())
    return references, mistakes, cells


def hidden_check_verdicts(assignment: str, outbox: Path) -> dict[str, str | None]:
    """{test cell grade_id: None when all its hidden checks passed, else why not} (scoring.py: fails closed)."""
    import scoring

    references, mistakes, cells = hidden_references(assignment)
    return scoring.score_hidden_checks(scoring.read_outbox(outbox), cells, references, mistakes)


def start_second_pass(assignment: str, submission: Path) -> dict:
    """Start running the submission's answers with the course's test cells in the clean harness (harness.py)."""
    import harness

    global _HARNESS
    if _HARNESS is None:
        root = Path(os.environ["GRADING_OUTPUT"]) / ".grading" / "harness" / str(os.getpid())
        rules = {f"{name}/{grade_id}": names for name in course_assignments() for grade_id, names in from_scratch_rules(name).items()}
        _HARNESS = harness.Harness(root, float(os.environ.get("OMP_NUM_THREADS", "1")), bool(os.environ.get("GRADING_KERNEL")), rules)
    limits = _API.config.ResilientExecute
    cells = harness.clean_run_cells(HERE.parent / "solutions" / assignment / f"{assignment}.ipynb", submission / f"{assignment}.ipynb")
    return _HARNESS.start(assignment, cells, submission, harness.run_limits(limits.cpu_time_limit, limits.wall_time_limit, limits.notebook_time_limit))


def finish_second_pass(assignment: str, job: dict) -> dict[str, str | None]:
    """Wait for the second pass and score what its hidden checks sent: {test cell grade_id: None if all passed, else why not}."""
    import harness

    folder, ended = _HARNESS.finish(job)
    try:
        verdicts = hidden_check_verdicts(assignment, folder / "outbox")
        report = harness.read_report(folder / "report.json")
    finally:
        harness.remove(folder)
    forbidden = from_scratch_rules(assignment)
    raised = {cell["grade_id"]: harness.error_summary(cell["status"], forbidden) for cell in report.get("cells", [])
              if cell.get("kind") == "test" and cell.get("status") != "ok"}
    for grade_id, note in verdicts.items():
        if note and grade_id in raised:  # the cell's error in the grading run says more (a from-scratch violation, ...)
            verdicts[grade_id] = f"{note}; in the grading run the cell raised {raised[grade_id]}"
        elif note and ended != "ended":
            verdicts[grade_id] = f"{note} (the grading run of the answers {ended})"
    return verdicts


def course_assignments() -> list[str]:
    """The assignments in solutions/."""
    return sorted(p.name for p in (HERE.parent / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


@functools.cache
def from_scratch_rules(assignment: str) -> dict[str, list[str]]:
    """{answer cell grade_id: the built-ins it may not use}, from the source notebook's metadata (from_scratch.py)."""
    import from_scratch

    return from_scratch.forbidden_by_cell(HERE.parent / "solutions" / assignment / f"{assignment}.ipynb")


def grant_points(assignment: str, student: str, verdicts: dict[str, str | None]) -> None:
    """Give each test cell, zeroed by SaveAutoGradesWithheld, nbgrader's score back if its hidden checks passed; note why not in
    the autograded notebook (so in feedback too)."""
    import nbformat
    from nbgrader.api import Gradebook
    from nbgrader.utils import determine_grade, is_grade, is_solution

    path = Path(_API.coursedir.format_path(_API.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    tests = [cell for cell in notebook.cells if is_grade(cell) and not is_solution(cell)]
    failed = False
    with Gradebook(_API.coursedir.db_url) as gradebook:
        for cell in tests:
            grade_id = cell.metadata.nbgrader.grade_id
            reason = verdicts.get(grade_id)
            score, _ = determine_grade(cell, None)
            gradebook.find_grade(grade_id, assignment, assignment, student).auto_score = 0.0 if reason else score
            already_failed = any(output.get("output_type") == "error" for output in cell.get("outputs", []))
            if reason and not already_failed:  # an error in the cell already explains its 0 better
                cell.outputs.append(nbformat.v4.new_output("error", ename="HiddenCheckFailed", evalue=reason, traceback=[f"HiddenCheckFailed: {reason}"]))
                failed = True
        gradebook.db.commit()
    if failed:
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


def note_refused_files(assignment: str, student: str, refused: list[str]) -> None:
    """Say in the autograded notebook (so in every row of grades_by_test.csv) which submitted entries were not copied."""
    import nbformat

    path = Path(_API.coursedir.format_path(_API.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
    anomalies = notebook.metadata.setdefault("course_grading", {}).setdefault("anomalies", [])
    anomalies.append({"grade_id": None, "note": f"not copied from the submission: {shown}"})
    replace_notebook(path, notebook)


def grade_one(assignment: str, student: str) -> tuple[str, str, str, float]:
    """Autograde one submission and write its feedback; returns (assignment, student, failure reason or '', seconds)."""
    started = time.monotonic()
    try:
        reason = autograde_and_score(assignment, student)
    except Exception as error:  # a grader bug must not stop the class: report it on this submission
        reason = f"grader error: {error!r}"
    if reason:
        try:
            withhold_all_points(assignment, student)
        except Exception:  # no gradebook entry to zero: grades.csv says 0 anyway
            pass
    return assignment, student, reason, time.monotonic() - started


def autograde_and_score(assignment: str, student: str) -> str:
    """The stages of grading one submission: stage a safe copy, autograde it, score its hidden checks, write feedback.

    Returns why it could not be graded, or ''.
    """
    from nbgrader.utils import temp_attrs

    grading = Path(os.environ["GRADING_OUTPUT"]) / ".grading"
    scratch = grading / "scratch" / assignment / student  # the kernel's working folder (sandbox.py)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.environ["COURSE_GRADING_SCRATCH"] = str(scratch)
    answers_file = grading / assignment / f"{student}.answers.json"
    reviewed = reviewed_answers(assignment, student) if answers_file.exists() else set()
    refused = stage_submission(Path(_API.coursedir.submitted_directory), grading / "staged", assignment, student)
    if not (grading / "staged" / student / assignment / f"{assignment}.ipynb").is_file():
        why = next((note for note in refused if note.startswith((f"{assignment}.ipynb ", assignment + " "))), "")
        return f"no notebook {assignment}.ipynb to grade" + (f": {why}" if why else "")
    # The second pass runs while nbgrader runs the kernel: each fills the other's waits.
    second = start_second_pass(assignment, grading / "staged" / student / assignment)
    with temp_attrs(_API.coursedir, submitted_directory=str(grading / "staged")):
        result = _API.autograde(assignment, student, force=True, create=True)
    verdicts = finish_second_pass(assignment, second)
    shutil.rmtree(scratch, ignore_errors=True)  # what the kernel wrote is not kept, nor shown in feedback
    if not result["success"]:
        return first_error_line(result.get("error", "") + "\n" + result.get("log", ""))
    if refused:
        note_refused_files(assignment, student, refused)
    grant_points(assignment, student, verdicts)
    shutil.rmtree(grading / "staged" / student / assignment, ignore_errors=True)  # graded: the copy is not needed again
    keep_reviewed_answers(assignment, student, reviewed, answers_file)
    feedback = generate_feedback(_API, assignment, student)
    return "" if feedback["success"] else "feedback failed: " + first_error_line(feedback.get("error", ""))


def withhold_all_points(assignment: str, student: str) -> None:
    """Set every automatic score of a submission that could not be graded to 0, as grades.csv has it."""
    from nbgrader.api import Gradebook

    with Gradebook(_API.coursedir.db_url) as gradebook:
        for notebook in gradebook.find_submission(assignment, student).notebooks:
            for grade_entry in notebook.grades:
                grade_entry.auto_score = 0.0
        gradebook.db.commit()


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
    import torch  # noqa: F401
    from shared import checks  # noqa: F401

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
                        by_test.append([student, assignment, notebook.name, cell.name, 0.0, cell.max_score, f"submission not graded: {reason}", ""])
                continue
            autograded = Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment))
            notes, anomalies = cell_notes(autograded)
            looks = needs_a_look(autograded, assignment)
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
                    by_test.append([student, assignment, notebook.name, grade_entry.name, score, grade_entry.max_score, note,
                                    looks.get((notebook.name, grade_entry.name), "")])
    write_csv(output / "grades.csv", ["student_id", "assignment", "score", "max_score"], totals)
    write_csv(output / "grades_by_test.csv", ["student_id", "assignment", "notebook", "grade_id", "score", "max_score", "note", "needs_a_look"], by_test)


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


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def inert_cell(value):
    """`value`, with a quote in front if it is text a spreadsheet would run as a formula (a note, a student id)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([inert_cell(value) for value in row] for row in rows)
    partial.replace(path)


def use_sandbox(output: Path, cpus_per_kernel: int) -> bool:
    """Route kernels through sandbox.py when bubblewrap is here; returns whether it is used."""
    if os.environ.get("GRADING_SANDBOX") == "0" or not shutil.which("bwrap"):
        return False
    import sandbox

    failure = sandbox.sandbox_failure()
    if failure:
        raise SystemExit(f"bubblewrap is installed but cannot start a sandbox on this machine: {failure}\n"
                         "Grading stopped before any kernel ran, so no grade was touched. In a container, bwrap needs user "
                         "namespaces (or, as root, permission to create mount namespaces). To grade without the sandbox "
                         "(students' kernels could then read autograder/references/), run with GRADING_SANDBOX=0.")
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
    parser.add_argument("--scheduler", help="grade on this Dask cluster (tcp://host:8786) instead of local worker processes")
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
    sandboxed = not args.scheduler and use_sandbox(output, cpus_per_kernel)  # on a cluster each worker's grader decides
    if not sandboxed and not args.scheduler:
        print("WARNING: bubblewrap (bwrap) is not available: students' kernels run without a sandbox, so they could"
              " read files such as autograder/references/. Install bubblewrap to grade a real class.", file=sys.stderr)
    isolation_line = ("on each Dask worker, as its own make grade would (see a worker's log)" if args.scheduler
                      else isolation_in_force(sandboxed, cpus_per_kernel))
    print(f"Isolation: {isolation_line}.", flush=True)
    (output / ".grading").mkdir(exist_ok=True)
    (output / ".grading" / "isolation.txt").write_text(isolation_line + "\n")  # for summaries (make demo)
    pairs = [pair for pair in find_submissions(submitted) if not args.assignment or pair[0] in args.assignment]
    known = set(course_assignments())
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
        if todo and not args.scheduler:
            preload(assignments)
            pool = start_workers(min(max(args.workers, 1), len(todo)))  # before any gradebook connection exists
        for assignment in assignments:
            register_assignment(api, assignment)
        register_students(api, sorted({student for _, student in pairs}))
        if args.scheduler and todo:
            import cluster

            failures = cluster.grade_on_cluster(args.scheduler, api, todo, prints, submitted, output)
        else:
            failures = grade(pool, todo, prints, output) if pool is not None else {}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(output / ".grading" / "harness", ignore_errors=True)  # the workers' second-pass folders
    if sandboxed and os.geteuid() == 0:
        import isolation

        isolation.remove_empty()
    refreshed = refresh_feedback(api, pairs, output)
    if refreshed:
        print(f"Rewrote the feedback of {refreshed} submissions with marks given by hand since it was written.")
    export(api, pairs, failures, output)
    elapsed = time.monotonic() - started
    where = f"on the Dask cluster {args.scheduler}" if args.scheduler else f"with {args.workers} workers{', sandboxed' if sandboxed else ''}"
    print(f"Graded {len(pairs)} submissions in {elapsed:.1f} s {where}; "
          f"{len(failures)} could not be graded. Wrote {output / 'grades.csv'} and {output / 'grades_by_test.csv'}.")
    try:  # the course reports (reports.py); the grades are written whatever happens to them
        from reports import write_reports

        write_reports(output)
    except Exception as error:
        print(f"WARNING: the course reports were not written ({type(error).__name__}: {error}); the grades are fine; retry with make report.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
