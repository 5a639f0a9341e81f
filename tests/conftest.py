"""Shared fixtures: paths, running the course's make targets with this interpreter, and TinyStories data.

TinyStories: the session always has prepared splits (notebook 08, its grading and `make` calls read them
through shared.tinystories.data_dir()). They are data/tiny/ when `make data` prepared it; otherwise the
course's slice, or where this machine has none the committed sample tests/data/tinystories-sample,
is prepared into a temporary COURSE_DATA_DIR set for the whole session. Tests about the slice itself
(its checksums, its split sizes) ask for the `slice_dir` fixture and skip without it.

$COURSE_TINYSTORIES_SLICE overrides where the slice is looked for: `none` behaves as if this machine had
no slice (to check that the suite passes on a fresh clone without ../shared), a folder is the slice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BIN = Path(sys.executable).parent

SLICE_VARIABLE = "COURSE_TINYSTORIES_SLICE"
SLICE_PLACES = (ROOT.parent / "shared" / "data" / "tinystories", Path("/work/shared/data/tinystories"))
SAMPLE_DIR = ROOT / "tests" / "data" / "tinystories-sample"  # 400 stories of the slice's valid.txt, see its SOURCE.md
NO_SLICE = (f"needs the course's TinyStories slice (../shared/data/tinystories or ${SLICE_VARIABLE}), which is not on "
            "this machine; the tests that only need some stories use tests/data/tinystories-sample instead")


def _has_text_files(folder: Path) -> bool:
    return (folder / "train.txt").is_file() and (folder / "valid.txt").is_file()


def tinystories_slice() -> Path | None:
    """The course's TinyStories slice (a folder with train.txt and valid.txt), or None where there is none.

    $COURSE_TINYSTORIES_SLICE, when set, decides: `none` means none, anything else is the slice's folder (which
    must then hold both files). Unset: <repository>/../shared/data/tinystories, else /work/shared/data/tinystories.
    """
    setting = os.environ.get(SLICE_VARIABLE, "").strip()
    if setting.lower() == "none":
        return None
    if setting:
        folder = Path(setting).expanduser().resolve()
        if not _has_text_files(folder):
            raise FileNotFoundError(f"{SLICE_VARIABLE}={setting}: that folder does not hold train.txt and valid.txt "
                                    f"(set {SLICE_VARIABLE}=none to run as if there were no slice)")
        return folder
    return next((place for place in SLICE_PLACES if _has_text_files(place)), None)


def tinystories_source() -> Path:
    """What the tests prepare TinyStories from: the slice where there is one, else the committed sample."""
    return tinystories_slice() or SAMPLE_DIR


@pytest.fixture(scope="session")
def slice_dir() -> Path:
    """The course's TinyStories slice; skips tests about the slice itself where this machine has none."""
    found = tinystories_slice()
    if found is None:
        pytest.skip(NO_SLICE)
    return found


@pytest.fixture(scope="session")
def source_dir() -> Path:
    """The slice, or the sample where there is no slice: for tests of the rules that any copy follows."""
    return tinystories_source()


def _readable_by_all(folder: Path) -> None:
    """Graded kernels run under another user id (and the as-run tests as a normal user): they must read the data."""
    for parent, folders, names in os.walk(folder):
        os.chmod(parent, 0o755)
        for name in names:
            os.chmod(os.path.join(parent, name), 0o644)


@pytest.fixture(scope="session", autouse=True)
def course_data():
    """Prepared TinyStories splits for the whole session: returns the folder they were prepared from, None for data/tiny.

    data/tiny (or $COURSE_DATA_DIR/tiny) as `make data` left it, when all three splits are there. Otherwise the
    slice, or the sample, is prepared into a temporary folder and COURSE_DATA_DIR points at it until the session
    ends, in os.environ, so that subprocesses, `make` calls, notebook kernels and graded kernels inherit it.
    """
    from shared import tinystories

    if all(tinystories.split_path(split).is_file() for split in tinystories.SPLITS):
        yield None
        return
    source = tinystories_source()
    home = Path(tempfile.mkdtemp(prefix="course-test-data-"))
    try:
        tinystories.prepare(source, home / "tiny", log=lambda line: None)
        _readable_by_all(home)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("COURSE_DATA_DIR", str(home))
            yield source
    finally:
        shutil.rmtree(home, ignore_errors=True)


def make(target: str, *variables: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `make target` with this interpreter's environment (BIN overrides the Makefile's .venv)."""
    result = subprocess.run(
        ["make", "--no-print-directory", target, f"BIN={BIN}", *variables],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})},
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"make {target} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def assignment_names() -> list[str]:
    from notebooks import assignments

    return assignments()
