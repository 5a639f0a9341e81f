"""Helpers shared by the course notebooks: checks, data, training, plotting, device and thread choice."""

import importlib

# Imported on first use, so that tools which only need a small part of the package (the PDF
# exporter that Jupyter's server loads, `make check`) do not pay for importing torch.
_EXPORTS = {"CheckFailed": "shared.checks", "Checker": "shared.checks", "pick_device": "shared.device", "use_threads": "shared.device", "fast_mode": "shared.training"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
