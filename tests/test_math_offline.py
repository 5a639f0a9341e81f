"""Math renders offline in the pages nbgrader makes of a notebook: formgrader's grading page and the feedback pages.

The TeX of markdown cells ($...$, $$...$$, \\begin{...}) becomes MathML when the page is made (autograder/inert.py),
which browsers typeset without a script; the pages load no MathJax (inert.NoMathJax) and nothing else from the
network. A solved 04_attention whose written answer has math, with a markdown cell of hostile math-shaped input, is
graded with autograder/grade.py as `make grade` runs it: its feedback page and formgrader's grading page (from the
real Jupyter server) must hold the notebook's formulas as MathML, no MathJax and no external URL, and nothing of the
student's that runs. Every formula of solutions/ must convert without falling back to its TeX; hostile MathML and
TeX must come out inert. `make formgrader` prints its link last.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from html.parser import HTMLParser

import nbformat
import pytest

from conftest import BIN, ROOT
from submissions import solved, submit
from test_formgrader import Course, free_port, grade_class, isolated_env, served_grading_page
from test_grading_inert import MARK, Page, executable_markup, with_markdown_cell

sys.path.insert(0, str(ROOT / "autograder"))
import inert  # noqa: E402

ASSIGNMENT = "04_attention"
STUDENT = "ada"
WRITTEN = "shapes_answer"
ANSWER = (r"The scores $\mathbf{Q}\mathbf{K}^\top / \sqrt{d}$ are $(B, n, m)$: one per query and key, and "
          r"$$\alpha_{ij} = \frac{\exp a_{ij}}{\sum_{k=1}^{m} \exp a_{ik}}.$$")
FALLBACK = 'title="TeX that could not be typeset"'

# Math-shaped attacks: TeX that latex2mathml would write out as markup, and MathML that can carry a link or a script.
HOSTILE_MATH = [
    f"""$<img src=x onerror="alert('{MARK}-dollar-img')">$""",
    rf"""$$\text{{<img/src=x/onerror=alert('{MARK}-text-img')>}}$$""",
    rf"""$\href{{javascript:alert('{MARK}-tex-href')}}{{x}}$""",
    f"""<math><maction actiontype="statusline" href="javascript:alert('{MARK}-maction')"><mi>x</mi>"""
    f"""<mtext>{MARK}-status</mtext></maction></math>""",
    f"""<math><semantics><mi>x</mi><annotation-xml encoding="text/html"><img src=x onerror="alert('{MARK}-axml')">"""
    f"""<script>alert('{MARK}-axml-script')</script></annotation-xml></semantics></math>""",
    f"""<math><annotation encoding="text/html"><img src=x onerror="alert('{MARK}-annotation')"></annotation></math>""",
    f"""<math><mi href="javascript:alert('{MARK}-href')" xlink:href="javascript:alert('{MARK}-xlink')" """
    f"""onclick="alert('{MARK}-onclick')">x</mi></math>""",
    f"""<math><mglyph src="https://evil.example/{MARK}-mglyph.png" alt="g"></mglyph></math>""",
    f"""<math><mtext><table><mglyph><style><img src=x onerror="alert('{MARK}-mxss')">""",
    f"""<math><mi definitionURL="javascript:alert('{MARK}-definition')">x</mi></math>""",
    f"""<math><mpadded voffset="-40em" lspace="-900px"><mtext>Score: 10 / 10</mtext></mpadded></math>""",
    f"""<math><mpadded height="0" depth="0"><mspace height="30em"></mspace><mtext>Score: 10 / 10</mtext></mpadded></math>""",
    r"$\smash{\raise{9em}{\text{Score: 10 / 10}}} \mathrlap{\text{covering}}$",
    f"""<math><mi style="position: fixed; top: 0; background: url(https://evil.example/{MARK}-css)">x</mi></math>""",
    f"""<math><mspace width="5000em" height="5000em" mathbackground="url(https://evil.example/{MARK}-bg)"></mspace></math>""",
    "$" + "{" * 3000 + "x" + "}" * 3000 + "$",  # nesting deep enough to break a recursive converter
    r"$\frac{a$ and $\left( x$",  # TeX that does not parse
]
HOSTILE_MARKDOWN = "## My notes\n\nHONEST-MATH: $\\mathbf{h}_t = \\tanh(\\mathbf{W}\\mathbf{x}_t)$\n\n" + "\n\n".join(HOSTILE_MATH)


class Formulas(inert.MathMLRenderer):
    """A renderer that only collects the formulas nbconvert's markdown parser finds: (TeX, display)."""

    def __init__(self):
        super().__init__(escape=False)
        self.found: list[tuple[str, bool]] = []

    def block_math(self, body: str) -> str:
        self.found.append((body, True))
        return ""

    def inline_math(self, body: str) -> str:
        self.found.append((body, False))
        return ""

    def latex_environment(self, name: str, body: str) -> str:
        self.found.append((f"\\begin{{{name}}}{body}\\end{{{name}}}", True))
        return ""


