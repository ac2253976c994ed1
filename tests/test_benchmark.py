import json

import pytest
from typer.testing import CliRunner

from lookcloser.cli import app, run
from tests.conftest import TINY_BACKBONE, TINY_SYNTH


def test_accuracy_benchmark_table_and_reuse(tmp_path, capsys, monkeypatch):
    args = ["benchmark", "accuracy", "--data", TINY_SYNTH, "--methods", "baseline,tasn", "--backbone",
            TINY_BACKBONE, "--no-pretrained", "--epochs", "1", "--seeds", "2", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(tmp_path), "--quiet",
            "-o", "tasn.sample_size=24", "-o", "tasn.att_channels=8"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert [(x["method"], x["seed"]) for x in res["runs"]] == [("baseline", 0), ("baseline", 1), ("tasn", 0),
                                                               ("tasn", 1)]
    for m in ("baseline", "tasn"):
        tops = [x["top1"] for x in res["runs"] if x["method"] == m]
        mean, std = res["summary"][m]["top1"]
        assert abs(mean - sum(tops) / 2) < 1e-9 and std >= 0
    # the table's numbers are the runs' final-epoch reports
    rep = json.loads((tmp_path / "tasn-seed1" / "final-eval" / "report.json").read_text())
    assert rep["top1"] == res["runs"][3]["top1"]
    md = (tmp_path / "results.md").read_text()
    assert "| baseline |" in md and "| tasn |" in md and "torch" in md
    # a second call reuses the finished runs instead of training again
    stamp = (tmp_path / "baseline-seed0" / "last.pt").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (tmp_path / "baseline-seed0" / "last.pt").stat().st_mtime_ns == stamp
    # each epoch records the code and device that trained it; a table drawn by other code names the runs' own
    import lookcloser._version as version

    commit = version.code_commit()
    for line in (tmp_path / "tasn-seed1" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["commit"] == commit and record["device"].startswith("CPU (")
        assert record["version"] == version.__version__
    assert "Runs trained at" not in md  # trained and drawn by the same code
    monkeypatch.setattr(version, "code_commit", lambda: "0000000")
    assert CliRunner().invoke(app, args).exit_code == 0
    res = json.loads((tmp_path / "results.json").read_text())
    trained = f"commit {commit}" if commit else f"lookcloser {version.__version__}"
    assert res["environment"]["commit"] == "0000000" and {x["trained_at"] for x in res["runs"]} == {trained}
    assert (f"Runs trained at: {trained} (4 runs) (this table was drawn at commit 0000000)."
            in (tmp_path / "results.md").read_text())
    monkeypatch.undo()
    cfg = json.loads((tmp_path / "results.json").read_text())["config"]
    assert cfg["model"]["options"] == {}
    import yaml

    tasn_cfg = yaml.safe_load((tmp_path / "tasn-seed0" / "config.yaml").read_text())
    assert tasn_cfg["model"]["options"] == {"sample_size": 24, "att_channels": 8}
    # the same folder under another recipe is refused before anything trains, naming what differs
    for changed, named in (([*args[:args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:]],
                            "train.epochs 1 (now 2)"),
                           ([*args[:-1], "tasn.att_channels=4"], "model.options")):
        before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
        capsys.readouterr()
        assert run(changed) not in (0, None)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and named in errors[0] and "another --out" in errors[0], errors
        assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before  # nothing written
    # how a run is executed (loader workers, threads) may differ: the finished runs are reused
    r = CliRunner().invoke(app, [*args, "--workers", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "baseline-seed0" / "last.pt").stat().st_mtime_ns == stamp


def test_recipe_differences_compare_what_a_run_learns(tmp_path, monkeypatch):
    from lookcloser.benchmark import recipe_differences
    from lookcloser.config import RunConfig

    (tmp_path / "birds" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    saved = RunConfig().merged({"data": {"data": str(tmp_path / "birds"), "workers": 4},
                                "model": {"options": {"view_size": 128}}, "train": {"device": "cuda"}})
    same = RunConfig().merged({"data": {"data": "birds", "workers": 0}, "model": {"options": {"view_size": 128}}})
    assert recipe_differences(saved, same) == []
    other = same.merged({"train": {"lr": 0.5}, "model": {"options": {"view_size": 96}}, "data": {"data": "synth"}})
    assert [k for k, _, _ in recipe_differences(saved, other)] == ["data.data", "model.options", "train.lr"]


def test_accuracy_benchmark_tables_survive_an_interruption(tmp_path, monkeypatch):
    """A benchmark stopped in its second arm leaves the first arm's table, marked partial, and resumes."""
    import lookcloser.engine as engine

    args = ["benchmark", "accuracy", "--data", TINY_SYNTH, "--methods", "baseline,tasn", "--backbone",
            TINY_BACKBONE, "--no-pretrained", "--epochs", "1", "--seeds", "1", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(tmp_path), "--quiet",
            "-o", "tasn.sample_size=24", "-o", "tasn.att_channels=8"]
    real_train = engine.train

    def stop_at_tasn(cfg, *a, **k):
        if cfg.model.method == "tasn":
            raise KeyboardInterrupt
        return real_train(cfg, *a, **k)

    monkeypatch.setattr(engine, "train", stop_at_tasn)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130, r.output  # the CLI's answer to an interruption
    res = json.loads((tmp_path / "results.json").read_text())
    assert [x["method"] for x in res["runs"]] == ["baseline"]
    assert (res["finished_runs"], res["planned_runs"]) == (1, 2) and list(res["summary"]) == ["baseline"]
    md = (tmp_path / "results.md").read_text()
    assert "| baseline | 1 |" in md and "Partial: 1 of 2 runs finished" in md
    monkeypatch.setattr(engine, "train", real_train)
    assert CliRunner().invoke(app, args).exit_code == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [x["method"] for x in res["runs"]] == ["baseline", "tasn"] and res["finished_runs"] == 2
    assert "Partial" not in (tmp_path / "results.md").read_text()


def test_trained_at_names_every_commit_a_run_was_trained_at():
    from lookcloser.benchmark import trained_at

    assert trained_at([{"commit": "abc1234"}, {"commit": "abc1234"}]) == "commit abc1234"
    assert trained_at([{"commit": "abc1234"}, {"commit": "def5678"}]) == "commit abc1234, def5678"
    assert trained_at([{}, {"commit": "def5678"}]) == "commit def5678 and not recorded"  # resumed by newer code
    assert trained_at([{}, {"commit": ""}]) == "not recorded"
    # an installed package that is not a git checkout names its version
    assert trained_at([{"commit": "", "version": "0.1.0"}]) == "lookcloser 0.1.0"
    assert trained_at([{}, {"commit": "", "version": "0.1.0"}, {"commit": "abc1234", "version": "0.2.0"}]) == \
        "commit abc1234 and lookcloser 0.1.0 and not recorded"


def test_a_runs_threads_and_libraries_are_read_from_its_records():
    from collections import Counter

    from lookcloser.benchmark import counted, libraries_used, threads_used

    assert threads_used([{"threads": 1}, {"threads": 1}]) == "1"
    assert threads_used([{}, {"threads": 2}, {"threads": 1}]) == "not recorded then 2 then 1"
    assert libraries_used([{"torch": "2.14.1", "timm": "1.0.31"}] * 2) == "torch 2.14.1, timm 1.0.31"
    assert libraries_used([{}, {"torch": "2.14.1", "timm": "1.0.31"}]) == \
        "torch, timm not recorded then torch 2.14.1, timm 1.0.31"
    assert counted(Counter({"b": 1, "a": 2})) == "a (2 runs), b (1 run)" and counted(Counter()) == ""


def test_code_commit_is_only_lookcloser_own(tmp_path):
    """A package installed into a virtual environment inside some other git repository must not report that
    repository's commit as its own; a git checkout of lookcloser reports its HEAD."""
    import importlib.util
    import shutil
    import subprocess

    import lookcloser._version as version
    from lookcloser.benchmark import made_by

    def load(root):
        spec = importlib.util.spec_from_file_location("copied_version", root / "lookcloser" / "_version.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def git(*args, cwd):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                       capture_output=True)

    other = tmp_path / "project"  # the user's own repository, with lookcloser installed in its .venv
    site = other / ".venv" / "lib" / "site-packages"
    (site / "lookcloser").mkdir(parents=True)
    shutil.copy(version.__file__, site / "lookcloser" / "_version.py")
    git("init", "-q", cwd=other)
    git("commit", "-q", "--allow-empty", "-m", "theirs", cwd=other)
    installed = load(site)
    assert installed.code_commit() == ""
    assert made_by({"commit": installed.code_commit(), "version": installed.__version__}) == \
        f"lookcloser {version.__version__}"
    # the same file at the top of a checkout of its own names that checkout's commit
    repo = tmp_path / "checkout"
    (repo / "lookcloser").mkdir(parents=True)
    shutil.copy(version.__file__, repo / "lookcloser" / "_version.py")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "ours", cwd=repo)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    checkout = load(repo)
    assert checkout.code_commit() == head
    # edited since that commit: the commit alone would name code that did not run
    (repo / "lookcloser" / "_version.py").write_text((repo / "lookcloser" / "_version.py").read_text() + "\n# edit\n")
    assert load(repo).code_commit() == f"{head}+changes"
    assert made_by({"commit": "", "version": "0.1.0"}) == "lookcloser 0.1.0"
    assert made_by({"commit": head}) == f"commit {head}" and made_by({"commit": ""}) == "not recorded"


def test_a_run_killed_before_its_first_epoch_is_cleared_but_foreign_files_are_kept(tmp_path):
    """What a killed run wrote (config, TensorBoard events, temporaries) is cleared; anything else refuses."""
    from lookcloser.benchmark import _clear_unfinished
    from lookcloser.errors import LookcloserError

    run = tmp_path / "wsban-seed0"
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "tb" / "events.out.tfevents.1796607723.vm.17973.0").write_bytes(b"\0")
    (run / ".last.pt.123.tmp").write_bytes(b"\0")
    _clear_unfinished(run)
    assert list(run.iterdir()) == []

    (run / "tb").mkdir()
    (run / "tb" / "my-notes.txt").write_text("mine")
    (run / "config.yaml").write_text("model: {}\n")
    with pytest.raises(LookcloserError, match=r"holds files a benchmark run does not write \(tb\)"):
        _clear_unfinished(run)
    assert (run / "tb" / "my-notes.txt").read_text() == "mine" and (run / "config.yaml").is_file()
