"""Does any of timm's augmentations belong in the Lite0 recipes, and does the class-balanced sampler help on
long-tailed data? Both measured on cub100 with the heads-first recipe (``looking_closer.yaml``: 2 heads-first
+ 2 epochs, AdamW 1e-3, heads at 3e-3), the 128 px baseline, seed 0, one thread per run, choices read on
held-out training images only (``--holdout 0.1``).

1. ``augment``: one run per augmentation (RandomResizedCrop's scale, TrivialAugment, RandAugment, random
   erasing, mixup/CutMix with label smoothing) against the recipe as it is (``none``, trained again at the
   same commit; the ``heads2-bntrain`` run of ``heads_first.py`` is the same setting at an older commit).
2. ``balance``: a long-tailed cub100 (training images per class falling exponentially from all of them to a
   tenth, the class order shuffled; written as ``train.csv``/``test.csv`` lists that point into
   ``../shared/data``, the full test split kept), trained with ``--balance none`` and ``sampler``. Scored on
   held-out training images (long-tailed too, and few per tail class) and, after training, on the balanced
   test split, where mean per-class accuracy is what a long-tailed method should raise.

    python benchmarks/practitioner.py augment    # resumable; about 10 min per run at one thread
    python benchmarks/practitioner.py balance
    python benchmarks/practitioner.py report     # practitioner-cub100.md

Results: ``benchmarks/results/heads/practitioner-cub100/`` (the lists under ``longtail/`` are regenerated
from the seed, not kept).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "heads" / "practitioner-cub100"
NONE_RUN = ROOT / "benchmarks" / "results" / "heads" / "selection-cub100" / "heads2-bntrain"
DATA = ROOT.parent / "shared" / "data" / "cub100"
HOLDOUT = 0.1
AUGMENTS = {
    "none": [],
    "rrc": ["--crop-scale", "0.35"],
    "trivial": ["--auto-augment", "trivial"],
    "randaugment": ["--auto-augment", "rand-m9-mstd0.5"],
    "erasing": ["--random-erasing", "0.25"],
    "mixup": ["--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1"],
}
IMBALANCE = 10  # the most frequent class has this many times the images of the rarest
BALANCES = ("none", "sampler")


def _train(run: Path, data: str, flags: list[str]) -> None:
    planned = 4  # 2 heads-first + 2 epochs
    metrics = run / "metrics.jsonl"
    if metrics.is_file() and len(metrics.read_text().splitlines()) >= planned:
        return
    args = ["--resume", str(run)] if (run / "last.pt").is_file() else [
        "--config", str(ROOT / "benchmarks" / "looking_closer.yaml"), "--data", data, "--method", "baseline",
        "-o", "view_size=128", "--epochs", "2", "--holdout", str(HOLDOUT), "--seed", "0", "--eval-every", "1",
        "--out", str(run), *flags]
    subprocess.run([sys.executable, "-m", "lookcloser.cli", "train", *args, "--quiet"], check=True)


def augment(args) -> None:
    for name, flags in AUGMENTS.items():
        _train(OUT / name, str(DATA), flags)
        for big in (OUT / name).glob("*.pt"):
            big.unlink()


def longtail_lists(folder: Path) -> dict[str, int]:
    """Write ``train.csv`` (long-tailed) and ``test.csv`` (all test images) of cub100 into ``folder``; return
    the training images kept per class."""
    from lookcloser.data import open_dataset

    train = open_dataset(str(DATA), "train")
    test = open_dataset(str(DATA), "test")
    by_class: dict[int, list[str]] = {}
    for path, label in train.samples:
        by_class.setdefault(label, []).append(str(path))
    order = list(by_class)
    random.Random(0).shuffle(order)  # which classes end up rare is chance, not the class index
    kept = {}
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for rank, label in enumerate(order):
        files = sorted(by_class[label])
        n = max(2, round(len(files) * IMBALANCE ** (-rank / (len(order) - 1))))
        chosen = random.Random(label).sample(files, n)
        kept[train.classes[label]] = n
        rows += [f"{p},{train.classes[label]}" for p in sorted(chosen)]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    test_rows = ["path,label"] + [f"{p},{test.classes[lab]}" for p, lab in test.samples]
    (folder / "test.csv").write_text("\n".join(test_rows) + "\n")
    return kept


def balance(args) -> None:
    lists = OUT / "longtail"
    kept = longtail_lists(lists)
    (OUT / "longtail-counts.json").write_text(json.dumps(kept, indent=1) + "\n")
    for mode in BALANCES:
        run = OUT / f"balance-{mode}"
        _train(run, f"csv:{lists}", ["--balance", mode])
        if not (run / "eval-test" / "report.json").is_file() and (run / "last.pt").is_file():
            subprocess.run([sys.executable, "-m", "lookcloser.cli", "evaluate", str(run / "last.pt"), "--split", "test",
                            "--out", str(run / "eval-test"), "--workers", "2"], check=True)
        for big in run.glob("*.pt"):
            big.unlink()


def _final(run: Path) -> tuple[list, float | None]:
    rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [r.get("eval_top1") for r in rec]
    return curve, curve[-1] if curve and curve[-1] is not None else None


def report(args) -> None:
    lines = ["Augmentations for the Lite0 recipes, chosen on cub100's held-out training images (baseline, 128 px "
             "view, heads-first recipe, seed 0; 10 % of each class's training images held out):", "",
             "| augmentation | flags | held-out top-1 (%) per epoch | final | vs none |", "|---|---|---|---|---|"]
    base = None
    for name, flags in [("none (heads_first.py, older commit)", None)] + list(AUGMENTS.items()):
        if flags is None:
            if (NONE_RUN / "metrics.jsonl").is_file():
                curve, final = _final(NONE_RUN)
                commit = json.loads((NONE_RUN / "metrics.jsonl").read_text().splitlines()[-1]).get("commit", "?")
                lines.append(f"| {name} | (recipe, commit {commit}) | {', '.join(f'{c:.2f}' for c in curve)} | "
                             f"{final:.2f} | |")
            continue
        run = OUT / name
        if not (run / "metrics.jsonl").is_file():
            lines.append(f"| {name} | `{' '.join(flags)}` | not run | | |")
            continue
        curve, final = _final(run)
        if name == "none":
            base = final
        delta = "" if base is None or name == "none" else f"{final - base:+.2f}"
        lines.append(f"| {name} | `{' '.join(flags) or '(recipe)'}` | {', '.join(f'{c:.2f}' for c in curve if c is not None)} "
                     f"| {final:.2f} | {delta} |")
    counts_path = OUT / "longtail-counts.json"
    if counts_path.is_file():
        counts = sorted(json.loads(counts_path.read_text()).values())
        lines += ["", f"Class-balanced sampling on a long-tailed cub100 ({sum(counts)} training images, {counts[-1]} "
                  f"to {counts[0]} per class, imbalance {IMBALANCE}; the 2,999 test images kept): held-out top-1 "
                  "on the long-tailed held-out images; top-1 and mean per-class accuracy on the balanced test "
                  "split after training:", "",
                  "| --balance | held-out top-1 per epoch | held-out final | test top-1 | test mean per class |",
                  "|---|---|---|---|---|"]
        for mode in BALANCES:
            run = OUT / f"balance-{mode}"
            if not (run / "metrics.jsonl").is_file():
                lines.append(f"| {mode} | not run | | | |")
                continue
            curve, final = _final(run)
            rep = run / "eval-test" / "report.json"
            test = json.loads(rep.read_text()) if rep.is_file() else {}
            lines.append(f"| {mode} | {', '.join(f'{c:.2f}' for c in curve if c is not None)} | {final:.2f} | "
                         f"{test.get('top1', float('nan')):.2f} | {test.get('mean_per_class', float('nan')):.2f} |")
    text = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "practitioner-cub100.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("augment", "balance", "report"):
        sub.add_parser(name)
    args = p.parse_args()
    {"augment": augment, "balance": balance, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