def formulas(markdown: str) -> list[tuple[str, bool]]:
    collector = Formulas()
    inert.MarkdownWithMath(renderer=collector).render(markdown)
    return collector.found


class MathOnPage(HTMLParser):
    """The MathML of a page: how many <math> elements, the TeX annotations, and the text of the formulas."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.math, self.annotations, self.math_text, self.depth = 0, [], [], 0
        self._annotation: list[str] | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "math":
            self.math, self.depth = self.math + 1, self.depth + 1
        elif tag == "annotation":
            self._annotation = []

    def handle_endtag(self, tag):
        if tag == "math":
            self.depth -= 1
        elif tag == "annotation" and self._annotation is not None:
            self.annotations.append("".join(self._annotation))
            self._annotation = None

    def handle_data(self, data):
        if self._annotation is not None:
            self._annotation.append(data)
        elif self.depth:
            self.math_text.append(data)


def submitted_formulas(course: Course) -> list[str]:
    """The TeX of every formula in the submission's markdown cells, but for the hostile cell's."""
    notebook = nbformat.read(course.submitted / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "markdown" and c.get("id") != "student-notes"]
    return [tex.strip() for cell in cells for tex, _ in formulas(cell.source)]


def loads_from_outside(markup: str) -> list[str]:
    """What in a page would fetch something from another machine, or load MathJax from anywhere."""
    page = Page(markup)
    found = [f"<{tag} {name}={value!r}>" for tag, attrs in page.elements for name, value in attrs.items()
             if name in ("src", "href", "data", "srcset", "poster") and tag != "a"
             and re.match(r"\s*(https?:)?//", value, re.IGNORECASE)]
    found += [f"css {hit!r}" for hit in re.findall(r"url\(\s*['\"]?\s*(?:https?:)?//[^)]*\)|@import[^;]*", markup, re.IGNORECASE)]
    code = re.sub(r"<!--.*?-->", "", markup, flags=re.DOTALL)  # nbgrader's templates say "Loading mathjax macro"
    found += [f"mathjax at {m.start()}" for m in re.finditer("mathjax", code, re.IGNORECASE)]
    found += [f"cdn at {m.start()}" for m in re.finditer(r"cdnjs|cdn\.jsdelivr|unpkg\.com", markup, re.IGNORECASE)]
    return found


# --- the pages of a graded submission ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    root = tmp_path_factory.mktemp("math")
    submitted, output = root / "submitted", root / "out"
    submit(submitted, STUDENT, ASSIGNMENT, with_markdown_cell(solved(ASSIGNMENT, {WRITTEN: ANSWER}), "setup", HOSTILE_MARKDOWN))
    return Course(submitted, output, isolated_env(root / "jupyter", submitted, output))


@pytest.fixture(scope="module")
def feedback(course) -> str:
    grade_class(course)
    return (course.output / "feedback" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()


@pytest.fixture(scope="module")
def grading_page(course, feedback, tmp_path_factory) -> tuple[int, str]:
    """formgrader's grading page of the submission, from the real Jupyter server."""
    return served_grading_page(course, ASSIGNMENT, STUDENT, tmp_path_factory.mktemp("server") / "jupyter.log")


