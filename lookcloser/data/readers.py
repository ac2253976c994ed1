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

Torchvision's readers are used for Stanford Cars, FGVC-Aircraft and Oxford-IIIT Pets (always with
``download=False``). Oxford Flowers-102 is read directly from the same two ``.mat`` files torchvision
uses, because torchvision rejects any ``.mat`` whose MD5 differs from the original release (a subset or a
re-saved copy).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..errors import LookcloserError
from .base import IMAGE_EXTENSIONS

Samples = list[tuple[str, int]]

__all__ = [
    "FORMATS",
    "DatasetFormat",
    "default_eval_split",
    "detect_format",
    "get_format",
    "read_boxes",
    "read_dataset",
]


# ----------------------------------------------------------------------------------------------------
# the format interface and shared helpers
# ----------------------------------------------------------------------------------------------------


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
    def require(cls, *paths: Path) -> None:
        """Raise a LookcloserError naming the first of ``paths`` that does not exist."""
        for path in paths:
            if not path.exists():
                raise LookcloserError(f"{path} is missing; {cls.name} data needs {cls.describe}")

    @classmethod
    def malformed(cls, path: Path, problem: str) -> LookcloserError:
        """The error for a file that exists but cannot be used."""
        return LookcloserError(f"{path}: {problem}; {cls.name} data needs {cls.describe}")


class _NestedFormat(DatasetFormat):
    """A format whose files may sit in a sub-folder with a fixed name (``folder``) of the given root."""

    folder: ClassVar[str] = ""

    @classmethod
    def home(cls, root: Path) -> Path:
        """``root/folder`` when that folder exists, else ``root`` itself."""
        nested = root / cls.folder
        return nested if nested.is_dir() else root


def _to_int(text: str, path: Path, fmt: type[DatasetFormat]) -> int:
    try:
        return int(text)
    except ValueError:
        raise fmt.malformed(path, f"{text!r} is not an integer id") from None


def _read_table(path: Path, fmt: type[DatasetFormat]) -> dict[str, str]:
    """Read a ``<id> <value>`` text file (the value may contain spaces) into an ordered dict.

    Raises:
        LookcloserError: the file is missing or a non-empty line has no value.
    """
    fmt.require(path)
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2:
                raise fmt.malformed(path, f"line {number} is {line.strip()!r}, not '<id> <value>'")
            table[parts[0]] = parts[1].strip()
    return table


