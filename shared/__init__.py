"""Helpers shared by the course notebooks: checks, data, training, plotting, device choice."""

from shared.checks import CheckFailed, Checker
from shared.device import pick_device
from shared.training import fast_mode

__all__ = ["CheckFailed", "Checker", "fast_mode", "pick_device"]
