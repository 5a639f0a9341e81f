"""Stage 5, feedback: each submission's feedback page, and again when marks given by hand change."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from pathlib import Path

from collect import marker
from record import first_error_line

IMAGE_WITHOUT_ALT = re.compile(r"<img (?![^>]*\balt=)")
REMEMBERED_SOURCES = 4096  # highlighted cells a worker keeps


@functools.cache
def feedback_converter_class():
    """nbgrader's GenerateFeedback keeping one HTML exporter per worker, so its templates compile once, not per submission."""
    from nbconvert.exporters import HTMLExporter, TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
    from nbconvert.writers import FilesWriter
    from nbgrader.converters import GenerateFeedback

    class RememberingHighlight(Highlight2HTML):
        """Highlight2HTML that highlights each source once: the course's cells are the same in every submission."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.highlighted: dict[tuple, str] = {}

        def __call__(self, source, language=None, metadata=None):
            key = (source, language, (metadata or {}).get("magics_language"))  # all of the metadata that pygments reads
            if key not in self.highlighted:
                if len(self.highlighted) >= REMEMBERED_SOURCES:
                    self.highlighted.clear()
                self.highlighted[key] = super().__call__(source, language, metadata)
            return self.highlighted[key]

    class FeedbackHTMLExporter(HTMLExporter):
        """HTMLExporter without its final BeautifulSoup pass over the page (0.6 s per feedback page, most of the time),
        and with one code highlighter per language for every page it makes.

        That pass gives images an alt text and makes JupyterLab-template cells focusable; nbgrader's feedback
        template has no such cells, so a substitution adds the alt text and the page is otherwise the same.
        """

        highlighters: dict = {}

        def from_notebook_node(self, nb, resources=None, **kw):
            language = nb.metadata.get("language_info", {})
            lexer = language.get("pygments_lexer", language.get("name"))
            if lexer not in self.highlighters:
                self.highlighters[lexer] = RememberingHighlight(pygments_lexer=lexer, parent=self)
            self.register_filter("highlight_code", self.highlighters[lexer])
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
