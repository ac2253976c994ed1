"""Few images per class: which recipe keeps fine-tuning above the frozen features? A resumable CPU benchmark.

A few-shot cub100 (``sets``): for each seed, ``k`` training images of each of the 100 classes drawn at random
(the 5-shot draw is the first half of the 10-shot one), and the whole test split; written as ``train.csv`` /
``test.csv`` lists that point into ``../shared/data/cub100``, into a folder the user names (``--sets``,
never the repository). For choosing a recipe, a second folder per draw (``...-val``) adds ``val.csv``: 5 more
of each class's training images, outside every draw (500 images: a choice read on one held-out image per
class would rest on 100 images, a standard error of about 5 points). The arms are the looking-closer
benchmark's (``looking_closer.yaml``: pretrained EfficientNet-Lite0, a 224 px source, 2 heads-first epochs,
then everything with AdamW at 1e-3; the baseline at 224 and 128 px, each method's glance and zooms at
128 px), trained 2 + 8 epochs as the issue measured.

1. ``choose``: the recipe candidates, scored on the val images only, seed 0. Every run scores them after
   every epoch (best.pt chosen across both phases, the heads-first epochs included) and, when it ends, a
   logistic regression on the frozen features of its own view, fitted on its training images, on the same
   val images (``where-it-stands.json``). The table gives each candidate's val top-1 (last epoch and
   best.pt) beside that probe.
2. ``final``: every arm with the chosen recipe (``--candidate``), 5 and 10 shots, 3 seeds, trained as a user
   with only those images would (no val images; a candidate that selects weights holds out its own), then
   scored once on the test split (best.pt where the run chose one, else its last weights).
3. ``probe``: the probe of every view (128 and 224 px) of every few-shot set, scored once on the test split.
4. ``report``: ``fewshot-cub100.md``.

    python benchmarks/few_shot.py sets                        # the lists, into ../data/cub100-fewshot
    python benchmarks/few_shot.py choose --shots 5 --arms full  # resumable; one thread per run
    python benchmarks/few_shot.py probe
    python benchmarks/few_shot.py final --candidate default  # the library's defaults (the small-set rule)
    python benchmarks/few_shot.py report

Results: ``benchmarks/results/fewshot/fewshot-cub100-cpu/`` (each run's config, metrics and where-it-stands;
the checkpoints are deleted once a run is scored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from looking_closer import _commit, _geometry  # noqa: E402  (the arms as the looking-closer benchmark defines them)

DATA = ROOT.parent / "shared" / "data" / "cub100"
SETS = ROOT.parent / "data" / "cub100-fewshot"  # where ``sets`` writes the lists (--sets), never the repository
OUT = ROOT / "benchmarks" / "results" / "fewshot" / "fewshot-cub100-cpu"
RECIPE = ROOT / "benchmarks" / "looking_closer.yaml"
SHOTS = (5, 10)
SOURCE, VIEW = 224, 128
ARMS, _, VIEWS = _geometry(SOURCE, VIEW, ())
EPOCHS = 8  # epochs of everything after the 2 heads-first ones, as the issue measured
VAL_PER_CLASS = 5  # the choosing runs' val images per class, drawn outside every training draw
HOLDOUT = 0.1  # the probe's share of training images for its strength (one image of each class at 5 shots)
RESIZE_RATIO = 1.143  # looking_closer.yaml's: the shorter side to 256, the centre 224
# what is measured against the recipe as it is, each alone (flags added to the training command)
CANDIDATES = {
    "recipe": [],
    "ep2": ["--epochs", "2"],  # fewer epochs of everything
    "ep16": ["--epochs", "16"],  # more of them: at 5 shots 8 epochs are about 130 optimizer steps
    "bblr0.1": ["--backbone-lr-scale", "0.1"],  # the backbone at a tenth of the heads' rate
    "lld0.7": ["--layer-decay", "0.7"],  # layer-wise decay: Lite0's 17 groups, the stem at 0.7^17
    "bnfrozen": ["--bn", "frozen"],  # BatchNorm statistics kept from ImageNet in the second phase
    # a heads-first phase long enough to converge (2 epochs at 5 shots are 32 steps; TASN's heads were still
    # rising, 41.6 -> 49.8 val, and the first epoch of everything fell to 45.4), then the same 8 of everything
    "heads8": ["--head-epochs", "8"],
    # ... and then the backbone at a tenth of the rate (TASN's first epoch of everything after 8 heads-first
    # epochs fell from 67.2 to 56.6 val)
    "h8bb0.1": ["--head-epochs", "8", "--backbone-lr-scale", "0.1"],
    # ... or with BatchNorm kept at the statistics the heads were fitted on (with a tenth of the rate TASN fell
    # further, 67.2 -> 54.6 -> 52.8: the fall came with BatchNorm turning to batch statistics, not with the rate)
    "h8bnf": ["--head-epochs", "8", "--bn", "frozen"],
    # ... or everything after them at a tenth of the rate, the heads too (LP-FT's small fine-tuning rate): with
    # BatchNorm frozen TASN still fell, 67.2 -> 39.0, so the kick is not BatchNorm; AdamW restarting the
    # converged heads at 1e-3 moves each of their weights by about the rate per step, whatever its gradient
    "h8lr1e-4": ["--head-epochs", "8", "--lr", "0.0001"],
    # ... and both: BatchNorm frozen and a tenth of the rate after the heads (at 1e-4 with BatchNorm in training
    # mode TASN fell 67.2 -> 44.6 -> 43.0, the loss 10.1 -> 17.3: the kick does not shrink with the rate)
    "h8bnf-lr1e-4": ["--head-epochs", "8", "--bn", "frozen", "--lr", "0.0001"],
    # ... with 2 epochs of everything instead of 8: at 10 shots the 224 px baseline's heads reached 85.8 val after 8
    # epochs, the first epoch of everything fell to 81.0 and the fifth was back at 83.8 only
    "h8bnf-lr1e-4-ep2": ["--head-epochs", "8", "--bn", "frozen", "--lr", "0.0001", "--epochs", "2"],
    # linear probing, then fine-tuning (the baselines only): the classifier starts from the probe of the frozen
    # features, no heads-first epochs, then everything with BatchNorm frozen at a tenth of the rate (at 10 shots the
    # default's heads reached 82.2 val after their 4 epochs against the probe's 84.2, and its 224 px baseline ended
    # at 83.4)
    "probe-bnf-lr1e-4": ["--head-init", "probe", "--head-epochs", "0", "--bn", "frozen", "--lr", "0.0001"],
    # the heads-first epochs alone (--epochs 0: the backbone as loaded), 8 of them: at 10 shots the 224 px baseline's
    # heads read 85.8 val after 8 epochs and every recipe that went on to train everything ended lower
    "heads8-only": ["--head-epochs", "8", "--epochs", "0"],
    # the library's default heads-first epochs: enough for 120 optimizer steps (8 epochs at 5 shots, 4 at 10)
    "auto": ["--head-epochs", "-1"],
    "auto-bb0.1": ["--head-epochs", "-1", "--backbone-lr-scale", "0.1"],
    "auto-bnf": ["--head-epochs", "-1", "--bn", "frozen"],
    "auto-bnf-lr1e-4": ["--head-epochs", "-1", "--bn", "frozen", "--lr", "0.0001"],
    # the library's defaults, which the recipe file pins for the other benchmarks: heads first for at least 120
    # optimizer steps and then the small-set rule (BatchNorm frozen, everything at a tenth of the rate; at 5
    # and 10 shots the same run as auto-bnf-lr1e-4)
    "default": ["--head-epochs", "-1", "--small-set", "auto"],
}


def few_shot_lists(folder: Path, shots: int, seed: int, data: Path = DATA, val: int = 0) -> dict[str, int]:
    """Write ``train.csv`` (``shots`` training images per class, drawn with ``seed``), ``test.csv`` (the
    whole test split) and, with ``val``, ``val.csv`` (``val`` more training images per class, outside every
    draw) of the CUB-format set ``data`` into ``folder``; return the training images per class.

    Each class's images are shuffled with a generator seeded by ``seed`` and the class: the first ``shots``
    train, the last ``val`` are val. The same lists on every machine; a smaller draw is the start of a
    larger one, and the val images are the same for every draw of a seed."""
    from lookcloser.data import open_dataset

    train = open_dataset(str(data), "train")
    test = open_dataset(str(data), "test")
    by_class: dict[int, list[str]] = {}
    for path, label in train.samples:
        by_class.setdefault(label, []).append(str(path))
    kept: dict[str, int] = {}
    rows, val_rows = ["path,label"], ["path,label"]
    for label in sorted(by_class):
        files = sorted(by_class[label])
        random.Random(seed * 1_000_003 + label).shuffle(files)
        held = files[len(files) - val:] if val else []
        if shots + len(held) > len(files):
            raise SystemExit(f"class {train.classes[label]} has {len(files)} training images, fewer than {shots} "
                             f"+ {val} val; ask for fewer")
        kept[train.classes[label]] = shots
        rows += [f"{p},{train.classes[label]}" for p in sorted(files[:shots])]
        val_rows += [f"{p},{train.classes[label]}" for p in sorted(held)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    if val:
        (folder / "val.csv").write_text("\n".join(val_rows) + "\n")
    test_rows = ["path,label"] + [f"{p},{test.classes[lab]}" for p, lab in test.samples]
    (folder / "test.csv").write_text("\n".join(test_rows) + "\n")
    return kept


def set_folder(sets: Path, shots: int, seed: int, val: bool = False) -> Path:
    return sets / f"{shots}shot-seed{seed}{'-val' if val else ''}"


def sets(args) -> None:
    for shots in args.shots:
        for seed in range(args.seeds):
            for val in (False, True):
                folder = set_folder(args.sets, shots, seed, val)
                kept = few_shot_lists(folder, shots, seed, val=VAL_PER_CLASS if val else 0)
                print(f"{folder}: {sum(kept.values())} training images ({shots} per class)"
                      f"{f', {VAL_PER_CLASS} val images per class' if val else ''}, the whole test split")


def _ensure_set(args, shots: int, seed: int, val: bool = False) -> str:
    folder = set_folder(args.sets, shots, seed, val)
    if not (folder / "train.csv").is_file():
        few_shot_lists(folder, shots, seed, val=VAL_PER_CLASS if val else 0)
    return f"csv:{folder}"


def train_command(data: str, arm: str, seed: int, flags: list[str], run: Path, threads: int,
                  scored: bool = True) -> list[str]:
    """The ``lookcloser train`` command of one run (a new run; a started one resumes with ``--resume``).
    ``scored``: every epoch is scored (on the set's val split, or on what ``flags`` hold out); otherwise
    none is (a set with test alone would score test every epoch for nothing)."""
    method, options = ARMS[arm]
    if (run / "last.pt").is_file():
        return ["train", "--resume", str(run), "--quiet", "--threads", str(threads)]
    return ["train", "--config", str(RECIPE), "--data", data, "--method", method,
            *[f"-o{k}={v}" for k, v in options.items()], "--epochs", str(EPOCHS), "--seed", str(seed),
            "--eval-every", "1" if scored else "0", "--threads", str(threads), "--workers", "1",
            "--out", str(run), "--quiet", *flags]


def _finished(run: Path) -> bool:
    return (run / "where-it-stands.json").is_file()


def _scored_run(args, data: str, arm: str, flags: list[str], run: Path, what: str) -> None:
    """Train one run scored every epoch (on val, or on what ``flags`` hold out) that ends with where it stands
    against the probe of its view; resumable; its checkpoints deleted, its small files committed."""
    if _finished(run):
        return
    t0 = time.time()
    cmd = train_command(data, arm, args.seed, flags, run, args.threads)
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"{run.name}.log", "a") as log:
        done = subprocess.run([sys.executable, "-m", "lookcloser.cli", *cmd], stdout=log,
                              stderr=subprocess.STDOUT).returncode == 0
    if not done or not _finished(run):
        print(f"{what} {arm}: failed (see {run.parent / run.name}.log)", flush=True)
        return
    for big in run.glob("*.pt"):
        big.unlink()
    st = json.loads((run / "where-it-stands.json").read_text())
    print(f"{what} {arm}: {st['split']} {st['last_top1']:.2f} last, {st['best_top1']:.2f} best.pt "
          f"(probe {st['probe_top1']:.2f}) in {time.time() - t0:.0f} s", flush=True)
    if args.commit:
        _commit([run, run.parent / f"{run.name}.log"],
                f"few-shot benchmark: {what} {arm} seed {args.seed} ({st['split']} {st['last_top1']:.2f} last, "
                f"{st['best_top1']:.2f} best.pt, probe {st['probe_top1']:.2f})")


def choose(args) -> None:
    """Every candidate × shots × arm at ``--seed``, one after the other, resumable."""
    for shots in args.shots:
        data = _ensure_set(args, shots, args.seed, val=True)
        for arm in args.arms:
            for cand in args.candidates:
                run = args.out / "choose" / f"{shots}shot" / cand / f"{arm}-seed{args.seed}"
                _scored_run(args, data, arm, CANDIDATES[cand], run, f"{shots}-shot {cand}")


# where the small-set rule turns on without few shots: flowers12's 720 training images (60 per class) are 22
# steps an epoch (20 with a tenth held out); trained as its looking-closer benchmark (2 heads-first + 4 epochs)
CARRY = {"flowers12": (DATA.parent / "flowers12", 4)}


def carry(args) -> None:
    """The recipe against the library's defaults (``default``: longer heads first and the small-set rule) on a
    small set that is not few-shot, scored on a tenth of its training images held out, ``--seed``."""
    for name, (folder, epochs) in CARRY.items():
        for arm in args.arms:
            for cand in ("recipe", "default"):
                run = args.out / "carry" / name / cand / f"{arm}-seed{args.seed}"
                flags = [*CANDIDATES[cand], "--epochs", str(epochs), "--holdout", "0.1"]
                _scored_run(args, str(folder), arm, flags, run, f"{name} {cand}")


def final(args) -> None:
    """Every arm with ``--candidate``'s recipe, every shot count and seed, on the training images alone (best.pt
    chosen where the candidate holds out images), scored once on the test split (``eval-test/``)."""
    for seed in range(args.seeds):
        for shots in args.shots:
            data = _ensure_set(args, shots, seed)
            for arm in args.arms:
                run = args.out / "final" / args.candidate / f"{shots}shot" / f"{arm}-seed{seed}"
                report = run / "eval-test" / "report.json"
                if report.is_file():
                    continue
                t0 = time.time()
                run.parent.mkdir(parents=True, exist_ok=True)
                log_path = run.parent / f"{run.name}.log"
                with open(log_path, "a") as log:
                    flags = CANDIDATES[args.candidate]
                    ok = subprocess.run(  # a finished run resumes as a no-op
                        [sys.executable, "-m", "lookcloser.cli",
                         *train_command(data, arm, seed, flags, run, args.threads, scored="--holdout" in flags)],
                        stdout=log, stderr=subprocess.STDOUT).returncode == 0
                    weights = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
                    ok = ok and weights.is_file() and subprocess.run(
                        [sys.executable, "-m", "lookcloser.cli", "evaluate", str(weights), "--split", "test",
                         "--out", str(run / "eval-test"), "--workers", "1", "--speed-images", "0", "--quiet"],
                        stdout=log, stderr=subprocess.STDOUT,
                        env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).returncode == 0
                if not ok or not report.is_file():
                    print(f"{shots}-shot {arm} seed {seed}: failed (see {log_path})", flush=True)
                    continue
                for big in run.glob("*.pt"):
                    big.unlink()
                top1 = json.loads(report.read_text())["top1"]
                print(f"{shots}-shot {arm} seed {seed}: test top-1 {top1:.2f} in {time.time() - t0:.0f} s", flush=True)
                if args.commit:
                    _commit([run, log_path], f"few-shot benchmark, {args.candidate}: {shots}-shot {arm} seed {seed} "
                                             f"(test top-1 {top1:.2f})")


def probe(args) -> None:
    """The linear probe of every view of every few-shot set, scored on the test split."""
    for shots in args.shots:
        for seed in range(args.seeds):
            out = args.out / "probe" / f"{shots}shot-seed{seed}"
            if (out / "probe.json").is_file():
                continue
            data = _ensure_set(args, shots, seed)
            subprocess.run([sys.executable, "-m", "lookcloser.cli", "probe", data, "--view-size", str(VIEW),
                            "--view-size", str(SOURCE), "--image-size", str(SOURCE), "--resize-ratio",
                            str(RESIZE_RATIO), "--holdout", str(HOLDOUT), "--out", str(out), "--workers", "1",
                            "--quiet"], check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            for cached in out.glob("features-*.pt"):
                cached.unlink()
            if args.commit:
                _commit([out], f"few-shot benchmark: the probe of {shots}-shot cub100, seed {seed}")


def _row(run: Path) -> dict | None:
    path = run / "where-it-stands.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}" if xs else ""


def final_lines(args, candidate: str, panels: dict | None = None) -> list[str]:
    """The final table of ``candidate``: each arm's test top-1 over the seeds beside the test probe of its view
    (and, into ``panels``, what :func:`plot` draws of it)."""
    root = args.out / "final" / candidate
    if not root.is_dir():
        return []
    lines = ["", f"Every arm with the `{candidate}` recipe (`{' '.join(CANDIDATES[candidate]) or 'as it is'}`), "
             "trained on the draw's training images alone, scored once on the whole test split (best.pt where the "
             "recipe holds out images to choose it, else the last weights), "
             "beside the probe of its view (fitted on all of the set's training images) on the same split; "
             "mean ± std over the seeds (each seed its own draw of training images):", "",
             "| shots | arm | view | seeds | test top-1 (%) | probe (%) | fine-tuned − probe | seeds at or above |",
             "|---|---|---|---|---|---|---|---|"]
    runs = []
    for shots in args.shots:
        for arm in args.arms:
            view = VIEWS.get(arm, VIEW)
            got, pairs = [], []
            for seed in range(args.seeds):
                rep = root / f"{shots}shot" / f"{arm}-seed{seed}" / "eval-test" / "report.json"
                pr = args.out / "probe" / f"{shots}shot-seed{seed}" / "probe.json"
                if not rep.is_file():
                    continue
                got.append(json.loads(rep.read_text())["top1"])
                runs.append(rep.parent.parent)
                if pr.is_file():
                    pairs.append((got[-1], json.loads(pr.read_text())["views"][str(view)]["top1"]))
            if not got:
                continue
            floor = [f for _, f in pairs]
            if panels is not None:
                _bar(panels, f"{shots} shots, test (mean ± std over seeds)", arm,
                     statistics.mean(floor) if floor else None, candidate, statistics.mean(got),
                     statistics.stdev(got) if len(got) > 1 else 0.0)
            delta = f"{sum(g - f for g, f in pairs) / len(pairs):+.2f}" if pairs else ""
            above = sum(g >= f for g, f in pairs)
            lines.append(f"| {shots} | {arm} | {view} | {len(got)} | {_mean_std(got)} | {_mean_std(floor)} | {delta} | "
                         f"{above} of {len(pairs)} |")
    return lines + made_lines(runs, [])


def made_lines(runs: list[Path], probes: list[Path]) -> list[str]:
    """Where and by which code the runs and probes were made: the device and threads per run from each run's
    ``metrics.jsonl``, the commits that trained them (counted), and the probes' device, versions and commit."""
    from collections import Counter

    from lookcloser.benchmark import counted, libraries_used, made_by, threads_used, trained_at

    devices, threads, commits, libraries = set(), Counter(), Counter(), Counter()
    for run in runs:
        log = run / "metrics.jsonl"
        records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
        devices.update(r["device"] for r in records if r.get("device"))
        threads[threads_used(records)] += 1
        commits[trained_at(records)] += 1
        libraries[libraries_used(records)] += 1

    lines = []
    if runs:
        lines.append(f"Runs: {', '.join(sorted(devices)) or 'device not recorded'}; threads per run: "
                     f"{counted(threads)}; trained at {counted(commits)}; with {counted(libraries)}.")
    envs = [json.loads(p.read_text()).get("environment", {}) for p in probes]
    if envs:
        made = Counter(f"{e.get('device', '?')}, torch {e.get('torch', '?')}, timm {e.get('timm', '?')}, {made_by(e)}"
                       for e in envs)
        lines.append(f"Probes: {', '.join(f'{k} ({n})' for k, n in sorted(made.items()))}.")
    return ["", *lines] if lines else []


