import numpy as np
import pytest

from lookcloser.data import open_dataset, write_synth
from lookcloser.data.synth import MAX_CLASSES, SynthDataset, class_names, render
from lookcloser.errors import LookcloserError


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, la = render(3, "train", 17, 8, 64)
    b, lb = render(3, "train", 17, 8, 64)
    c, _ = render(4, "train", 17, 8, 64)
    assert la == lb == 17 % 8
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_image_does_not_depend_on_dataset_size():
    small = SynthDataset("train", classes=5, per_class=2, size=40, seed=1)
    large = SynthDataset("train", classes=5, per_class=30, size=40, seed=1)
    assert np.array_equal(np.asarray(small.load(7)), np.asarray(large.load(7)))


def test_splits_differ_and_are_balanced():
    tr = open_dataset("synth:classes=6,train=5,test=3,size=32", "train")
    te = open_dataset("synth:classes=6,train=5,test=3,size=32", "test")
    assert (len(tr), len(te), tr.num_classes) == (30, 18, 6)
    assert np.bincount(tr.targets).tolist() == [5] * 6
    assert not np.array_equal(np.asarray(tr.load(0)), np.asarray(te.load(0)))


def test_class_names_are_details_and_unique():
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES
    assert class_names(4) == ["disc-stripes", "square-stripes", "triangle-stripes", "cross-stripes"]
    with pytest.raises(LookcloserError):
        class_names(1)


def test_classes_share_the_global_look():
    # the object's colour and pose are drawn the same way for every class: mean colour of the images
    # of two classes must be close, so a low-resolution glance cannot separate them
    ds = SynthDataset("train", classes=2, per_class=60, size=32, seed=0)
    means = [np.mean([np.asarray(ds.load(i), dtype=float).mean() for i in range(len(ds)) if ds.targets[i] == c])
             for c in range(2)]
    assert abs(means[0] - means[1]) < 6


def test_write_synth_reads_back_as_class_folders(tmp_path):
    write_synth(tmp_path, classes=3, train=2, test=1, size=32, seed=5, progress=False)
    tr = open_dataset(str(tmp_path), "train")
    te = open_dataset(f"folder:{tmp_path}", "test")
    assert (len(tr), len(te)) == (6, 3)
    assert tr.classes == sorted(class_names(3))
    synth = SynthDataset("train", classes=3, per_class=2, size=32, seed=5)
    # the written files hold exactly the generated pixels, under the right class
    for path, label in tr.samples:
        i = int(path.rsplit("/", 1)[1].split(".")[0])
        assert tr.classes[label] == synth.classes[synth.targets[i]]
        assert np.array_equal(np.asarray(tr.load(tr.samples.index((path, label)))), np.asarray(synth.load(i)))


@pytest.mark.parametrize("bad", ["synth:classes=x", "synth:foo=1", "synth:classes", "synth:classes=99"])
def test_bad_options_are_clear(bad):
    with pytest.raises(LookcloserError, match="synth"):
        open_dataset(bad, "train")


def test_the_synthetic_set_can_be_cached_without_reading_files():
    import torch

    from lookcloser.data import build_transform, open_dataset

    t = build_transform(True, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_ratio=1.25)
    plain = open_dataset("synth:classes=3,train=2,size=40", "train", t)
    cached = open_dataset("synth:classes=3,train=2,size=40", "train", t)
    cache = cached.use_cache(0.01)
    for _ in range(2):
        for i in range(len(plain)):
            assert torch.equal(plain[(i, 7 * i)][0], cached[(i, 7 * i)][0])
    assert int(cache.filled.sum()) == len(plain)