def _load_mat(path: Path, fmt: type[DatasetFormat], *keys: str) -> list[np.ndarray]:
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


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` not starting with a dot, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
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


# ----------------------------------------------------------------------------------------------------
# CUB-200-2011 and NABirds: id tables in text files
# ----------------------------------------------------------------------------------------------------


class _CubStyle(_NestedFormat):
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
        images, labels, in_train, names = (_read_table(home / t, cls) for t in cls.TABLES)
        image_dir = home / "images"
        cls.require(image_dir)

        labels_path, split_path, names_path = (home / t for t in cls.TABLES[1:])
        declared = {_to_int(k, names_path, cls): v for k, v in names.items()}
        rows = []  # (relative path, class id, is train)
        for image_id, relpath in images.items():
            if image_id not in labels:
                raise cls.malformed(labels_path, f"no line for image id {image_id} of images.txt")
            if image_id not in in_train:
                raise cls.malformed(split_path, f"no line for image id {image_id} of images.txt")
            class_id = _to_int(labels[image_id], labels_path, cls)
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


# ----------------------------------------------------------------------------------------------------
# formats read through torchvision
# ----------------------------------------------------------------------------------------------------


class _TorchvisionFormat(_NestedFormat):
    """A format read by a torchvision dataset class, which wants the parent of a folder named ``folder``."""

    @classmethod
    def detect(cls, root: Path) -> bool:
        return all(p.exists() for p in cls.markers(cls.home(root)))

    @classmethod
    def markers(cls, home: Path) -> list[Path]:
        """Paths whose presence identifies the format."""
        raise NotImplementedError

    @classmethod
    def required(cls, home: Path, split: str) -> list[Path]:
        """Paths that must exist to read ``split``."""
        raise NotImplementedError

    @classmethod
    def open(cls, root: Path, split: str, factory: Callable[..., Any], **kwargs: Any) -> Any:
        """Check the files, then build the torchvision dataset with ``download=False``.

        Raises:
            LookcloserError: a required file is missing, the folder is not named ``folder``, or torchvision
                fails on the files.
        """
        home = cls.home(root)
        cls.require(*cls.required(home, split))
        if home.name != cls.folder:
            raise LookcloserError(
                f"torchvision reads {cls.name} data only from a folder named {cls.folder}; "
                f"rename {home} to {cls.folder} or move its content into {home / cls.folder}"
            )
        try:
            return factory(str(home.parent), split=split, download=False, **kwargs)
        except (RuntimeError, OSError, KeyError, ValueError, IndexError) as e:
            raise LookcloserError(
                f"cannot read {cls.name} data in {home} ({e!r}); it needs {cls.describe}"
            ) from e


class StanfordCars(_TorchvisionFormat):
    """Stanford Cars in torchvision's layout; the root may be ``stanford_cars`` or its parent."""

    name = "cars"
    splits = ("train", "test")
    folder = "stanford_cars"
    describe = (
        "stanford_cars/devkit/cars_meta.mat, stanford_cars/devkit/cars_train_annos.mat, "
        "stanford_cars/cars_test_annos_withlabels.mat, stanford_cars/cars_train/ and stanford_cars/cars_test/"
    )

    @classmethod
    def markers(cls, home: Path) -> list[Path]:
        return [home / "devkit"]

    @classmethod
    def required(cls, home: Path, split: str) -> list[Path]:
        meta = home / "devkit" / "cars_meta.mat"
        if split == "train":
            return [meta, home / "devkit" / "cars_train_annos.mat", home / "cars_train"]
        return [meta, home / "cars_test_annos_withlabels.mat", home / "cars_test"]

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        from torchvision.datasets import StanfordCars as TvCars

        ds = cls.open(root, split, TvCars)
        return [(p, int(y)) for p, y in ds._samples], [str(c) for c in ds.classes]


class Aircraft(_TorchvisionFormat):
    """FGVC-Aircraft labelled by variant; the root may be ``fgvc-aircraft-2013b`` or its parent."""

    name = "aircraft"
    splits = ("train", "val", "trainval", "test")
    folder = "fgvc-aircraft-2013b"
    level: ClassVar[str] = "variant"
    CLASS_FILES: ClassVar[dict[str, str]] = {
        "variant": "variants.txt",
        "family": "families.txt",
        "manufacturer": "manufacturers.txt",
    }
    describe = (
        "fgvc-aircraft-2013b/data/variants.txt, fgvc-aircraft-2013b/data/images_variant_<split>.txt "
        "and fgvc-aircraft-2013b/data/images/"
    )

    @classmethod
    def markers(cls, home: Path) -> list[Path]:
        return [home / "data" / cls.CLASS_FILES[cls.level]]

    @classmethod
    def required(cls, home: Path, split: str) -> list[Path]:
        data = home / "data"
        return [data / cls.CLASS_FILES[cls.level], data / f"images_{cls.level}_{split}.txt", data / "images"]

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        from torchvision.datasets import FGVCAircraft

        ds = cls.open(root, split, FGVCAircraft, annotation_level=cls.level)
        return [(str(p), int(y)) for p, y in zip(ds._image_files, ds._labels)], list(ds.classes)


class AircraftFamily(Aircraft):
    """FGVC-Aircraft labelled by family (70 classes)."""

    name = "aircraft_family"
    level = "family"
    describe = (
        "fgvc-aircraft-2013b/data/families.txt, fgvc-aircraft-2013b/data/images_family_<split>.txt "
        "and fgvc-aircraft-2013b/data/images/"
    )


class AircraftManufacturer(Aircraft):
    """FGVC-Aircraft labelled by manufacturer (30 classes)."""

    name = "aircraft_manufacturer"
    level = "manufacturer"
    describe = (
        "fgvc-aircraft-2013b/data/manufacturers.txt, "
        "fgvc-aircraft-2013b/data/images_manufacturer_<split>.txt and fgvc-aircraft-2013b/data/images/"
    )


class OxfordPets(_TorchvisionFormat):
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
    def markers(cls, home: Path) -> list[Path]:
        return [home / "annotations" / "trainval.txt", home / "images"]

    @classmethod
    def required(cls, home: Path, split: str) -> list[Path]:
        return [home / "images", home / "annotations" / f"{split}.txt"]

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        from torchvision.datasets import OxfordIIITPet

        home = cls.home(root)
        names: dict[int, str] = {}
        samples: Samples = []
        for other in cls.splits:
            if other != split and not (home / "annotations" / f"{other}.txt").is_file():
                continue
            ds = cls.open(root, other, OxfordIIITPet)
            for path, label in zip(ds._images, ds._labels):
                breed = path.stem.rsplit("_", 1)[0]  # as torchvision: american_bulldog_12 -> American Bulldog
                names.setdefault(int(label), " ".join(w.title() for w in breed.split("_")))
            if other == split:
                samples = [(str(p), int(y)) for p, y in zip(ds._images, ds._labels)]
        return samples, [names.get(i, f"class_{i + 1:03d}") for i in range(max(names, default=-1) + 1)]


# ----------------------------------------------------------------------------------------------------
# formats in MATLAB files read directly
# ----------------------------------------------------------------------------------------------------


class Flowers102(_NestedFormat):
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
        (labels,) = _load_mat(home / "imagelabels.mat", cls, "labels")
        (image_ids,) = _load_mat(home / "setid.mat", cls, cls.SPLIT_KEYS[split])
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
        from torchvision.datasets import Flowers102 as TvFlowers

        for path in (home / "cat_to_name.json", root / "cat_to_name.json"):
            if path.is_file():
                try:
                    names = json.loads(path.read_text(encoding="utf-8"))
                    return [str(names.get(str(i + 1), f"class_{i + 1:03d}")) for i in range(count)]
                except (ValueError, AttributeError) as e:
                    raise cls.malformed(path, f"not a JSON object of names by class number ({e})") from e
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
            files, labels = _load_mat(path, cls, "file_list", "labels")
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


# ----------------------------------------------------------------------------------------------------
# iNaturalist-style COCO JSON
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# class folders
# ----------------------------------------------------------------------------------------------------


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
        return train.is_dir() and bool(_visible_dirs(train))

    @classmethod
    def available_splits(cls, root: Path) -> tuple[str, ...]:
        return tuple(s for s in cls.splits if s == "train" or (root / s).is_dir())

    @classmethod
    def read(cls, root: Path, split: str) -> tuple[Samples, list[str]]:
        train = root / "train"
        cls.require(train)
        classes = [d.name for d in _visible_dirs(train)]
        if not classes:
            raise LookcloserError(f"{train} has no class folders; {cls.name} data needs {cls.describe}")
        label_of = {c: i for i, c in enumerate(classes)}
        cls.require(root / split)
        samples: Samples = []
        for folder in _visible_dirs(root / split):
            if folder.name not in label_of:
                raise LookcloserError(
                    f"class folder {folder} has no counterpart in {train}; add {train / folder.name} or remove it"
                )
            files = _image_files(folder)
            if split == "train" and not files:
                raise LookcloserError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            samples += [(f, label_of[folder.name]) for f in files]
        return samples, classes


# ----------------------------------------------------------------------------------------------------
# registry and entry points
# ----------------------------------------------------------------------------------------------------

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


def read_boxes(root: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """Bounding boxes of a CUB or NABirds data set from its optional ``bounding_boxes.txt``.

    Returns:
        ``{absolute image path: (x, y, width, height)}`` in pixels; empty when the file is absent.

    Raises:
        LookcloserError: the data is not CUB or NABirds, or the file is malformed.
    """
    path = _data_folder(root)
    cls = FORMATS[detect_format(path)]
    if not issubclass(cls, _CubStyle):
        raise LookcloserError(
            f"bounding boxes are read only for cub and nabirds data, and {path} holds {cls.name} data"
        )
    home = cls.home(path)
    boxes_path = home / "bounding_boxes.txt"
    if not boxes_path.is_file():
        return {}
    images = _read_table(home / "images.txt", cls)
    boxes = {}
    for image_id, value in _read_table(boxes_path, cls).items():
        try:
            x, y, w, h = (float(v) for v in value.split())
        except ValueError:
            raise cls.malformed(boxes_path, f"image {image_id} has {value!r}, not 'x y width height'") from None
        if image_id in images:
            boxes[str(home / "images" / images[image_id])] = (x, y, w, h)
    return boxes
