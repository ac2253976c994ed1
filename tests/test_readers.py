"""Tests of the data set readers: one tiny fixture per on-disk format, the error messages, the real data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fixtures_builders import (
    build_aircraft,
    build_cars,
    build_coco,
    build_cub,
    build_dogs,
    build_flowers102,
    build_folder,
    build_nabirds,
    build_pets,
)
from lookcloser.data.base import ImageDataset
from lookcloser.data.readers import (
    FORMATS,
    default_eval_split,
    detect_format,
    get_format,
    read_dataset,
)
from lookcloser.errors import LookcloserError

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def read(fmt: str | None, root: Path, split: str) -> tuple[dict[str, int], list[str], str]:
    """Read a split and check what every reader must guarantee; return ``{path relative to root: label}``."""
    samples, classes, name = read_dataset(fmt, str(root), split)
    ImageDataset(samples, classes, name=name)  # labels are inside 0..K-1
    for path, _ in samples:
        assert os.path.isabs(path) and os.path.isfile(path), path
    assert len({p for p, _ in samples}) == len(samples)
    return {Path(p).relative_to(root).as_posix(): y for p, y in samples}, classes, name


# ---------------------------------------------------------------------------------------------- formats


def test_cub_from_parent_folder(tmp_path: Path) -> None:
    home = build_cub(tmp_path)
    assert detect_format(tmp_path) == "cub" and detect_format(home) == "cub"
    train, classes, name = read(None, tmp_path, "train")
    assert classes == ["Black_footed_Albatross", "Laysan_Albatross", "Crested_Auklet"]
    assert name == f"cub:{tmp_path}"
    prefix = "CUB_200_2011/images/"
    assert train == {
        prefix + "001.Black_footed_Albatross/a.jpg": 0,
        prefix + "002.Laysan_Albatross/b.jpg": 1,
        prefix + "005.Crested_Auklet/c.jpg": 2,
        prefix + "005.Crested_Auklet/d.jpg": 2,
    }
    test, test_classes, _ = read("cub", home, "test")
    assert test == {"images/001.Black_footed_Albatross/e.jpg": 0, "images/005.Crested_Auklet/f.jpg": 2}
    assert test_classes == classes


def test_nabirds_uses_only_labelled_classes(tmp_path: Path) -> None:
    home = build_nabirds(tmp_path)
    assert detect_format(tmp_path) == "nabirds"
    train, classes, _ = read(None, home, "train")
    assert classes == ["Mute Swan", "Trumpeter Swan", "Snow Goose (White morph)"]
    assert train == {"images/0001/x1.jpg": 1, "images/0002/x2.jpg": 0, "images/0003/x3.jpg": 2}
    test, _, _ = read("nabirds", home, "test")
    assert test == {"images/0001/x4.jpg": 1, "images/0003/x5.jpg": 2}


def test_nabirds_without_its_extra_files_reads_as_cub(tmp_path: Path) -> None:
    home = build_nabirds(tmp_path)
    (home / "hierarchy.txt").unlink()
    (home / "photographers.txt").unlink()
    assert detect_format(home) == "cub"


@pytest.mark.parametrize("given", ["parent", "stanford_cars"])
def test_cars(tmp_path: Path, given: str) -> None:
    home = build_cars(tmp_path)
    root = tmp_path if given == "parent" else home
    assert detect_format(root) == "cars"
    train, classes, _ = read(None, root, "train")
    assert classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    rel = "" if given == "stanford_cars" else "stanford_cars/"
    assert train == {rel + "cars_train/00001.jpg": 1, rel + "cars_train/00002.jpg": 0, rel + "cars_train/00003.jpg": 2}
    test, _, _ = read("cars", root, "test")
    assert test == {rel + "cars_test/00001.jpg": 2, rel + "cars_test/00002.jpg": 0}


def test_cars_missing_test_annotations(tmp_path: Path) -> None:
    home = build_cars(tmp_path)
    (home / "cars_test_annos_withlabels.mat").unlink()
    read("cars", tmp_path, "train")
    with pytest.raises(LookcloserError, match="cars_test_annos_withlabels.mat is missing"):
        read_dataset("cars", str(tmp_path), "test")


def test_dogs(tmp_path: Path) -> None:
    build_dogs(tmp_path)
    assert detect_format(tmp_path) == "dogs"
    train, classes, _ = read(None, tmp_path, "train")
    assert classes == ["Chihuahua", "Japanese_spaniel", "Shih-Tzu"]
    assert train == {
        "Images/n02085620-Chihuahua/n02085620_1.jpg": 0,
        "Images/n02086240-Shih-Tzu/n02086240_2.jpg": 2,
        "Images/n02085782-Japanese_spaniel/n02085782_3.jpg": 1,
    }
    test, test_classes, _ = read("dogs", tmp_path, "test")
    assert test == {"Images/n02085782-Japanese_spaniel/n02085782_4.jpg": 1, "Images/n02085620-Chihuahua/n02085620_5.jpg": 0}
    assert test_classes == classes


def test_aircraft_levels_and_splits(tmp_path: Path) -> None:
    home = build_aircraft(tmp_path)
    assert detect_format(tmp_path) == "aircraft" and detect_format(home) == "aircraft"
    counts = {split: len(read("aircraft", tmp_path, split)[0]) for split in ("train", "val", "trainval", "test")}
    assert counts == {"train": 2, "val": 1, "trainval": 3, "test": 2}
    images = "fgvc-aircraft-2013b/data/images/"
    expected = {
        "aircraft": (["707-320", "A300B4", "F/A-18"], [2, 0]),
        "aircraft_family": (["A300", "Boeing 707", "F/A-18"], [2, 1]),
        "aircraft-manufacturer": (["Airbus", "Boeing", "McDonnell Douglas"], [2, 1]),
    }
    for fmt, (classes, labels) in expected.items():
        test, got_classes, _ = read(fmt, tmp_path, "test")
        assert got_classes == classes, fmt
        assert test == {images + "0004.jpg": labels[0], images + "0005.jpg": labels[1]}, fmt


def test_flowers102(tmp_path: Path) -> None:
    home = build_flowers102(tmp_path)
    assert detect_format(tmp_path) == "flowers102"
    train, classes, _ = read(None, home, "train")
    assert classes == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert train == {"jpg/image_00001.jpg": 0, "jpg/image_00003.jpg": 1, "jpg/image_00004.jpg": 2}
    assert read("flowers102", home, "val")[0] == {"jpg/image_00002.jpg": 0}
    assert read("flowers102", home, "test")[0] == {"jpg/image_00005.jpg": 2, "jpg/image_00006.jpg": 1}
    (home / "cat_to_name.json").write_text('{"1": "a", "2": "b", "3": "c"}')
    assert read("flowers102", tmp_path, "test")[1] == ["a", "b", "c"]


def test_pets_names_agree_across_splits(tmp_path: Path) -> None:
    build_pets(tmp_path)
    assert detect_format(tmp_path) == "pets"
    train, classes, _ = read(None, tmp_path, "train")  # alias of trainval
    assert classes == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    images = "oxford-iiit-pet/images/"
    assert train == {images + "Abyssinian_1.jpg": 0, images + "american_bulldog_2.jpg": 1,
                     images + "american_pit_bull_terrier_3.jpg": 2}
    test, test_classes, _ = read("pets", tmp_path, "test")
    assert test == {images + "american_pit_bull_terrier_4.jpg": 2, images + "Abyssinian_5.jpg": 0}
    assert test_classes == classes


def test_coco_uses_train_categories(tmp_path: Path) -> None:
    build_coco(tmp_path)
    assert detect_format(tmp_path) == "coco"
    train, classes, _ = read(None, tmp_path, "train")
    assert classes == ["Ant", "Moth", "Zebra"]
    assert train == {"train_val2019/0001.jpg": 2, "train_val2019/0002.jpg": 0, "train_val2019/0003.jpg": 1}
    assert read("coco", tmp_path, "val")[0] == {"train_val2019/0011.jpg": 1, "train_val2019/0012.jpg": 2}
    assert default_eval_split("coco", tmp_path) == "val"
    with pytest.raises(LookcloserError, match="no split 'test'; use one of train, val"):
        read_dataset("coco", str(tmp_path), "test")


def test_class_folders(tmp_path: Path) -> None:
    build_folder(tmp_path)
    assert detect_format(tmp_path) == "folder"
    train, classes, _ = read(None, tmp_path, "train")
    assert classes == ["ant", "bee", "cat"]
    assert train == {"train/ant/1.png": 0, "train/ant/2.JPG": 0, "train/bee/3.webp": 1, "train/bee/sub/4.png": 1,
                     "train/cat/5.jpeg": 2}
    test, test_classes, _ = read(None, tmp_path, "test")
    assert test == {"test/ant/6.png": 0, "test/cat/7.png": 2}
    assert test_classes == classes
    assert default_eval_split("folder", tmp_path) == "test"
    shutil.move(tmp_path / "test", tmp_path / "val")
    assert default_eval_split("folder", tmp_path) == "val"
    assert read("folder", tmp_path, "val")[0] == {"val/ant/6.png": 0, "val/cat/7.png": 2}


def test_class_folders_unknown_test_class(tmp_path: Path) -> None:
    build_folder(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(LookcloserError, match=f"class folder {tmp_path / 'test' / 'dog'} has no counterpart"):
        read_dataset(None, str(tmp_path), "test")


# ----------------------------------------------------------------------------------------------- errors


def test_empty_folder_lists_every_format(tmp_path: Path) -> None:
    with pytest.raises(LookcloserError) as info:
        read_dataset(None, str(tmp_path), "train")
    message = str(info.value)
    assert "\n" not in message
    for name, fmt in FORMATS.items():
        assert f"{name} ({fmt.describe})" in message
    assert f"cub:{tmp_path}" in message


@pytest.mark.parametrize("missing", ["image_class_labels.txt", "train_test_split.txt", "classes.txt", "images"])
def test_cub_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    home = build_cub(tmp_path)
    shutil.rmtree(home / missing) if missing == "images" else (home / missing).unlink()
    assert detect_format(tmp_path) == "cub"
    with pytest.raises(LookcloserError, match=f"^{home / missing} is missing; cub data needs "):
        read_dataset(None, str(tmp_path), "train")


def test_cub_unknown_class_id(tmp_path: Path) -> None:
    home = build_cub(tmp_path)
    (home / "image_class_labels.txt").write_text("1 1\n2 2\n3 5\n4 5\n5 1\n6 9\n")
    with pytest.raises(LookcloserError, match="no line for class id 9"):
        read_dataset("cub", str(home), "test")


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(LookcloserError, match="unknown data format 'imagenet'; use one of nabirds, cub, "):
        read_dataset("imagenet", str(tmp_path), "train")
    assert get_format("Aircraft-Family") is FORMATS["aircraft_family"]


def test_unknown_split(tmp_path: Path) -> None:
    build_cub(tmp_path)
    with pytest.raises(LookcloserError, match="has no split 'val'; use one of train, test$"):
        read_dataset("cub", str(tmp_path), "val")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(LookcloserError, match=f"^data folder {tmp_path / 'nope'} does not exist; "):
        read_dataset(None, str(tmp_path / "nope"), "train")


def test_default_eval_split_without_data() -> None:
    assert default_eval_split("cub") == "test"
    assert default_eval_split("pets") == "test"
    assert default_eval_split("coco") == "val"


# -------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATA / "cub100").is_dir(), reason=f"real data not found at {SHARED_DATA / 'cub100'}")
def test_real_cub100() -> None:
    root = SHARED_DATA / "cub100"
    assert detect_format(root) == "cub"
    train, classes, _ = read_dataset(None, str(root), "train")
    test, test_classes, _ = read_dataset(None, str(root), "test")
    assert (len(classes), len(train), len(test)) == (100, 2903, 2999)
    assert test_classes == classes and classes[0] == "Black_footed_Albatross"
    assert {y for _, y in train} == set(range(100)) == {y for _, y in test}
    assert os.path.isfile(train[0][0]) and os.path.isfile(test[-1][0])


@pytest.mark.skipif(not (SHARED_DATA / "flowers12").is_dir(), reason=f"real data not found at {SHARED_DATA / 'flowers12'}")
def test_real_flowers12() -> None:
    root = SHARED_DATA / "flowers12"
    assert detect_format(root) == "folder"
    train, classes, _ = read_dataset(None, str(root), "train")
    test, test_classes, _ = read_dataset(None, str(root), "test")
    assert (len(classes), len(train), len(test)) == (12, 720, 240)
    assert test_classes == classes
    assert all(os.path.isfile(p) for p, _ in train[:5] + test[-5:])


def test_holdout_is_a_seeded_per_class_share_of_the_training_split():
    from lookcloser.data import holdout_indices

    targets = [0] * 10 + [1] * 4 + [2] * 1 + [3] * 2
    held = holdout_indices(targets, 0.2)
    per_class = {c: sum(targets[i] == c for i in held) for c in range(4)}
    # round(0.2 n), at least one of a class with two or more images, never a whole class
    assert per_class == {0: 2, 1: 1, 2: 0, 3: 1}
    assert held == sorted(held) and held == holdout_indices(targets, 0.2)  # the same every time
    assert holdout_indices(targets, 0.2, seed=1) != held  # and another draw for another seed
    assert holdout_indices(targets, 0.0) == []
    assert all(sum(targets[i] == 3 for i in holdout_indices(targets, 0.5)) == 1 for _ in range(3))


def test_holdout_split_and_the_training_split_it_leaves(tmp_path):
    from lookcloser.data import open_dataset

    root = build_folder(tmp_path)
    full = open_dataset(str(root), "train")
    kept = open_dataset(str(root), "train", holdout=0.5)
    held = open_dataset(str(root), "holdout", holdout=0.5)
    assert len(held) > 0 and len(kept) + len(held) == len(full)
    assert sorted(kept.samples + held.samples) == sorted(full.samples)  # disjoint and complete
    assert set(y for _, y in held.samples) <= set(full.targets) and held.classes == full.classes
    assert "held out" in held.name
    with pytest.raises(LookcloserError, match="holdout split only when .* --holdout"):
        open_dataset(str(root), "holdout")
    # a held-out synthetic image is the same drawing as in the whole split
    whole = open_dataset("synth:classes=3,train=4,test=2,size=32", "train")
    part = open_dataset("synth:classes=3,train=4,test=2,size=32", "holdout", holdout=0.25)
    numbers = [int(path.rsplit("/", 1)[1]) for path, _ in part.samples]
    assert numbers != list(range(len(part)))  # so that drawing by position in the subset would show
    for i, (path, y) in enumerate(part.samples):
        j = whole.samples.index((path, y))
        assert part.load(i).tobytes() == whole.load(j).tobytes()


def test_holdout_share_out_of_range_is_one_clear_error():
    from lookcloser.config import DataConfig

    with pytest.raises(LookcloserError, match=r"holdout must be in \[0, 0.5\]"):
        DataConfig(holdout=0.8)


@pytest.mark.parametrize("builder", [build_folder, build_cub, build_nabirds, build_dogs])
def test_counting_a_data_set_loads_no_pytorch(tmp_path, builder):
    """`lookcloser data info` reads the file lists only: neither torch nor torchvision (seconds to import) loads,
    and the counts are those of the full reader."""
    import subprocess
    import sys

    from lookcloser.data import read_counts

    root = builder(tmp_path)
    code = ("import sys; from lookcloser.data import read_counts; "
            f"fmt, counts = read_counts({str(root)!r}); "
            "print(fmt, counts.get('train'), sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fmt, counts = read_counts(str(root))
    assert out.stdout.split(" ", 1) == [fmt, f"{counts['train']} []\n"], out.stdout
