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

from conftest import BIN, ROOT
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


@pytest.fixture(scope="module")
def finished_notebook(tmp_path_factory) -> Path:
    """The solution of 04_attention executed in fast mode, in a folder of its own."""
    if pdf.find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium libjs-mathjax)")
    folder = tmp_path_factory.mktemp("finished")
    path = folder / f"{ASSIGNMENT}.ipynb"
    shutil.copy(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", path)
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
