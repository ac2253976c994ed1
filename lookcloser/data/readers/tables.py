"""CUB-200-2011 and NABirds: images, labels, splits and class names in ``<id> <value>`` text tables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

from .base import NestedFormat, Samples, read_table, to_int


class _CubStyle(NestedFormat):
    """Shared reader of the CUB-200-2011 text-table layout (also used by NABirds)."""

    splits = ("train", "test")
    TABLES: ClassVar[tuple[str, ...]] = (
        "images.txt",
        "image_class_labels.txt",
        "train_test_split.txt",
        "classes.txt",
    )

    @classmethod
    def looks_like_cub_tables(cls, home: Path) -> bool:
        """``images.txt`` plus at least one of the other tables (so a missing one is reported by name)."""
        return (home / "images.txt").is_file() and any((home / t).is_file() for t in cls.TABLES[1:])

    @staticmethod
    def class_name(raw: str) -> str:
        """The readable class name for a ``classes.txt`` value."""
        return raw

    @classmethod
    def class_ids(cls, declared: list[int], labelled: set[int]) -> list[int]:
        """The class ids that get labels, in label order."""
        raise NotImplementedError

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        home = cls.home(root)
        images, labels, in_train, names = (read_table(home / t, cls) for t in cls.TABLES)
        image_dir = home / "images"
        cls.require(image_dir)

        labels_path, split_path, names_path = (home / t for t in cls.TABLES[1:])
        declared = {to_int(k, names_path, cls): v for k, v in names.items()}
        rows = []  # (relative path, class id, is train)
        for image_id, relpath in images.items():
            if image_id not in labels:
                raise cls.malformed(labels_path, f"no line for image id {image_id} of images.txt")
            if image_id not in in_train:
                raise cls.malformed(split_path, f"no line for image id {image_id} of images.txt")
            class_id = to_int(labels[image_id], labels_path, cls)
            if class_id not in declared:
                raise cls.malformed(names_path, f"no line for class id {class_id} of image_class_labels.txt")
            flag = in_train[image_id]
            if flag not in ("0", "1"):
                raise cls.malformed(split_path, f"image id {image_id} has {flag!r}, not 1 (train) or 0 (test)")
            rows.append((relpath, class_id, flag == "1"))

        ids = cls.class_ids(sorted(declared), {class_id for _, class_id, _ in rows})
        label_of = {class_id: label for label, class_id in enumerate(ids)}
        want_train = split == "train"
        samples = [(str(image_dir / rel), label_of[cid]) for rel, cid, train in rows if train == want_train]
        return samples, [cls.class_name(declared[i]) for i in ids]


    @classmethod
    def object_boxes(cls, root: Path) -> dict[str, tuple[float, float, float, float]] | None:
        """``bounding_boxes.txt`` (``<image id> <x> <y> <width> <height>``), where present."""
        home = cls.home(root)
        path = home / "bounding_boxes.txt"
        if not path.is_file():
            return None
        images = read_table(home / "images.txt", cls)
        boxes = {}
        for image_id, value in read_table(path, cls).items():
            parts = value.split()
            try:
                x, y, w, h = (float(v) for v in parts)
            except ValueError:
                raise cls.malformed(path, f"image id {image_id} has {value!r}, not '<x> <y> <width> <height>'") from None
            if image_id not in images:
                raise cls.malformed(path, f"image id {image_id} is not in images.txt")
            boxes[os.path.abspath(home / "images" / images[image_id])] = (x, y, w, h)
        return boxes


class Cub(_CubStyle):
    """CUB-200-2011: ``classes.txt`` names look like ``001.Black_footed_Albatross``.

    All classes listed in ``classes.txt`` get a label (sorted by id), and the ``NNN.`` prefix is dropped
    from their names. The root may be the ``CUB_200_2011`` folder or its parent.
    """

    name = "cub"
    folder = "CUB_200_2011"
    describe = (
        "images.txt, image_class_labels.txt, train_test_split.txt, classes.txt and images/ "
        "(directly or inside CUB_200_2011/)"
    )

    @classmethod
    def detect(cls, root: Path) -> bool:
        return cls.looks_like_cub_tables(cls.home(root))

    @staticmethod
    def class_name(raw: str) -> str:
        return re.sub(r"^\d+\.", "", raw)

    @classmethod
    def class_ids(cls, declared: list[int], labelled: set[int]) -> list[int]:
        return declared


class NABirds(_CubStyle):
    """NABirds: CUB's tables plus ``hierarchy.txt``/``photographers.txt``.

    ``classes.txt`` also lists the inner nodes of the taxonomy, so only the classes that label at least
    one image (in any split) get a label, sorted by id. The root may be the ``nabirds`` folder or its
    parent.
    """

    name = "nabirds"
    folder = "nabirds"
    describe = (
        "images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, hierarchy.txt or "
        "photographers.txt and images/ (directly or inside nabirds/)"
    )

    @classmethod
    def detect(cls, root: Path) -> bool:
        home = cls.home(root)
        extra = ("hierarchy.txt", "photographers.txt")
        return cls.looks_like_cub_tables(home) and any((home / f).is_file() for f in extra)

    @classmethod
    def class_ids(cls, declared: list[int], labelled: set[int]) -> list[int]:
        return sorted(labelled)
