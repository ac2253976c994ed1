"""How the heads-first defaults were chosen: on held-out training images of cub100, never on its test split.

Two steps, both reading only the training split:

1. ``rate``: the heads-first rate. A linear head on frozen EfficientNet-Lite0 features (the probe's kept
   128 px features, ``looking_closer.py probe cub100``) is trained as a heads-first epoch trains it (AdamW,
   batch 32, weight decay 0.01, a 0.2-epoch warm-up and cosine), for 1-4 epochs at four rates, on the
   training images less the 10 % held out, and scored on those held out. Cheap (seconds), so it can try
   many settings; it leaves out augmentation.
2. ``train``: whole runs of the 128 px baseline with ``--holdout 0.1`` (2 heads-first + 2 epochs), one per
   candidate (heads first or not, BatchNorm after it, a moving average of the weights), each evaluated on
   the held-out images every epoch (resumable: a finished run is kept); then WS-DAN's own candidates (the
   shared recipe, a faster or a longer heads-first phase; ``train --only NAME,...`` picks candidates).

    python benchmarks/looking_closer.py probe cub100 --views 128   # the kept features step 1 reads
    python benchmarks/heads_first.py rate
    python benchmarks/heads_first.py train        # about 10 min per candidate on this 2-core CPU
    python benchmarks/heads_first.py report       # heads-first-cub100.md

Results: ``benchmarks/results/heads/selection-cub100/``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "heads" / "selection-cub100"
FEATURES = ROOT / "benchmarks" / "results" / "heads" / "closer-cub100-cpu" / "probe" / "features-128.pt"
DATA = ROOT.parent / "shared" / "data" / "cub100"
HOLDOUT = 0.1
# candidate -> the train flags it sets on top of looking_closer.yaml (the first round's recipe: no heads-first)
CHOSEN = ["--head-epochs", "2", "--head-lr", "0.003", "--bn", "train"]  # the recipe the selection settled on
CANDIDATES = {
    "v1": ["--head-epochs", "0", "--bn", "train"],
    "heads2-bntrain": CHOSEN,
    "heads2-bnfrozen": ["--head-epochs", "2", "--head-lr", "0.003", "--bn", "frozen"],
    # the chosen recipe with a moving average of the weights (evaluated and kept in place of the weights)
    "heads2-ema0.98": [*CHOSEN, "--ema", "0.98"],
    "heads2-ema0.99": [*CHOSEN, "--ema", "0.99"],
}
# WS-DAN's own heads (attention maps and a classifier on 32 x 1280 bilinear-pooled features) under the recipe
# chosen on the baseline, beside a faster and a longer heads-first phase: the method the recipe fits worst
CANDIDATES.update({
    "wsdan-heads2": CHOSEN,
    "wsdan-headlr0.01": ["--head-epochs", "2", "--head-lr", "0.01", "--bn", "train"],
    "wsdan-heads4": ["--head-epochs", "4", "--head-lr", "0.003", "--bn", "train"],
})
METHODS = {name: "wsdan" for name in CANDIDATES if name.startswith("wsdan-")}  # the others: the baseline
EPOCHS = {"v1": 2}  # the first round trained 2 epochs of everything; the others 2 (or 4) heads-first + 2


def rate(args) -> None:
    import torch
    import torch.nn.functional as F

    from lookcloser.data import holdout_indices

    torch.set_num_threads(1)
    kept = torch.load(FEATURES, weights_only=True)
    x, y, idx = kept["train"]
    order = torch.argsort(idx)  # back to the data set's order, which holdout_indices counts in
    x, y = x[order], y[order]
    held = torch.zeros(len(y), dtype=torch.bool)
    held[holdout_indices(y.tolist(), HOLDOUT)] = True
    xf, yf, xh, yh = x[~held], y[~held], x[held], y[held]
    rows = []
    for epochs in (1, 2, 3, 4):
        for lr in (1e-3, 3e-3, 1e-2, 3e-2):
            torch.manual_seed(0)
            head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
            opt = torch.optim.AdamW([{"params": [head.weight], "weight_decay": 0.01},
                                     {"params": [head.bias], "weight_decay": 0.0}], lr=lr)
            per_epoch = len(yf) // 32
            total, warm, step = per_epoch * epochs, round(0.2 * per_epoch), 0
            for _ in range(epochs):
                perm = torch.randperm(len(yf))
                for b in range(per_epoch):
                    i = perm[b * 32:(b + 1) * 32]
                    f = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
                    for g in opt.param_groups:
                        g["lr"] = lr * f
                    loss = F.cross_entropy(head(xf[i]), yf[i])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step += 1
            with torch.no_grad():
                top1 = 100 * (head(xh).argmax(1) == yh).float().mean().item()
            rows.append({"epochs": epochs, "lr": lr, "held_out_top1": top1})
            print(f"{epochs} epoch(s) at {lr:g}: held-out top-1 {top1:.2f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rate.json").write_text(json.dumps({"held_out_images": int(held.sum()), "rows": rows}, indent=2) + "\n")


def train(args) -> None:
    only = [n for n in args.only.split(",") if n] if args.only else list(CANDIDATES)
    unknown = sorted(set(only) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    for name in only:
        flags = CANDIDATES[name]
        run = OUT / name
        if (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= \
                _planned(name):
            continue
        resume = ["--resume", str(run)] if (run / "last.pt").is_file() else [
            "--config", str(ROOT / "benchmarks" / "looking_closer.yaml"), "--data", str(DATA),
            "--method", METHODS.get(name, "baseline"), "-o", "view_size=128", "--epochs", str(EPOCHS.get(name, 2)), "--holdout", str(HOLDOUT), "--seed", "0",
            "--eval-every", "1", "--out", str(run), *flags]
        subprocess.run([sys.executable, "-m", "lookcloser.cli", "train", *resume, "--quiet"], check=True)
        for big in run.glob("*.pt"):
            big.unlink()  # the checkpoints are not kept in the repository; metrics.jsonl and config.yaml are


def _planned(name: str) -> int:
    heads = int(CANDIDATES[name][CANDIDATES[name].index("--head-epochs") + 1])
    return heads + EPOCHS.get(name, 2)


def report(args) -> None:
    lines = ["Heads-first defaults, chosen on cub100's held-out training images (128 px view, seed 0; "
             f"{HOLDOUT:.0%} of each class's training images held out; top-1 on them after the last epoch):", "",
             "| candidate | method | heads-first epochs | heads' rate | BatchNorm after | EMA decay | "
             "held-out top-1 (%) per epoch | final |",
             "|---|---|---|---|---|---|---|---|"]
    import yaml

    for name in CANDIDATES:
        path = OUT / name / "metrics.jsonl"
        if not path.is_file():
            continue
        rec = [json.loads(x) for x in path.read_text().splitlines()]
        cfg = yaml.safe_load((OUT / name / "config.yaml").read_text())["train"]
        curve = ", ".join(f"{r['eval_top1']:.2f}" if "eval_top1" in r else "–" for r in rec)
        # the first round's run was scored once, after training (lookcloser evaluate RUN --split holdout)
        once = OUT / name / "eval-holdout" / "report.json"
        final = json.loads(once.read_text())["top1"] if once.is_file() else rec[-1]["eval_top1"]
        lines.append(f"| {name} | {METHODS.get(name, 'baseline')} | {cfg.get('head_epochs', 0)} | "
                     f"{cfg.get('head_lr') or '–'} | {cfg.get('bn', 'train')} | {cfg.get('ema') or '–'} | {curve} | "
                     f"{final:.2f} |")
    rate_path = OUT / "rate.json"
    if rate_path.is_file():
        r = json.loads(rate_path.read_text())
        lines += ["", f"The heads-first rate (`heads_first.py rate`: a linear head on the kept frozen 128 px features, "
                  f"{r['held_out_images']} held-out images; held-out top-1 %):", "",
                  "| epochs | 1e-3 | 3e-3 | 1e-2 | 3e-2 |", "|---|---|---|---|---|"]
        for e in sorted({row["epochs"] for row in r["rows"]}):
            vals = [row["held_out_top1"] for row in r["rows"] if row["epochs"] == e]
            lines.append(f"| {e} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    (OUT / "heads-first-cub100.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("rate", "train", "report"):
        q = sub.add_parser(name)
        if name == "train":
            q.add_argument("--only", default="", help="comma-separated candidates (default: all, in order): "
                           + ", ".join(CANDIDATES))
    args = p.parse_args()
    {"rate": rate, "train": train, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
