"""Bad and unusual image files: conversions, EXIF orientation, skipping without shifting labels."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lookcloser.data import ImageDataset, collate, load_image
from lookcloser.errors import BadImageError


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_become_rgb(tmp_path):
    gray = _save(Image.new("L", (6, 4), 100), tmp_path / "g.png")
    cmyk = _save(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), tmp_path / "c.jpg")
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal = _save(pal, tmp_path / "p.png")
    rgba = _save(Image.new("RGBA", (6, 4), (255, 0, 0, 0)), tmp_path / "a.png")  # fully transparent
    deep = _save(Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)), tmp_path / "d.png")
    expect = {gray: (100, 100, 100), pal: (10, 200, 30), rgba: (255, 255, 255), deep: (255, 255, 255)}
    for path, rgb in expect.items():
        im = load_image(path)
        assert im.mode == "RGB" and im.size == (6, 4)
        assert im.getpixel((0, 0)) == rgb, path.name
    r, g, b = load_image(cmyk).getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


def test_16bit_midrange_is_scaled_not_clipped(tmp_path):
    p = _save(Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16)), tmp_path / "m.png")
    assert load_image(p).getpixel((0, 0)) == (127, 127, 127) or load_image(p).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif)
    assert load_image(p).size == (4, 8)


def test_unreadable_files_raise_bad_image(tmp_path):
    good = _save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "good.jpg", quality=95)
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for p in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(BadImageError, match=p.name):
            load_image(p)


def test_bad_files_are_skipped_without_shifting_labels(tmp_path, caplog):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(p)
        paths.append(p)
    paths[2].write_bytes(b"garbage")
    paths[4].write_bytes(paths[4].read_bytes()[:30])
    ds = ImageDataset([(p, i % 3) for i, p in enumerate(paths)], ["a", "b", "c"],
                      transform=lambda im: torch.tensor(np.asarray(im)[0, 0, 0], dtype=torch.float32))
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=collate)
    images, labels, skipped, extras = next(iter(loader))
    assert extras == {}
    assert skipped == [str(paths[2]), str(paths[4])]
    # each surviving image keeps its own label: red value i*40 belongs to label i % 3
    assert labels.tolist() == [0, 1, 0, 2]
    assert images.tolist() == [0.0, 40.0, 120.0, 200.0]


def test_training_epoch_warns_once_per_bad_file_and_counts(tmp_path, caplog):
    from tests.conftest import TINY_BACKBONE
    from lookcloser.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from lookcloser.engine import train

    for split, n in (("train", 4), ("test", 2)):
        for c in ("x", "y"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (i * 30, 90 if c == "x" else 10, 0)).save(d / f"{i}.png")
    (tmp_path / "data" / "train" / "x" / "9.png").write_bytes(b"broken")
    cfg = RunConfig(data=DataConfig(data=str(tmp_path / "data"), image_size=16, batch_size=9, workers=0),  # one batch holds every file
                    model=ModelConfig(backbone=TINY_BACKBONE), train=TrainConfig(epochs=2, device="cpu"))
    with caplog.at_level(logging.WARNING):
        rec = train(cfg, tmp_path / "run", progress=False)
    assert rec["skipped_images"] == 1
    named = [r for r in caplog.records if "9.png" in r.getMessage() and "skipping" in r.getMessage()]
    assert len(named) == 1  # named once, though it was met in both epochs
    counts = [r for r in caplog.records if "skipped 1 unreadable" in r.getMessage()]
    assert len(counts) == 2


def test_squash_rotation_and_pca_lighting_transforms():
    import numpy as np
    import torch
    from PIL import Image

    from lookcloser.data.transforms import PCALighting, build_transform

    wide = Image.fromarray(np.full((40, 120, 3), 200, dtype=np.uint8))
    wide.paste((0, 0, 0), (0, 0, 10, 40))  # a dark band at the left edge
    mean, std = (0, 0, 0), (1, 1, 1)
    squashed = build_transform(False, 32, mean, std, squash=True)(wide)
    cropped = build_transform(False, 32, mean, std)(wide)
    assert squashed.shape == cropped.shape == (3, 32, 32)
    assert squashed[:, :, 0].mean() < 0.1 and cropped[:, :, 0].mean() > 0.7  # the centre crop loses the edge
    torch.manual_seed(0)
    train = build_transform(True, 32, mean, std, squash=True, resize_ratio=1.25, rotation=30, pca_lighting=0.1)
    assert train(wide).shape == (3, 32, 32)
    torch.manual_seed(1)
    flat = torch.full((3, 8, 8), 0.5)
    lit = PCALighting(0.1)(flat)
    shift = (lit - flat)[:, 0, 0]
    assert torch.allclose(lit - flat, shift.view(3, 1, 1).expand_as(flat)) and shift.abs().max() > 0


def _photo_folder(root, n=6):
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(n):
        c = "x" if i % 2 else "y"
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        w, h = (60 + 7 * i, 40 + 3 * i) if i % 3 else (40, 70)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.jpg")
    (root / "train" / "x" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("train,jitter", [(True, 0.3), (True, 0.0), (False, 0.0)],
                         ids=["PIL path (colour jitter)", "array path (crop, flip)", "array path (evaluation)"])
def test_decoded_cache_gives_identical_images_and_is_shared_by_workers(tmp_path, train, jitter):
    import torch

    from lookcloser.data import Skipped, build_transform, collate, open_dataset

    root = _photo_folder(tmp_path)
    t = build_transform(train, 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), resize_ratio=1.25, color_jitter=jitter)
    plain = open_dataset(f"folder:{root}", "train", t)
    cached = open_dataset(f"folder:{root}", "train", t)
    cache = cached.use_cache(limit_gb=0.1)
    assert (cached._array_steps is None) == (jitter > 0)
    keys = [(i, 1000 + i) for i in range(len(plain))]  # (index, augmentation seed)
    for epoch in range(2):  # the first epoch fills the cache, the second reads it
        loader = torch.utils.data.DataLoader(cached, batch_size=3, num_workers=2, collate_fn=collate,
                                             sampler=keys)
        got = torch.cat([b[0] for b in loader])
        want = torch.stack([item[0] for item in map(plain.__getitem__, keys) if not isinstance(item, Skipped)])
        assert torch.equal(got, want), epoch
        # the workers filled the one shared buffer: the parent sees every readable image as cached
        assert int(cache.filled.sum()) == len(plain) - 1
    assert [b[2] for b in torch.utils.data.DataLoader(cached, batch_size=len(cached), collate_fn=collate)][0] \
        == [str(root / "train" / "x" / "broken.jpg")]


def test_decoded_cache_that_does_not_fit_is_refused_at_the_start(tmp_path):
    from lookcloser.data import build_transform, open_dataset
    from lookcloser.errors import LookcloserError

    root = _photo_folder(tmp_path)
    ds = open_dataset(f"folder:{root}", "train", build_transform(True, 200, (0, 0, 0), (1, 1, 1)))
    with pytest.raises(LookcloserError, match=r"needs 0\.\d GB, over the cache limit of 0\.0001 GB"):
        ds.use_cache(limit_gb=0.0001)
    assert ds.cache is None


def test_resized_size_matches_torchvision():
    from torchvision import transforms as T

    from lookcloser.data.cache import resized_size

    for w, h, size in [(500, 375, 256), (375, 500, 256), (333, 333, 100), (1001, 99, 64), (60, 40, (50, 70))]:
        assert resized_size(w, h, size) == T.Resize(size)(Image.new("RGB", (w, h))).size


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_uint8_batches_normalized_on_the_device_equal_the_float_path(tmp_path, cached, jitter):
    """The training loader delivers uint8 images; normalize_batch turns a batch into exactly the tensors the
    float transform (ToTensor, Normalize) makes, from the same random draws, with and without the cache."""
    from lookcloser.data import build_transform, collate, normalize_batch, open_dataset

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    kw = dict(resize_ratio=1.2, color_jitter=jitter)
    floats = open_dataset("synth:classes=3,train=4,test=1,size=40", "train", build_transform(True, 32, mean, std, **kw))
    ints = open_dataset("synth:classes=3,train=4,test=1,size=40", "train",
                        build_transform(True, 32, mean, std, uint8=True, **kw))
    if cached:
        floats.use_cache(1.0)
        ints.use_cache(1.0)
    keys = [(i, 1000 + i) for i in range(len(floats))]  # (index, seed): the same draws for both
    a = collate([floats[k] for k in keys])[0]
    b = collate([ints[k] for k in keys])[0]
    assert b.dtype == torch.uint8 and a.dtype == torch.float32
    assert torch.equal(normalize_batch(b, mean, std), a)
    assert normalize_batch(a, mean, std) is a  # a float batch is already normalized


def test_the_trainer_loads_uint8_and_pca_lighting_stays_float(tmp_path):
    from lookcloser.engine.trainer import Trainer
    from tests.conftest import tiny_config

    trainer = Trainer(tiny_config(epochs=1), tmp_path / "a", progress=False)
    images = next(iter(trainer.data.loader(0, trainer.device)))[0]
    assert images.dtype == torch.uint8
    cfg = tiny_config(epochs=1)
    cfg.data.pca_lighting = 0.1
    trainer = Trainer(cfg, tmp_path / "b", progress=False)
    assert next(iter(trainer.data.loader(0, trainer.device)))[0].dtype == torch.float32
