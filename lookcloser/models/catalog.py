"""The registered methods and their options' defaults, read from the method files' source without
importing them (so ``lookcloser models`` answers without loading PyTorch).

A method file registers ``register_model("name")(X)`` where ``X`` is the method class, or a variant built
by ``_variant("name", doc, **defaults)`` of the file's method class. ``tests/test_models.py`` checks that
this listing equals the live registry's :func:`lookcloser.models.model_options` for every method.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

# the backbone families and what runs on them (`lookcloser models`, docs/methods.md); tests/test_transformers.py
# checks one model of each row
BACKBONE_FAMILIES = (
    ("CNNs (ResNet, EfficientNet, ConvNeXt, RegNet, MobileNet, Inception-v3, VGG, ...)",
     "every method; output strides 16 and 8 by dilation where timm can dilate the model"),
    ("transformers timm builds with a dynamic image size (ViT, DeiT, EVA, DINOv2, CLIP ViTs, Swin, SwinV2)",
     "every method, at the native stride (patch size; 32 for Swin)"),
    ("transformers with a fixed image size (BEiT, XCiT, CaiT, Hiera, LeViT, Twins, ...)",
     "none: their tokens cannot follow glances and zooms of other sizes"),
)

_NOT_METHODS = {"__init__", "base", "registry", "options", "catalog"}
_CREATE_ARGS = ("backbone", "num_classes", "pretrained")


def _init_defaults(cls: ast.ClassDef) -> dict[str, Any]:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            out = {}
            for a, d in zip(args.kwonlyargs, args.kw_defaults):
                if d is not None:
                    out[a.arg] = ast.literal_eval(d)
            return {"backbone": None, "num_classes": None, **out}
    return {}


def catalog() -> dict[str, dict[str, Any]]:
    """``{method: {option: default}}`` for every registered method, sorted by name (``create_model``'s own
    arguments ``backbone``, ``num_classes`` and ``pretrained`` left out)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem in _NOT_METHODS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = {n.name: _init_defaults(n) for n in tree.body if isinstance(n, ast.ClassDef)}
        method_classes = [c for c, d in classes.items() if d]
        variants: dict[str, dict[str, Any]] = {}
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name) and node.value.func.id == "_variant"):
                base = dict(classes[method_classes[-1]])
                base.update({k.arg: ast.literal_eval(k.value) for k in node.value.keywords})
                for t in node.targets:
                    variants[t.id] = base
        for node in ast.walk(tree):
            # register_model("name")(X)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Call)
                    and isinstance(node.func.func, ast.Name) and node.func.func.id == "register_model"):
                name = ast.literal_eval(node.func.args[0])
                target = node.args[0].id
                defaults = variants.get(target, classes.get(target))
                if defaults is None:
                    raise ValueError(f"{path.name}: cannot read the options of {target}")
                found[name] = {k: v for k, v in defaults.items() if k not in _CREATE_ARGS}
    return dict(sorted(found.items()))
