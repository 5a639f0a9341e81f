"""What the grader and a notebook's kernel agree on: the variables that choose a checker's mode, and the outbox.

Both sides import this module: `shared.checks` (in the kernel) reads the variables once, when a notebook makes its
`Checker`; `tools/record_references.py`, `autograder/harness.py` and `autograder/sandbox.py` set them for the
processes they start, never in their own environment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

RECORD_REFERENCES = "COURSE_RECORD_REFERENCES"  # a folder: checks record their values there as references (make references)
HIDDEN_REFERENCES = "COURSE_HIDDEN_REFERENCES"  # a folder holding <assignment>.pt, in place of autograder/references
OUTBOX = "COURSE_GRADING_OUTBOX"  # a folder: hidden checks send their values there, for the grader to score
GRADING_EXECUTION = "NBGRADER_EXECUTION"  # set while a notebook runs to be graded: fast mode (nbgrader sets it too)
FAST = "COURSE_FAST"  # "1": training cells run at their smoke-test size

# What a sandboxed kernel keeps of its launcher's environment (sandbox.py clears the rest).
KERNEL_VARIABLES = (GRADING_EXECUTION, "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "COURSE_DATA_DIR", "GLOVE_DIR", "COURSE_DEVICE")

OUTBOX_SUFFIX = ".pt"


def outbox_file(outbox: Path, sequence: int) -> Path:
    """Where a kernel writes its `sequence`-th hidden-check message; names sort in the order they were sent."""
    return outbox / f"{time.time_ns()}-{sequence:05d}{OUTBOX_SUFFIX}"


def outbox_message(name: str, value: Any = None, error: str | None = None) -> dict:
    """A hidden check's message: {"name", "value"} or, when its value cannot be sent, {"name", "error"}."""
    return {"name": name, "error": error} if error is not None else {"name": name, "value": value}
