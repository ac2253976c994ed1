"""Oxford Flowers-102 and Stanford Dogs: labels and splits in MATLAB files, read directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from .base import DatasetFormat, NestedFormat, Samples, load_mat


class Flowers102(NestedFormat):
    """Oxford Flowers-102 in torchvision's layout; the root may be ``flowers-102`` or its parent.

    Read directly (not through torchvision, which insists on the original files' MD5). Class names come
    from a ``cat_to_name.json`` (``{"1": "pink primrose", ...}``) in the data folder or its parent when
    present, else from torchvision's list of the 102 names, else ``class_001``...
    """

    name = "flowers102"
    splits = ("train", "val", "test")
    folder = "flowers-102"
    SPLIT_KEYS: ClassVar[dict[str, str]] = {"train": "trnid", "val": "valid", "test": "tstid"}
    describe = "flowers-102/imagelabels.mat, flowers-102/setid.mat and flowers-102/jpg/image_NNNNN.jpg"

    @classmethod
    def detect(cls, root: Path) -> bool:
        home = cls.home(root)
        return (home / "imagelabels.mat").is_file() or (home / "setid.mat").is_file()

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        home = cls.home(root)
        (labels,) = load_mat(home / "imagelabels.mat", cls, "labels")
        (image_ids,) = load_mat(home / "setid.mat", cls, cls.SPLIT_KEYS[split])
        jpg = home / "jpg"
        cls.require(jpg)
        labels = labels.astype(int)
        if labels.min() < 1:
            raise cls.malformed(home / "imagelabels.mat", "labels must start at 1")
        samples = []
        for image_id in image_ids.astype(int).tolist():
            if not 1 <= image_id <= len(labels):
                raise cls.malformed(home / "setid.mat", f"image {image_id} has no label in imagelabels.mat")
            samples.append((str(jpg / f"image_{image_id:05d}.jpg"), int(labels[image_id - 1]) - 1))
        return samples, cls.class_names(root, home, int(labels.max()))

    @classmethod
    def class_names(cls, root: Path, home: Path, count: int) -> list[str]:
        """Names of labels ``0..count-1`` (see the class docstring for their source)."""
        for path in (home / "cat_to_name.json", root / "cat_to_name.json"):
            if path.is_file():
                try:
                    names = json.loads(path.read_text(encoding="utf-8"))
                    return [str(names.get(str(i + 1), f"class_{i + 1:03d}")) for i in range(count)]
                except (ValueError, AttributeError) as e:
                    raise cls.malformed(path, f"not a JSON object of names by class number ({e})") from e
        from torchvision.datasets import Flowers102 as TvFlowers  # its list of names; only when no file names them

        known = list(getattr(TvFlowers, "classes", []))
        if count <= len(known):
            return known[:count]
        return [f"class_{i + 1:03d}" for i in range(count)]


class StanfordDogs(DatasetFormat):
    """Stanford Dogs: ``<split>_list.mat`` (``file_list``, 1-based ``labels``) and images under ``Images/``.

    Class names are the folder names after the first dash (``n02085620-Chihuahua`` -> ``Chihuahua``),
    collected from both list files so every split gets the same names.
    """

    name = "dogs"
    splits = ("train", "test")
    describe = "train_list.mat, test_list.mat (with file_list and labels) and Images/<synset>-<Name>/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train_list.mat").is_file() or (root / "test_list.mat").is_file()

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        images = root / "Images"
        names: dict[int, str] = {}
        samples: Samples = []
        for other in cls.splits:
            path = root / f"{other}_list.mat"
            if other != split and not path.is_file():
                continue
            files, labels = load_mat(path, cls, "file_list", "labels")
            if len(files) != len(labels):
                raise cls.malformed(path, f"{len(files)} files but {len(labels)} labels")
            rows = [(str(f), int(y) - 1) for f, y in zip(files.tolist(), labels.astype(int).tolist())]
            for relpath, label in rows:
                folder = relpath.replace("\\", "/").split("/")[0]
                names.setdefault(label, folder.split("-", 1)[-1])
            if other == split:
                cls.require(images)
                samples = [(str(images / rel), label) for rel, label in rows]
        if names and min(names) < 0:
            raise cls.malformed(root / f"{split}_list.mat", "labels must start at 1")
        return samples, [names.get(i, f"class_{i + 1:03d}") for i in range(max(names, default=-1) + 1)]
