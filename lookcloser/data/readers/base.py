"""The format interface every reader implements, and the helpers the readers share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import LookcloserError
from ..files import IMAGE_EXTENSIONS

Samples = list[tuple[str, int]]


class DatasetFormat:
    """One on-disk layout of a data set (an entry of :data:`FORMATS`).

    Attributes:
        name: registry key, also the ``name:`` prefix of a data spec.
        splits: the split names the format can offer.
        describe: the files and folders it expects, quoted in error messages.
        aliases: other accepted split names, mapped to names in ``splits``.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    describe: ClassVar[str] = ""
    aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like a data set in this format."""
        raise NotImplementedError

    @classmethod
    def available_splits(cls, root: Path) -> tuple[str, ...]:
        """The splits present in ``root`` (``splits`` unless the format's splits are optional)."""
        return cls.splits

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        """Read one split.

        Args:
            root: the data folder the user named.
            split: one of :meth:`available_splits` (aliases already resolved).

        Returns:
            ``(samples, classes)``: ``(absolute path, label)`` pairs with labels in ``0..K-1`` and the
            ``K`` class names in label order (the same for every split).

        Raises:
            LookcloserError: a file is missing or malformed.
        """
        raise NotImplementedError

    @classmethod
    def object_boxes(cls, root: Path) -> dict[str, tuple[float, float, float, float]] | None:
        """Each image's object box ``(x, y, width, height)`` in its own pixels, by absolute path, where the
        data set gives one (CUB's ``bounding_boxes.txt``); None where it gives none."""
        return None

    @classmethod
    def require(cls, *paths: Path) -> None:
        """Raise a LookcloserError naming the first of ``paths`` that does not exist."""
        for path in paths:
            if not path.exists():
                raise LookcloserError(f"{path} is missing; {cls.name} data needs {cls.describe}")

    @classmethod
    def malformed(cls, path: Path, problem: str) -> LookcloserError:
        """The error for a file that exists but cannot be used."""
        return LookcloserError(f"{path}: {problem}; {cls.name} data needs {cls.describe}")


class NestedFormat(DatasetFormat):
    """A format whose files may sit in a sub-folder with a fixed name (``folder``) of the given root."""

    folder: ClassVar[str] = ""

    @classmethod
    def home(cls, root: Path) -> Path:
        """``root/folder`` when that folder exists, else ``root`` itself."""
        nested = root / cls.folder
        return nested if nested.is_dir() else root


def to_int(text: str, path: Path, fmt: type[DatasetFormat]) -> int:
    try:
        return int(text)
    except ValueError:
        raise fmt.malformed(path, f"{text!r} is not an integer id") from None


def read_table(path: Path, fmt: type[DatasetFormat]) -> dict[str, str]:
    """Read a ``<id> <value>`` text file (the value may contain spaces) into an ordered dict.

    Raises:
        LookcloserError: the file is missing or a non-empty line has no value.
    """
    fmt.require(path)
    table: dict[str, str] = {}
    for number, line in enumerate(read_text_lines(path, fmt), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise fmt.malformed(path, f"line {number} is {line.strip()!r}, not '<id> <value>'")
        table[parts[0]] = parts[1].strip()
    return table


def read_text_lines(path: Path, fmt: type[DatasetFormat]) -> list[str]:
    """The lines of a UTF-8 text file; a file in another encoding is one clear error naming the byte."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise fmt.malformed(path, f"not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise fmt.malformed(path, f"cannot be read ({e.strerror})") from e


def load_mat(path: Path, fmt: type[DatasetFormat], *keys: str) -> list[np.ndarray]:
    """The named fields of a MATLAB file, each as an at-least-1-D array (cells become str arrays)."""
    from scipy.io import loadmat

    fmt.require(path)
    try:
        mat = loadmat(path, squeeze_me=True)
    except (OSError, ValueError, NotImplementedError) as e:
        raise fmt.malformed(path, f"not a readable MATLAB file ({e})") from e
    for key in keys:
        if key not in mat:
            raise fmt.malformed(path, f"no '{key}' field")
    return [np.atleast_1d(mat[key]) for key in keys]


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` not starting with a dot, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted, as absolute paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            os.path.join(dirpath, n)
            for n in filenames
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(os.path.abspath(p) for p in found)
