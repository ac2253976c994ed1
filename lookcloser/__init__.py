"""lookcloser: weakly supervised attention for fine-grained visual classification.

Public API::

    from lookcloser import create_model, list_models, open_dataset, load_checkpoint, Predictor

The names are imported on first use (PEP 562), so ``import lookcloser.layers`` or ``lookcloser --help``
loads only what it needs: a sub-package never pulls in the training engine through this file.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_API = {
    "LookcloserError": "lookcloser.errors",
    "Predictor": "lookcloser.predict",
    "create_model": "lookcloser.models",
    "list_models": "lookcloser.models",
    "load_checkpoint": "lookcloser.engine.checkpoint",
    "open_dataset": "lookcloser.data",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lookcloser' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
