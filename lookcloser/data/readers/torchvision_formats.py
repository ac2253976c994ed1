"""Stanford Cars and FGVC-Aircraft, read through torchvision's dataset classes (always ``download=False``).

Their public items are ``(image, label)`` pairs; with ``loader=str`` the image is its path, so a whole split
is listed without decoding a single file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from ...errors import LookcloserError
from .base import NestedFormat, Samples


class _TorchvisionFormat(NestedFormat):
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

        ds = cls.open(root, split, TvCars, loader=str)  # the items are then (path, label), nothing is decoded
        return [(str(p), int(y)) for p, y in ds], [str(c) for c in ds.classes]


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

        ds = cls.open(root, split, FGVCAircraft, annotation_level=cls.level, loader=str)
        return [(str(p), int(y)) for p, y in ds], list(ds.classes)


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
