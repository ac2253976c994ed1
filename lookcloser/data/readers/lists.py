"""Oxford-IIIT Pets: one text list per split, ``<image> <class id> <species> <breed id>`` per line.

Read directly: torchvision's ``OxfordIIITPet`` has no public way to list its files without decoding them.
"""

from __future__ import annotations

from pathlib import Path

from .base import NestedFormat, Samples, read_text_lines


class OxfordPets(NestedFormat):
    """Oxford-IIIT Pets; the root may be ``oxford-iiit-pet`` or its parent. ``train`` means ``trainval``.

    Class names are derived as torchvision does (``american_bulldog_12`` -> ``American Bulldog``) but from
    both split files, so that labels and names agree even when a split lacks a class.
    """

    name = "pets"
    splits = ("trainval", "test")
    aliases = {"train": "trainval"}
    folder = "oxford-iiit-pet"
    describe = (
        "oxford-iiit-pet/annotations/trainval.txt, oxford-iiit-pet/annotations/test.txt "
        "and oxford-iiit-pet/images/"
    )

    @classmethod
    def detect(cls, root: Path) -> bool:
        home = cls.home(root)
        return (home / "annotations" / "trainval.txt").exists() and (home / "images").exists()

    @classmethod
    def rows(cls, path: Path) -> list[tuple[str, int]]:
        """``(image id, 0-based label)`` of one list file; lines starting with ``#`` are comments."""
        out = []
        for number, line in enumerate(read_text_lines(path, cls), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise cls.malformed(path, f"line {number} is {line.strip()!r}, not '<image> <class id> ...'")
            out.append((parts[0], int(parts[1]) - 1))
        return out

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        home = cls.home(root)
        cls.require(home / "images", home / "annotations" / f"{split}.txt")
        names: dict[int, str] = {}
        samples: Samples = []
        for other in cls.splits:
            path = home / "annotations" / f"{other}.txt"
            if other != split and not path.is_file():
                continue
            rows = cls.rows(path)
            for image_id, label in rows:
                breed = image_id.rsplit("_", 1)[0]  # as torchvision: american_bulldog_12 -> American Bulldog
                names.setdefault(label, " ".join(w.title() for w in breed.split("_")))
            if other == split:
                samples = [(str(home / "images" / f"{image_id}.jpg"), label) for image_id, label in rows]
        return samples, [names.get(i, f"class_{i + 1:03d}") for i in range(max(names, default=-1) + 1)]
