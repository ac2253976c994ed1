"""The method registry: a plain dict filled by a decorator that refuses duplicate names."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from ..errors import LookcloserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Register a model factory (a class or function taking keyword options) under ``name``."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The keyword options a method accepts, with their defaults."""
    fn = _get(name)
    sig = inspect.signature(fn)
    return {k: p.default for k, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY or p.default is not p.empty}


def check_methods(names) -> list[str]:
    """``names`` as a list, after checking that each is a registered method (one clear error otherwise)."""
    names = list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise LookcloserError(f"unknown method(s) {unknown}; choose from {', '.join(list_models())}")
    return names


def _get(name: str):
    if name not in _REGISTRY:
        raise LookcloserError(f"unknown method {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, *, backbone: str = "resnet18", num_classes: int = 200, pretrained: bool = False,
                 **options) -> nn.Module:
    """Build a registered method.

    Args:
        name: method name, e.g. ``"baseline"``; see :func:`list_models`.
        backbone: any timm model name.
        num_classes: size of the classifier.
        pretrained: load offline ImageNet weights for the backbone.
        **options: method-specific keyword options; unset ones fall back to the method's defaults.
    """
    fn = _get(name)
    accepted = model_options(name)
    unknown = set(options) - set(accepted)
    if unknown:
        raise LookcloserError(
            f"method {name!r} has no option(s) {sorted(unknown)}; its options are: {', '.join(sorted(accepted))}")
    if num_classes < 1:
        raise LookcloserError(f"num_classes must be at least 1, got {num_classes}")
    model = fn(backbone=backbone, num_classes=num_classes, pretrained=pretrained, **options)
    model.method_name = name
    model.build_args = dict(backbone=backbone, num_classes=num_classes, pretrained=pretrained, **options)
    return model
