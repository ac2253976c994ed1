"""Saving in the middle of an epoch (``train.checkpoint_minutes``, SIGTERM): a long epoch killed part way resumes
from the batch after the last save and ends with the weights and figures of a run that never stopped."""

import json
import os
import signal

import pytest
import torch

from lookcloser.config import ModelConfig, RunConfig
from lookcloser.engine import train
from lookcloser.engine.checkpoint import atomic_save, load_checkpoint_file
from lookcloser.engine.trainer import TrainingInterrupted
from lookcloser.errors import LookcloserError
from tests.conftest import TINY_BACKBONE, tiny_config

EVERY_STEP = 1e-9  # minutes: every optimizer step is past due, so each one but an epoch's last saves


class Crash(Exception):
    pass


def _config(method: str, **train):
    cfg = tiny_config(epochs=3, **train)  # 3 optimizer steps an epoch
    if method == "wsdan":  # its crops and drops draw from torch's generator in the training process
        from tests.test_wsdan import TINY_OPTS

        cfg.model = ModelConfig(method="wsdan", backbone=TINY_BACKBONE, options=dict(TINY_OPTS))
    return cfg


def _records(run):
    keep = ("epoch", "phase", "train_loss", "train_top1", "eval_top1")
    return [{k: r.get(k) for k in keep} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _same_run(a, b):
    wa, wb = load_checkpoint_file(a / "last.pt")["model"], load_checkpoint_file(b / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _records(a) == _records(b)  # the interrupted epoch's loss and accuracy too: its sums were kept


@pytest.mark.parametrize("method", ["baseline", "wsdan"])
def test_saved_within_an_epoch_and_resumed_equals_uninterrupted(tmp_path, method):
    train(_config(method, checkpoint_minutes=0), tmp_path / "straight", progress=False)

    def crash(epoch, step):
        if step == 5:  # the second step of the second epoch, before the save that would follow it
            raise Crash()

    with pytest.raises(Crash):
        train(_config(method, checkpoint_minutes=EVERY_STEP), tmp_path / "crashed", progress=False, step_hook=crash)
    ckpt = load_checkpoint_file(tmp_path / "crashed" / "last.pt")
    pos = ckpt["position"]
    assert (ckpt["epoch"], pos["epoch"], pos["batch"], pos["batches"]) == (1, 1, 1, 3)  # after the fourth step
    assert ckpt["scheduler"]["step"] == 4 and ckpt["metrics"]["epoch"] == 1  # the finished epoch's record
    assert "rng_per_rank" not in pos and len(ckpt["rng_per_rank"]) == 1  # the generators are kept once
    assert [r["epoch"] for r in _records(tmp_path / "crashed")] == [1]  # an epoch's line comes at its end
    from lookcloser.engine.checkpoint import describe_weights

    assert describe_weights(tmp_path / "crashed" / "last.pt").endswith(
        "(the weights after epoch 1 and 1 of 3 batches of epoch 2 of 3, saved within that epoch: the run has not "
        "finished it)")
    train(RunConfig(), tmp_path / "crashed", resume=True, progress=False)
    _same_run(tmp_path / "straight", tmp_path / "crashed")
    assert "position" not in load_checkpoint_file(tmp_path / "crashed" / "last.pt")  # ended at an epoch's end


def test_sigterm_saves_at_the_next_step_and_stops_and_the_run_resumes_from_there(tmp_path):
    train(_config("baseline"), tmp_path / "straight", progress=False)
    before = signal.getsignal(signal.SIGTERM)

    def term(epoch, step):
        if step == 4:  # the first step of the second epoch
            os.kill(os.getpid(), signal.SIGTERM)

    # no timed saves: the signal saves by itself
    with pytest.raises(TrainingInterrupted, match=r"holds epoch 1 and 1 of 3 batches of epoch 2: "
                                                   r"`lookcloser train --resume"):
        train(_config("baseline", checkpoint_minutes=0), tmp_path / "stopped", progress=False, step_hook=term)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    assert load_checkpoint_file(tmp_path / "stopped" / "last.pt")["scheduler"]["step"] == 4
    train(RunConfig(), tmp_path / "stopped", resume=True, progress=False)
    _same_run(tmp_path / "straight", tmp_path / "stopped")


def test_sigterm_in_the_last_step_lets_the_run_finish(tmp_path):
    """Asked to stop in the last step of the last epoch, the run saves that epoch and ends as finished (what
    ends a run, e.g. choosing when to zoom, still runs): nothing is left to resume."""
    def term(epoch, step):
        if step == 9:  # 3 epochs of 3 steps
            os.kill(os.getpid(), signal.SIGTERM)

    record = train(_config("baseline"), tmp_path / "run", progress=False, step_hook=term)
    assert record["epoch"] == 3 and "position" not in load_checkpoint_file(tmp_path / "run" / "last.pt")


def test_a_mid_epoch_save_resumes_only_over_the_same_global_batches(tmp_path):
    def crash(epoch, step):
        if step == 2:
            raise Crash()

    with pytest.raises(Crash):
        train(_config("baseline", checkpoint_minutes=EVERY_STEP), tmp_path / "run", progress=False, step_hook=crash)
    ckpt = load_checkpoint_file(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["position"]["batch"]) == (0, 1)  # within the first epoch: no finished one
    from lookcloser.engine.checkpoint import saved_at

    assert saved_at(ckpt) == "1 of 3 batches of epoch 1"
    ckpt["position"]["global_batch"] = 16  # as if it had run as two processes of 8
    atomic_save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(LookcloserError, match=r"saved in the middle of epoch 1 with global batches of 16 images .* "
                                              r"and this start has 8 .*; resume it with the same processes"):
        train(RunConfig(), tmp_path / "run", resume=True, progress=False)


def test_checkpoint_minutes_out_of_range_is_one_sentence():
    with pytest.raises(LookcloserError, match=r"checkpoint_minutes must be >= 0 \(0: save at the ends of epochs"):
        tiny_config(checkpoint_minutes=-1)


def test_the_batch_sampler_starts_one_iteration_part_way():
    from lookcloser.engine.distributed import GlobalBatchSampler

    sampler = GlobalBatchSampler(20, 4, 1, 0, seed=1, epoch=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=3)
    assert list(sampler) == whole[3:]  # the same batches with the same augmentation seeds, from the fourth
    assert list(sampler) == whole  # the next iteration from the first again


def test_sigterm_to_the_whole_process_group_stops_the_cli_cleanly_and_it_resumes(tmp_path):
    """As a job scheduler's time limit does: SIGTERM to the training process and its loader workers at once. The
    workers leave it to the training process, which saves within the epoch, says how to continue and exits with
    130 (no traceback of a dead worker); --resume then finishes the run."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lookcloser.cli", "train", "--data", "synth:classes=4,train=40,test=4,size=64",
           "--backbone", TINY_BACKBONE, "--epochs", "2", "--image-size", "64", "--batch-size", "4", "--workers", "2",
           "--device", "cpu", "--eval-every", "0", "--threads", "1", "--out", str(out), "--quiet", "--no-probe-check"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         env=env)
    lines = []
    for line in p.stdout:  # wait for the first epoch's line: the second epoch is then under way
        lines.append(line)
        if line.startswith("INFO epoch 1:"):
            break
    time.sleep(0.3)
    assert p.poll() is None, "".join(lines)
    os.killpg(p.pid, signal.SIGTERM)  # the process group: the training process and its two loader workers
    rest, _ = p.communicate(timeout=120)
    said = "".join(lines) + rest
    assert p.returncode == 130, said
    assert "`lookcloser train --resume" in said and "Traceback" not in said and "DataLoader worker" not in said
    held = load_checkpoint_file(out / "last.pt")
    assert held["epoch"] == 1 and held.get("position", {}).get("epoch", 1) == 1  # in the second epoch (or its end)
    train(RunConfig(), out, resume=True, progress=False)  # here: a second process would only add its start
    assert [r["epoch"] for r in _records(out)] == [1, 2]
