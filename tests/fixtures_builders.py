"""Writers of tiny data sets in each on-disk format that :mod:`lookcloser.data.readers` understands.

Every builder writes real (8x8) images and the annotation files of its format under ``root`` and
returns the folder to hand to the reader. The contents are documented in each docstring so the tests
can state exact expectations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io as sio
from PIL import Image


def write_image(path: Path, value: int = 128) -> None:
    """An 8x8 RGB image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, 60)).save(path)


def write_lines(path: Path, lines: list[str]) -> None:
    """A text file with one entry a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_id_tables(home: Path, classes: list[str], images: list[tuple[str, str, int, int]]) -> None:
    """CUB's four tables: ``images`` is ``(image id, relative path, class id, 1 = train / 0 = test)``."""
    write_lines(home / "classes.txt", classes)
    write_lines(home / "images.txt", [f"{i} {rel}" for i, rel, _, _ in images])
    write_lines(home / "image_class_labels.txt", [f"{i} {c}" for i, _, c, _ in images])
    write_lines(home / "train_test_split.txt", [f"{i} {t}" for i, _, _, t in images])
    for n, (_, rel, _, _) in enumerate(images):
        write_image(home / "images" / rel, 40 * n % 256)


def build_cub(root: Path) -> Path:
    """``root/CUB_200_2011``: class ids 1, 2, 5 (not contiguous) and 6 images, 4 train / 2 test.

    Train: 001/a.jpg (class 1), 002/b.jpg (2), 005/c.jpg (5), 005/d.jpg (5); test: 001/e.jpg (1),
    005/f.jpg (5). ``bounding_boxes.txt`` gives image 1 the box (1, 2, 3, 4).
    """
    home = root / "CUB_200_2011"
    classes = ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross", "5 005.Crested_Auklet"]
    images = [
        ("1", "001.Black_footed_Albatross/a.jpg", 1, 1),
        ("2", "002.Laysan_Albatross/b.jpg", 2, 1),
        ("3", "005.Crested_Auklet/c.jpg", 5, 1),
        ("4", "005.Crested_Auklet/d.jpg", 5, 1),
        ("5", "001.Black_footed_Albatross/e.jpg", 1, 0),
        ("6", "005.Crested_Auklet/f.jpg", 5, 0),
    ]
    _write_id_tables(home, classes, images)
    write_lines(home / "bounding_boxes.txt", [f"{i} 1.0 2.0 3.0 4.0" for i, *_ in images[:1]])
    return home


def build_nabirds(root: Path) -> Path:
    """``root/nabirds``: classes.txt lists taxonomy nodes 0, 1, 295 and leaves 313, 314, 400.

    Images label only 313, 314 and 400 (labels 0, 1, 2). Train: 0001/x1.jpg (314), 0002/x2.jpg (313),
    0003/x3.jpg (400); test: 0001/x4.jpg (314), 0003/x5.jpg (400). Image ids are UUID-like strings.
    """
    home = root / "nabirds"
    classes = [
        "0 Birds",
        "1 Ducks, Geese, and Swans",
        "295 Swans",
        "313 Mute Swan",
        "314 Trumpeter Swan",
        "400 Snow Goose (White morph)",
    ]
    images = [
        ("0a1b-11", "0001/x1.jpg", 314, 1),
        ("0a1b-12", "0002/x2.jpg", 313, 1),
        ("0a1b-13", "0003/x3.jpg", 400, 1),
        ("0a1b-14", "0001/x4.jpg", 314, 0),
        ("0a1b-15", "0003/x5.jpg", 400, 0),
    ]
    _write_id_tables(home, classes, images)
    write_lines(home / "hierarchy.txt", ["313 295", "314 295", "295 1", "1 0", "400 1"])
    write_lines(home / "photographers.txt", [f"{i} Someone" for i, *_ in images])
    return home


