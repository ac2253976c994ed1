"""Lists of labelled files: ``train.csv``, ``test.csv`` and/or ``val.csv``, one ``path,label`` row per image.

For data that is neither class folders nor a known format. A path is absolute or relative to the folder
holding the list; a label is a class name (any text) or a class number. Class names are the sorted union of
the labels of every list in the folder (numerically sorted when all are whole numbers), so a split that
lacks a class still numbers the others as the rest do. A first row ``path,label`` (or ``image,class``,
``file,label``, ...) is a header and skipped; ``#`` starts a comment row.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .base import DatasetFormat, Samples, read_text_lines

_HEADS = {"path", "image", "file", "filename", "filepath", "image_path"}
_LABEL_HEADS = {"label", "class", "class_name", "category", "target", "species"}


class CsvLists(DatasetFormat):
    """``train.csv`` with ``test.csv`` and/or ``val.csv``: ``path,label`` rows."""

    name = "csv"
    splits = ("train", "test", "val")
    describe = "train.csv and test.csv and/or val.csv with path,label rows (a class name or number per image)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train.csv").is_file()

    @classmethod
    def available_splits(cls, root: Path) -> tuple[str, ...]:
        return tuple(s for s in cls.splits if (root / f"{s}.csv").is_file())

    @classmethod
    def rows(cls, path: Path) -> list[tuple[str, str]]:
        """``(path as written, label as written)`` of one list, header and comments skipped."""
        text = "\n".join(read_text_lines(path, cls))
        out = []
        for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise cls.malformed(path, f"row {number} is {','.join(row)!r}, not 'path,label'")
            file, label = row[0].strip(), row[1].strip()
            if number == 1 and file.lower() in _HEADS and label.lower() in _LABEL_HEADS:
                continue
            out.append((file, label))
        if not out:
            raise cls.malformed(path, "it lists no image")
        return out

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        lists = {s: root / f"{s}.csv" for s in cls.available_splits(root)}
        cls.require(root / f"{split}.csv")
        every = {s: cls.rows(p) for s, p in lists.items()}
        labels = {label for rows in every.values() for _, label in rows}
        numeric = all(label.isdigit() for label in labels)
        classes = sorted(labels, key=int) if numeric else sorted(labels)
        index = {c: i for i, c in enumerate(classes)}
        samples = [(file if os.path.isabs(file) else os.path.abspath(root / file), index[label])
                   for file, label in every[split]]
        return samples, classes
