"""path,label list files, and class-balanced epochs for long-tailed data."""

from collections import Counter

import pytest
from PIL import Image

from lookcloser.data import open_dataset, read_counts
from lookcloser.data.readers import detect_format
from lookcloser.engine.distributed import GlobalBatchSampler
from lookcloser.errors import LookcloserError


def _lists(root, rows_by_split):
    (root / "imgs").mkdir(parents=True)
    for split, rows in rows_by_split.items():
        lines = ["path,label"] + [f"{p},{label}" for p, label in rows]
        for p, _ in rows:
            if not p.startswith("/"):
                Image.new("RGB", (16, 16), (90, 20, 20)).save(root / p)
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_a_list_file_set_is_read_with_classes_shared_by_its_splits(tmp_path):
    _lists(tmp_path, {"train": [("imgs/a.png", "wren"), ("imgs/b.png", "owl"), ("imgs/c.png", "owl")],
                      "test": [("imgs/d.png", "kite"), ("imgs/e.png", "wren")]})
    assert detect_format(tmp_path) == "csv"
    train, test = open_dataset(str(tmp_path), "train"), open_dataset(f"csv:{tmp_path}", "test")
    assert train.classes == test.classes == ["kite", "owl", "wren"]  # sorted union over the lists
    assert [(p.split("/")[-1], y) for p, y in train.samples] == [("a.png", 2), ("b.png", 1), ("c.png", 1)]
    assert [(p.split("/")[-1], y) for p, y in test.samples] == [("d.png", 0), ("e.png", 2)]
    fmt, counts = read_counts(str(tmp_path))
    assert fmt == "csv" and counts["train"] == (3, 3) and isinstance(counts["val"], str)


def test_numeric_labels_sort_as_numbers_and_bad_rows_are_named(tmp_path):
    _lists(tmp_path, {"train": [("imgs/a.png", "10"), ("imgs/b.png", "2")], "test": [("imgs/c.png", "2")]})
    assert open_dataset(str(tmp_path), "train").classes == ["2", "10"]
    (tmp_path / "test.csv").write_text("imgs/c.png,2\nimgs/d.png\n")
    with pytest.raises(LookcloserError, match="test.csv: row 2 is 'imgs/d.png', not 'path,label'"):
        open_dataset(str(tmp_path), "test")


def test_a_balanced_epoch_draws_every_class_about_equally():
    targets = [0] * 900 + [1] * 90 + [2] * 10  # long-tailed: 90 %, 9 %, 1 %
    counts = Counter(targets)
    weights = [1 / counts[y] for y in targets]
    seen = Counter()
    sampler = GlobalBatchSampler(len(targets), 50, 1, 0, seed=0, epoch=0, weights=weights)
    for batch in sampler:
        seen.update(targets[i] for i, _ in batch)
    assert sum(seen.values()) == 1000
    assert all(280 < seen[c] < 390 for c in (0, 1, 2)), seen  # each about a third, not 900/90/10
    plain = Counter(targets[i] for b in GlobalBatchSampler(len(targets), 50, 1, 0, 0, 0) for i, _ in b)
    assert plain == counts


def test_a_balanced_epoch_is_the_same_for_any_number_of_processes():
    weights = [1.0 if i % 3 else 5.0 for i in range(24)]
    one = [x for b in GlobalBatchSampler(24, 8, 1, 0, 3, 2, weights=weights) for x in b]
    two = [GlobalBatchSampler(24, 4, 2, r, 3, 2, weights=weights) for r in (0, 1)]
    merged = [x for b0, b1 in zip(*two) for x in (*b0, *b1)]
    assert merged == one
    assert len({s for _, s in one}) == len(one)  # an image drawn twice gets two augmentations


def test_training_with_a_balanced_sampler(tmp_path):
    from lookcloser.engine import train
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1)
    cfg.data.balance = "sampler"
    record = train(cfg, tmp_path / "run", progress=False)
    assert record["epoch"] == 1 and record["train_loss"] > 0
    with pytest.raises(LookcloserError, match="balance must be none or sampler"):
        cfg.merged({"data": {"balance": "weights"}})
