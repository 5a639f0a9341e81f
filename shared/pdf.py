"""Export notebooks to PDF, offline when a Chromium and MathJax are installed on this machine.

    python -m shared.pdf [--force] [notebook.ipynb ...]   # writes notebook.pdf next to each (default: all of notebooks/)
    python -m shared.pdf --install-config                 # makes JupyterLab's "Export Notebook As → WebPDF" use the same exporter

The exporter is nbconvert's WebPDF (HTML printed by a headless Chromium through Playwright) with four
changes: it prints with a Chromium or Chrome found on this machine (Playwright's own browser needs a
download), it loads MathJax from Debian's libjs-mathjax when that is installed (the default is a CDN),
it waits until MathJax has typeset the page before printing, and it lays the page out at the printed
width, so that every display equation prints whole (MathJax breaks long ones into lines; what cannot
be broken, a wide matrix, is scaled down to fit).

A notebook named on the command line must have been run (a PDF without outputs is not worth
handing in: `make run NB=...` runs one from a terminal), and an autograded copy is refused, since it
holds what only graders should see; --force exports either anyway.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_server.base.handlers import path_regex
from jupyter_server.nbconvert.handlers import NbconvertFileHandler
from jupyter_server.utils import url_path_join
from nbconvert.exporters import WebPDFExporter
from nbformat import NotebookNode
from tornado import web
from traitlets import Bool, Int, Unicode, default

ROOT = Path(__file__).resolve().parent.parent
LOCAL_MATHJAX = Path("/usr/share/javascript/mathjax/MathJax.js")  # Debian/Ubuntu package libjs-mathjax
BROWSER_COMMANDS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"]
MACOS_BROWSERS = [
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
]
INSTALL_HINT = (
    "install a browser: on Debian/Ubuntu `sudo apt-get install chromium libjs-mathjax` (or `make setup` as root); "
    "elsewhere (macOS, Colab) `python -m playwright install chromium`, or Google Chrome"
)
EXPORTER_NAME = "shared.pdf.CourseWebPDFExporter"  # nbconvert imports an exporter given by its dotted name
SERVER_CONFIG = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "course_pdf.json"

# Resolves once MathJax 2 (the version nbconvert's templates load) has typeset the page; false without MathJax.
WAIT_FOR_MATHJAX = """timeout => new Promise(resolve => {
    if (!window.MathJax || !window.MathJax.Hub) { resolve(false); return; }
    setTimeout(() => resolve(false), timeout);
    MathJax.Hub.Queue(() => resolve(true));
})"""
# Long code lines would run off the printed page and be cut; wrap them instead.
WRAP_LONG_LINES = "pre { white-space: pre-wrap; overflow-wrap: anywhere; }"
# The page is laid out, and MathJax breaks long equations into lines, at the width the paper leaves for
# text: MathJax typesets once, so a page laid out wider than the paper prints its equations cut off.
PAPER, PAPER_WIDTH_IN = "Letter", 8.5
PAGE_MARGIN_IN = 0.5  # the @page margin of nbconvert's lab template
PRINTED_WIDTH_PX = round((PAPER_WIDTH_IN - 2 * PAGE_MARGIN_IN) * 96)  # CSS pixels are 1/96 in
# A display equation that MathJax could not break (a wide matrix, one long term) is scaled down to its
# box; returns the scales it applied. MathJax 2's CommonHTML output is sized in em, so font-size scales it.
FIT_WIDE_EQUATIONS = """() => {
    const scales = [];
    for (const display of document.querySelectorAll('.MJXc-display, mjx-container[display="true"]')) {
        const room = display.clientWidth, needed = display.scrollWidth;
        if (room > 0 && needed > room) {
            const scale = Math.floor(1000 * room / needed) / 1000;
            display.style.fontSize = `${100 * scale}%`;
            scales.push(scale);
        }
    }
    return scales;
}"""
# nbgrader's delimiter: only the instructor's and the grader's copies hold it. Written in two parts, for the student
# bundle refuses any file that holds it whole (tools/student_bundle.py: a leaked hidden test).
HIDDEN_TESTS_BEGIN = "### BEGIN " + "HIDDEN TESTS"


def first_line(text: str) -> str:
    """The first line of an error message (Playwright's and nbformat's run over many lines)."""
    return next(iter(text.strip().splitlines()), "")


def find_browser() -> str | None:
    """Path of a Chromium or Chrome installed on this machine, or None."""
    for command in BROWSER_COMMANDS:
        if found := shutil.which(command):
            return found
    return next((path for path in MACOS_BROWSERS if Path(path).exists()), None)


class CourseWebPDFExporter(WebPDFExporter):
    """nbconvert's WebPDF exporter printing with a local browser, local MathJax, after the math is typeset."""

    browser_path = Unicode(help="Chromium or Chrome to print with; empty: Playwright's own Chromium.").tag(config=True)
    mathjax_timeout = Int(30_000, help="Longest wait for MathJax to typeset the page, in milliseconds.").tag(config=True)
    wait_for_mathjax = Bool(True, help="Print only after MathJax has typeset the page.").tag(config=True)

    @default("browser_path")
    def _browser_path_default(self) -> str:
        return find_browser() or ""

    @default("mathjax_url")
    def _mathjax_url_default(self) -> str:
        if LOCAL_MATHJAX.exists():
            return f"{LOCAL_MATHJAX.as_uri()}?config=TeX-AMS_CHTML-full,Safe"
        return WebPDFExporter.mathjax_url.default_value  # nbconvert's CDN

    @default("disable_sandbox")
    def _disable_sandbox_default(self) -> bool:
        # Chromium refuses to start its sandbox as root.
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def run_playwright(self, html: str) -> bytes:
        """Print the HTML page to PDF bytes (in a thread of its own: the caller may be running an event loop)."""
        with tempfile.TemporaryDirectory() as folder:
            page = Path(folder) / "notebook.html"
            page.write_text(html, encoding="utf-8")
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(self._print, page).result()

    def _print(self, page_file: Path) -> bytes:
        """Open page_file in a headless browser and print it."""
        try:
            from playwright.sync_api import Error as PlaywrightError
            from playwright.sync_api import sync_playwright
        except ModuleNotFoundError:
            raise RuntimeError("PDF export needs the playwright package: pip install playwright") from None

        args = [*self.browser_args, *(["--no-sandbox"] if self.disable_sandbox else [])]
        with sync_playwright() as playwright:
            try:
                # Signals belong to the caller (the Jupyter server, a student's kernel), not to the browser.
                browser = playwright.chromium.launch(
                    executable_path=self.browser_path or None, args=args,
                    handle_sigint=False, handle_sigterm=False, handle_sighup=False,
                )
            except PlaywrightError as error:
                which = self.browser_path or "Playwright's own Chromium"
                raise RuntimeError(f"could not start {which} ({first_line(str(error))}); {INSTALL_HINT}") from None
            try:
                page = browser.new_page(viewport={"width": PRINTED_WIDTH_PX, "height": 1000})
                page.emulate_media(media="print")
                page.goto(page_file.as_uri(), wait_until="load")
                page.add_style_tag(content=WRAP_LONG_LINES)
                if self.wait_for_mathjax and not page.evaluate(WAIT_FOR_MATHJAX, self.mathjax_timeout):
                    self.log.warning("MathJax did not typeset the page (%s): math may show as LaTeX source", self.mathjax_url)
                if scales := page.evaluate(FIT_WIDE_EQUATIONS):
                    self.log.info("scaled %d wide equation(s) to fit the page (%s)", len(scales), ", ".join(map(str, scales)))
                page.wait_for_timeout(self.page_render_timeout)
                return page.pdf(format=PAPER, print_background=True)
            finally:
                browser.close()