def build_cars(root: Path) -> Path:
    """``root/stanford_cars`` in torchvision's layout: 3 classes, 3 train and 2 test images.

    Train: 00001.jpg (class 2 -> label 1), 00002.jpg (1 -> 0), 00003.jpg (3 -> 2); test: 00001.jpg (3 -> 2),
    00002.jpg (1 -> 0).
    """
    home = root / "stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"], dtype=object)
    (home / "devkit").mkdir(parents=True)
    sio.savemat(home / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    train_rows = [("00001.jpg", 2), ("00002.jpg", 1), ("00003.jpg", 3)]
    test_rows = [("00001.jpg", 3), ("00002.jpg", 1)]
    for annos, folder, rows in (
        (home / "devkit" / "cars_train_annos.mat", "cars_train", train_rows),
        (home / "cars_test_annos_withlabels.mat", "cars_test", test_rows),
    ):
        records = np.array([(0, 0, 7, 7, c, f) for f, c in rows], dtype=fields)
        sio.savemat(annos, {"annotations": records})
        for n, (fname, _) in enumerate(rows):
            write_image(home / folder / fname, 50 * n)
    return home


def build_dogs(root: Path) -> Path:
    """Stanford Dogs at ``root``: 3 classes (Chihuahua, Japanese_spaniel, Shih-Tzu), 3 train / 2 test.

    Train: Chihuahua/..._1.jpg (1), Shih-Tzu/..._2.jpg (3), Japanese_spaniel/..._3.jpg (2);
    test: Japanese_spaniel/..._4.jpg (2), Chihuahua/..._5.jpg (1). Labels in the lists are 1-based.
    """
    folders = {1: "n02085620-Chihuahua", 2: "n02085782-Japanese_spaniel", 3: "n02086240-Shih-Tzu"}
    lists = {"train": [(1, 1), (3, 2), (2, 3)], "test": [(2, 4), (1, 5)]}
    for split, rows in lists.items():
        files = [f"{folders[y]}/{folders[y].split('-')[0]}_{n}.jpg" for y, n in rows]
        for n, rel in enumerate(files):
            write_image(root / "Images" / rel, 60 * n)
        cell = np.array(files, dtype=object).reshape(-1, 1)
        labels = np.array([[y] for y, _ in rows], dtype=np.uint8)
        sio.savemat(root / f"{split}_list.mat", {"file_list": cell, "annotation_list": cell, "labels": labels})
    return root


def build_aircraft(root: Path) -> Path:
    """``root/fgvc-aircraft-2013b``: variants 707-320, A300B4, F/A-18 (families Boeing 707, A300, F/A-18;
    manufacturers Boeing, Airbus, McDonnell Douglas).

    train: 0001 (707-320), 0002 (F/A-18); val: 0003 (A300B4); trainval: 0001, 0002, 0003;
    test: 0004 (F/A-18), 0005 (707-320).
    """
    data = root / "fgvc-aircraft-2013b" / "data"
    images = {
        "0001": ("707-320", "Boeing 707", "Boeing"),
        "0002": ("F/A-18", "F/A-18", "McDonnell Douglas"),
        "0003": ("A300B4", "A300", "Airbus"),
        "0004": ("F/A-18", "F/A-18", "McDonnell Douglas"),
        "0005": ("707-320", "Boeing 707", "Boeing"),
    }
    splits = {
        "train": ["0001", "0002"],
        "val": ["0003"],
        "trainval": ["0001", "0002", "0003"],
        "test": ["0004", "0005"],
    }
    levels = {
        "variant": ("variants.txt", 0),
        "family": ("families.txt", 1),
        "manufacturer": ("manufacturers.txt", 2),
    }
    for level, (classes_file, column) in levels.items():
        write_lines(data / classes_file, sorted({v[column] for v in images.values()}))
        for split, ids in splits.items():
            write_lines(data / f"images_{level}_{split}.txt", [f"{i} {images[i][column]}" for i in ids])
    for n, image_id in enumerate(images):
        write_image(data / "images" / f"{image_id}.jpg", 50 * n)
    return root / "fgvc-aircraft-2013b"


def build_flowers102(root: Path) -> Path:
    """``root/flowers-102``: 6 images with labels 1, 1, 2, 3, 3, 2 (1-based).

    trnid = [1, 3, 4], valid = [2], tstid = [5, 6].
    """
    home = root / "flowers-102"
    for i in range(1, 7):
        write_image(home / "jpg" / f"image_{i:05d}.jpg", 40 * i)
    sio.savemat(home / "imagelabels.mat", {"labels": np.array([1, 1, 2, 3, 3, 2], dtype=np.uint8)})
    splits = {"trnid": np.array([1, 3, 4]), "valid": np.array([2]), "tstid": np.array([5, 6])}
    sio.savemat(home / "setid.mat", splits)
    return home


def build_pets(root: Path) -> Path:
    """``root/oxford-iiit-pet``: classes 1 Abyssinian, 2 american_bulldog, 3 american_pit_bull_terrier.

    trainval: Abyssinian_1 (1), american_bulldog_2 (2), american_pit_bull_terrier_3 (3);
    test: american_pit_bull_terrier_4 (3), Abyssinian_5 (1) -- the test list lacks class 2 on purpose.
    """
    home = root / "oxford-iiit-pet"
    lists = {
        "trainval": [("Abyssinian_1", 1, 1), ("american_bulldog_2", 2, 2), ("american_pit_bull_terrier_3", 3, 2)],
        "test": [("american_pit_bull_terrier_4", 3, 2), ("Abyssinian_5", 1, 1)],
    }
    for split, rows in lists.items():
        lines = [f"{name} {y} {species} 1" for name, y, species in rows]
        write_lines(home / "annotations" / f"{split}.txt", lines)
        for n, (name, _, _) in enumerate(rows):
            write_image(home / "images" / f"{name}.jpg", 70 * n)
    return home


def build_coco(root: Path) -> Path:
    """iNaturalist-2019-style JSON at ``root``: categories 10 Zebra, 3 Ant, 7 Moth (labels Ant, Moth, Zebra).

    train2019.json: images 1 (10), 2 (3), 3 (7), 4 (no annotation, left out); val2019.json: images
    11 (7), 12 (10), and it lists only the categories 7 and 10, so labels must come from the train file.
    test2019.json has images but no annotations (so no test split).
    """
    categories = [{"id": 10, "name": "Zebra"}, {"id": 3, "name": "Ant"}, {"id": 7, "name": "Moth"}]
    sets = {
        "train2019.json": ("train_val2019", [(1, 10), (2, 3), (3, 7), (4, None)], categories),
        "val2019.json": ("train_val2019", [(11, 7), (12, 10)], categories[::2]),
        "test2019.json": ("test2019", [(21, None)], categories),
    }
    for name, (folder, rows, listed) in sets.items():
        images = [{"id": i, "file_name": f"{folder}/{i:04d}.jpg", "width": 8, "height": 8} for i, _ in rows]
        annotations = [{"id": 100 + i, "image_id": i, "category_id": c} for i, c in rows if c is not None]
        body = {"images": images, "annotations": annotations, "categories": listed}
        (root / name).write_text(json.dumps(body), encoding="utf-8")
        for n, (i, _) in enumerate(rows):
            write_image(root / folder / f"{i:04d}.jpg", 40 * n)
    return root


def build_folder(root: Path) -> Path:
    """Class folders at ``root``: train/{ant, bee, cat}, test/{ant, cat} (no bee), plus non-image clutter.

    train: ant/1.png, ant/2.JPG, bee/3.webp, bee/sub/4.png (nested), cat/5.jpeg; test: ant/6.png, cat/7.png.
    Ignored: train/ant/notes.txt, train/ant/.hidden.png, train/.ipynb_checkpoints/.
    """
    files = [
        "train/ant/1.png",
        "train/ant/2.JPG",
        "train/bee/3.webp",
        "train/bee/sub/4.png",
        "train/cat/5.jpeg",
        "test/ant/6.png",
        "test/cat/7.png",
        "train/ant/.hidden.png",
        "train/.ipynb_checkpoints/x.png",
    ]
    for rel in files:
        write_image(root / rel)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root
