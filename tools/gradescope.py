"""Build a Gradescope autograder zip for one assignment: dist/gradescope/<assignment>.zip.

Usage: python tools/gradescope.py NN_name [--output dist/gradescope]

The zip follows Gradescope's autograder format: `setup.sh` (run once when Gradescope builds the image: the pinned
environment, bubblewrap) and `run_autograder` (run for each submission: autograder/gradescope_run.py grades
/autograder/submission/*.ipynb the way `make grade` does and writes /autograder/results/results.json), beside
`course/`, the part of this repository grading needs. It holds the assignment's hidden references and test cells
but never its solutions: the source notebook goes in as a grading copy whose answers are nbgrader's stubs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import ROOT, SOLUTIONS, assignments  # noqa: E402
from student_bundle import check_selection, imported_modules, needed_modules, notebook_code  # noqa: E402

ENVIRONMENT_FILES = ["requirements.txt", "requirements.lock", "pyproject.toml"]

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu, with internet access).
set -euo pipefail
COURSE=/autograder/source/course
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends bubblewrap curl ca-certificates >/dev/null
# The course pins Python 3.11 packages; uv brings that Python whatever the image's own version is.
curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin sh
uv venv --python 3.11 "$COURSE/.venv"
# torch from PyTorch's CPU index first: PyPI's build of the same version carries gigabytes of CUDA libraries.
uv pip install --python "$COURSE/.venv/bin/python" --index-url https://download.pytorch.org/whl/cpu "$(grep -E '^torch==' "$COURSE/requirements.lock")"
uv pip install --python "$COURSE/.venv/bin/python" -r "$COURSE/requirements.txt" -c "$COURSE/requirements.lock"
uv pip install --python "$COURSE/.venv/bin/python" --no-deps -e "$COURSE"
{prepare_data}chmod -R a+rX "$COURSE/shared" "$COURSE/data"  # graded kernels run under user ids of their own
"""

PREPARE_DATA = 'cd "$COURSE" && .venv/bin/python -m shared.tinystories  # the TinyStories splits this notebook reads\n'

RUN = """#!/usr/bin/env bash
# Gradescope runs this for each submission; GRADESCOPE_ROOT replaces /autograder for a trial run elsewhere.
ROOT="${GRADESCOPE_ROOT:-/autograder}"
COURSE="$(cd "$(dirname "$0")" && pwd)/course"
cd "$COURSE" && exec "$COURSE/.venv/bin/python" autograder/gradescope_run.py --root "$ROOT" --visibility "{visibility}"
"""


def tracked(*paths: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, check=True, text=True)
    return [Path(name) for name in listed.stdout.split("\0") if name]


def grading_copy(assignment: str) -> str:
    """The source notebook with every answer replaced by nbgrader's stub; test cells, hidden tests included, kept."""
    from nbgrader.preprocessors import ClearSolutions

    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    notebook, _ = ClearSolutions().preprocess(notebook, {})
    return nbformat.writes(notebook)


def course_files(assignment: str) -> dict[str, Path]:
    """{path in course/: file in this checkout} for everything grading `assignment` reads, solutions excepted.

    Of the `shared` package, only the modules the notebook imports, as in its student bundle: a student's kernel can
    read the package, so a module holding this assignment's answers (shared/attention.py for 04) must not be there.
    """
    check_selection([assignment])
    mine = {f"{assignment}.pt", f"{assignment}.mistakes.pt", f"{assignment}.cells.json", f"{assignment}.toml"}
    modules = needed_modules([assignment])
    files = {}
    for relative in tracked("autograder", "shared", "data/README.md", *ENVIRONMENT_FILES):
        per_assignment = relative.parts[:2] in {("autograder", "references"), ("autograder", "mistakes"), ("shared", "references")}
        if per_assignment and relative.name not in mine:
            continue
        if relative.parts[0] == "shared" and len(relative.parts) == 2 and relative.suffix == ".py" and relative.stem not in modules:
            continue
        files[str(relative)] = ROOT / relative
    return files


def build(assignment: str, output: Path, visibility: str = "visible") -> Path:
    """Write <output>/<assignment>.zip and return its path."""
    if assignment not in assignments():
        raise SystemExit(f"Unknown assignment {assignment}: the assignments are {', '.join(assignments())}.")
    needs_stories = "tinystories" in imported_modules(notebook_code(assignment))
    setup = SETUP.replace("{prepare_data}", PREPARE_DATA if needs_stories else "")
    output.mkdir(parents=True, exist_ok=True)
    archive = output / f"{assignment}.zip"
    partial = archive.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zip_file:
        for name, text in (("setup.sh", setup), ("run_autograder", RUN.replace("{visibility}", visibility))):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16  # executable once Gradescope unzips it
            zip_file.writestr(info, text)
        for name, path in sorted(course_files(assignment).items()):
            zip_file.write(path, f"course/{name}")
        zip_file.writestr(f"course/solutions/{assignment}/{assignment}.ipynb", grading_copy(assignment))
    partial.replace(archive)
    print(f"Gradescope autograder: {archive} ({archive.stat().st_size // 1024} KiB). Upload it as the assignment's "
          f"autograder (Ubuntu base image); students submit {assignment}.ipynb.")
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignment", help="e.g. 03_rnn_lstm")
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "gradescope")
    parser.add_argument("--visibility", default="visible", choices=("visible", "after_due_date", "after_published", "hidden"),
                        help="when students see each test's result")
    args = parser.parse_args()
    build(args.assignment, args.output, args.visibility)


if __name__ == "__main__":
    main()
