"""nbgrader configuration: the repository is the course directory (solutions/ → notebooks/)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_config import DEFAULT_CELL_TIMEOUT, DEFAULT_NOTEBOOK_TIMEOUT, set_course_directories, set_time_limits  # noqa: E402
from anomalies import CheckSourceMetadata, ClearSourceHiddenTests  # noqa: E402
from preprocessors import HideHiddenTestTracebacks, ResilientExecute, SaveAutoGradesWithheld  # noqa: E402
from nbgrader.converters import Autograde  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    GetGrades,
    IgnorePattern,
    LimitOutput,
)
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor  # noqa: E402

c = get_config()  # noqa: F821

c.CourseDirectory.course_id = "sequence-models"
c.CourseDirectory.root = str(HERE.parent)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
# Grading state (gradebook, autograded copies, feedback) goes to $GRADING_OUTPUT, by default the repository root;
# submissions are read from $SUBMISSIONS (nbgrader's <student>/<assignment>/ layout). grade.py sets the same from its
# run configuration (run_config.py), which also sets the time limits from $CELL_TIMEOUT and $NOTEBOOK_TIMEOUT.
OUTPUT = Path(os.environ.get("GRADING_OUTPUT", HERE.parent)).resolve()
set_course_directories(c, OUTPUT, Path(os.environ.get("SUBMISSIONS", HERE.parent / "submitted")).resolve())
set_time_limits(c, int(os.environ.get("CELL_TIMEOUT", str(DEFAULT_CELL_TIMEOUT))), int(os.environ.get("NOTEBOOK_TIMEOUT", str(DEFAULT_NOTEBOOK_TIMEOUT))))
c.Execute.interrupt_on_timeout = True
# nbgrader fails a whole submission when a cell's output arrives later than this after its reply, or
# when a kernel takes longer than startup_timeout to start: a busy machine must not trip either.
c.Execute.iopub_timeout = 120
c.Execute.startup_timeout = 600
c.LimitOutput.max_lines = 1000

# Kernel death costs only the cell that killed it (see preprocessors.py).
c.Autograde.autograde_preprocessors = [
    # The student's kernel never sees the hidden tests, not even as code to run: they run in the clean second
    # pass (harness.py), where a cell's hooks and prints cannot reach them. The kernel runs the visible checks.
    ClearSourceHiddenTests,
    ResilientExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGradesWithheld,  # test cells earn their points in grade.py, once their hidden checks have passed
    AssignLatePenalties,
    CheckCellMetadata,
]
# Copied test cells, forged or edited nbgrader metadata are put right (and noted) before nbgrader's own
# sanitizing sees them, which would fail the whole submission (see anomalies.py).
c.Autograde.sanitize_preprocessors = [CheckSourceMetadata, *Autograde.sanitize_preprocessors.default()]
# A deleted or stripped test cell comes back from the source and is graded, not skipped.
c.OverwriteCells.add_missing_cells = True
# Warnings printed to stderr by libraries must not zero a test cell.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r".*(UserWarning|DeprecationWarning|FutureWarning).*"

# Feedback shows students their results, never the hidden test code (not even in tracebacks, nor in what a
# cell printed: RedactHiddenTests reads the hidden blocks, so it runs before ClearSourceHiddenTests); a
# student's own cell that quotes the hidden-test markers is shown as written (anomalies.py, inert.py).
from inert import MakeInert, NoMathJax, RedactHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [
    GetGrades, HideHiddenTestTracebacks, RedactHiddenTests, ClearSourceHiddenTests, CSSHTMLHeaderPreprocessor]
# Every HTML page nbgrader makes of a notebook (formgrader's grading page, the feedback pages) runs nothing of
# the student's: markdown and outputs sanitized, scripts and widgets dropped (inert.py). It runs first.
# Their math is MathML that MakeInert writes, which browsers typeset themselves: NoMathJax drops the MathJax that
# nbgrader's templates load from a CDN, so that the pages load no script and nothing from the network (a feedback
# page shows its math offline).
c.HTMLExporter.preprocessors = [MakeInert, NoMathJax]