def _bar(panels: dict[str, dict], title: str, arm: str, probe: float | None, recipe: str, mean: float,
         std: float = 0.0) -> None:
    """Add one recipe's bar to an arm of a panel of :func:`plot` (``{title: {arm: ([(recipe, mean, std)],
    probe)}}``); the arm's probe is the first one given."""
    panels.setdefault(title, {}).setdefault(arm, ([], probe))[0].append((recipe, mean, std))


def plot(panels: dict[str, dict], path: Path) -> None:
    """One panel per title: for each arm a bar per recipe (its top-1, ± std where there are seeds) and a black
    line across the arm's bars at the probe of its view, the floor the issue asks every arm to reach."""
    from lookcloser.draw import use_agg

    plt = use_agg()
    recipes = sorted({r for arms in panels.values() for bars, _ in arms.values() for r, _, _ in bars})
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 1.1 * max(len(a) for a in panels.values())) *
                                                      len(panels), 4.2), squeeze=False)
    for ax, (title, arms) in zip(axes[0], panels.items()):
        for i, (arm, (bars, probe)) in enumerate(arms.items()):
            width = 0.8 / max(3, len(bars))  # the arm's recipes side by side, each in its own colour
            for k, (label, mean, std) in enumerate(sorted(bars, key=lambda b: recipes.index(b[0]))):
                j = recipes.index(label)
                ax.bar(i + width * (k + 0.5 - len(bars) / 2), mean, width * 0.9, yerr=std or None, capsize=2,
                       color=f"C{j}", label=None if label in ax.get_legend_handles_labels()[1] else label)
            if probe is not None:
                ax.hlines(probe, i - 0.45, i + 0.45, color="black", lw=2, label="probe of its view" if i == 0 else None)
        ax.set_xticks(range(len(arms)), list(arms), fontsize=8)
        values = [m for bars, _ in arms.values() for _, m, _ in bars] + [p for _, p in arms.values() if p is not None]
        # room for the legend above the highest bar (past 100 where a bar reaches it: no tick says more than 100)
        ax.set_ylim(max(0.0, min(values) - 10), max(values) + 12)
        ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 100])
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    fig.suptitle("Few-shot cub100: fine-tuned against the frozen features", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args) -> None:
    """``fewshot-cub100.md``: the candidates' val top-1 beside the probe of their view, and the probe of
    every set on test."""
    lines = [f"Few-shot cub100: the recipe candidates scored on val images ({VAL_PER_CLASS} more training images of "
             f"each class, outside the draw; seed {args.seed}; {EPOCHS} epochs of everything after 2 heads-first "
             "unless the candidate says otherwise; one thread per run). Val top-1 (%) of the last epoch and of "
             "best.pt (the best epoch on the same val images, across both phases, so optimistic), and a logistic "
             "regression on the frozen features of the run's view fitted on its training images:", "",
             "| shots | arm | candidate | flags | probe | last | best.pt (epoch, phase) | last − probe |",
             "|---|---|---|---|---|---|---|---|"]
    panels: dict[str, dict] = {}  # title -> {arm: ([(recipe, mean, std)], probe)}
    chosen = []
    for shots in args.shots:
        for arm in args.arms:
            for cand in args.candidates:
                run = args.out / "choose" / f"{shots}shot" / cand / f"{arm}-seed{args.seed}"
                r = _row(run)
                flags = " ".join(CANDIDATES[cand]) or "(recipe)"
                if r is None:  # not run (yet): the table lists what was measured
                    continue
                chosen.append(run)
                best = (f"{r['best_top1']:.2f} ({r['best_epoch']}, {r['best_phase']})" if r["best_top1"] is not None
                        else "")
                lines.append(f"| {shots} | {arm} | {cand} | `{flags}` | {r['probe_top1']:.2f} | {r['last_top1']:.2f} "
                             f"| {best} | {r['last_top1'] - r['probe_top1']:+.2f} |")
                _bar(panels, f"{shots} shots, val (seed {args.seed}, last epoch)", arm, r["probe_top1"], cand,
                     r["last_top1"])
    lines += made_lines(chosen, [])
    carried = [(name, arm, cand, r) for name in CARRY for arm in args.arms for cand in ("recipe", "default")
               if (r := _row(args.out / "carry" / name / cand / f"{arm}-seed{args.seed}")) is not None]
    if carried:
        lines += ["", "Where the rule turns on without few shots (`few_shot.py carry`): the recipe against the "
                  "library's defaults (longer heads first and the small-set rule), held-out top-1 (%) on a tenth of "
                  f"the training images, seed {args.seed}:", "",
                  "| set | arm | recipe | probe | last | best.pt (epoch, phase) | last − probe |", "|---|---|---|---|---|---|---|"]
        for name, arm, cand, r in carried:
            lines.append(f"| {name} | {arm} | {cand} | {r['probe_top1']:.2f} | {r['last_top1']:.2f} | "
                         f"{r['best_top1']:.2f} ({r['best_epoch']}, {r['best_phase']}) | "
                         f"{r['last_top1'] - r['probe_top1']:+.2f} |")
            _bar(panels, f"{name}, held-out (seed {args.seed}, last epoch)", arm, r["probe_top1"], cand,
                 r["last_top1"])
        lines += made_lines([args.out / "carry" / name / cand / f"{arm}-seed{args.seed}"
                             for name, arm, cand, _ in carried], [])
    probes = sorted((args.out / "probe").glob("*/probe.json"))
    if probes:
        lines += ["", "The probe of every view on the test split (strength chosen on a tenth of the training "
                  "images, refitted on all):", "", "| set | view | test top-1 (%) |", "|---|---|---|"]
        for path in probes:
            pr = json.loads(path.read_text())
            for view, v in sorted(pr["views"].items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {path.parent.name} | {view} | {v['top1']:.2f} |")
        lines += made_lines([], probes)
    for candidate in sorted(p.name for p in (args.out / "final").glob("*") if p.name in CANDIDATES):
        lines += final_lines(args, candidate, panels)
    args.out.mkdir(parents=True, exist_ok=True)
    if panels:
        plot(panels, args.out / "fewshot-cub100.png")
        lines = ["![each arm against the probe of its view](fewshot-cub100.png)", ""] + lines
    text = "\n".join(lines) + "\n"
    (args.out / "fewshot-cub100.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", type=Path, default=SETS, help="where the few-shot lists are written and read")
    p.add_argument("--out", type=Path, default=OUT, help="results folder")
    p.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=list(SHOTS))
    p.add_argument("--seeds", type=int, default=3, help="sets and probes: seeds 0..N-1")
    p.add_argument("--seed", type=int, default=0, help="choose/report: the seed of the candidates")
    p.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS), help=",".join(ARMS))
    p.add_argument("--candidates", type=lambda s: s.split(","), default=list(CANDIDATES), help=",".join(CANDIDATES))
    p.add_argument("--candidate", default="recipe", help="final: the recipe every arm trains with")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--commit", action="store_true", help="git-commit each finished run's small files")
    p.add_argument("cmd", choices=("sets", "choose", "carry", "final", "probe", "report"))
    args = p.parse_args(argv)
    bad = [a for a in args.arms if a not in ARMS] + [c for c in [*args.candidates, args.candidate]
                                                     if c not in CANDIDATES]
    if bad:
        raise SystemExit(f"unknown arm or candidate {', '.join(bad)}: arms are {', '.join(ARMS)}, candidates "
                         f"{', '.join(CANDIDATES)}")
    {"sets": sets, "choose": choose, "carry": carry, "final": final, "probe": probe, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
