"""TensorBoard event files, read back with tensorboard's own reader."""

import json

import pytest

from lookcloser.engine import train
from tests.conftest import tiny_config

pytest.importorskip("tensorboard", reason="the tensorboard package writes and reads the event files")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("method, options", [("baseline", {}), ("wsdan", {"num_maps": 4})])
def test_the_event_files_hold_every_epochs_numbers_and_the_attention(tmp_path, method, options):
    cfg = tiny_config(epochs=2).merged({"model": {"method": method, "options": options}})
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    acc = _events(tmp_path / "run" / "tb")
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/top1", "eval/top1", "lr/heads", "speed/train_images_per_s"} <= set(scalars)
    for tag, key in (("train/loss", "train_loss"), ("eval/top1", "eval_top1"), ("lr/heads", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6)
    pictures = acc.Images("attention")
    assert [p.step for p in pictures] == [1, 2]
    assert (pictures[0].width, pictures[0].height) == (4 * 32, 32)  # four evaluation images in a row


def test_no_event_files_when_switched_off(tmp_path):
    train(tiny_config(epochs=1, tensorboard=False), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tb").exists()
