"""The registered methods: ``create_model``, ``list_models``, ``model_options``, ``register_model`` and the
:class:`Method` interface. The method files are imported (and so registered) on first use of the registry,
so that ``lookcloser.models.catalog`` can list them without loading PyTorch.
"""

from __future__ import annotations

import importlib

_API = {
    "Method": "base", "ModelOutput": "base", "SampleInputs": "base",
    "check_backbone": "registry", "check_methods": "registry", "create_model": "registry", "list_models": "registry",
    "model_options": "registry", "register_model": "registry", "validate_options": "registry",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(f"{__name__}.{_API[name]}")
        module.ensure_registered() if hasattr(module, "ensure_registered") else None
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
