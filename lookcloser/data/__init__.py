"""Datasets: one spec syntax for every format, the synthetic generator, transforms.

A spec is ``FORMAT:PATH`` (``cub:/data/CUB_200_2011``), a bare folder whose format is detected from its
files, or ``synth[:classes=8,train=40,test=20,size=128,seed=0]`` for the built-in synthetic set.
"""

from __future__ import annotations

import logging

from .base import ImageDataset, Skipped, Unreadable, collate, load_image, sample_seed
from .synth import SynthDataset, open_synth, write_synth
from .transforms import build_transform, eval_transform

log = logging.getLogger(__name__)


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


def open_dataset(spec: str, split: str = "train", transform=None) -> ImageDataset:
    """Open one split of any supported data set.

    Args:
        spec: ``FORMAT:PATH``, a folder (format detected) or ``synth[:options]``.
        split: ``train``, ``test`` or ``val`` (as the format offers).
        transform: applied to each RGB PIL image.
    """
    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        return open_synth(rest, split, transform)
    from .readers import read_dataset

    samples, classes, name = read_dataset(fmt, rest, split)
    return ImageDataset(samples, classes, transform, name=f"{name} ({split})")


def eval_split(spec: str) -> str:
    """The split used for evaluation by default: ``test`` where the format has it, else ``val``."""
    fmt, rest = parse_spec(spec)
    if fmt == "synth":
        return "test"
    from .readers import default_eval_split, detect_format

    return default_eval_split(fmt or detect_format(rest), rest)


__all__ = ["ImageDataset", "Skipped", "SynthDataset", "build_transform", "collate", "eval_transform", "eval_split", "load_image",
           "open_dataset", "open_synth", "parse_spec", "sample_seed", "write_synth", "Unreadable"]
