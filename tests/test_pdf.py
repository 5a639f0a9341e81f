"""PDF export: `python -m shared.pdf` and JupyterLab's WebPDF route both print a finished notebook offline."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import BIN, ROOT, make
from notebooks import errors, execute
from shared import pdf

ASSIGNMENT = "04_attention"
MARKDOWN_TEXT = "Attention is a soft lookup."  # first sentence of the introduction
CODE_TEXT = "def masked_softmax(X, valid_lens):"
LATEX_SOURCE = ["$$", "\\frac", "\\mathbf", "\\operatorname"]  # what unrendered math would leave in the text


@dataclass
class PdfFacts:
    pages: int
    text: str
    images: int


def poppler(tool: str, *args: str) -> str:
    """stdout of a poppler-utils tool, with an install hint when it is missing."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not found: apt-get install poppler-utils")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def read_pdf(path: Path) -> PdfFacts:
    """Page count, extracted text and number of embedded images of a PDF."""
    info = poppler("pdfinfo", str(path))
    pages = int(next(line.split()[1] for line in info.splitlines() if line.startswith("Pages:")))
    image_rows = poppler("pdfimages", "-list", str(path)).splitlines()[2:]  # two header lines
    return PdfFacts(pages, poppler("pdftotext", str(path), "-"), len(image_rows))


def assert_printed_well(path: Path) -> None:
    """The exported 04_attention notebook: several pages, its text, typeset math and the heatmap."""
    assert path.read_bytes()[:5] == b"%PDF-"
    facts = read_pdf(path)
    assert facts.pages > 1
    assert MARKDOWN_TEXT in facts.text
    assert CODE_TEXT in facts.text
    leftovers = [source for source in LATEX_SOURCE if source in facts.text]
    assert not leftovers, f"math was not typeset: {leftovers} in the PDF's text"
    assert facts.images >= 1, "the matplotlib heatmap is missing"


def without_hidden_tests(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with every hidden-test block removed, as a student's finished copy is."""
    for cell in notebook.cells:
        kept, hidden = [], False
        for line in cell.source.splitlines():
            if line.strip() in ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"):
                hidden = line.strip().startswith("### BEGIN")
            elif not hidden:
                kept.append(line)
        cell.source = "\n".join(kept)
    return notebook


def needs_a_browser() -> None:
    if pdf.find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium libjs-mathjax)")


@pytest.fixture(scope="module")
def finished_notebook(tmp_path_factory) -> Path:
    """The solution of 04_attention without its hidden tests, executed in fast mode, in a folder of its own."""
    needs_a_browser()
    folder = tmp_path_factory.mktemp("finished")
    path = folder / f"{ASSIGNMENT}.ipynb"
    nbformat.write(without_hidden_tests(nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)), path)
    notebook = execute(path, env={"COURSE_FAST": "1"})
    assert not errors(notebook)
    nbformat.write(notebook, path)
    return path


def test_the_command_writes_a_pdf_next_to_the_notebook(finished_notebook):
    result = subprocess.run([sys.executable, "-m", "shared.pdf", str(finished_notebook)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert_printed_well(finished_notebook.with_suffix(".pdf"))


def test_a_missing_or_broken_notebook_gets_a_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    assert pdf.main([str(tmp_path / "missing.ipynb"), str(broken)]) == 1
    messages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(messages) == 2
    assert messages[0] == f"error: no such notebook: {tmp_path / 'missing.ipynb'}"
    assert messages[1].startswith(f"error: {broken} is not a valid notebook")
    assert not (tmp_path / "broken.pdf").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, token: str) -> urllib.request.addinfourl:
    return urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"token {token}"}), timeout=120)