def assert_shows_the_math_as_mathml(page: str, expected: list[str]) -> None:
    math = MathOnPage(page)
    assert len(expected) > 30  # the notebook's own formulas, and the written answer's
    assert [tex for tex in expected if tex not in math.annotations] == []  # every formula is MathML, with its TeX beside
    assert math.math >= len(expected) + 1  # the hostile cell's honest formula too
    text = "".join(math.math_text)
    assert all(symbol in text for symbol in "𝐐𝐊⊤∑α")  # \mathbf, \top, \sum, \alpha typeset
    assert "\\mathbf" not in text and "\\frac" not in text  # no TeX left in what a reader sees
    assert page.count(FALLBACK) <= 2  # only hostile TeX is left as written (the deep nesting and the unparsable)


def test_feedback_shows_the_math_as_mathml(course, feedback):
    assert_shows_the_math_as_mathml(feedback, submitted_formulas(course))


def test_feedback_loads_no_mathjax_no_script_and_nothing_from_outside(feedback):
    assert loads_from_outside(feedback) == []
    assert not re.search(r"<script\b", feedback, re.IGNORECASE)  # a feedback page runs nothing at all


def test_feedback_runs_nothing_of_the_hostile_math(feedback):
    assert executable_markup(feedback) == []
    assert forbidden_mathml(feedback) == []
    assert "HONEST-MATH" in Page(feedback).all_text


def test_formgrader_shows_the_math_as_mathml(course, grading_page):
    status, page = grading_page
    assert status == 200
    assert_shows_the_math_as_mathml(page, submitted_formulas(course))


def test_formgrader_loads_no_mathjax_and_nothing_from_outside(grading_page):
    _, page = grading_page
    assert loads_from_outside(page) == []
    scripts = [attrs["src"] for tag, attrs in Page(page).elements if tag == "script" and attrs.get("src")]
    assert scripts and all(src.startswith("/formgrader/static/") for src in scripts), scripts  # formgrader's own, served here


def test_formgrader_runs_nothing_of_the_hostile_math(grading_page):
    _, page = grading_page
    assert executable_markup(page) == []
    assert forbidden_mathml(page) == []


# --- every formula of the course ----------------------------------------------------------------------------

