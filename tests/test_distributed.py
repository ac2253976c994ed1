"""Two real processes under torchrun with the gloo backend on the CPU."""

import json
import os
import subprocess
import sys

import torch

from lookcloser.engine.checkpoint import load_checkpoint_file
from tests.conftest import TINY_BACKBONE


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lookcloser.cli", "train", "--data", "synth:classes=4,train=8,test=3,size=40",
           "--backbone", TINY_BACKBONE, "--epochs", "2", "--image-size", "32", "--batch-size", "4",
           "--workers", "0", "--device", "cpu", "--out", str(out), "--quiet"]
    # gloo on the loopback interface: the machine name may not resolve to a reachable address in sandboxes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # rank 0 alone writes: one line per epoch, not two
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["world_size"] == 2 for r in records)
    ckpt = load_checkpoint_file(out / "last.pt")
    assert ckpt["epoch"] == 2
    # 32 training images, 2 processes × batch 4 → 4 steps per epoch, 8 in all
    assert ckpt["scheduler"]["step"] == 8
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert sorted(x.name for x in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
