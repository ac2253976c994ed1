"""Benchmarks that anyone can run again: every method at the same budget.

``accuracy_benchmark`` trains and evaluates each method for each seed with the same backbone, weights,
image size, epochs, optimizer and augmentation, then writes ``results.json`` and ``results.md`` (mean ±
std over seeds). Accuracy is that of the final epoch's weights on the evaluation split: choosing the
best epoch by the same split would flatter every method. Finished runs are reused, so an interrupted
benchmark continues where it stopped, and the tables are rewritten after every finished run (with a line
saying how many of the planned runs they hold).
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .folders import output_folder


def environment() -> dict[str, Any]:
    """Device, library versions and the git commit, recorded beside every result."""
    import timm
    import torchvision

    from ._version import __version__, code_commit
    from .engine.machine import device_name

    commit = code_commit()
    cuda = torch.cuda.is_available()
    return {
        "device": device_name("cuda:0") if cuda else device_name("cpu", threads=torch.get_num_threads()),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "commit": commit, "version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def parse_arms(spec: str | list[str]) -> dict[str, str]:
    """Benchmark arms from ``"baseline,tasn"`` or ``"glance=baseline,tasn"``: ``{label: method}``.

    A label lets one method appear several times with different options (``-o glance.view_size=128``).
    """
    from .errors import LookcloserError
    from .models import check_methods

    items = spec.split(",") if isinstance(spec, str) else spec
    arms: dict[str, str] = {}
    for item in (x.strip() for x in items):
        if not item:
            continue
        label, _, method = item.partition("=") if "=" in item else (item, "", item)
        label, method = label.strip(), method.strip()
        check_methods([method])
        if not label.replace("-", "_").replace(".", "_").isidentifier() or "." in label:
            raise LookcloserError(f"bad arm label {label!r}; use letters, digits, - and _")
        if label in arms:
            raise LookcloserError(f"arm {label!r} appears twice; give each arm its own LABEL=METHOD")
        arms[label] = method
    if not arms:
        raise LookcloserError("no method to benchmark; pass --methods baseline,tasn,...")
    return arms


def _earlier_benchmark(folder: Path) -> bool:
    """A benchmark's folder from before output folders were marked: its results.json, or only its runs
    (``LABEL-seedN`` folders with a config.yaml) where it was stopped before the first run finished."""
    from .folders import json_with

    if json_with(folder / "results.json", "arms", "runs"):
        return True
    return all(p.is_dir() and re.fullmatch(r".+-seed\d+", p.name) and (p / "config.yaml").is_file()
               for p in folder.iterdir())


def accuracy_benchmark(base: RunConfig, methods: list[str] | dict[str, str], seeds: int, out: str | Path, *,
                       progress: bool = True, method_options: dict[str, dict] | None = None,
                       command: str = "") -> dict[str, Any]:
    """Train and evaluate each method for ``seeds`` seeds at the budget of ``base``.

    Args:
        base: the shared configuration (data, backbone, weights, image size, epochs, optimizer).
        methods: registered method names, or ``{label: method}`` arms (one method may appear under
            several labels with different options).
        seeds: number of seeds (``base.train.seed`` + 0, 1, ...).
        out: folder for the runs, ``results.json`` and ``results.md``.
        method_options: extra keyword options per label (or method), e.g. ``{"tasn": {"sample_size": 0}}``.
        command: the command line, recorded so the table can be reproduced.
    """
    arms = methods if isinstance(methods, dict) else {m: m for m in methods}
    from .engine import train
    from .engine.runlock import run_lock
    from .report import evaluate_checkpoint

    out = Path(out)
    planned = [(label, method, base.train.seed + s) for label, method in arms.items() for s in range(seeds)]
    configs = {(label, seed): base.merged({"model": {"method": method,
                                                     "options": (method_options or {}).get(label, {})},
                                           "train": {"seed": seed}})
               for label, method, seed in planned}
    # a run left in the folder is reused (finished) or resumed with its saved configuration: refuse, before any
    # training, a folder whose runs were made under another recipe, so one table never mixes two budgets
    for (label, seed), cfg in configs.items():
        check_same_recipe(out / f"{label}-seed{seed}", cfg)
    output_folder(out, "benchmark accuracy", recognize=_earlier_benchmark)  # checked and made once the plan stands
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for label, method, seed in planned:
        run = out / f"{label}-seed{seed}"
        report = run / "final-eval" / "report.json"
        if not report.is_file():
            # one writer per run: a second benchmark on the same folder is refused here, not interleaved
            with run_lock(run):
                if not report.is_file():  # another process may have finished it since the check above
                    if not (run / "last.pt").is_file():
                        _clear_unfinished(run)
                    resume = (run / "last.pt").is_file()
                    train(configs[(label, seed)], run, resume=resume, progress=progress)
                    evaluate_checkpoint(run / "last.pt", out=run / "final-eval", batch_size=base.data.batch_size,
                                        workers=base.data.workers, device=base.train.device, progress=progress)
        rep = json.loads(report.read_text())
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows.append({"method": label, "base_method": method, "seed": seed, "top1": rep["top1"], "top5": rep["top5"],
                     "mean_per_class": rep["mean_per_class"],
                     "train_time_s": sum(e["train_time_s"] for e in epochs),
                     "train_images_per_s": statistics.median(e["train_images_per_s"] for e in epochs),
                     "trained_at": trained_at(epochs)})
        # written after every finished run, so a benchmark stopped half way leaves the table of what it finished
        result = _result(base, arms, seeds, rows, len(planned), method_options, command)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        (out / "results.md").write_text(markdown_table(result))
    return result


def trained_at(epochs: list[dict[str, Any]]) -> str:
    """Which code trained a run, from its ``metrics.jsonl`` records: ``commit f15275a``, several commits when
    it was resumed under another (``commit a, b``), ``lookcloser 0.1.0`` for an installed package that is not
    a git checkout, ``not recorded`` for epochs trained before lookcloser recorded it. A reused run keeps the
    code it was trained by, whatever code draws the table."""
    commits = list(dict.fromkeys(e["commit"] for e in epochs if e.get("commit")))
    versions = list(dict.fromkeys(e["version"] for e in epochs if not e.get("commit") and e.get("version")))
    parts = [f"commit {', '.join(commits)}"] if commits else []
    parts += [f"lookcloser {', '.join(versions)}"] if versions else []
    if any(not e.get("commit") and not e.get("version") for e in epochs):
        parts.append("not recorded")
    return " and ".join(parts)


def threads_used(epochs: list[dict[str, Any]]) -> str:
    """The thread counts a run trained with, from its ``metrics.jsonl`` records: ``1``, ``2 then 1`` for a run
    resumed at another count, ``not recorded`` for epochs from before lookcloser recorded it."""
    return " then ".join(dict.fromkeys(str(e.get("threads", "not recorded")) for e in epochs))


def libraries_used(epochs: list[dict[str, Any]]) -> str:
    """The torch and timm a run trained with, from its records: ``torch 2.14.1, timm 1.0.31`` (both pairs, joined
    by ``then``, for a run resumed under others), ``torch, timm not recorded`` for epochs from before lookcloser
    recorded them."""
    return " then ".join(dict.fromkeys(f"torch {e['torch']}, timm {e['timm']}" if e.get("torch")
                                       else "torch, timm not recorded" for e in epochs))


def counted(counts: Counter) -> str:
    """``a (2 runs), b (1 run)``: what a table's runs share, each with how many of them."""
    return ", ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in sorted(counts.items()))