def course_markdown() -> list[tuple[str, int, str]]:
    """(notebook, cell index, source) of every markdown cell in solutions/."""
    cells = []
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cells += [(path.name, index, cell.source) for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"]
    return cells


def test_every_formula_in_the_solutions_converts_without_falling_back():
    found = [(name, index, tex, display) for name, index, source in course_markdown() for tex, display in formulas(source)]
    assert len(found) > 500 and sum(display for *_, display in found) > 30
    fallen_back = [(name, index, tex) for name, index, tex, display in found
                   if not inert.tex_to_mathml(tex, display).startswith("<math")]
    assert fallen_back == []


def test_every_markdown_cell_of_the_solutions_keeps_all_its_math():
    """Sanitized, each cell still holds one <math> per formula (the allowlist takes none away) and renders as markdown."""
    lost = []
    for name, index, source in course_markdown():
        block = inert.inert_markdown(source)
        math = MathOnPage(block.replace("&#10;", "\n"))
        expected = [tex.strip() for tex, _ in formulas(source)]
        if (block.startswith('<pre class="inert-markdown">') or math.math != len(expected) or math.annotations != expected
                or FALLBACK in block):
            lost.append((name, index))
    assert lost == []


def test_the_course_environments_become_tables():
    r"""aligned (latex2mathml has no such environment: written as align*), bmatrix and cases are MathML tables."""
    aligned = inert.tex_to_mathml("\n\\begin{aligned}\nf_t &= \\sigma(x) && \\text{forget gate}\\\\\ni_t &= \\tanh(x)\n\\end{aligned}\n",
                                  True)
    assert aligned.startswith('<math display="block">') and aligned.count("<mtr>") == 2
    assert "&amp;" not in aligned.split("<annotation")[0]  # no & left over as text
    assert "forget gate" in aligned and "linebreak" not in aligned
    for tex in (r"\begin{bmatrix} a \\ b \end{bmatrix}", r"|x| = \begin{cases} x & x \ge 0 \\ -x & x < 0 \end{cases}"):
        assert "<mtable" in inert.tex_to_mathml(tex, True), tex
    cases = inert.tex_to_mathml(r"f = \begin{cases} a, & j < \ell, \\[1.5ex] 0, & j \ge \ell. \end{cases}", True)
    assert cases.count("<mtr>") == 2 and "1.5ex" not in cases.split("<annotation")[0]  # \\[1.5ex] is a row break
    assert 'style="text-align: left' in cases  # MathML Core takes a column's alignment from CSS, not from columnalign
    assert "<mtext>num_hiddens</mtext>" in inert.tex_to_mathml(r"\text{num\_hiddens}", False)  # text-mode escapes undone
    assert ">arg<" in inert.tex_to_mathml(r"\arg\max_k y_k", False)  # a function name latex2mathml lacks


def test_the_layout_is_tex_like_in_mathml_core():
    """What browsers' MathML Core ignores in latex2mathml's output is written the way Core takes it."""
    assert "<mi>exp</mi><mspace width=\"0.1667em\"></mspace><mi>a</mi>" in inert.tex_to_mathml(r"\exp a", False)
    assert "<mi>tanh</mi><mo" in inert.tex_to_mathml(r"\tanh(x)", False)  # no space before a parenthesis
    assert '<mo lspace="0" rspace="0">attention</mo><mo' in inert.tex_to_mathml(r"\operatorname{attention}(q)", False)
    arrow = inert.tex_to_mathml(r"x \xrightarrow{W_1} h", False)
    assert "<mpadded>" in arrow and "voffset" not in arrow  # relative sizes, which would put the label beside the arrow
    assert 'style="font-family: monospace"' in inert.tex_to_mathml(r"\texttt{split\_heads}", False)


def test_code_keeps_its_dollars():
    source = "Inline `$x$` and `$$y$$`.\n\n```python\nprice = \"$5 or $$10\"\n```\n\n    $$z$$ and $w$\n"
    block = inert.inert_markdown(source)
    assert "<math" not in block
    assert "<code>$x$</code>" in block and "<code>$$y$$</code>" in block and "$5 or $$10" in block and "$$z$$ and $w$" in block


def test_unconvertible_tex_is_shown_as_written():
    for tex, display in ((r"\foo{x}", False), (r"\label{eq} x", True), ("x" * (inert.MAX_TEX + 1), False), ("a & b", False),
                         (r"\raisebox{1em}{x}", False)):
        markup = inert.tex_to_mathml(tex, display)
        delimiter = "$$" if display else "$"
        assert markup == f"<code {FALLBACK}>{delimiter}{tex.replace('&', '&amp;')}{delimiter}</code>", tex
    block = inert.inert_markdown("before $\\foo{<b>x</b>}$ after")
    assert "<code " in block and "&lt;b&gt;x&lt;/b&gt;" in block and "before" in block and "after" in block


def test_a_latex_output_is_shown_as_mathml():
    output = inert.inert_output(nbformat.v4.new_output("execute_result", data={"text/latex": "$$x^{2}$$", "text/plain": "x**2"}))
    assert "<math" in output.data["text/html"] and "<msup>" in output.data["text/html"]
    assert output.data["text/latex"] == "$$x^{2}$$" and output.data["text/plain"] == "x**2"
    with_html = inert.inert_output(nbformat.v4.new_output("display_data", data={"text/latex": "$y$", "text/html": "<b>y</b>"}))
    assert with_html.data["text/html"] == "<b>y</b>"  # the object's own HTML is shown, as before


# --- hostile input ------------------------------------------------------------------------------------------

def forbidden_mathml(markup: str) -> list[str]:
    """MathML in a page that could link, run, load or cover: elements outside the allowlist, and risky attributes."""
    found = []
    for tag, attrs in Page(markup).elements:
        if tag in ("maction", "annotation-xml", "mglyph", "malignmark"):
            found.append(f"<{tag}>")
        if tag in inert.MATHML_TAGS:
            for name, value in attrs.items():
                if name in ("href", "xlink:href", "src", "definitionurl", "actiontype") or name.startswith("on"):
                    found.append(f"<{tag} {name}={value!r}>")
                if name == "encoding" and value != inert.TEX_ENCODING:
                    found.append(f"<{tag} encoding={value!r}>")
                if name == "voffset" or (tag == "mpadded" and name in ("lspace", "height", "depth")):
                    found.append(f"<{tag} {name}={value!r}>")  # would paint content over the page's own
                if re.search(r"url\(|javascript:|position|expression", value, re.IGNORECASE):
                    found.append(f"<{tag} {name}={value!r}>")
    return found


@pytest.mark.parametrize("payload", HOSTILE_MATH, ids=range(len(HOSTILE_MATH)))
def test_hostile_math_comes_out_inert(payload):
    block = inert.inert_markdown(payload)
    assert executable_markup(block) == []
    assert forbidden_mathml(block) == []
    assert render_once_more_unchanged(block)


def render_once_more_unchanged(block: str) -> bool:
    """The template renders the cell's markdown once more: the sanitized block must pass through unchanged."""
    return inert.render_markdown(block).strip() == block


def test_the_converter_writes_no_markup_of_the_students():
    """latex2mathml copies \\text{...} into its output unescaped: the markup it would write is escaped text here."""
    markup = inert.tex_to_mathml(r"\text{<img/src=x/onerror=alert(1)>} + \href{javascript:alert(2)}{y}", False)
    assert "<img" not in markup and "&lt;img/src=x/onerror=alert(1)&gt;" in markup
    assert "href" not in markup.split("<annotation")[0]
    assert not inert.allowed_mathml_attribute("mi", "href", "https://example.org")
    for tag, name, value in (("mpadded", "voffset", "-.2em"), ("mpadded", "height", "0"), ("mpadded", "lspace", "1em"),
                             ("mspace", "width", "-1em"), ("mspace", "width", "5000em"), ("mpadded", "width", "+1em"),
                             ("mo", "lspace", "3em"), ("annotation", "encoding", "text/html"), ("mi", "mathcolor", "url(x)")):
        assert not inert.allowed_mathml_attribute(tag, name, value), (tag, name, value)
    for tag, name, value in (("mspace", "width", "0.167em"), ("mo", "lspace", "0.22em"), ("mpadded", "width", "0"),
                             ("mtable", "columnspacing", "0em 2em"), ("mo", "minsize", "1.2em"), ("mi", "mathvariant", "normal")):
        assert inert.allowed_mathml_attribute(tag, name, value), (tag, name, value)


# --- make formgrader ----------------------------------------------------------------------------------------

def test_make_formgrader_prints_its_link_last_and_the_exchange_is_writable(tmp_path):
    """The link is the last line of the start-up, it works, and the lab's course list finds a writable exchange."""
    submitted, output = tmp_path / "submitted", tmp_path / "out"
    submitted.mkdir()
    output.mkdir()  # as make grade leaves it
    env = isolated_env(tmp_path / "jupyter", submitted, output)
    env.pop("JUPYTER_TOKEN", None)
    port = free_port()
    # READY= : no prerequisite, so that the test never runs `make setup` (the environment is the one running the tests).
    command = ["make", "--no-print-directory", "formgrader", f"BIN={BIN}", "READY=", f"FORMGRADER_PORT={port}",
               f"SUBMISSIONS={submitted}", f"GRADING_OUTPUT={output}"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("formgrader: ") for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # anything the server still prints at start-up would come now
        shown = [line.rstrip("\n") for line in lines if line.strip()]
        link = re.fullmatch(rf"formgrader: http://localhost:{port}/formgrader\?token=([0-9a-f]{{32,}})", shown[-1])
        assert link, shown[-5:]
        token = link[1]
        assert sum(token in line for line in shown) == 1  # printed once, by the Makefile (the server's own lines hide it)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for path in ("/formgrader/api/assignments", "/courses", "/assignments?course_id=sequence-models"):
            request = urllib.request.Request(f"http://localhost:{port}{path}", headers={"Authorization": f"token {token}"})
            with opener.open(request, timeout=30) as response:
                assert response.status == 200, path
        time.sleep(1)
        assert (output / ".exchange").is_dir()
        assert not [line for line in lines if "Unwritable" in line or "exchange" in line.lower()], lines[-5:]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
