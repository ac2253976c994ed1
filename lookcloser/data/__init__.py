"""Datasets: one spec syntax for every format, the synthetic generator, transforms.

A spec is ``FORMAT:PATH`` (``cub:/data/CUB_200_2011``), a bare folder whose format is detected from its
files, or ``synth[:classes=8,train=40,test=20,size=128,seed=0]`` for the built-in synthetic set.
"""

from __future__ import annotations

from .base import ImageDataset, Skipped, collate, load_image
from .synth import SynthDataset, open_synth, write_synth
from .transforms import build_transform, eval_transform


def parse_spec(spec: str) -> tuple[str | None, str]:
    """Split a spec into ``(format or None, path or options)``."""
    from .readers import FORMATS, get_format

    spec = str(spec)
    if spec == "synth" or spec.startswith("synth:"):
        return "synth", spec[6:]
    head, sep, tail = spec.partition(":")
    if sep and (head in FORMATS or head.replace("-", "_").lower() in FORMATS):
        return get_format(head).name, tail
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
           "open_dataset", "open_synth", "parse_spec", "write_synth"]
