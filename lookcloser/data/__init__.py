"""Datasets: one spec syntax for every format, the synthetic generator, transforms.

A spec is ``FORMAT:PATH`` (``cub:/data/CUB_200_2011``), a bare folder whose format is detected from its
files, or ``synth[:classes=8,train=40,test=20,size=128,seed=0]`` for the built-in synthetic set.
"""

from __future__ import annotations

import importlib
import logging

from .files import IMAGE_EXTENSIONS, SYNTH_DEFAULTS, odd_entries, parse_synth_options

log = logging.getLogger(__name__)

# loaded on first use: parsing a spec and counting a data set's files need neither PyTorch nor Pillow
_LAZY = {
    "ImageDataset": "base", "Indexed": "base", "Skipped": "base", "Unreadable": "base", "collate": "base", "load_image": "base",
    "leave_sigterm_to_the_reader": "base",
    "sample_seed": "base", "SynthDataset": "synth", "open_synth": "synth", "write_synth": "synth",
    "build_transform": "transforms", "eval_transform": "transforms", "normalize_batch": "transforms",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_spec(spec: str) -> tuple[str | None, str]:
    """Split a spec into ``(format or None, path or options)``.

    ``synth`` and ``synth:...`` name the built-in set; where a folder ``./synth`` exists too, a warning says
    which was used (read the folder as ``./synth`` or ``folder:synth``). A ``word:`` prefix that is no
    format (``cbu:/data``) is an error listing the formats, unless the whole spec is an existing path.
    """
    import difflib
    import os

    from ..errors import LookcloserError
    from .readers import FORMATS, get_format

    spec = str(spec)
    for virtual in ("hf", "wds"):  # read through their own libraries, not a file-format reader
        if spec.startswith(virtual + ":"):
            return virtual, spec[len(virtual) + 1:]
    if spec == "synth" or spec.startswith("synth:"):
        if spec == "synth" and os.path.isdir("synth"):
            log.warning("--data synth is the built-in synthetic set; a folder ./synth exists too: pass ./synth "
                        "(or folder:synth) to read it")
        return "synth", spec[6:]
    head, sep, tail = spec.partition(":")
    if sep and (head in FORMATS or head.replace("-", "_").lower() in FORMATS):
        return get_format(head).name, tail
    # a Windows drive (C:) or an existing path with a colon is a path; any other word: is a mistyped format
    if sep and len(head) > 1 and head.replace("-", "").replace("_", "").isalnum() and not os.path.exists(spec):
        close = difflib.get_close_matches(head.lower(), [*FORMATS, "synth"], n=1)
        hint = f" (did you mean {close[0]}:?)" if close else ""
        raise LookcloserError(f"unknown data format {head!r} in {spec!r}{hint}; use one of "
                              f"{', '.join([*FORMATS, 'synth'])}, or give the folder alone to detect its format")
    return None, spec


HOLDOUT = "holdout"  # the split a run evaluates on when it holds out part of its training images


def holdout_indices(targets, share: float, seed: int = 0) -> list[int]:
    """Indices of the training images held out for evaluation: ``round(share * n)`` of each class's ``n``
    images, drawn at random with ``seed`` (the same whatever seed trains the model), at least one of a class
    with two or more images and never all of them. Sorted."""
    import random

    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(targets):
        by_class.setdefault(int(y), []).append(i)
    held = []
    for y, members in sorted(by_class.items()):
        if share <= 0 or len(members) < 2:
            continue
        k = min(max(round(share * len(members)), 1), len(members) - 1)
        held += random.Random(seed * 1_000_003 + y).sample(members, k)
    return sorted(held)


def open_dataset(spec: str, split: str = "train", transform=None, *, holdout: float = 0.0) -> ImageDataset:
    """Open one split of any supported data set.

    Args:
        spec: ``FORMAT:PATH``, a folder (format detected) or ``synth[:options]``.
        split: ``train``, ``test`` or ``val`` (as the format offers), or ``holdout``: the share ``holdout``
            of each class's training images (:func:`holdout_indices`), which ``train`` then leaves out.
        transform: applied to each RGB PIL image.
        holdout: the share of the training images held out (0: none; ``train`` is the whole split).
    """
    from ..errors import LookcloserError

    if split == HOLDOUT and not holdout > 0:
        raise LookcloserError(f"{spec} has a {HOLDOUT} split only when a share of its training images is held out; "
                              "train with --holdout (e.g. 0.1), or pick another split")
    if holdout > 0 and split in ("train", HOLDOUT):
        kept, held = split_holdout(_open(spec, "train", transform), holdout)
        return held if split == HOLDOUT else kept
    return _open(spec, split, transform)


def split_holdout(full: ImageDataset, share: float) -> tuple[ImageDataset, ImageDataset]:
    """A training split cut in two: ``(the images kept for training, the held-out ones)``
    (:func:`holdout_indices`), both from one reading of the split."""
    held = holdout_indices(full.targets, share)
    kept = sorted(set(range(len(full))) - set(held))
    return (full.subset(kept, f"{full.name} less {len(held)} held out"),
            full.subset(held, f"{full.name} held out {len(held)}"))


def _open(spec: str, split: str, transform) -> ImageDataset:
    from .base import ImageDataset
    from .synth import open_synth

    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        return open_synth(rest, split, transform)
    if fmt == "hf":
        from .hub import open_hub

        return open_hub(rest, split, transform)
    if fmt == "wds":
        from .shards import open_shards

        return open_shards(rest, split, transform)
    from .readers import read_dataset, read_object_boxes

    samples, classes, name = read_dataset(fmt, rest, split)
    ds = ImageDataset(samples, classes, transform, name=f"{name} ({split})")
    ds.object_boxes = read_object_boxes(fmt, rest)
    return ds


def read_counts(spec: str) -> tuple[str, dict[str, tuple[int, int] | str]]:
    """The format and, per split, ``(images, classes)`` or the reason it is unavailable, without decoding
    an image (and, for the text, MATLAB and JSON formats and the synthetic set, without loading PyTorch)."""
    from ..errors import LookcloserError

    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        o = parse_synth_options(rest)
        return "synth", {s: (o[s] * o["classes"], o["classes"]) for s in ("train", "test")}
    if fmt == "hf":
        from .hub import hub_counts

        return "hf", hub_counts(rest)
    if fmt == "wds":
        from .shards import shard_counts

        return "wds", shard_counts(rest)
    from .readers import FORMATS, detect_format, read_dataset

    fmt = fmt or detect_format(rest)
    counts: dict[str, tuple[int, int] | str] = {}
    for split in FORMATS[fmt].splits:
        try:
            samples, classes, _ = read_dataset(fmt, rest, split)
            counts[split] = (len(samples), len(classes))
        except LookcloserError as e:
            counts[split] = str(e)
            continue
        odd = odd_entries(path for path, _ in samples)  # a stat each: nothing is opened
        if odd:
            shown = "; ".join(f"{path} ({why})" for path, why in odd[:5]) + (f"; and {len(odd) - 5} more"
                                                                          if len(odd) > 5 else "")
            log.warning("%s split: %d of its %d entries are no image files and will be skipped as unreadable: %s",
                        split, len(odd), len(samples), shown)
    return fmt, counts


def _virtual_splits(fmt: str, rest: str) -> list[str]:
    """The split names of a Hugging Face dataset or of shards (``validation`` answering to ``val``)."""
    if fmt == "hf":
        from .hub import hub_splits, parse_hub

        return hub_splits(parse_hub(rest)[0])
    from .shards import read_info

    return ["val" if s == "validation" else s for s in read_info(rest)["splits"]]


def eval_split(spec: str) -> str:
    """The split used for evaluation by default: ``test`` where the format has it, else ``val``."""
    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        return "test"
    if fmt in ("hf", "wds"):
        return "test" if "test" in _virtual_splits(fmt, rest) else "val"
    from .readers import default_eval_split, detect_format

    return default_eval_split(fmt or detect_format(rest), rest)


def selection_split(spec: str) -> str:
    """The split a training run evaluates every epoch by default: ``val`` where the data set has one, else
    ``test`` (whose scores are then kept for the curves only; see ``TrainConfig.best_on_test``)."""
    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        return "test"
    if fmt in ("hf", "wds"):
        return "val" if "val" in _virtual_splits(fmt, rest) else eval_split(spec)
    from .readers import default_selection_split, detect_format

    return default_selection_split(fmt or detect_format(rest), rest)


__all__ = sorted([*_LAZY, "HOLDOUT", "IMAGE_EXTENSIONS", "SYNTH_DEFAULTS", "eval_split", "holdout_indices",
                  "open_dataset", "parse_spec", "selection_split", "split_holdout",
                  "parse_synth_options", "read_counts"])
