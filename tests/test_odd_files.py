"""Entries of a data folder that are no image files: skipped with a warning naming each, never opened."""

import logging
import os
import signal
import socket

import pytest
from PIL import Image

from lookcloser.cli import run
from lookcloser.data import load_image, open_dataset
from lookcloser.data.files import not_a_file
from lookcloser.errors import BadImageError
from tests.conftest import TINY_BACKBONE

KINDS = {
    "pipe.jpg": "a named pipe",
    "socket.png": "a socket",
    "dangling.jpg": "a symbolic link to nothing",
    "folder.jpg": "a folder",
    "null.jpg": "a character device",
}


def _make_odd(folder):
    """One entry of each kind, named like an image."""
    os.mkfifo(folder / "pipe.jpg")  # opening it would wait for a writer forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.png"))
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    (folder / "folder.jpg").mkdir()
    os.symlink("/dev/null", folder / "null.jpg")
    return sock


@pytest.fixture
def odd_data(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for c, rgb in (("owl", (200, 30, 30)), ("wren", (30, 30, 200))):
            (data / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (24, 24), tuple(v + 5 * i for v in rgb)).save(data / split / c / f"{i}.png")
    socks = [_make_odd(data / split / "owl") for split in ("train", "test")]
    yield data
    for s in socks:
        s.close()


def _hung(signum, frame):
    raise TimeoutError("reading the entry hung: it was opened")


def test_each_kind_is_named_and_never_opened(odd_data):
    folder = odd_data / "train" / "owl"
    previous = signal.signal(signal.SIGALRM, _hung)
    try:
        for name, why in KINDS.items():
            assert not_a_file(folder / name) == why
            signal.alarm(10)  # opening the pipe would wait for a writer forever: fail instead of hanging
            with pytest.raises(BadImageError, match=why):
                load_image(folder / name)
            signal.alarm(0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not_a_file(folder / "0.png") is None


def test_train_evaluate_predict_and_data_info_skip_them(odd_data, tmp_path, caplog, capsys):
    train_set = open_dataset(str(odd_data), "train")
    listed = {os.path.basename(p) for p, _ in train_set.samples}
    assert set(KINDS) <= listed  # counted like unreadable images, so the share limit sees them
    with caplog.at_level(logging.WARNING):
        assert run(["data", "info", str(odd_data)]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name, why in KINDS.items():
        assert f"{name} ({why})" in warned
    assert "train split: 5 of its 17 entries" in warned
    caplog.clear()
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert run(["train", "--data", str(odd_data), "--backbone", TINY_BACKBONE, "--epochs", "1",
                    "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                    "--max-unreadable", "0.5", "--quiet", "--out", str(out)]) == 0
    skipped = " ".join(r.getMessage() for r in caplog.records)
    for name, why in KINDS.items():
        assert name in skipped and why in skipped
    assert run(["evaluate", str(out), "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert run(["predict", str(out), str(odd_data / "test" / "owl"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if '"error"' in line]
    assert len(errors) == 5 and len(lines) == 11
    assert run(["predict", str(out), str(odd_data / "test" / "owl" / "pipe.jpg")]) == 2  # only a pipe: one error
