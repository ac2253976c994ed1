"""WebDataset shards: written with the images as stored, read back by position for evaluation, streamed
for training with every image read exactly once per epoch across processes and loader workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lookcloser.cli import run
from lookcloser.data import open_dataset, read_counts
from lookcloser.data.shards import ShardStream
from lookcloser.data.shardwriter import write_shards
from lookcloser.errors import LookcloserError

DATA = "synth:classes=3,train=14,test=4,size=32"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("wds") / "s"
    write_shards(DATA, out, shard_size=5, progress=False)
    return out


def test_shards_hold_every_image_once_with_its_class(shards):
    info = json.loads((shards / "info.json").read_text())
    assert [s["images"] for s in info["splits"]["train"]["shards"]] == [5] * 8 + [2]  # 42 images
    assert sorted(p.name for p in shards.glob("test-*.tar")) == ["test-00000.tar", "test-00001.tar", "test-00002.tar"]
    source = open_dataset(DATA, "train")
    read = open_dataset(f"wds:{shards}", "train")
    assert read.classes == source.classes and len(read) == 42
    assert read_counts(f"wds:{shards}") == ("wds", {"train": (42, 3), "val": (12, 3), "test": (12, 3)})
    # written in a shuffled order: the position's json names the source, whose pixels come back exactly
    by_source = {}
    import tarfile

    for tar in sorted(shards.glob("train-*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".json"):
                    meta = json.loads(t.extractfile(m).read())
                    by_source[meta["position"]] = meta["source"]
    assert sorted(by_source.values()) == sorted(p for p, _ in source.samples)
    index = {p: i for i, (p, _) in enumerate(source.samples)}
    for position in (0, 17, 41):
        i = index[by_source[position]]
        assert read.targets[position] == source.targets[i]
        assert np.array_equal(np.asarray(read.load(position)), np.asarray(source.load(i)))


def test_one_process_streams_every_image_once_per_epoch_in_a_new_order(shards):
    ds = ShardStream(str(shards), "train")
    ds.with_position = True
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(3, epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: b)
        orders.append([int(item[2]["position"]) for batch in loader for item in batch])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(42))
    assert orders[0] != orders[1] and orders[0] == orders[2]  # each epoch its own order, the same every time
    assert ds.batches(4, 1) == 10 and ds.batches(4, 2) == 5  # 21 and 21 images per process


def test_two_gloo_processes_read_every_image_exactly_once_per_epoch(shards, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), "stream", str(shards), str(tmp_path), "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    seen = [torch.load(tmp_path / f"stream{r}.pt") for r in (0, 1)]
    for epoch in (0, 1):
        both = seen[0][epoch] + seen[1][epoch]
        assert sorted(both) == list(range(42)), epoch  # every image once, across 2 processes x 2 workers
        assert set(seen[0][epoch]).isdisjoint(seen[1][epoch])
    assert set(seen[0][0]) != set(seen[0][1])  # the deal changes from epoch to epoch


def _colour_folders(root: Path) -> Path:
    """Class folders of noisy images whose class is their dominant colour: learnable in a few epochs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 10)):
        for c, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 120, (32, 32, 3))
                a[..., c] += 120
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_a_sharded_set_trains_like_its_source(tmp_path):
    """The same recipe on a folder set and on its shards (which stream it in another order): the same test
    top-1 within noise, both far above chance."""
    from lookcloser.engine import train
    from tests.conftest import tiny_config

    folder = _colour_folders(tmp_path / "colours")
    write_shards(str(folder), tmp_path / "wds", shard_size=16, progress=False)
    scores = {}
    for name, spec in (("folder", str(folder)), ("shards", f"wds:{tmp_path / 'wds'}")):
        cfg = tiny_config(epochs=3, eval_every=1).merged({"data": {"data": spec, "workers": 2, "eval_split": "test"}})
        scores[name] = train(cfg, tmp_path / name, progress=False)["eval_top1"]
    assert all(s >= 80 for s in scores.values()), scores
    assert abs(scores["folder"] - scores["shards"]) <= 10, scores


def test_streamed_shards_refuse_what_needs_the_whole_list(shards, tmp_path, capsys):
    from lookcloser.engine import train
    from tests.conftest import tiny_config

    for change, flag in (({"holdout": 0.1}, "--holdout"), ({"cache": True}, "--cache"),
                         ({"balance": "sampler"}, "--balance")):
        cfg = tiny_config(epochs=1).merged({"data": {"data": f"wds:{shards}", **change}})
        with pytest.raises(LookcloserError, match=flag):
            train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(LookcloserError, match="not a lookcloser shard index|cannot read"):
        open_dataset(f"wds:{tmp_path}", "train")
    assert run(["data", "shard", DATA, "--out", str(tmp_path / "cli"), "--shard-size", "20", "--quiet"]) == 0
    assert "train: 42 images in 3 shard(s)" in capsys.readouterr().out
