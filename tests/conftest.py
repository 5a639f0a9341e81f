"""Shared fixtures: paths, and running the course's make targets with this interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BIN = Path(sys.executable).parent


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
