"""The method registry: a plain dict filled by a decorator that refuses duplicate names."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import LookcloserError
from .options import check_options, defaults

_REGISTRY: dict[str, Callable[..., Any]] = {}
BUILTIN = ("baseline", "rra", "tasn", "wsdan")  # the method files shipped with lookcloser


def ensure_registered() -> None:
    """Import the built-in method files, which register their methods (once)."""
    for name in BUILTIN:
        importlib.import_module(f"lookcloser.models.{name}")


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
    ensure_registered()
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The keyword options a method accepts, with their defaults."""
    return defaults(_get(name))


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A method's keyword options checked (name, type, range) and coerced; see :mod:`.options`."""
    return check_options(name, _get(name), options)


def check_methods(names) -> list[str]:
    """``names`` as a list, after checking that each is a registered method (one clear error otherwise)."""
    ensure_registered()
    names = list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise LookcloserError(f"unknown method(s) {unknown}; choose from {', '.join(list_models())}")
    return names


def _get(name: str):
    ensure_registered()
    if name not in _REGISTRY:
        raise LookcloserError(f"unknown method {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, *, backbone: str = "resnet18", num_classes: int = 200, pretrained: bool = False,
                 **options):
    """Build a registered method.

    Args:
        name: method name, e.g. ``"baseline"``; see :func:`list_models`.
        backbone: any timm model name.
        num_classes: size of the classifier.
        pretrained: load offline ImageNet weights for the backbone.
        **options: method-specific keyword options; unset ones fall back to the method's defaults.
    """
    fn = _get(name)
    for given in ("backbone", "num_classes", "pretrained"):
        if given in options:
            raise LookcloserError(f"{given} is an argument of create_model, not a method option; pass {given}=... "
                                  "(or --" + given.replace("_", "-") + " on the command line)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise LookcloserError(f"num_classes must be a whole number of at least 1, got {num_classes!r}")
    options = check_options(name, fn, options)
    model = fn(backbone=backbone, num_classes=num_classes, pretrained=pretrained, **options)
    model.method_name = name
    model.build_args = dict(backbone=backbone, num_classes=num_classes, pretrained=pretrained, **options)
    return model


def check_backbone(name: str, size: int = 96) -> dict:
    """What a backbone gives the methods, built with random weights: its kind, native stride, channels, the
    map of a ``size`` px image, and for each method whether it builds and runs a forward pass (``"ok"``) or
    the sentence that says why not."""
    import torch

    from ..backbones import Backbone

    torch.manual_seed(0)
    bb = Backbone(name).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        fmap = bb(x)
    report = {"backbone": bb.name, "kind": "transformer" if bb.tokens else "CNN", "stride": bb.output_stride,
              "channels": bb.channels, "map": list(fmap.shape[1:]), "size": size, "methods": {}}
    for method in list_models():
        try:
            model = create_model(method, backbone=name, num_classes=2).eval()
            with torch.no_grad():
                model(x)
            report["methods"][method] = "ok"
        except LookcloserError as e:
            report["methods"][method] = str(e)
    return report