def made_by(env: dict[str, Any]) -> str:
    """The code an environment record names, in ``trained_at``'s words."""
    if env.get("commit"):
        return f"commit {env['commit']}"
    return f"lookcloser {env['version']}" if env.get("version") else "not recorded"


# fields that change how a run is executed, not what it learns: a benchmark may resume a run with other values
RUNTIME_FIELDS = {"data": ("workers", "cache", "cache_gb", "max_unreadable"),
                  "train": ("threads", "device", "eval_every", "compile", "channels_last", "checkpoint_minutes")}


def _data_key(spec: str) -> str:
    """A dataset spec with its path resolved, so ``../shared/data/cub100`` and its absolute path compare equal."""
    from .data import parse_spec
    from .errors import LookcloserError

    try:
        fmt, rest = parse_spec(spec)
    except LookcloserError:  # a spec no longer valid here still compares by its text
        return spec
    if fmt == "synth":
        return spec
    path = str(Path(rest).expanduser().resolve())
    return f"{fmt}:{path}" if fmt else path


def recipe_differences(saved: RunConfig, planned: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(group.field, saved value, planned value)`` for every field that would make the runs differ."""
    a, b = saved.to_dict(), planned.to_dict()
    a["data"]["data"], b["data"]["data"] = _data_key(a["data"]["data"]), _data_key(b["data"]["data"])
    diffs = []
    for group in ("data", "model", "train"):
        for k in sorted(set(a[group]) | set(b[group])):
            if k in RUNTIME_FIELDS.get(group, ()):
                continue
            if a[group].get(k) != b[group].get(k):
                diffs.append((f"{group}.{k}", a[group].get(k), b[group].get(k)))
    return diffs


def check_same_recipe(run: Path, planned: RunConfig) -> None:
    """Refuse to reuse or resume ``run`` when its saved configuration differs from ``planned``."""
    from .errors import LookcloserError

    saved_file = run / "config.yaml"
    if not (saved_file.is_file() and ((run / "last.pt").is_file() or (run / "final-eval" / "report.json").is_file())):
        return  # nothing trained yet: the run starts afresh with the planned configuration
    import yaml

    diffs = recipe_differences(RunConfig.from_saved(yaml.safe_load(saved_file.read_text())), planned.resolved())
    if planned.train.head_epochs < 0 and planned.starts_pretrained:
        # left to the default, which follows the training set's size: any value it gives is the same recipe
        from .config import DEFAULT_HEAD_EPOCHS, MAX_AUTO_HEAD_EPOCHS

        diffs = [d for d in diffs if not (d[0] == "train.head_epochs"
                                          and DEFAULT_HEAD_EPOCHS <= d[1] <= MAX_AUTO_HEAD_EPOCHS)]
    if planned.train.small_set == "auto":  # the small-set rule follows the training set's size too
        diffs = [d for d in diffs if d[0] != "train.small_set"]
    if diffs:
        shown = ", ".join(f"{k} {old!r} (now {new!r})" for k, old, new in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise LookcloserError(f"{run} was trained with {shown}{more}; pass another --out for this recipe (or move "
                              "that run away to train it again)")


def _result(base: RunConfig, arms: dict[str, str], seeds: int, rows: list[dict[str, Any]], planned: int,
            method_options: dict[str, dict] | None, command: str) -> dict[str, Any]:
    summary = {}
    for label in arms:
        mine = [r for r in rows if r["method"] == label]
        if mine:
            summary[label] = {k: _mean_std([r[k] for r in mine]) for k in
                              ("top1", "mean_per_class", "train_time_s", "train_images_per_s")}
    return {"config": base.to_dict(), "seeds": seeds, "environment": environment(), "command": command,
            "arms": arms, "options": method_options or {}, "runs": rows, "summary": summary,
            "finished_runs": len(rows), "planned_runs": planned}


def _clear_unfinished(run: Path) -> None:
    """Remove what a run killed before its first epoch left (its config and temporaries), nothing else."""
    import shutil

    from .errors import LookcloserError

    def is_ours(p: Path) -> bool:
        if p.name == "tb" and p.is_dir():  # TensorBoard's event files, written from the first step on
            return all(e.is_file() and e.name.startswith("events.out.tfevents.") for e in p.iterdir())
        return p.is_file() and (p.name in ("config.yaml", "metrics.jsonl") or
                                (p.name.startswith((".last.pt.", ".best.pt.")) and p.name.endswith(".tmp")))

    entries = list(run.iterdir())
    ours = [p for p in entries if is_ours(p)]
    if len(ours) != len(entries):
        others = sorted(p.name for p in entries if p not in ours)
        raise LookcloserError(f"{run} holds files a benchmark run does not write ({', '.join(others[:3])}); move "
                              "them away or choose another --out")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def markdown_table(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table with its setting underneath."""
    cfg, env = result["config"], result["environment"]
    lines = ["| method | seeds | top-1 (%) | mean per-class (%) | train time (s) | train images/s |",
             "|---|---|---|---|---|---|"]
    for method, s in result["summary"].items():
        t1, pc, tt, ips = s["top1"], s["mean_per_class"], s["train_time_s"], s["train_images_per_s"]
        n = sum(r["method"] == method for r in result["runs"])
        lines.append(f"| {method} | {n} | {t1[0]:.2f} ± {t1[1]:.2f} | {pc[0]:.2f} ± {pc[1]:.2f} | {tt[0]:.0f} | "
                     f"{ips[0]:.1f} |")
    lines += [
        "",
        f"Data `{cfg['data']['data']}`, backbone `{cfg['model']['backbone']}` "
        f"({'pretrained' if cfg['model']['pretrained'] else 'random init'}), {cfg['train']['epochs']} epochs, "
        f"image {cfg['data']['image_size']}, batch {cfg['data']['batch_size']}, {cfg['train']['optimizer']} "
        f"lr {cfg['train']['lr']}, {result['seeds']} seed(s); accuracy of the final epoch on the evaluation split.",
        f"Device {env['device']}; torch {env['torch']}, timm {env['timm']}, {made_by(env)}, {env['date']} UTC.",
    ]
    made_at = made_by(env)
    provenance = Counter(r.get("trained_at", "not recorded") for r in result["runs"])
    if set(provenance) != {made_at}:  # reused runs trained by other code: say so, the table is theirs
        lines.append("Runs trained at: " + "; ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in provenance.items())
                     + f" (this table was drawn at {made_at}).")
    done, planned = result.get("finished_runs"), result.get("planned_runs")
    if done is not None and done < planned:
        lines.append(f"Partial: {done} of {planned} runs finished; run the same command again to go on.")
    if result.get("command"):
        lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"
