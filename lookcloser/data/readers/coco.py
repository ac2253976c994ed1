"""iNaturalist-style COCO JSON: images, annotations and categories in one file per split."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ...errors import LookcloserError
from .base import DatasetFormat, Samples


class CocoJson(DatasetFormat):
    """iNaturalist-style COCO JSON: ``train[YYYY].json``, ``val[YYYY].json``, maybe ``test[YYYY].json``.

    Each file has ``images`` (``id``, ``file_name`` relative to the root), ``annotations`` (``image_id``,
    ``category_id``) and ``categories`` (``id``, ``name``). Labels follow the sorted category ids of the
    *train* file, so train and val agree. An image's first annotation gives its label; images without
    one are left out. ``test`` is offered only when its file has annotations (iNaturalist's do not).
    """

    name = "coco"
    splits = ("train", "val")
    describe = (
        "train.json (or trainYYYY.json) and val.json (or valYYYY.json) with images, annotations and categories"
    )

    @staticmethod
    def files(root: Path, split: str) -> list[Path]:
        """``<split>.json`` / ``<split>YYYY.json`` files in ``root``."""
        pattern = re.compile(rf"{re.escape(split)}(\d{{4}})?\.json")
        return sorted(p for p in root.glob("*.json") if pattern.fullmatch(p.name))

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(cls.files(root, "train") or cls.files(root, "val"))

    @classmethod
    def available_splits(cls, root: Path) -> tuple[str, ...]:
        tests = cls.files(root, "test")
        if len(tests) == 1 and cls.load(tests[0]).get("annotations"):
            return (*cls.splits, "test")
        return cls.splits

    @classmethod
    def find(cls, root: Path, split: str) -> Path:
        """The single JSON file of ``split``.

        Raises:
            LookcloserError: there is none, or several.
        """
        found = cls.files(root, split)
        if not found:
            cls.require(root / f"{split}.json")  # raises, naming the file
        if len(found) > 1:
            raise LookcloserError(
                f"{root} has several {split} files ({', '.join(p.name for p in found)}); keep one of them there"
            )
        return found[0]

    @classmethod
    def load(cls, path: Path) -> dict:
        """Parse a JSON file into a dict."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise cls.malformed(path, f"not readable JSON ({e})") from e
        if not isinstance(data, dict):
            raise cls.malformed(path, "not a JSON object")
        return data

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        train_path = cls.find(root, "train")
        train = cls.load(train_path)
        path = train_path if split == "train" else cls.find(root, split)
        data = train if split == "train" else cls.load(path)
        try:
            categories = sorted((c["id"], str(c["name"])) for c in train["categories"])
            label_of = {cid: label for label, (cid, _) in enumerate(categories)}
            category_of: dict[Any, Any] = {}
            for a in data["annotations"]:
                category_of.setdefault(a["image_id"], a["category_id"])
            samples = []
            for image in data["images"]:
                if image["id"] not in category_of:
                    continue
                cid = category_of[image["id"]]
                if cid not in label_of:
                    raise cls.malformed(path, f"category id {cid!r} is not a category of {train_path.name}")
                samples.append((str(root / image["file_name"]), label_of[cid]))
        except (KeyError, TypeError) as e:
            raise cls.malformed(path, f"missing or malformed field {e}") from e
        return samples, [name for _, name in categories]
