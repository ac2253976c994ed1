"""A hostile new user: every mistake is one clear sentence, a non-zero exit, no traceback, and nothing
the user owns is written, changed or deleted."""

import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lookcloser.cli import run
from lookcloser.config import RunConfig
from lookcloser.engine import train
from lookcloser.engine.checkpoint import load_checkpoint_file
from lookcloser.errors import LookcloserError, NonFiniteLossError
from tests.conftest import TINY_BACKBONE, TINY_SYNTH, tiny_config


def _snapshot(*roots):
    """Every file under the roots with its size and modification time."""
    out = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _fails_cleanly(argv, capsys, *watched, contains=None):
    before = _snapshot(*watched)
    code = run([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code not in (0, None), f"{argv} exited 0:\n{err}"
    assert len(errors) == 1, f"{argv} gave {len(errors)} error lines:\n{err}"
    assert "Traceback" not in err, err
    if contains:
        assert contains.lower() in errors[0].lower(), errors[0]
    assert _snapshot(*watched) == before, f"{argv} changed files"
    return errors[0]


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "a.jpg").write_text("not an image")
    (d / "b.png").write_bytes(b"\x89PNG broken")
    return d


@pytest.fixture
def files(tmp_path, trained_run):
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("train:\n  epochs: 2  # caf\xe9\n".encode("latin-1"))
    no_preprocess = tmp_path / "nopre.pt"
    ckpt = load_checkpoint_file(trained_run / "last.pt")
    del ckpt["preprocess"]
    torch.save(ckpt, no_preprocess)
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine")
    return {"latin1": not_utf8, "nopre": no_preprocess, "bogus": bogus, "file": a_file}


S = TINY_SYNTH
TRAIN = ["train", "--data", S, "--backbone", TINY_BACKBONE, "--image-size", "32", "--epochs", "1", "--workers", "0",
         "--device", "cpu", "--quiet"]

# (name, argv with {run}, {out}, {file}, ... placeholders, words the error must contain)
CASES = [
    ("option of the wrong type", [*TRAIN, "-o", "drop_rate=abc", "--out", "{out}"], "drop_rate"),
    ("int option given a word", [*TRAIN, "--method", "wsdan", "-o", "num_maps=abc", "--out", "{out}"], "num_maps"),
    ("pair option given a word", [*TRAIN, "--method", "wsdan", "-o", "crop_theta=abc", "--out", "{out}"], "crop_theta"),
    ("fraction out of range", [*TRAIN, "--method", "wsdan", "-o", "drop_theta=5", "--out", "{out}"], "drop_theta"),
    ("float option given a word", [*TRAIN, "--method", "rra", "-o", "nms_iou=abc", "--out", "{out}"], "nms_iou"),
    ("scale given a word", [*TRAIN, "--method", "wsdan", "-o", "feature_scale=abc", "--out", "{out}"], "feature_scale"),
    ("negative iterations", [*TRAIN, "--method", "tasn", "-o", "iters=-1", "--out", "{out}"], "iters"),
    ("dense below one", [*TRAIN, "--method", "tasn", "-o", "dense=0.5", "--out", "{out}"], "dense"),
    ("unknown option", [*TRAIN, "-o", "dropout=0.1", "--out", "{out}"], "no option"),
    ("option without =", [*TRAIN, "-o", "drop_rate", "--out", "{out}"], "key=value"),
    ("infinite learning rate", [*TRAIN, "--lr", "inf", "--out", "{out}"], "lr"),
    ("momentum above one", [*TRAIN, "--momentum", "7", "--out", "{out}"], "momentum"),
    ("negative gamma", [*TRAIN, "--gamma", "-3", "--out", "{out}"], "gamma"),
    ("zero epochs", [*TRAIN, "--epochs", "0", "--out", "{out}"], "epochs"),
    ("zero batch", [*TRAIN, "--batch-size", "0", "--out", "{out}"], "batch_size"),
    ("tiny image", [*TRAIN, "--image-size", "4", "--out", "{out}"], "image_size"),
    ("unknown method", [*TRAIN, "--method", "tsan", "--out", "{out}"], "unknown method"),
    ("unknown backbone", [*TRAIN, "--backbone", "resnet9000", "--out", "{out}"], "backbone"),
    ("unknown format prefix", [*TRAIN, "--data", "cbu:/x", "--out", "{out}"], "unknown data format"),
    ("another unknown prefix", [*TRAIN, "--data", "foo:/x", "--out", "{out}"], "unknown data format"),
    ("missing data folder", [*TRAIN, "--data", "{tmp}/nothing", "--out", "{out}"], "does not exist"),
    ("out is a file", [*TRAIN, "--out", "{file}"], "is a file"),
    ("out holds another run's files", [*TRAIN, "--out", "{run}"], "--resume"),
    ("recipe not UTF-8", [*TRAIN, "--config", "{latin1}", "--out", "{out}"], "UTF-8"),
    ("missing recipe", [*TRAIN, "--config", "{tmp}/nope.yaml", "--out", "{out}"], "does not exist"),
    ("typo in a command", ["trian"], "no such command"),
    ("resume a folder without a run", ["train", "--resume", "{tmp}/empty"], "does not exist"),
    ("resume changing the data", ["train", "--resume", "{run}", "--data", "synth"], "--data"),
    ("resume changing an option", ["train", "--resume", "{run}", "-o", "drop_rate=0.2"], "-o"),
    ("resume to fewer epochs", ["train", "--resume", "{run}", "--epochs", "1"], "already trained"),
    ("resume with a recipe", ["train", "--resume", "{run}", "--config", "{latin1}"], "--config"),
    ("evaluate with negative workers", ["evaluate", "{run}", "--workers", "-1", "--out", "{out}"], "--workers"),
    ("evaluate a missing run", ["evaluate", "{tmp}/nothing"], "does not exist"),
    ("evaluate a safetensors file", ["evaluate", "{bogus}", "--out", "{out}"], "safetensors"),
    ("evaluate a checkpoint without preprocess", ["evaluate", "{nopre}", "--out", "{out}"], "preprocess"),
    ("evaluate into a file", ["evaluate", "{run}", "--out", "{file}", "--workers", "0", "--quiet"], "is a file"),
    ("predict on cuda without a GPU", ["predict", "{run}", "{images}", "--device", "cuda"], "cuda"),
    ("predict on an unknown device", ["predict", "{run}", "{images}", "--device", "foo"], "device"),
    ("predict with batch 0", ["predict", "{run}", "{images}", "--batch-size", "0"], "--batch-size"),
    ("predict with top-k 0", ["predict", "{run}", "{images}", "--top-k", "0"], "--top-k"),
    ("predict only unreadable files", ["predict", "{run}", "{bad}"], "could be read"),
    ("predict a missing file", ["predict", "{run}", "{tmp}/missing.jpg"], "does not exist"),
    ("predict with a threshold above 1", ["predict", "{run}", "{images}", "--threshold", "2"], "--threshold"),
    ("evaluate with negative speed images", ["evaluate", "{run}", "--speed-images", "-1", "--out", "{out}"],
     "--speed-images"),
    ("scenes with a scale that is no range", ["data", "scenes", "synth", "synth", "--out", "{out}", "--scale", "0.5"],
     "--scale"),
    ("scenes with a reversed scale", ["data", "scenes", "synth", "synth", "--out", "{out}", "--scale", "0.6,0.3"],
     "--scale"),
    ("visualize a missing run", ["visualize", "{tmp}/nothing", "{images}", "--out", "{out}"], "does not exist"),
    ("export a huge image", ["export", "{run}", "--image-size", "100000", "--format", "torchscript",
                             "--out", "{out}/m.pt"], "--image-size"),
    ("export over the resume checkpoint", ["export", "{run}/best.pt", "--format", "torchscript", "--out",
                                           "{run}/last.pt"], "left alone"),
    ("export in an unknown format", ["export", "{run}", "--format", "tflite"], "format"),
    ("data info of an unknown format", ["data", "info", "cbu:/x"], "unknown data format"),
    ("synth with too many classes", ["data", "synth", "--out", "{out}", "--classes", "1000"], "classes"),
    ("benchmark with zero seeds", ["benchmark", "accuracy", "--seeds", "0", "--out", "{out}"], "--seeds"),
    ("benchmark of an unknown method", ["benchmark", "accuracy", "--methods", "tsan", "--out", "{out}"],
     "unknown method"),
    ("speed of an unknown method", ["benchmark", "speed", "--methods", "tsan", "--out", "{out}"], "unknown method"),
    ("demo of an unknown method", ["demo", "--method", "tsan", "--out", "{out}"], "demo shows"),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_every_mistake_is_one_sentence_and_changes_nothing(name, argv, words, tmp_path, trained_run, files, bad_images,
                                                          capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    from lookcloser.data import open_dataset

    open_dataset(S, "test").load(0).save(images / "x.png")
    (tmp_path / "empty").mkdir()
    subst = {"run": trained_run, "out": tmp_path / "out", "tmp": tmp_path, "images": images, "bad": bad_images,
             **files}
    argv = [a.format(**{k: str(v) for k, v in subst.items()}) for a in argv]
    _fails_cleanly(argv, capsys, trained_run, tmp_path, contains=words)
    if "--out" in argv and not argv[argv.index("--out") + 1].startswith(str(trained_run)):
        out = Path(argv[argv.index("--out") + 1])
        assert not out.exists() or out.is_file(), f"{out} was created"


# ---- work that used to be lost -------------------------------------------------------------------------

def test_a_folder_with_a_best_model_but_no_last_pt_is_never_overwritten(tmp_path, trained_run):
    out = tmp_path / "kept"
    out.mkdir()
    for name in ("best.pt", "config.yaml", "metrics.jsonl"):
        (out / name).write_bytes((trained_run / name).read_bytes())
    before = _snapshot(out)
    with pytest.raises(LookcloserError, match="not empty"):
        train(tiny_config(epochs=1), out, progress=False)
    assert _snapshot(out) == before


def test_demo_never_deletes_a_folder_it_did_not_create(tmp_path):
    from lookcloser.demo import free_folder

    taken = tmp_path / "demo"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    (taken / "last.pt").write_text("an earlier run")
    assert free_folder(taken) == tmp_path / "demo-2"
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "x").write_text("x")
    assert free_folder(taken) == tmp_path / "demo-3"
    (tmp_path / "empty").mkdir()
    assert free_folder(tmp_path / "empty") == tmp_path / "empty"
    assert (taken / "notes.txt").read_text() == "mine"


def test_export_never_replaces_a_run_file_but_replaces_its_own_export(trained_run, tmp_path):
    from lookcloser.export import export_model

    for name in ("last.pt", "config.yaml", "metrics.jsonl"):
        before = (trained_run / name).read_bytes()
        with pytest.raises(LookcloserError, match="left alone"):
            export_model(trained_run / "best.pt", trained_run / name, format="torchscript", verify=False)
        assert (trained_run / name).read_bytes() == before
    first = export_model(trained_run, tmp_path / "m.pt", format="torchscript", verify=False)
    again = export_model(trained_run, tmp_path / "m.pt", format="torchscript", verify=False)
    assert first["path"] == again["path"]


def test_a_killed_checkpoint_write_leaves_no_temporary_behind(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(epochs=1), out, progress=False)
    stale = out / ".last.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a kill during atomic_save leaves
    (out / ".best.pt.tmp").write_bytes(b"\0")
    train(RunConfig(), out, resume=True, progress=False, changes={"train": {"epochs": 2}})
    assert not stale.exists() and not (out / ".best.pt.tmp").exists()
    assert load_checkpoint_file(out / "last.pt")["epoch"] == 2


# ---- resume that tells the truth ----------------------------------------------------------------------

def test_resume_may_train_longer_with_a_new_learning_rate(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(epochs=1, lr=0.05), out, progress=False)
    train(RunConfig(), out, resume=True, progress=False, changes={"train": {"epochs": 3, "lr": 0.01}})
    ckpt = load_checkpoint_file(out / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["train"]["epochs"] == 3 and ckpt["config"]["train"]["lr"] == 0.01
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # 24 images in batches of 8: 3 steps an epoch, 9 in all, 2 of warm-up; epoch 2 ends at step 5 of 9
    assert records[1]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))


def test_resume_refuses_changed_class_folders_naming_them(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for c in ("owl", "wren"):
            (data / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (40 * i, 90 if c == "owl" else 10, 0)).save(data / split / c / f"{i}.png")
    cfg = tiny_config(epochs=1)
    cfg.data.data = str(data)
    train(cfg, tmp_path / "run", progress=False)
    os.rename(data / "train" / "wren", data / "train" / "robin")
    os.rename(data / "test" / "wren", data / "test" / "robin")
    with pytest.raises(LookcloserError, match="gone: wren; new: robin"):
        train(RunConfig(), tmp_path / "run", resume=True, progress=False, changes={"train": {"epochs": 2}})


def test_non_finite_loss_before_any_epoch_says_nothing_was_saved(tmp_path, monkeypatch):
    from lookcloser.models.baseline import Baseline

    original = Baseline.loss
    monkeypatch.setattr(Baseline, "loss", lambda self, o, y: (original(self, o, y)[0] * float("nan"), {}))
    with pytest.raises(NonFiniteLossError, match="nothing was saved") as info:
        train(tiny_config(epochs=1), tmp_path / "run", progress=False)
    assert "intact" not in str(info.value) and not (tmp_path / "run" / "last.pt").exists()


# ---- data that is not there --------------------------------------------------------------------------

def _folder_data(root, readable, unreadable, test_readable=True):
    for split in ("train", "test"):
        for c in ("x", "y"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(readable if split == "train" else 2):
                if split == "train" or test_readable:
                    Image.new("RGB", (20, 20), (i * 30, 90 if c == "x" else 10, 0)).save(d / f"{i}.png")
                else:
                    (d / f"{i}.png").write_bytes(b"broken")
            for i in range(unreadable if split == "train" else 0):
                (d / f"bad{i}.png").write_bytes(b"broken")
    return root


def _cfg(data, **train_kw):
    cfg = tiny_config(**{"epochs": 1, **train_kw})
    cfg.data.data = str(data)
    cfg.data.batch_size = 4
    return cfg


def test_training_on_data_that_cannot_be_read_is_an_error(tmp_path):
    data = _folder_data(tmp_path / "d", readable=0, unreadable=3)
    with pytest.raises(LookcloserError, match="cannot be read"):
        train(_cfg(data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_large_share_of_unreadable_images_stops_with_their_names(tmp_path):
    data = _folder_data(tmp_path / "d", readable=4, unreadable=2)  # a third of the images
    with pytest.raises(LookcloserError, match=r"more than 20%.*bad\d\.png"):
        train(_cfg(data), tmp_path / "run", progress=False)


def test_evaluation_on_zero_readable_images_is_an_error(tmp_path):
    data = _folder_data(tmp_path / "d", readable=4, unreadable=0, test_readable=False)
    with pytest.raises(LookcloserError, match="test split .* could be read"):
        train(_cfg(data), tmp_path / "run", progress=False)


def test_unreadable_images_never_leave_a_batch_of_one_for_batchnorm(tmp_path, caplog):
    # 4 readable and 2 unreadable files in batches of 3: with seed 0 some batches hold one readable image,
    # which BatchNorm cannot normalize in training
    data = _folder_data(tmp_path / "d", readable=2, unreadable=1)
    cfg = _cfg(data, epochs=4)
    cfg.data.batch_size = 3
    cfg.data.max_unreadable = 0.9
    with caplog.at_level(logging.WARNING):
        rec = train(cfg, tmp_path / "run", progress=False)
    assert rec["epoch"] == 4
    assert any("skipped a batch of 1 readable image" in r.getMessage() for r in caplog.records)


def test_a_decompression_bomb_is_named_with_pillows_reason(tmp_path, caplog, monkeypatch):
    from PIL import Image as PILImage

    data = _folder_data(tmp_path / "d", readable=4, unreadable=0)
    Image.new("RGB", (64, 64)).save(data / "train" / "x" / "huge.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64×64 > 2×1000: refused as a bomb (20×20 are not)
    with caplog.at_level(logging.WARNING):
        train(_cfg(data), tmp_path / "run", progress=False)
    named = [r.getMessage() for r in caplog.records if "huge.png" in r.getMessage()]
    assert named and "decompression bomb" in named[0].lower(), named


def test_synth_spec_says_which_set_it_used_when_a_synth_folder_exists(tmp_path, monkeypatch, caplog):
    from lookcloser.data import parse_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "synth").mkdir()
    with caplog.at_level(logging.WARNING):
        assert parse_spec("synth") == ("synth", "")
    assert any("./synth" in r.getMessage() for r in caplog.records)
    assert parse_spec("./synth") == (None, "./synth")


def test_classes_file_that_is_not_utf8_is_named(tmp_path):
    from lookcloser.data import open_dataset
    from tests.fixtures_builders import build_cub

    home = build_cub(tmp_path)
    (home / "classes.txt").write_bytes("1 Caf\xe9_Bird\n".encode("latin-1"))
    with pytest.raises(LookcloserError, match="classes.txt: not UTF-8"):
        open_dataset(f"cub:{home}", "train")


def test_a_read_only_run_folder_is_refused_before_training(tmp_path, monkeypatch):
    import lookcloser.engine.runfolder as T

    ro = tmp_path / "ro"
    ro.mkdir()
    # as a read-only file system answers (chmod does not stop root, who may run this suite)
    monkeypatch.setattr(T.os, "access", lambda path, mode: Path(path) != ro)
    with pytest.raises(LookcloserError, match=f"cannot write into {ro}"):
        train(tiny_config(epochs=1), ro / "run", progress=False)
    assert list(ro.iterdir()) == []


def test_a_write_that_fails_midway_is_one_sentence(tmp_path, monkeypatch):
    original = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "run":
            raise PermissionError(13, "Permission denied")
        return original(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(LookcloserError, match="cannot write into .*Permission denied"):
        train(tiny_config(epochs=1), tmp_path / "run", progress=False)


def test_ctrl_c_says_where_the_run_stands(tmp_path, capsys):
    from lookcloser.engine.trainer import TrainingInterrupted

    def interrupt(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"epoch 2.*holds epoch 1.*--resume"):
        train(tiny_config(epochs=3), tmp_path / "run", progress=False, step_hook=interrupt)
    assert load_checkpoint_file(tmp_path / "run" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("method", ["rra", "tasn", "wsdan", "wsban"])
def test_demo_summary_puts_both_accuracies_in_one_column(method):
    from lookcloser.demo import summary_lines

    lines = summary_lines(method, 8, 80.625, 87.5, "g.html", "r.html")
    assert lines[1].index("test top-1") == lines[2].index("test top-1")
    assert lines[1].endswith("test top-1  80.6%") and "test top-1  87.5%   (+6.9 points; chance 12.5%)" in lines[2]
    assert lines[3] == f"  what {method} looked at and zoomed into: g.html; reports: r.html"
