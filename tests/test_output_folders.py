"""Every command that writes a folder follows one rule: a folder that is new, empty, or the command's own
earlier output; a folder of a user's files is refused in one sentence and left exactly as it was."""

import json
from pathlib import Path

import pytest

from lookcloser.cli import run
from lookcloser.errors import LookcloserError
from lookcloser.folders import MARK, output_folder, written_by
from tests.conftest import TINY_BACKBONE, TINY_SYNTH


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(tmp_path: Path, *names: str) -> Path:
    """A folder of the user's own files, some named as a command's output would be."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    for name in names:
        (folder / name).write_text(json.dumps({"mine": True}))
    return folder


PROBE = ["probe", TINY_SYNTH, "--backbone", TINY_BACKBONE, "--no-pretrained", "--view-size", "32", "--image-size",
         "32", "--workers", "0", "--quiet"]
# each command that writes a folder, with the files of its own output a user's folder may happen to hold
COMMANDS = {
    "probe": (PROBE + ["--out", "{out}"], ("probe.json",)),
    "evaluate": (["evaluate", "{run}", "--workers", "0", "--quiet", "--out", "{out}"], ("report.json",)),
    "visualize": (["visualize", "{run}", "{image}", "--device", "cpu", "--out", "{out}"], ("gallery.html",)),
    "benchmark accuracy": (["benchmark", "accuracy", "--methods", "baseline", "--seeds", "1", "--data", TINY_SYNTH,
                            "--backbone", TINY_BACKBONE, "--no-pretrained", "--epochs", "1", "--quiet",
                            "--out", "{out}"], ("results.json",)),
    "benchmark speed": (["benchmark", "speed", "--methods", "baseline", "--backbone", TINY_BACKBONE,
                         "--image-size", "32", "--batch-size", "2", "--warmup", "0", "--windows", "1", "--steps",
                         "1", "--out", "{out}"], ("speed.json",)),
    "data synth": (["data", "synth", "--classes", "2", "--train", "1", "--test", "1", "--size", "32",
                    "--out", "{out}"], ("train",)),
    "train": (["train", "--data", TINY_SYNTH, "--backbone", TINY_BACKBONE, "--image-size", "32", "--epochs", "1",
               "--workers", "0", "--quiet", "--out", "{out}"], ("config.yaml",)),
}


@pytest.fixture
def image(tmp_path):
    from lookcloser.data import open_dataset

    path = tmp_path / "bird.png"
    open_dataset(TINY_SYNTH, "test").load(0).save(path)
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_folder_of_a_users_files_survives_every_command(command, tmp_path, trained_run, image, capsys):
    argv, theirs = COMMANDS[command]
    folder = _users_folder(tmp_path, *theirs)
    before = _contents(folder)
    code = run([a.format(out=folder, run=trained_run, image=image) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code not in (0, None) and len(errors) == 1 and "Traceback" not in err, err
    assert str(folder) in errors[0] and "notes.txt" in errors[0], errors[0]
    assert _contents(folder) == before  # nothing written, changed or deleted


def test_export_leaves_a_users_file_of_the_same_name_alone(tmp_path, trained_run, capsys):
    users = tmp_path / "model.pt"
    users.write_bytes(b"my own model")
    code = run(["export", str(trained_run), "--format", "torchscript", "--no-verify", "--out", str(users)])
    assert code not in (0, None) and "left alone" in capsys.readouterr().err
    assert users.read_bytes() == b"my own model"


def test_probe_reuses_and_refreshes_its_own_output_and_keeps_notes_added_there(tmp_path, capsys):
    out = tmp_path / "probe"
    assert run(PROBE + ["--out", str(out)]) == 0
    assert written_by(out) == "probe" and (out / "probe.json").is_file()
    (out / "my-notes.txt").write_text("what I saw")
    first = json.loads((out / "probe.json").read_text())
    assert run(PROBE + ["--out", str(out)]) == 0  # its own output: refreshed
    assert (out / "my-notes.txt").read_text() == "what I saw"
    again = json.loads((out / "probe.json").read_text())["views"]["32"]
    assert (again["top1"], again["strength"]) == (first["views"]["32"]["top1"], first["views"]["32"]["strength"])


def test_the_rule_itself(tmp_path):
    new = output_folder(tmp_path / "a" / "b", "probe")
    assert new.is_dir() and written_by(new) == "probe" and [p.name for p in new.iterdir()] == [MARK]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert written_by(output_folder(empty, "visualize")) == "visualize"
    # another command's output is not this one's
    with pytest.raises(LookcloserError, match=r"`lookcloser probe` wrote it"):
        output_folder(new, "visualize")
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(LookcloserError, match="is a file"):
        output_folder(file, "probe")
    # output from before folders were marked: recognized by its signature, then marked
    old = tmp_path / "old"
    old.mkdir()
    (old / "probe.json").write_text("{}")
    with pytest.raises(LookcloserError, match="did not write"):
        output_folder(old, "probe", recognize=lambda p: False)
    assert written_by(output_folder(old, "probe", recognize=lambda p: True)) == "probe"
    # an unreadable mark is no mark
    (new / MARK).write_text("not json")
    assert written_by(new) is None


def test_earlier_unmarked_outputs_are_recognized_by_their_own_files(tmp_path, trained_run, image):
    """Folders written before marks existed (e.g. the committed benchmark results) stay usable."""
    from lookcloser.benchmark import _earlier_benchmark
    from lookcloser.viz import _earlier_pictures

    bench = tmp_path / "bench"
    (bench / "baseline-seed0").mkdir(parents=True)
    (bench / "baseline-seed0" / "config.yaml").write_text("x")
    assert _earlier_benchmark(bench)  # stopped before its first results.json
    (bench / "README.md").write_text("notes")
    assert not _earlier_benchmark(bench)
    (bench / "results.json").write_text(json.dumps({"arms": {}, "runs": []}))
    assert _earlier_benchmark(bench)
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "gallery.html").write_text("x")
    (pics / "000_bird.png").write_bytes(b"x")
    assert _earlier_pictures(pics)
    (pics / "holiday.png").write_bytes(b"x")
    assert not _earlier_pictures(pics)
