"""Hugging Face datasets as lookcloser data sets: ``hf:PATH[:image=COLUMN,label=COLUMN]``.

``PATH`` is a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` or a single ``Dataset``,
which is then the train split) or a folder of data files that ``datasets.load_dataset`` reads by itself
(parquet, arrow, an ``imagefolder``, ...), e.g. a dataset repository downloaded from the hub. Splits are the
dataset's own (``validation`` answers to ``val`` too). The image column is the one with an ``Image``
feature (else one named ``image`` or ``img``); the label column the one with a ``ClassLabel`` feature (else
one named ``label``, ``labels`` or ``fine_label``), and class names come from that feature; name either with
``image=`` and ``label=``. Reading uses the ``datasets`` library (``pip install datasets``): its memory-mapped
Arrow tables travel to the loader's worker processes without copying the images.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..errors import BadImageError, LookcloserError
from .base import ImageDataset, to_rgb

ALIASES = {"val": ("validation", "valid", "val"), "test": ("test",), "train": ("train",)}
IMAGE_NAMES = ("image", "img", "images", "picture")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "category")


def parse_hub(rest: str) -> tuple[str, dict[str, str]]:
    """``PATH[:image=COL,label=COL]`` → ``(PATH, {"image": COL, "label": COL})``."""
    path, options = rest, {}
    head, sep, tail = rest.rpartition(":")
    if sep and "=" in tail and "/" not in tail:
        path = head
        for item in tail.split(","):
            key, eq, value = item.partition("=")
            if not eq or key.strip() not in ("image", "label") or not value.strip():
                raise LookcloserError(f"hf: options are image=COLUMN and label=COLUMN, got {item!r} in {rest!r}")
            options[key.strip()] = value.strip()
    if not path:
        raise LookcloserError("hf: needs a folder, e.g. hf:/data/cub_hf or hf:/data/cub_hf:image=img,label=y")
    return path, options


_LOADED: dict[str, object] = {}  # path -> DatasetDict, loaded once per process


def load_hub(path: str):
    """The ``DatasetDict`` at ``path`` (``save_to_disk`` output or data files ``load_dataset`` reads)."""
    if path in _LOADED:
        return _LOADED[path]
    try:
        import datasets
    except ImportError:
        raise LookcloserError("hf: data needs the datasets library; pip install datasets") from None
    p = Path(path)
    if not p.exists():
        raise LookcloserError(f"{p} does not exist; give the folder a Hugging Face dataset was saved or downloaded to")
    try:
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            loaded = datasets.load_from_disk(str(p))
        else:
            loaded = datasets.load_dataset(str(p))
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise LookcloserError(f"{p} holds no dataset that the datasets library can read ({e}); give a folder "
                              "written by save_to_disk, or one of parquet/arrow files or an imagefolder") from e
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    _LOADED[path] = loaded
    return loaded


def hub_splits(path: str) -> list[str]:
    """The dataset's splits under lookcloser's names (``validation`` → ``val``)."""
    named = list(load_hub(path))
    out = []
    for split in named:
        ours = next((k for k, names in ALIASES.items() if split in names), split)
        out.append(ours)
    return out


def _split_name(splits, split: str, path: str) -> str:
    for name in ALIASES.get(split, (split,)):
        if name in splits:
            return name
    raise LookcloserError(f"the Hugging Face dataset at {path} has no split {split!r}; its splits are "
                          f"{', '.join(splits)}")


def _columns(ds, options: dict[str, str], path: str) -> tuple[str, str]:
    import datasets

    features = ds.features
    image = options.get("image") or next((c for c, f in features.items() if isinstance(f, datasets.Image)), None) \
        or next((c for c in IMAGE_NAMES if c in features), None)
    label = options.get("label") or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)),
                                         None) or next((c for c in LABEL_NAMES if c in features), None)
    for what, column in (("image", image), ("label", label)):
        if column is None or column not in features:
            raise LookcloserError(f"the Hugging Face dataset at {path} has no {what} column "
                                  f"{'named ' + repr(column) if column else 'that lookcloser recognizes'} (its "
                                  f"columns: {', '.join(features)}); name it, e.g. hf:{path}:{what}=COLUMN")
    return image, label


class HubDataset(ImageDataset):
    """One split of a Hugging Face dataset; images decoded from its Arrow table on demand."""

    def __init__(self, table, image_column: str, labels: list[int], classes: list[str], name: str, transform=None):
        self.table, self.image_column = table, image_column
        samples = [(f"{name}/{i:07d}", y) for i, y in enumerate(labels)]
        super().__init__(samples, classes, transform, name=name)

    def load(self, index: int) -> Image.Image:
        # the row's number is in its name, so a subset (a held-out share) reads the same rows
        path = self.samples[index][0]
        row = int(path.rsplit("/", 1)[1])
        try:
            value = self.table[row][self.image_column]
            if isinstance(value, dict):  # an undecoded Image feature: {"bytes", "path"}
                value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
            if not isinstance(value, Image.Image):
                raise OSError(f"the column holds {type(value).__name__}, not an image")
            value.load()
            return to_rgb(value)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadImageError(f"cannot read image {path} ({e}); fix or drop that row") from e


def open_hub(rest: str, split: str, transform=None) -> HubDataset:
    """One split of the dataset a ``hf:`` spec names (see the module docstring)."""
    import datasets

    path, options = parse_hub(rest)
    loaded = load_hub(path)
    name = _split_name(list(loaded), split, path)
    table = loaded[name]
    image, label = _columns(table, options, path)
    feature = table.features[label]
    values = table[label]
    if isinstance(feature, datasets.ClassLabel):
        classes, labels = list(feature.names), [int(v) for v in values]
    else:  # plain values: the classes are every split's distinct values, sorted
        every = sorted({str(v) for t in loaded.values() if label in t.features for v in t[label]},
                       key=lambda v: (len(v), v) if v.isdigit() else (0, v))
        index = {v: i for i, v in enumerate(every)}
        classes, labels = every, [index[str(v)] for v in values]
    if not labels:
        raise LookcloserError(f"the {name} split of the Hugging Face dataset at {path} has no rows")
    return HubDataset(table, image, labels, classes, f"hf:{path}/{name}", transform)


def hub_counts(rest: str) -> dict[str, tuple[int, int]]:
    """``(images, classes)`` per split, without decoding an image."""
    path, _ = parse_hub(rest)
    return {split: (len(ds), len(ds.classes)) for split in hub_splits(path)
            for ds in [open_hub(rest, split)]}
