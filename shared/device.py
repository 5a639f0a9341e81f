"""Pick the device a notebook trains on; reference checks always run on the CPU."""

import os

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """Return `preferred`, else $COURSE_DEVICE, else the best available of cuda, mps, cpu."""
    name = preferred or os.environ.get("COURSE_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
