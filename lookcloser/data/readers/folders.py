"""Class folders (``train/<class>/*``), listed with torchvision's ``make_dataset``."""

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
        from torchvision.datasets.folder import make_dataset

        samples = make_dataset(str(root / split), label_of, is_valid_file=_visible_images(root / split),
                               allow_empty=True)
        if split == "train":
            counts = {label for _, label in samples}
            empty = [c for c in classes if label_of[c] not in counts]
            if empty:
                raise LookcloserError(f"class folder {train / empty[0]} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return [(os.path.abspath(p), y) for p, y in samples], classes
