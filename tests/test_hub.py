"""Hugging Face datasets, read offline with the datasets library: a dataset the test builds and saves."""

import datasets
import numpy as np
import pytest
from PIL import Image

from lookcloser.data import eval_split, open_dataset, read_counts, selection_split
from lookcloser.errors import LookcloserError

CLASSES = ["gull", "tern", "skua"]


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _dataset(n, seed):
    features = datasets.Features({"img": datasets.Image(), "species": datasets.ClassLabel(names=CLASSES),
                                  "note": datasets.Value("string")})
    return datasets.Dataset.from_dict({"img": _images(n, seed), "species": [i % 3 for i in range(n)],
                                       "note": ["x"] * n}, features=features)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "birds"
    datasets.DatasetDict({"train": _dataset(9, 0), "validation": _dataset(3, 1), "test": _dataset(6, 2)}
                         ).save_to_disk(str(root))
    return root


def test_a_saved_dataset_reads_with_its_splits_columns_and_class_names(saved):
    train = open_dataset(f"hf:{saved}", "train")
    assert train.classes == CLASSES and len(train) == 9 and train.targets == [0, 1, 2] * 3
    expected = _images(9, 0)[4]
    assert np.array_equal(np.asarray(train.load(4)), np.asarray(expected))
    assert len(open_dataset(f"hf:{saved}", "val")) == 3  # "validation" answers to val
    assert eval_split(f"hf:{saved}") == "test" and selection_split(f"hf:{saved}") == "val"
    assert read_counts(f"hf:{saved}") == ("hf", {"train": (9, 3), "val": (3, 3), "test": (6, 3)})
    # a held-out share reads the same rows as the split it came from
    held = open_dataset(f"hf:{saved}", "holdout", holdout=0.34)
    first = int(held.samples[0][0].rsplit("/", 1)[1])
    assert np.array_equal(np.asarray(held.load(0)), np.asarray(train.load(first)))


def test_parquet_files_and_named_columns(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    plain = datasets.Features({"picture": datasets.Image(), "y": datasets.Value("string")})
    for split, n, seed in (("train", 6, 0), ("test", 3, 1)):
        ds = datasets.Dataset.from_dict({"picture": _images(n, seed), "y": [["b", "a"][i % 2] for i in range(n)]},
                                        features=plain)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    with pytest.raises(LookcloserError, match="no label column"):
        open_dataset(f"hf:{folder}", "train")
    train = open_dataset(f"hf:{folder}:label=y", "train")
    assert train.classes == ["a", "b"] and train.targets == [1, 0, 1, 0, 1, 0]  # sorted distinct values
    assert train.load(0).size == (32, 24)


def test_mistakes_are_one_sentence(saved, tmp_path):
    with pytest.raises(LookcloserError, match="does not exist"):
        open_dataset(f"hf:{tmp_path / 'missing'}", "train")
    with pytest.raises(LookcloserError, match="no split 'val'"):
        datasets.DatasetDict({"train": _dataset(3, 0)}).save_to_disk(str(tmp_path / "one"))
        open_dataset(f"hf:{tmp_path / 'one'}", "val")
    with pytest.raises(LookcloserError, match="no image column named 'photo'"):
        open_dataset(f"hf:{saved}:image=photo", "train")
    with pytest.raises(LookcloserError, match="image=COLUMN and label=COLUMN"):
        open_dataset(f"hf:{saved}:colour=red", "train")


def test_a_run_trains_and_evaluates_on_a_hub_dataset(saved, tmp_path):
    from lookcloser.engine import train
    from lookcloser.report import evaluate_checkpoint
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1).merged({"data": {"data": f"hf:{saved}", "image_size": 32, "workers": 2}})
    record = train(cfg, tmp_path / "run", progress=False)
    assert record["eval_split"] == "val" and record["eval_images"] == 3
    m = evaluate_checkpoint(tmp_path / "run", out=tmp_path / "eval", workers=0, progress=False)
    assert m["n"] == 6
