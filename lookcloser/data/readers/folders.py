"""Class folders (``train/<class>/*``), listed without importing PyTorch or torchvision (so that
``lookcloser data info`` answers at once)."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import LookcloserError
from ..files import IMAGE_EXTENSIONS
from .base import DatasetFormat, Samples, visible_dirs


def _visible_images(top: Path):
    """A test for image files (by extension, any case) with no hidden folder or name below ``top``."""

    def visible(path: str) -> bool:
        rel = Path(path).relative_to(top).parts
        return path.lower().endswith(IMAGE_EXTENSIONS) and not any(part.startswith(".") for part in rel)

    return visible


def _list_images(top: Path, label_of: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every visible image below ``top/<class>/`` (sub-folders included, links followed),
    classes in sorted order, within a class by folder path and then file name."""
    visible = _visible_images(top)
    samples = []
    for name in sorted(label_of):
        folder = top / name
        if not folder.is_dir():
            continue
        for here, dirs, files in sorted(os.walk(folder, followlinks=True), key=lambda walk: walk[0]):
            # a folder named like an image is listed too, so that it is reported and counted as unreadable
            named = sorted(files + [d for d in dirs if d.lower().endswith(IMAGE_EXTENSIONS)])
            samples += [(p, label_of[name]) for p in (os.path.join(here, f) for f in named) if visible(p)]
    return samples


class ClassFolders(DatasetFormat):
    """Class folders: ``train/<class>/*`` and ``test/<class>/*`` and/or ``val/<class>/*``.

    Class names are the sorted sub-folder names of ``train/`` (hidden ones skipped) for every split.
    Images are found recursively, filtered by extension (case-insensitive) and sorted.
    """

    name = "folder"
    splits = ("train", "test", "val")
    describe = "train/<class>/ with images, and test/<class>/ or val/<class>/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        train = root / "train"
        return train.is_dir() and bool(visible_dirs(train))

    @classmethod
    def available_splits(cls, root: Path) -> tuple[str, ...]:
        return tuple(s for s in cls.splits if s == "train" or (root / s).is_dir())

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        train = root / "train"
        cls.require(train)
        classes = [d.name for d in visible_dirs(train)]
        if not classes:
            raise LookcloserError(f"{train} has no class folders; {cls.name} data needs {cls.describe}")
        label_of = {c: i for i, c in enumerate(classes)}
        cls.require(root / split)
        for folder in visible_dirs(root / split):
            if folder.name not in label_of:
                raise LookcloserError(
                    f"class folder {folder} has no counterpart in {train}; add {train / folder.name} or remove it"
                )
        samples = _list_images(root / split, label_of)
        if split == "train":
            counts = {label for _, label in samples}
            empty = [c for c in classes if label_of[c] not in counts]
            if empty:
                raise LookcloserError(f"class folder {train / empty[0]} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return [(os.path.abspath(p), y) for p, y in samples], classes
