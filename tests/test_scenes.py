"""Objects in scenes: the builder is deterministic, keeps every object at its own resolution inside the
canvas, and writes CUB's format with the placed boxes."""

import json

import numpy as np
import pytest
from PIL import Image

from lookcloser.cli import run
from lookcloser.data import open_dataset
from lookcloser.data.scenes import SceneOptions, compose, feather_mask, write_scenes
from lookcloser.errors import LookcloserError

OBJECTS = "synth:classes=3,train=4,test=2,size=40"
BACKGROUNDS = "synth:classes=2,train=3,test=2,size=64,seed=5"


def _tables(folder):
    return {name: (folder / name).read_text() for name in ("images.txt", "image_class_labels.txt",
                                                           "train_test_split.txt", "classes.txt",
                                                           "bounding_boxes.txt")}


def test_the_same_seed_gives_the_same_scenes_whatever_the_workers(tmp_path):
    opts = SceneOptions(canvas=96, scale=(0.3, 0.5), seed=3, quality=0)
    a = write_scenes(OBJECTS, BACKGROUNDS, tmp_path / "a", options=opts, workers=1, progress=False)
    b = write_scenes(OBJECTS, BACKGROUNDS, tmp_path / "b", options=opts, workers=2, progress=False)
    assert a["pixels_sha256"] == b["pixels_sha256"] and _tables(tmp_path / "a") == _tables(tmp_path / "b")
    for rel in (tmp_path / "a" / "images.txt").read_text().split()[1::2]:
        assert (tmp_path / "a" / "images" / rel).read_bytes() == (tmp_path / "b" / "images" / rel).read_bytes()
    c = write_scenes(OBJECTS, BACKGROUNDS, tmp_path / "c", options=SceneOptions(canvas=96, scale=(0.3, 0.5),
                                                                               seed=4, quality=0),
                     workers=1, progress=False)
    assert c["pixels_sha256"] != a["pixels_sha256"]


def test_boxes_hold_the_object_at_its_own_resolution_inside_the_canvas(tmp_path):
    """Every box lies in the canvas, its side a share of it within the range and never above the object's
    own side; the scene's pixels inside the box's core are the object's, outside it the background's."""
    opts = SceneOptions(canvas=128, scale=(0.25, 0.5), seed=0, quality=0)
    out = tmp_path / "s"
    m = write_scenes(OBJECTS, BACKGROUNDS, out, options=opts, workers=1, progress=False)
    assert m["images"] == {"train": 12, "test": 6} and m["classes"] == 3
    train, test = open_dataset(f"cub:{out}", "train"), open_dataset(f"cub:{out}", "test")
    assert len(train) == 12 and len(test) == 6
    objects = {s: open_dataset(OBJECTS, s) for s in ("train", "test")}
    assert train.classes == objects["train"].classes
    assert [y for _, y in train.samples] == [y for _, y in objects["train"].samples]
    boxes = [tuple(map(float, line.split()[1:])) for line in (out / "bounding_boxes.txt").read_text().splitlines()]
    assert len(boxes) == 18
    for x, y, w, h in boxes:
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert w == h and 0.25 * 128 - 1 <= w <= 40  # the share's range, capped at the object's 40 px
    # the first scene, redrawn by hand: the object's center pixels are the object's
    x, y, w, h = (int(v) for v in boxes[0])
    scene = np.asarray(Image.open(out / "images" / (out / "images.txt").read_text().split()[1]))
    obj = np.asarray(objects["train"].load(0).resize((w, h), Image.Resampling.LANCZOS))
    core = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))
    assert np.abs(scene[y:y + h, x:x + w][core].astype(int) - obj[core].astype(int)).max() <= 1


def test_compose_never_enlarges_and_feathers_the_edge():
    rng = np.random.default_rng(0)
    obj = Image.new("RGB", (30, 20), (255, 0, 0))
    bg = Image.new("RGB", (50, 50), (0, 0, 255))
    scene, (x, y, w, h) = compose(obj, bg, rng, SceneOptions(canvas=100, scale=(0.9, 0.9), feather=0.1))
    assert (w, h) == (30, 20)  # 90 px asked, the object has 30: kept at its own size
    a = np.asarray(scene).astype(int)
    assert tuple(a[y + h // 2, x + w // 2]) == (255, 0, 0)  # inside: the object
    assert a[y, x, 0] < 128 and a[y, x, 2] > 128  # the edge: mostly background
    mask = feather_mask(30, 20, 0.1)
    assert mask.shape == (20, 30) and mask[10, 15] == 1.0 and 0 < mask[0, 0] < 0.05
    assert np.allclose(mask, mask[::-1, ::-1])


def test_options_and_folders_are_checked(tmp_path, capsys):
    with pytest.raises(LookcloserError, match="--scale"):
        SceneOptions(scale=(0.6, 0.4))
    with pytest.raises(LookcloserError, match="--canvas"):
        SceneOptions(canvas=8)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code = run(["data", "scenes", OBJECTS, BACKGROUNDS, "--out", str(mine), "--canvas", "64", "--quiet"])
    assert code not in (0, None) and "notes.txt" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    code = run(["data", "scenes", OBJECTS, BACKGROUNDS, "--out", str(tmp_path / "s"), "--canvas", "64",
                "--scale", "0.3,0.4", "--workers", "1", "--quiet"])
    assert code == 0 and json.loads((tmp_path / "s" / "manifest.json").read_text())["options"]["canvas"] == 64
    # an earlier build of its own is rebuilt in place
    assert run(["data", "scenes", OBJECTS, BACKGROUNDS, "--out", str(tmp_path / "s"), "--canvas", "64",
                "--workers", "1", "--quiet"]) == 0