def was_run(notebook: NotebookNode) -> bool:
    """Whether some code cell has an execution count or an output (a notebook without code counts as run)."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return not code or any(cell.get("execution_count") or cell.get("outputs") for cell in code)


def grading_marks(notebook_path: Path, notebook: NotebookNode) -> list[str]:
    """What shows that this notebook is a grader's copy rather than a student's ([] when nothing does)."""
    from nbgrader.utils import compute_checksum

    marks = []
    if "autograded" in Path(notebook_path).resolve().parts:
        marks.append("it lies in an autograded/ folder")
    if any(cell.cell_type == "code" and HIDDEN_TESTS_BEGIN in cell.source for cell in notebook.cells):
        marks.append("it holds hidden tests")
    # Autograde puts back each test cell as the instructor wrote it, hidden tests included, with that text's
    # checksum; our grader then removes the hidden tests, so the checksum no longer matches the cell.
    tests = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade")
             and not cell.metadata["nbgrader"].get("solution") and cell.metadata["nbgrader"].get("checksum")]
    if any(compute_checksum(cell) != cell.metadata["nbgrader"]["checksum"] for cell in tests):
        marks.append("its test cells carry the checksums of their version with hidden tests")
    if "course_grading" in notebook.metadata or any(
        output.get("ename") == "HiddenCheckFailed" for cell in notebook.cells for output in cell.get("outputs", [])
    ):
        marks.append("it holds the grader's notes")
    return marks


def refusal(notebook_path: Path, notebook: NotebookNode, *, require_run: bool = True) -> str | None:
    """Why this notebook should not be exported without --force (one sentence), or None."""
    if marks := grading_marks(notebook_path, notebook):
        return (f"{notebook_path} is an autograded copy or an instructor's notebook ({'; '.join(marks)}): it holds what "
                "only graders should see, so it is not exported. Export the student's own notebook instead, or, to export "
                "this one anyway, "
                f"make pdf NB={notebook_path} FORCE=1 (python -m shared.pdf --force {notebook_path}).")
    if require_run and not was_run(notebook):
        return (f"{notebook_path} has never been run, so its PDF would have no outputs. Run it first: in Jupyter "
                f"Run > Run All Cells and save, or from a terminal make run NB={notebook_path}; then make pdf again "
                "(FORCE=1 exports it as it is).")
    return None


def export(notebook_path: Path, *, force: bool = False, require_run: bool = True) -> Path:
    """Write the notebook as a PDF next to it (same name, .pdf) and return the PDF's path.

    Raises ValueError for a missing or broken notebook, and, unless `force`, for one that was never run
    (when `require_run`) or is an autograded copy.
    """
    notebook_path = Path(notebook_path)
    if not notebook_path.is_file():
        raise ValueError(f"no such notebook: {notebook_path}")
    try:
        notebook = nbformat.read(notebook_path, as_version=4)
    except Exception as error:  # nbformat raises several kinds for a broken file
        raise ValueError(f"{notebook_path} is not a valid notebook ({type(error).__name__}: {first_line(str(error))})") from None
    if not force and (reason := refusal(notebook_path, notebook, require_run=require_run)):
        raise ValueError(reason)
    resources = {"metadata": {"name": notebook_path.stem, "path": str(notebook_path.parent)}}
    pdf, _ = CourseWebPDFExporter().from_notebook_node(notebook, resources=resources)
    pdf_path = notebook_path.with_suffix(".pdf")
    pdf_path.write_bytes(pdf)
    return pdf_path


def course_notebooks() -> list[Path]:
    """Every notebook of the student release, in course order."""
    return sorted(p for p in (ROOT / "notebooks").glob("*/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


class WebPDFHandler(NbconvertFileHandler):
    """Serves /nbconvert/webpdf/<path> (JupyterLab's WebPDF export) with the course's exporter."""

    @web.authenticated
    async def get(self, path: str) -> None:
        return await super().get(EXPORTER_NAME, path)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell jupyter_server this module is a server extension."""
    return [{"module": "shared.pdf"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Route WebPDF exports to the course's exporter (extension routes are matched before the server's own)."""
    route = url_path_join(serverapp.web_app.settings["base_url"], rf"/nbconvert/webpdf{path_regex}")
    serverapp.web_app.add_handlers(".*$", [(route, WebPDFHandler)])


def install_server_config(path: Path = SERVER_CONFIG) -> Path:
    """Enable this module as a Jupyter server extension for the environment of this Python; returns the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"shared.pdf": True}}}, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: export the given notebooks (default: all of notebooks/), or install the server config."""
    parser = argparse.ArgumentParser(prog="python -m shared.pdf", description="Export notebooks to PDF next to them.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to export (default: every notebook under notebooks/)")
    parser.add_argument("--install-config", action="store_true", help="make Jupyter's WebPDF export use this exporter")
    parser.add_argument("--force", action="store_true",
                        help="export a notebook that was never run, or an autograded copy (which holds what only graders should see)")
    args = parser.parse_args(argv)

    if args.install_config:
        print(f"WebPDF export configured: {install_server_config()}")
        if find_browser() is None:
            print(f"note: PDF export found no Chromium or Chrome here; {INSTALL_HINT}")
        return 0
    # Without names, every notebook of the release is exported, run or not, as it always was.
    named = bool(args.notebooks)
    notebooks = args.notebooks or course_notebooks()
    if not notebooks:
        print(f"error: no notebooks given and none in {ROOT / 'notebooks'}", file=sys.stderr)
        return 1
    if find_browser() is None:
        print("note: no Chromium or Chrome found, trying Playwright's own Chromium", file=sys.stderr)
    failed = 0
    for notebook in notebooks:
        try:
            print(f"wrote {export(notebook, force=args.force, require_run=named)}")
        except (ValueError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