def test_jupyters_webpdf_export_uses_the_course_exporter(finished_notebook, tmp_path):
    config_dir = tmp_path / "config"
    pdf.install_server_config(config_dir / "jupyter_server_config.d" / "course_pdf.json")
    port, token = free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [str(BIN / "jupyter"), "server", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={finished_notebook.parent}"],
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")},
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        try:
            response = get(f"{base}/nbconvert/webpdf/{finished_notebook.name}?download=true", token)
        except urllib.error.HTTPError as error:
            pytest.fail(f"WebPDF export answered {error.code}: {(tmp_path / 'server.log').read_text()[-3000:]}")
        # nbconvert labels WebPDF output text/html; the attachment's name is what makes browsers save a PDF.
        assert f"{ASSIGNMENT}.pdf" in response.headers["Content-Disposition"]
        downloaded = tmp_path / "downloaded.pdf"
        downloaded.write_bytes(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert_printed_well(downloaded)


# Wide display equations: the page is laid out at the printed width, so MathJax breaks long equations where
# the paper ends, and what it cannot break is scaled down. Each equation below ends in a word found nowhere
# else: the PDF's text holds it only if the equation printed whole.
TERMS = " + ".join(f"x_{{{i}}} y_{{{i}}}" for i in range(1, 40))
WIDE_EQUATIONS = {
    "Zsum": rf"s = {TERMS} + \mathrm{{Zsum}}",
    "Zbrackets": rf"f = \left( {TERMS} + \mathrm{{Zbrackets}} \right)",
    "Zaligned": rf"\begin{{aligned}} a &= {TERMS} + \mathrm{{Zaligned}} \\ b &= 1 \end{{aligned}}",
    # A matrix row has nowhere to break: only scaling fits it.
    "Zmatrix": r"M = \begin{bmatrix} " + " & ".join(f"a_{{{i}}}" for i in range(1, 40)) + r" & \mathrm{Zmatrix} \end{bmatrix}",
}
OUTPUT_EQUATION = rf"$$ g = {TERMS} + \mathrm{{Zoutput}} $$"  # math in a cell's output (display(Math(...)))
# The end of each display equation of 07_gpt, as pdftotext writes it with the spaces taken out.
GPT_EQUATION_ENDS = [
    "γi+βi.",                    # LayerNorm
    "[v1,…,vm]=XWV+bV.",          # queries, keys and values
    "MHA(X)=[h1,…,hm]WO+bO.",     # attention weights, heads, MHA
    "(y)=x.",                     # split_heads / merge_heads
    "MLP(LayerNorm(X)).",         # the block
    "0≤2k<D,",                    # sinusoidal embeddings
    "andMij}.",                   # the right-hand side
    "=Yij].",                     # loss and accuracy
]


def squeezed_text(path: Path) -> str:
    """The PDF's text without any whitespace (MathJax's sub- and superscripts come out on lines of their own)."""
    return "".join(read_pdf(path).text.split())


def display_equations(notebook: nbformat.NotebookNode) -> list[str]:
    """The $$...$$ equations of the notebook's markdown cells."""
    return [m for cell in notebook.cells if cell.cell_type == "markdown" for m in cell.source.split("$$")[1::2]]


def test_every_display_equation_prints_whole(tmp_path):
    needs_a_browser()
    cells = [nbformat.v4.new_markdown_cell(f"A wide equation:\n\n$$ {latex} $$") for latex in WIDE_EQUATIONS.values()]
    output = nbformat.v4.new_output("display_data", data={"text/latex": OUTPUT_EQUATION, "text/plain": "<Math>"})
    cells.append(nbformat.v4.new_code_cell("display(Math(...))", execution_count=1, outputs=[output]))
    path = tmp_path / "wide.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    assert pdf.main([str(path)]) == 0
    text = squeezed_text(path.with_suffix(".pdf"))
    cut = [name for name in [*WIDE_EQUATIONS, "Zoutput"] if name not in text]
    assert not cut, f"these equations were cut at the right margin: {cut}"


def test_notebook_07s_equations_print_whole(tmp_path):
    needs_a_browser()
    path = tmp_path / "07_gpt.ipynb"
    shutil.copy(ROOT / "notebooks" / "07_gpt" / "07_gpt.ipynb", path)
    assert len(display_equations(nbformat.read(path, as_version=4))) == len(GPT_EQUATION_ENDS), \
        "07_gpt's display equations changed: update GPT_EQUATION_ENDS"
    assert pdf.main(["--force", str(path)]) == 0  # the release was never run: --force prints it as it is
    text = squeezed_text(path.with_suffix(".pdf"))
    assert not [end for end in GPT_EQUATION_ENDS if end not in text]


# What make pdf refuses without FORCE=1.

def code_notebook(*, run: bool) -> nbformat.NotebookNode:
    """A notebook with one code cell, with or without the output of a run."""
    cell = nbformat.v4.new_code_cell("print('hello')")
    if run:
        cell.execution_count, cell.outputs = 1, [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A notebook"), cell])


def test_make_pdf_on_a_notebook_never_run_says_so_and_names_make_run(tmp_path):
    path = tmp_path / "fresh.ipynb"
    nbformat.write(code_notebook(run=False), path)
    result = make("pdf", f"NB={path}", check=False)
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "has never been run" in message[0], result.stderr
    assert f"make run NB={path}" in message[0]
    assert "Traceback" not in result.stderr
    assert not path.with_suffix(".pdf").exists()


def test_only_a_notebook_named_on_the_command_line_must_have_been_run(tmp_path):
    assert pdf.refusal(tmp_path / "x.ipynb", code_notebook(run=False)) is not None
    assert pdf.refusal(tmp_path / "x.ipynb", code_notebook(run=False), require_run=False) is None  # plain make pdf
    assert pdf.refusal(tmp_path / "x.ipynb", code_notebook(run=True)) is None
    assert pdf.refusal(tmp_path / "x.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("$$x$$")])) is None


def grader_copies(tmp_path: Path) -> dict[str, tuple[Path, nbformat.NotebookNode]]:
    """A run copy of the 04_attention release, and, one mark of an autograded copy each, the grader's versions of it."""
    release = nbformat.read(ROOT / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    for cell in release.cells:
        if cell.cell_type == "code":
            cell.execution_count = 1
    source = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    from nbgrader.utils import compute_checksum

    copies = {"student": (tmp_path / "student.ipynb", release)}
    copies["folder"] = (tmp_path / "autograded" / "ada" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", release)
    # nbgrader's own autograde keeps the hidden tests it put back; ours removes them but leaves their checksum.
    hidden = nbformat.from_dict(release)
    restored = nbformat.from_dict(release)
    for index, cell in enumerate(release.cells):
        if cell.metadata.get("nbgrader", {}).get("grade") and not cell.metadata["nbgrader"].get("solution"):
            original = next(c for c in source.cells if c.get("id") == cell.get("id"))
            hidden.cells[index].source = original.source
            restored.cells[index].metadata.nbgrader.checksum = compute_checksum(original)
    copies["hidden tests"] = (tmp_path / "hidden.ipynb", hidden)
    copies["checksums"] = (tmp_path / "checksums.ipynb", restored)
    notes = nbformat.from_dict(release)
    notes.metadata["course_grading"] = {"anomalies": [{"grade_id": None, "note": "not copied from the submission: x"}]}
    copies["notes"] = (tmp_path / "notes.ipynb", notes)
    return copies


def test_each_mark_of_an_autograded_copy_is_recognised(tmp_path):
    copies = grader_copies(tmp_path)
    student_path, student = copies.pop("student")
    assert pdf.grading_marks(student_path, student) == []
    for kind, (path, notebook) in copies.items():
        assert pdf.grading_marks(path, notebook), f"{kind}: not recognised as an autograded copy"


def test_make_pdf_refuses_an_autograded_copy_unless_forced(tmp_path):
    needs_a_browser()
    path, notebook = grader_copies(tmp_path)["checksums"]
    nbformat.write(notebook, path)
    refused = make("pdf", f"NB={path}", check=False)
    assert refused.returncode != 0 and not path.with_suffix(".pdf").exists()
    message = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "autograded copy" in message[0] and f"make pdf NB={path} FORCE=1" in message[0], refused.stderr
    forced = make("pdf", f"NB={path}", "FORCE=1", check=False)
    assert forced.returncode == 0, forced.stderr
    assert MARKDOWN_TEXT in read_pdf(path.with_suffix(".pdf")).text


def test_plain_make_pdf_still_exports_every_release_notebook_run_or_not(tmp_path, monkeypatch):
    needs_a_browser()
    path = tmp_path / "fresh.ipynb"
    nbformat.write(code_notebook(run=False), path)
    monkeypatch.setattr(pdf, "course_notebooks", lambda: [path])  # what make pdf without NB= exports
    assert pdf.main([]) == 0
    assert "A notebook" in read_pdf(path.with_suffix(".pdf")).text
