"""Readers for the on-disk formats of fine-grained data sets.

Each format is a small class in :data:`FORMATS` that recognises its folder layout (``detect``), says
which splits it offers and which files it expects (``splits``, ``describe``) and turns the data set's own
annotation files into ``(absolute path, 0-based label)`` samples plus class names in label order
(``read``). :func:`read_dataset` is the entry point: it checks the folder, the format name and the split
and turns every problem into one :class:`~lookcloser.errors.LookcloserError` that names the exact file or
folder at fault.

A data spec on the command line is ``[format:]path`` (see :mod:`lookcloser.data`); without a format the
first entry of :data:`FORMATS` whose ``detect`` accepts the folder is used, so the most specific layouts
come first and plain class folders come last.

One module per way of reading: ``tables`` (CUB, NABirds: id tables in text files),
``torchvision_formats`` (Stanford Cars, FGVC-Aircraft through torchvision's public dataset items),
``lists`` (Oxford-IIIT Pets' split lists), ``matlab`` (Flowers-102 and Stanford Dogs: ``.mat`` files read
directly, because torchvision rejects any Flowers ``.mat`` whose MD5 differs from the original release),
``coco`` (iNaturalist-style JSON), ``csvlists`` (``path,label`` lists) and ``folders`` (class folders, through torchvision's ``make_dataset``).
"""


from __future__ import annotations

import os
from pathlib import Path

from ...errors import LookcloserError
from .base import DatasetFormat, Samples
from .coco import CocoJson
from .csvlists import CsvLists
from .folders import ClassFolders
from .lists import OxfordPets
from .matlab import Flowers102, StanfordDogs
from .tables import Cub, NABirds
from .torchvision_formats import Aircraft, AircraftFamily, AircraftManufacturer, StanfordCars

__all__ = [
    "FORMATS",
    "DatasetFormat",
    "default_eval_split",
    "detect_format",
    "get_format",
    "read_dataset",
]


#: Registered formats in detection order: the most specific layouts first, plain class folders last.
FORMATS: dict[str, type[DatasetFormat]] = {
    f.name: f
    for f in (
        NABirds,
        Cub,
        StanfordCars,
        Aircraft,
        AircraftFamily,
        AircraftManufacturer,
        StanfordDogs,
        Flowers102,
        OxfordPets,
        CocoJson,
        CsvLists,
        ClassFolders,
    )
}


def get_format(fmt: str) -> type[DatasetFormat]:
    """The registry entry for a format name (``-`` and ``_`` are interchangeable, case is ignored).

    Raises:
        LookcloserError: the name is not registered.
    """
    key = fmt.strip().lower().replace("-", "_")
    if key not in FORMATS:
        raise LookcloserError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[key]


def _data_folder(root: str | os.PathLike) -> Path:
    """``root`` as an absolute path to an existing folder.

    Raises:
        LookcloserError: it does not exist or is not a folder.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise LookcloserError(
            f"data folder {path} does not exist; check the path (relative paths start at {Path.cwd()})"
        )
    if not path.is_dir():
        raise LookcloserError(f"data folder {path} is a file; give the folder that holds the data set")
    return Path(os.path.abspath(path))


def detect_format(root: str | os.PathLike) -> str:
    """The name of the first format in :data:`FORMATS` that recognises ``root``.

    Raises:
        LookcloserError: ``root`` is missing, or no format recognises it (the message lists every format
            with the files it expects).
    """
    path = _data_folder(root)
    for name, fmt in FORMATS.items():
        if fmt.detect(path):
            return name
    expected = "; ".join(f"{name} ({fmt.describe})" for name, fmt in FORMATS.items())
    raise LookcloserError(
        f"cannot tell the format of the data in {path}, which matches none of: {expected}; "
        f"add the missing files, or prefix the data spec with the format, e.g. cub:{path}"
    )


def default_eval_split(fmt: str, root: str | os.PathLike | None = None) -> str:
    """The split to evaluate on: ``test`` if the format (or, given ``root``, the data) has it, else ``val``.

    There is no silent ``test`` -> ``val`` fallback in :func:`read_dataset`; ask this function instead.
    """
    cls = get_format(fmt)
    splits = cls.available_splits(_data_folder(root)) if root is not None else cls.splits
    return "test" if "test" in splits else "val"


def default_selection_split(fmt: str, root: str | os.PathLike | None = None) -> str:
    """The split a training run evaluates every epoch (and may choose best.pt on): ``val`` where the data
    has one, so the test split stays unseen; else what :func:`default_eval_split` gives."""
    cls = get_format(fmt)
    splits = cls.available_splits(_data_folder(root)) if root is not None else cls.splits
    return "val" if "val" in splits else default_eval_split(fmt, root)


def read_object_boxes(fmt: str | None, root: str | os.PathLike) -> dict[str, tuple[float, float, float, float]] | None:
    """The data set's object boxes ``(x, y, width, height)`` by absolute image path, where its format gives
    them (CUB's ``bounding_boxes.txt``); None otherwise."""
    path = _data_folder(root)
    cls = get_format(fmt) if fmt is not None else FORMATS[detect_format(path)]
    return cls.object_boxes(path)


def read_dataset(fmt: str | None, root: str | os.PathLike, split: str) -> tuple[Samples, list[str], str]:
    """Read one split of a data set.

    Args:
        fmt: a name in :data:`FORMATS`, or None to detect it.
        root: the data folder.
        split: a split the format offers, or one of its aliases (``train`` for pets' ``trainval``).

    Returns:
        ``(samples, classes, name)``: ``(absolute path, label)`` pairs, class names in label order and a
        name such as ``cub:/data/CUB_200_2011`` for messages.

    Raises:
        LookcloserError: unknown format, missing folder, unknown split, missing or malformed annotation
            file, or an empty split.
    """
    cls = get_format(fmt) if fmt is not None else None
    path = _data_folder(root)
    if cls is None:
        cls = FORMATS[detect_format(path)]
    split = cls.aliases.get(split, split)
    offered = cls.available_splits(path)
    if split not in offered:
        raise LookcloserError(
            f"{cls.name} data in {path} has no split {split!r}; use one of {', '.join(offered)}"
        )
    samples, classes = cls.read(path, split)
    if not samples:
        raise LookcloserError(
            f"the {split} split of the {cls.name} data in {path} has no images; check its annotation files"
        )
    return [(os.path.abspath(p), int(y)) for p, y in samples], classes, f"{cls.name}:{path}"
