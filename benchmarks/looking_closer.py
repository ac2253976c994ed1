"""Does looking closer pay on real images, and at what cost? A resumable CPU benchmark.

Every arm reads the same 224 px source image. The baseline glances at it twice over: at a 128 px view
(``glance``, the attention methods' own glance size) and at the full 224 px (``full``, the upper
reference). Each attention method takes its glance at 128 px and reads its zooms (TASN's sampled
images, WS-BAN/WS-DAN's crops, RRA's patches) at 128 px from the full-resolution source. Beside accuracy
(three seeds) it reports the cost a user pays at inference: forward FLOPs per image
(``torch.utils.flop_counter``) and inference images/s on this machine, measured with the arms'
timed windows interleaved in one process so that they share the machine's load.

Two recipes (``--recipe``, before the subcommand): ``heads`` (the default: heads-first, the new layers
trained on frozen backbones before everything trains; ``looking_closer.yaml``; results under
``benchmarks/results/heads/``) and ``v1`` (every layer from the first step, the first round;
``looking_closer_v1.yaml``; results under ``benchmarks/results/``). The heads recipe adds the baseline at
96 and 160 px (its accuracy-against-cost curve) and the linear probe on frozen features.

    python benchmarks/looking_closer.py probe cub100                         # linear probe, 96-224 px
    python benchmarks/looking_closer.py train cub100 --epochs 2 --seeds 3   # resumable; run it again
    python benchmarks/looking_closer.py train cub100 --epochs 2 --seeds 1 --arms glance,wsdan --tag bntrain \
        -o ... --bn train                                                   # an ablation, in its own folder
    python benchmarks/looking_closer.py cost                                 # FLOPs and images/s
    python benchmarks/looking_closer.py report                               # tables and the PNG
    python benchmarks/looking_closer.py --recipe v1 report                   # the first round's
    python benchmarks/looking_closer.py --device cuda train cub100 --epochs 10 --workers 3 --cache  # on a GPU
    python benchmarks/looking_closer.py --device cuda report                 # closer-gpu.md and .png

On a GPU, ``benchmarks/run_gpu.sh`` (stage 4) runs the arms as parallel processes that share the device;
its runs go to ``closer-<data>-gpu/``, apart from the CPU's, and their table reads the CPU's linear probe.

Results: ``RESULTS/closer-<data>-cpu/`` (runs, results.json/md, probe/), ``RESULTS/closer-cpu.md`` and
``closer-cpu.png``; ``benchmarks/results/closer-cost-cpu.json`` for both.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
# each recipe's runs, tables and picture live apart: "heads" (heads-first, the current recipe) under
# results/heads/, "v1" (every layer trained from the first step, the first round) under results/, "scenes"
# (the papers' proportions: 448 px scenes, 224 px glances and zooms) under results/scenes/
RECIPES = {"heads": ("looking_closer.yaml", ROOT / "benchmarks" / "results" / "heads"),
           "v1": ("looking_closer_v1.yaml", ROOT / "benchmarks" / "results"),
           "scenes": ("scenes.yaml", ROOT / "benchmarks" / "results" / "scenes")}
# each recipe's geometry: the source side, the methods' glance and zoom side, the baseline's other views
GEOMETRY = {"heads": (224, 128, (96, 160)), "v1": (224, 128, (96, 160)), "scenes": (448, 224, (288, 352))}
RECIPE = "heads"
RESULTS = RECIPES[RECIPE][1]
KIND = "cpu"  # the device kind in every results folder's name: runs on a GPU go to closer-DATA-gpu/, apart
SHARED_ROOT = SHARED  # where cub100/ and flowers12/ are read (--data-root)
SCENES_ROOT = ROOT.parent / "data" / "cub100-scenes"  # where `build` writes cub100 in scenes (--scenes), never the repo
SEEDS = 3  # the seeds the report counts as planned
# the tagged folder of a recipe whose main runs hold out no images (the crop sets): its runs are the recipe with
# a tenth held out, on which each chooses its zoom-only-when-unsure threshold; the report draws their curves
ADAPTIVE_TAG = "adaptive"
# per-arm changes to the recipe's train settings, chosen on held-out images (the scenes recipe's selection):
# WS-DAN trains without a heads-first phase (4 epochs of everything: 75.77 % held-out, seed 0, against 72.35
# with 2 heads-first + 2 and 66.55 with 4 + 2); WS-BAN keeps the recipe (82.25 against 79.86 and 79.86)
ARM_TRAIN: dict[str, dict[str, dict]] = {"scenes": {"wsdan": {"head_epochs": 0}}}
# ... and per-arm model options chosen there: WS-BAN's attention at the backbone's own stride 32 scored level
# with stride 16 on the held-out images (81.57 against 81.23 %, seed 0) at half the GFLOPs (1.58 against 3.14);
# TASN and WS-DAN lost 3.1 and 2.7 held-out points at 32 and keep 16 (docs/benchmarks.md)
ARM_OPTIONS: dict[str, dict[str, dict]] = {"scenes": {"wsban": {"output_stride": 32}}}


def _geometry(source: int, view: int, curve: tuple[int, ...]):
    """The arms of a geometry (label -> (method, options)), their labels and their view sizes; every arm
    sees the same ``source`` px image."""
    arms = {
        "glance": ("baseline", {"view_size": view}),
        "full": ("baseline", {}),
        **{f"b{v}": ("baseline", {"view_size": v}) for v in curve},
        # the attention net at stride 16 (dilated convolutions are slow on CPUs) with a 128-channel head: the
        # official 512-channel head on Lite0's 1280-channel map alone costs 2 GFLOPs per image
        "tasn": ("tasn", {"view_size": view, "sample_size": view, "attention_stride": 16, "att_channels": 128}),
        "wsban": ("wsban", {"view_size": view}),
        "wsdan": ("wsdan", {"view_size": view}),
        "rra": ("rra", {"view_size": view, "patch_size": view}),
    }
    labels = {"glance": f"baseline {view} px", "full": f"baseline {source} px",
              **{f"b{v}": f"baseline {v} px" for v in curve}}
    views = {"glance": view, "full": source, **{f"b{v}": v for v in curve}}  # the baseline arms' view sizes
    return arms, labels, views


SOURCE, VIEW, CURVE_VIEWS = GEOMETRY[RECIPE]
PROBE_VIEWS = tuple(sorted({VIEW, SOURCE, *CURVE_VIEWS}))
ARMS, LABELS, VIEWS = _geometry(SOURCE, VIEW, CURVE_VIEWS)
COST = ROOT / "benchmarks" / "results" / "closer-cost-cpu.json"  # what an arm costs does not depend on its recipe
CROP_DATASETS = {  # the real sets as they come (tight crops), and the synthetic set at the source size
    "cub100": lambda: str(SHARED_ROOT / "cub100"),
    "flowers12": lambda: str(SHARED_ROOT / "flowers12"),
    "synth": lambda: f"synth:size={SOURCE}",
}
DATASETS = CROP_DATASETS
SCENE_DATASETS = {  # the papers' regime: objects small in high-resolution scenes
    "cub100-scenes": lambda: f"cub:{SCENES_ROOT}",
    "synth448": lambda: f"synth:size={SOURCE}",
}


def use_recipe(name: str) -> None:
    """Point the script at one recipe's configuration, geometry, arms, data sets and results folder."""
    global RECIPE, RESULTS, SOURCE, VIEW, CURVE_VIEWS, PROBE_VIEWS, ARMS, LABELS, VIEWS, COST, DATASETS
    RECIPE, RESULTS = name, RECIPES[name][1]
    SOURCE, VIEW, CURVE_VIEWS = GEOMETRY[name]
    PROBE_VIEWS = tuple(sorted({VIEW, SOURCE, *CURVE_VIEWS}))
    ARMS, LABELS, VIEWS = _geometry(SOURCE, VIEW, CURVE_VIEWS)
    for arm, chosen in ARM_OPTIONS.get(name, {}).items():
        ARMS[arm] = (ARMS[arm][0], {**ARMS[arm][1], **chosen})
    scenes = name == "scenes"
    COST = ROOT / "benchmarks" / "results" / ("scenes-cost-cpu.json" if scenes else "closer-cost-cpu.json")
    DATASETS = SCENE_DATASETS if scenes else CROP_DATASETS


def arms() -> list[str]:
    """The arms of the current recipe: the first round had no curve arms."""
    return [a for a in ARMS if RECIPE != "v1" or not (a.startswith("b") and a[1:].isdigit())]
COLORS = {"tasn": "C0", "wsban": "C1", "wsdan": "C2", "rra": "C3"}


def use_device(device: str) -> None:
    """Name results folders after the device kind: ``cpu``, or ``gpu`` for any ``cuda`` device."""
    global KIND
    KIND = "gpu" if device.startswith("cuda") else "cpu"


def _folder(data: str, tag: str = "", kind: str = "") -> Path:
    """Where a data set's runs live: ``closer-DATA-cpu``, or ``closer-DATA-TAG-cpu`` for an ablation
    (``-gpu`` for runs on a GPU; ``kind`` names a device kind other than the current one)."""
    kind = kind or KIND
    return RESULTS / (f"closer-{data}-{tag}-{kind}" if tag else f"closer-{data}-{kind}")


def _tagged(data: str) -> list[tuple[str, Path]]:
    """``(tag, folder)`` of every ablation folder of a data set (``closer-DATA-TAG-cpu``), sorted."""
    return [(folder.name[len(f"closer-{data}-"):-len(f"-{KIND}")], folder)
            for folder in sorted(RESULTS.glob(f"closer-{data}-*-{KIND}"))]


def _options(arm: str) -> list[str]:
    return [f"-o{arm}.{k}={v}" for k, v in ARMS[arm][1].items()]


def _train_flags(settings: dict) -> list[str]:
    """``--flag value`` pairs of train settings (``{"backbone_lr_scale": 0.1}`` -> ``--backbone-lr-scale 0.1``)."""
    return [x for k, v in settings.items() for x in ("--" + k.replace("_", "-"), str(v))]


def arm_train(arm: str, epochs: int, heads_given: bool = False) -> dict:
    """The train settings the held-out selection changed for ``arm`` (:data:`ARM_TRAIN`), as flags for a run
    of ``epochs`` epochs after the recipe's heads-first ones. No heads-first phase (``head_epochs: 0``) turns
    those epochs into epochs of everything, so the run's length stays the recipe's at any ``--epochs``; not
    where the command sets the heads-first epochs itself (an ablation sets its own budget)."""
    chosen = dict(ARM_TRAIN.get(RECIPE, {}).get(arm, {}))
    if chosen.get("head_epochs") == 0 and "epochs" not in chosen and not heads_given:
        from lookcloser.config import RunConfig

        chosen["epochs"] = epochs + max(0, RunConfig.load(ROOT / "benchmarks" / RECIPES[RECIPE][0]).train.head_epochs)
    return chosen


def train(args) -> None:
    """Train and evaluate the chosen arms (resumable: finished runs are reused). Arms whose recipe the
    selection changed (:data:`ARM_TRAIN`) train in a benchmark invocation of their own."""
    from lookcloser import cli

    arms_ = args.arms.split(",") if args.arms else arms()
    out = _folder(args.data, args.tag)
    groups: dict[tuple, list[str]] = {}
    for a in arms_:
        groups.setdefault(tuple(sorted(arm_train(a, args.epochs, args.head_epochs is not None).items())),
                          []).append(a)
    for chosen, group in groups.items():
        argv = ["lookcloser", "benchmark", "accuracy", "--config", str(ROOT / "benchmarks" / RECIPES[RECIPE][0]),
                "--data", DATASETS[args.data](), "--methods", ",".join(f"{a}={ARMS[a][0]}" for a in group),
                "--epochs", str(args.epochs), "--seeds", str(args.seeds), "--out", str(out), "--quiet"]
        argv += _train_flags(dict(chosen))  # the arm's chosen recipe; an ablation's flags below override it
        if args.first_seed is not None:
            argv += ["--first-seed", str(args.first_seed)]
        if args.lr is not None:
            argv += ["--lr", str(args.lr)]
        if args.device != "cpu":  # runtime settings only: they change where and how fast a run trains, not its recipe
            argv += ["--device", args.device]
        if args.workers is not None:
            argv += ["--workers", str(args.workers)]
        if args.threads is not None:
            argv += ["--threads", str(args.threads)]
        if args.cache:
            argv += ["--cache"]
        argv += _train_flags({k: getattr(args, k) for k in ("backbone_lr_scale", "head_epochs", "head_lr", "bn",
                                                             "holdout") if getattr(args, k) is not None})
        for a in group:
            argv += _options(a)
        for extra in args.option:  # after the arm's own options, so they override them
            argv += ["-o", extra]
        sys.argv = argv
        try:
            cli.main()
        except SystemExit as e:
            if e.code:
                raise


def cost(args) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lookcloser.benchmark import environment
    from lookcloser.models import create_model

    torch.manual_seed(0)
    models = {}
    for arm, (method, options) in ARMS.items():
        m = create_model(method, backbone="efficientnet_lite0", num_classes=100, **options).eval()
        models[arm] = m.to(memory_format=torch.channels_last)
    flops = {}
    with torch.no_grad():
        for arm, m in models.items():
            x = torch.randn(1, 3, SOURCE, SOURCE).contiguous(memory_format=torch.channels_last)
            counter = FlopCounterMode(display=False)
            with counter:
                m(x)
            flops[arm] = counter.get_total_flops()
        x = torch.randn(args.batch_size, 3, SOURCE, SOURCE).contiguous(memory_format=torch.channels_last)
        for m in models.values():  # warm-up
            m(x)
        times = {arm: [] for arm in models}
        for _ in range(args.rounds):  # interleaved: each round times every arm once
            for arm, m in models.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    m(x)
                times[arm].append((time.perf_counter() - t0) / (args.steps * args.batch_size))
    rows = {}
    for arm in models:
        per_image = statistics.median(times[arm])
        rows[arm] = {"gflops": flops[arm] / 1e9, "images_per_s": 1.0 / per_image,
                     "images_per_s_rounds": [1.0 / t for t in times[arm]],
                     "params_m": sum(p.numel() for p in models[arm].parameters()) / 1e6}
    result = {"source": SOURCE, "view": VIEW, "batch_size": args.batch_size, "rounds": args.rounds,
              "steps": args.steps, "threads": torch.get_num_threads(), "environment": environment(), "arms": rows}
    COST.write_text(json.dumps(result, indent=2) + "\n")
    for arm, r in rows.items():
        print(f"{arm:8s} {r['gflops']:6.2f} GFLOPs  {r['images_per_s']:7.1f} images/s  {r['params_m']:5.2f} M params")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the seeds' figures (0 for a single seed)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _row(label: str, what: str, mean: float, std: float, seeds: int, ref: float, probe: float | None,
         cost: dict) -> str:
    """One arm's row of the main table: top-1 over its seeds, against the 128 px baseline (``ref``) and the
    probe of its view, beside its cost."""
    acc = f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}"
    vs_probe = f"{mean - probe:+.2f}" if probe is not None else "–"
    return (f"| {label} | {what} | {acc} | {_fig(mean - ref, '+.2f')} | {vs_probe} | {_fig(cost.get('gflops'), '.2f')} | "
            f"{_fig(cost.get('images_per_s'), '.1f')} | {seeds} |")


def _fig(x: float | None, fmt: str) -> str:
    """A table cell: the figure, or – where it is not measured yet (no run, no cost file)."""
    return "–" if x is None or math.isnan(x) else format(x, fmt)


def _tasn_mean(data: str) -> list[float]:
    """Test top-1 of each TASN seed predicting with the mean of its two nets' probabilities
    (``zoom_sizes.py RUN --limit 3000``: kept only where it scored the whole test split the run's own final
    evaluation scored). A seed the main folder has no such score for is taken from an ablation folder that
    trained it again with the same recipe (``--tag``), where one has it."""
    found: dict[str, float] = {}
    folders = [_folder(data)] + [folder for _, folder in _tagged(data)]
    for folder in folders:
        for run in sorted(folder.glob("tasn-seed*")):
            zoom, final = run / "zoom_sizes.json", run / "final-eval" / "report.json"
            if run.name in found or not (zoom.is_file() and final.is_file()):
                continue
            z = json.loads(zoom.read_text())
            if z.get("split", "test") == "test" and z.get("images") == json.loads(final.read_text()).get("n"):
                found[run.name] = z["top1"]["mean of both"]
    return [found[k] for k in sorted(found)]


def _load(data: str) -> dict | None:
    """The data set's finished runs (every ``ARM-seedN`` folder with a final report), whichever invocation
    trained them: a benchmark run one arm at a time rewrites results.json with that arm only, so the runs,
    not results.json, are the record; results.json still gives the environment and the command."""
    folder = _folder(data)
    runs = []
    for report_path in sorted(folder.glob("*-seed*/final-eval/report.json")):
        arm, seed = report_path.parent.parent.name.rsplit("-seed", 1)
        if arm in ARMS:
            runs.append({"method": arm, "seed": int(seed), "top1": json.loads(report_path.read_text())["top1"]})
    if not runs:
        return None
    import yaml

    config = yaml.safe_load((folder / f"{runs[0]['method']}-seed{runs[0]['seed']}" / "config.yaml").read_text())
    summary = {}
    for arm in arms():
        values = [r["top1"] for r in runs if r["method"] == arm]
        if values:
            summary[arm] = {"top1": _mean_std(values)}
    env = {"device": "CPU (x86_64)", "torch": "unknown", "timm": "unknown", "commit": "unknown (no results.json)"}
    command = f"python benchmarks/looking_closer.py train {data} --epochs {config['train']['epochs']} --seeds {SEEDS}"
    if KIND == "gpu":
        command = (f"python benchmarks/looking_closer.py --device cuda train {data} --epochs {config['train']['epochs']} "
                   f"--seeds {SEEDS} --workers 3 --cache`, its arms in parallel processes as `benchmarks/run_gpu.sh` "
                   f"(STAGES=4) runs them: `STAGES=4 DATASETS={data} bash benchmarks/run_gpu.sh")
    if (folder / "results.json").is_file():
        env = json.loads((folder / "results.json").read_text())["environment"]
    return {"summary": summary, "runs": runs, "config": config, "environment": env,
            "planned": SEEDS * len(arms()), "command": command, "probe": _probe(data)}


def _probe(data: str) -> dict | None:
    """The data set's linear probe (``probe`` subcommand), if it ran: ``probe.json``'s content. A GPU table
    reads the CPU's probe (frozen features do not depend on the schedule; its device line says where it ran)."""
    path = _folder(data) / "probe" / "probe.json"
    if not path.is_file():
        path = _folder(data, kind="cpu") / "probe" / "probe.json"
    return json.loads(path.read_text()) if path.is_file() else None


def probe(args) -> None:
    """The linear probe on frozen features at each view size, in the data set's results folder."""
    from lookcloser.config import RunConfig
    from lookcloser.probe import linear_probe, markdown

    cfg = RunConfig.load(ROOT / "benchmarks" / RECIPES[RECIPE][0])
    views = [int(v) for v in args.views.split(",")] if args.views else list(PROBE_VIEWS)
    result = linear_probe(DATASETS[args.data](), _folder(args.data) / "probe", backbone=cfg.model.backbone,
                          pretrained=cfg.model.pretrained, view_sizes=views, image_size=cfg.data.image_size,
                          resize_ratio=cfg.data.resize_ratio, holdout=args.holdout, progress=not args.quiet,
                          workers=cfg.data.workers, device=cfg.train.device)
    print(markdown(result))


# the scenes recipe's queue, seed-major: every arm's seed 0 (the longest first, so two at a time finish
# together), then the recipe candidates chosen on held-out images (tagged ablations, seed 0), then seeds 1-2,
# the arms whose recipe the candidates decide last, so the choice is made before they start
SCENE_ORDER = ("full", "wsdan", "tasn", "b352", "wsban", "rra", "b288", "glance")
LATER_ORDER = ("full", "b352", "rra", "b288", "glance", "wsdan", "tasn", "wsban")
SCENE_CANDIDATES = {  # tag -> (arms, extra train arguments): each against the shared recipe, on held-out images
    # the attention at the backbone's own stride: WS-BAN's won (ARM_OPTIONS), so its stride-16 run is the one
    # tagged now (the recipe's seed 0 before the choice, moved there)
    "s32": (("wsdan", "tasn"), ["-o", "wsdan.output_stride=32", "-o", "tasn.attention_stride=32"]),
    "s16": (("wsban",), ["-o", "wsban.output_stride=16"]),
    "bblr0.1": (("wsdan", "wsban"), ["--backbone-lr-scale", "0.1"]),
    # no heads-first phase won WS-DAN's held-out images (ARM_TRAIN), so its run is the recipe's seed 0 now and
    # the shared recipe's WS-DAN seed 0 (2 heads-first + 2) is the one tagged, as for WS-BAN's stride
    "noheads": (("wsban",), ["--head-epochs", "0", "--epochs", "4"]),
    "heads2": (("wsdan",), ["--head-epochs", "2"]),
    # a longer heads-first phase (the issue's third candidate): their attention, bilinear pooling and classifier
    # start from scratch, and the first epoch of everything after 2 heads-first epochs cost them held-out points
    "heads4": (("wsdan", "wsban"), ["--head-epochs", "4"]),
    # RRA's local stream learns little in scenes (rra_local_stream.py): train it on the glance's best proposal
    # instead of one of four at random (most of the others miss the bird), and with a patch of the birds' size
    "top1": (("rra",), ["-o", "rra.num_proposals=1"]),
    "top1-box0.5": (("rra",), ["-o", "rra.num_proposals=1", "-o", "rra.box_size=0.5"]),
}


def scene_plan(data: str, seeds: int, epochs: int, candidates: bool = True) -> list[tuple[str, str, int, list[str]]]:
    """``(tag, arm, seed, extra train arguments)`` jobs of the scenes queue, in order."""
    jobs = [("", arm, 0, []) for arm in SCENE_ORDER]
    if candidates:
        jobs += [(tag, arm, 0, list(extra)) for tag, (arms_, extra) in SCENE_CANDIDATES.items() for arm in arms_]
    jobs += [("", arm, s, []) for s in range(1, seeds) for arm in LATER_ORDER]
    # an option of another arm is dropped with its "-o" (``-o tasn.x=1`` is no option of wsdan's job)
    return [(tag, arm, seed, _own_options(extra, arm)) for tag, arm, seed, extra in jobs]


def _own_options(extra: list[str], arm: str) -> list[str]:
    out, i = [], 0
    while i < len(extra):
        if extra[i] == "-o":
            if extra[i + 1].startswith(arm + "."):
                out += extra[i:i + 2]
            i += 2
        else:
            out.append(extra[i])
            i += 1
    return out


def _finished(data: str, tag: str, arm: str, seed: int) -> bool:
    if arm == "probe":
        return (_folder(data) / "probe" / "probe.json").is_file()
    return (_folder(data, tag) / f"{arm}-seed{seed}" / "final-eval" / "report.json").is_file()


def _same_job(words: list[str], signature: list[str]) -> bool:
    """Whether a command line (``words``) runs the job of ``signature``: this script, the same subcommand and
    data set, and the same value after each of ``--arms``, ``--first-seed`` and ``--tag`` (absent in both, or
    equal; a command without ``--first-seed`` starts at seed 0, as ``train`` does), so that seed 1 is not taken for
    seed 10, nor an arm for its tagged candidate."""
    if not any(w.endswith(signature[0]) for w in words):
        return False
    pairs = list(zip(words, words[1:]))
    if (signature[1], signature[2]) not in pairs:
        return False
    wanted = dict(zip(signature[3::2], signature[4::2]))
    given = {a: b for a, b in pairs if a in ("--arms", "--first-seed", "--tag")}
    if signature[1] == "train":
        given.setdefault("--first-seed", "0")  # train's default
    return all(given.get(k) == wanted.get(k) for k in ("--arms", "--first-seed", "--tag"))


def _running_elsewhere(signature: list[str]) -> bool:
    """Whether another process (e.g. a job an earlier queue started) runs the job of ``signature``
    (:func:`_same_job`; Linux's /proc; elsewhere: never)."""
    import os

    for entry in Path("/proc").glob("[0-9]*"):
        if entry.name == str(os.getpid()):
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _same_job([w.decode(errors="replace") for w in words], signature):
            return True
    return False


def _signature(data: str, tag: str, arm: str, seed: int) -> list[str]:
    if arm == "probe":
        return ["looking_closer.py", "probe", data]
    return ["looking_closer.py", "train", data, "--arms", arm, "--first-seed", str(seed),
            *(["--tag", tag] if tag else [])]


def _commit(paths: list[Path], message: str) -> None:
    """Commit ``paths`` alone (the rest of the working tree is left as it is) in the checkout that holds them
    (results may go to another checkout than the one the script runs from), retrying while another git
    command holds the index."""
    import subprocess

    paths = [p for p in paths if p.exists()]  # git add refuses the whole list for one missing path
    if not paths:
        return
    repo = paths[0].resolve().parent
    while repo != repo.parent and not (repo / ".git").exists():
        repo = repo.parent
    for _ in range(20):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *map(str, paths)], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "-C", str(repo), "commit", "-q", "-m", message, "--", *map(str, paths)],
            capture_output=True, text=True).returncode == 0
        if done:
            return
        time.sleep(15)
    print(f"could not commit {paths}; commit them by hand", file=sys.stderr)


def queue(args) -> None:
    """Run the scenes plan two (``--parallel``) at a time, one thread each, each run in a fresh process of this
    script, and commit each finished run's small files (config, metrics, reports) as it finishes. No decoded-
    image cache: two runs at 448 px need the memory, and decoding is a small share of an epoch here.

    ``data`` may name several data sets (``cub100-scenes,synth448`` with ``--epochs 2,10``), planned one after
    the other; the recipe candidates run on the first only. A run another process is running (one an earlier
    queue started, say, before it was replaced with newer code) is waited for and committed when it finishes."""
    import os
    import subprocess

    from lookcloser.benchmark import _earlier_benchmark
    from lookcloser.folders import output_folder

    sets = args.data.split(",")
    epochs = [int(e) for e in str(args.epochs).split(",")]
    if len(epochs) != len(sets) or not set(sets) <= set(SCENE_DATASETS):
        raise SystemExit(f"give one --epochs per data set of {', '.join(SCENE_DATASETS)}, e.g. cub100-scenes,synth448 "
                         "--epochs 2,10")
    jobs = []  # (data, epochs, (tag, arm, seed, extra))
    for n, (data, e) in enumerate(zip(sets, epochs)):
        if not _finished(data, "", "probe", -1):
            jobs.append((data, e, ("", "probe", -1, [])))  # the floor every arm is measured against
        jobs += [(data, e, j) for j in scene_plan(data, args.seeds, e, n == 0 and not args.no_candidates)
                 if not _finished(data, *j[:3])]
    if args.only:
        jobs = [j for j in jobs if f"{j[2][0] + '/' if j[2][0] else ''}{j[2][1]}" in args.only.split(",")]
    print(f"{len(jobs)} run(s) to go: " + ", ".join(_label(d, j) for d, _, j in jobs), flush=True)
    if getattr(args, "dry_run", False):  # the plan only: nothing starts
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # this checkout's code, one thread
    running: list[tuple[subprocess.Popen, tuple]] = []
    base = [sys.executable, str(Path(__file__).resolve()), "--recipe", RECIPE, "--results", str(RESULTS),
            "--scenes", str(SCENES_ROOT), "--data-root", str(SHARED_ROOT)]
    waited: list = []  # jobs another process runs: committed when it finishes them
    for item in list(jobs):  # all of them first: each holds a share of the cores and memory from the start
        data, _, (tag, arm, seed, _) = item
        if _running_elsewhere(_signature(data, tag, arm, seed)):
            jobs.remove(item)
            waited.append(item)
            print(f"{_label(data, item[2])} runs in another process; waiting for it", flush=True)
    while jobs or running or waited:
        for item in list(waited):
            data, _, (tag, arm, seed, _) = item
            if not _running_elsewhere(_signature(data, tag, arm, seed)):
                waited.remove(item)
                if _finished(data, tag, arm, seed):
                    _done(args, data, item[1], item[2], "elsewhere")
                else:
                    jobs.insert(0, item)  # it stopped unfinished: this queue takes it on (resuming it)
        while jobs and len(running) + len(waited) < args.parallel:  # runs elsewhere share the machine too
            item = jobs.pop(0)
            data, e, (tag, arm, seed, extra) = item
            if _running_elsewhere(_signature(data, tag, arm, seed)):
                waited.append(item)
                print(f"{_label(data, item[2])} runs in another process; waiting for it", flush=True)
                continue
            cmd = base + ["train", data, "--arms", arm, "--first-seed", str(seed), "--seeds", "1",
                          "--epochs", str(e), "--threads", "1", *(["--tag", tag] if tag else []), *extra]
            if arm == "probe":
                cmd = base + ["probe", data, "--quiet"]
            log = _folder(data, tag) / f"{arm}-seed{seed}.log"
            # the log goes into the benchmark's own folder: claim it as the benchmark's first, or the run,
            # finding a file it did not write there, refuses the folder (as it did every new tag's)
            output_folder(log.parent, "benchmark accuracy", recognize=_earlier_benchmark)
            # appended: a run that resumes keeps the log of its earlier epochs
            running.append((subprocess.Popen(cmd, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT), item))
            print(f"started {_label(data, item[2])}", flush=True)
        time.sleep(10)
        for proc, item in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, item))
            _done(args, item[0], item[1], item[2], f"exit {proc.returncode}")


def _label(data: str, job: tuple) -> str:
    tag, arm, seed, _ = job
    return f"{data}: " + ("the probe" if arm == "probe" else f"{tag + '/' if tag else ''}{arm}-seed{seed}")


def _done(args, data: str, epochs: int, job: tuple, how: str) -> None:
    """Say how a queued run ended and commit its small files when it finished."""
    tag, arm, seed, _ = job
    if arm == "probe":
        probe_dir = _folder(data) / "probe"
        print(f"finished {_label(data, job)} ({how})", flush=True)
        if args.commit and (probe_dir / "probe.json").is_file():
            _commit([probe_dir / "probe.json", probe_dir / ".lookcloser.json"],
                    f"scenes benchmark, {data}: the linear probe of every view")
        return
    run = _folder(data, tag) / f"{arm}-seed{seed}"
    top1 = _top1(run)
    print(f"finished {_label(data, job)} ({how}): top-1 {top1}", flush=True)
    if args.commit and top1 is not None:
        _commit([run, run.parent / f"{run.name}.log", run.parent / ".lookcloser.json", run.parent / "results.json",
                 run.parent / "results.md"],
                f"scenes benchmark, {data}{' ' + tag if tag else ''}: {arm} seed {seed} "
                f"({_run_budget(run, epochs)}, test top-1 {top1:.2f})")


def _run_budget(run: Path, epochs: int) -> str:
    """What the run trained, from its saved configuration (a tag may change the recipe's budget), else the
    queue's."""
    import yaml

    try:
        return _budget(yaml.safe_load((run / "config.yaml").read_text())["train"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return f"2 heads-first + {epochs} epochs"


def evaluate_runs(args) -> None:
    """For every finished run of a data set (main and tagged): its held-out images scored, and for a method
    that looks closer its zoom threshold chosen there (``eval-holdout/``; a main-table baseline only where a
    tagged run of its arm is compared with it); its test report redone where it
    lacks the zoom-only-when-unsure sweep or the localization, or was scored at another test crop threshold
    than the one WS-BAN/WS-DAN's checkpoint now keeps (``final-eval/``; a run trained before runs chose it
    gets its choice from its held-out images first), or in another precision than ``evaluate``'s default now
    (float32 on the CPU; reports written when CPUs with native bfloat16 defaulted to it are redone).
    Idempotent."""
    import torch

    from lookcloser.engine.checkpoint import load_checkpoint_file
    from lookcloser.engine.evaluate import use_bf16
    from lookcloser.report import evaluate_checkpoint

    amp = use_bf16(torch.device("cpu"), None)  # the precision a report made now would say

    main, tagged = _folder(args.data), [f for _, f in _tagged(args.data)]
    # a main-table baseline's held-out top-1 serves only as an ablation's reference: scored where one compares
    compared = {r.name.rsplit("-seed", 1)[0] for f in tagged for r in f.glob("*-seed*")}
    for folder in [main] + tagged:
        for run in sorted(folder.glob("*-seed*")):
            if not (run / "last.pt").is_file() or _top1(run) is None:
                continue
            arm = run.name.rsplit("-seed", 1)[0]
            looks = ARMS.get(arm, ("baseline",))[0] != "baseline"
            held = run / "eval-holdout" / "report.json"
            ckpt = load_checkpoint_file(run / "last.pt")
            # WS-BAN/WS-DAN trained before runs chose their test crop threshold: chosen now on the held-out images
            unchosen = "eval_theta" in ckpt["build_args"] and "eval_theta_choice" not in ckpt
            wanted = looks or folder != main or arm in compared
            if wanted and (not held.is_file() or unchosen or json.loads(held.read_text()).get("bf16", False) != amp):
                print(f"{run.name}: held-out images", flush=True)
                evaluate_checkpoint(run / "last.pt", split="holdout", out=run / "eval-holdout", workers=args.workers,
                                    progress=False, speed_images=0)
                ckpt = load_checkpoint_file(run / "last.pt")
            final = json.loads((run / "final-eval" / "report.json").read_text())
            crop = ckpt["build_args"].get("eval_theta")
            if ("localization" not in final and "cub" in DATASETS[args.data]()) or (looks and "adaptive" not in final) \
                    or (crop is not None and final.get("eval_theta") != crop) or final.get("bf16", False) != amp:
                print(f"{run.name}: test split", flush=True)
                evaluate_checkpoint(run / "last.pt", split="test", out=run / "final-eval", workers=args.workers,
                                    progress=False, speed_images=args.speed_images)


def build(args) -> None:
    """Write cub100 in scenes (``lookcloser data scenes``) where ``--scenes`` says, unless it is there."""
    from lookcloser.data.scenes import write_scenes

    if (SCENES_ROOT / "manifest.json").is_file():
        print(f"{SCENES_ROOT} is built ({json.loads((SCENES_ROOT / 'manifest.json').read_text())['pixels_sha256'][:12]})")
        return
    m = write_scenes(f"cub:{SHARED_ROOT / 'cub100'}", str(SHARED_ROOT / "flowers12"), SCENES_ROOT)
    print(f"wrote {m['images']} scenes to {SCENES_ROOT} (pixels {m['pixels_sha256'][:12]})")


def report(args) -> None:
    from lookcloser.benchmark import made_by

    cost = json.loads(COST.read_text()) if COST.is_file() else {}
    costs = cost.get("arms", {})
    # images/s were measured where the cost subcommand ran (the CPU), whichever device trained the runs
    cost_device = cost["environment"]["device"].split(" (")[0] if costs else "–"
    lines = []
    panels = []
    for data in DATASETS:
        res = _load(data)
        if res is None:
            continue
        summ = res["summary"]
        runs = res["runs"]
        ref = summ.get("glance", {}).get("top1", (float("nan"), 0.0))[0]
        epochs = _budget(res["config"]["train"])
        seeds = {arm: sorted(r["seed"] for r in runs if r["method"] == arm) for arm in summ}
        partial = f" (partial: {len(runs)} of {res['planned']} runs finished)" if len(runs) < res["planned"] else ""
        probes = {int(v): r["top1"] for v, r in (res["probe"] or {}).get("views", {}).items()}
        lines += [f"### {data}: {epochs}, seeds {sorted(set(s for v in seeds.values() for s in v))}{partial}", "",
                  "| arm | what it sees | top-1 (%) (mean ± std over seeds) | vs glance | vs probe of its view | "
                  f"GFLOPs / image | inference images/s ({cost_device}) | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        points, curves, glance_only = [], {}, set()
        for arm, s in summ.items():
            mean, std = s["top1"]
            c = costs.get(arm, {})
            view = VIEWS.get(arm, VIEW)
            what = f"{view} px view" if arm in VIEWS else f"{VIEW} px glance + {VIEW} px zoom from {SOURCE}"
            lines.append(_row(LABELS.get(arm, arm), what, mean, std, len(seeds[arm]), ref, probes.get(view), c))
            points.append((LABELS.get(arm, arm), c.get("gflops"), mean, std))
            both = _tasn_mean(data) if arm == "tasn" else []
            if both:  # TASN predicting with the mean of both nets' probabilities (chosen on held-out images)
                m2, s2 = _mean_std(both)
                lines.append(_row("tasn, prediction mean", f"{what}; the mean of both nets' probabilities", m2, s2,
                                  len(both), ref, probes.get(view), c))
                points.append(("tasn, prediction mean", c.get("gflops"), m2, s2))
            adaptive, retrained = _adaptive(data, arm), ""
            if adaptive is None and arm not in VIEWS:  # the main runs kept no held-out images or no checkpoints
                adaptive = _adaptive(data, arm, ADAPTIVE_TAG)
                if adaptive and adaptive["always"]:
                    retrained = (f"; runs retrained with {_held_share(data, arm, ADAPTIVE_TAG)} of the training "
                                 f"images held out (`{ADAPTIVE_TAG}`), "
                                 f"always zooming {statistics.mean(adaptive['always']):.2f}")
            if adaptive:  # zoom only when unsure, at each run's own threshold (chosen on its held-out images)
                m2, s2 = _mean_std(adaptive["top1"])
                g2 = statistics.mean(adaptive["gflops"])
                lines.append(_row(f"{arm}, zoom only when unsure", f"{VIEW} px glance; zooms "
                                  f"{100 * statistics.mean(adaptive['zoomed']):.0f} % of images at its run's "
                                  f"threshold{retrained}",
                                  m2, s2, len(adaptive["top1"]), ref, probes.get(view), {"gflops": g2}))
                points.append((f"{arm}, adaptive", g2, m2, s2))
                curves[arm] = adaptive["curve"]
                if max(adaptive["zoomed"]) == 0:
                    glance_only.add(f"{arm}, adaptive")
            half = [json.loads(z.read_text()).get("sides", {}).get("eval theta=0.5", {}).get("top1")
                    for z in _folder(data).glob(f"{arm}-seed*/zoom_sizes.json")]
            half = [h for h in half if h is not None]
            if half:
                points.append((f"{arm}, test crop θ 0.5", c.get("gflops"), *_mean_std(half)))
        by_view = {v: a for a, v in VIEWS.items()}
        for view, top1 in sorted(probes.items()):
            c = costs.get(by_view.get(view, ""), {})
            lines.append(f"| linear probe {view} px | frozen features, {view} px view | {top1:.2f} | "
                         f"{_fig(top1 - ref, '+.2f')} | – | {_fig(c.get('gflops'), '.2f')} | "
                         f"{_fig(c.get('images_per_s'), '.1f')} | – |")
            points.append((f"probe {view} px", c.get("gflops"), top1, 0.0))
        if probes:
            pr = res["probe"]
            lines += ["", f"Linear probe (`python benchmarks/looking_closer.py probe {data}`): the frozen pretrained "
                      f"backbone's pooled features, a logistic regression whose L2 strength was chosen on "
                      f"{pr['holdout']:.0%} of each class's training images, refitted on all of them; "
                      f"{_made(pr['environment'])}."]
        env = res["environment"]
        lines += ["", f"Device {_device(env['device'], _folder(data))}; torch {env['torch']}, timm {env['timm']}; "
                  f"runs trained at {_trained_at(_folder(data), made_by(env))}.",
                  f"Command: `{res['command']}`", ""]
        lines += _arm_recipes(summ)
        lines += _precision_line(data, summ)
        lines += _crop_thresholds(data, summ)
        lines += _localization_table(data, summ)
        if RECIPE == "scenes":
            lines += _goals(summ, probes, costs, points, glance_only)
        lines += _crop_ablation(data)
        lines += _recipe_ablations(data)
        panels.append((data, epochs, points, curves))
    if costs:
        lines += [f"Cost: forward FLOPs of one {SOURCE} px image (torch.utils.flop_counter); inference images/s at "
                  f"batch {cost['batch_size']}, {cost['threads']} threads, median of {cost['rounds']} interleaved "
                  f"rounds; device {cost['environment']['device']}, commit {cost['environment']['commit']}.", ""]
    (RESULTS / f"closer-{KIND}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if panels and costs:
        _plot(panels, RESULTS / f"closer-{KIND}.png")


def _final_reports(folder: Path, arm: str) -> list[dict]:
    """The test reports of an arm's finished seeds, in seed order."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{arm}-seed*/final-eval/report.json"))]


def _adaptive(data: str, arm: str, tag: str = "") -> dict | None:
    """An arm's zoom-only-when-unsure results over its seeds (the main table's runs, or a tagged folder's):
    top-1, share zoomed and mean GFLOPs at each run's own threshold, always zooming's top-1, and the mean curve
    over the swept thresholds (``[(gflops, top1), ...]``); None where no seed has both a sweep and a threshold."""
    found = [r["adaptive"] for r in _final_reports(_folder(data, tag), arm)
             if "at_run_threshold" in r.get("adaptive", {})]
    if not found:
        return None
    at = [a["at_run_threshold"] for a in found]
    thresholds = [row["threshold"] for row in found[0]["sweep"]]
    curve = []
    for i, _ in enumerate(thresholds):
        rows = [a["sweep"][i] for a in found if len(a["sweep"]) > i]
        curve.append((statistics.mean(r["gflops"] for r in rows), statistics.mean(r["top1"] for r in rows)))
    return {"top1": [r["top1"] for r in at], "zoomed": [r["zoomed"] for r in at],
            "gflops": [r["gflops"] for r in at], "curve": curve,
            "always": [a["sweep"][-1]["top1"] for a in found if a["sweep"][-1]["threshold"] is None],
            "thresholds": [a.get("run_threshold") for a in found]}


def _held_share(data: str, arm: str, tag: str) -> str:
    """The share of the training images an arm's tagged runs held out, in words, from their config.yaml: ``a
    tenth``, ``20%``, or ``10% or 20%`` where seeds differ."""
    import yaml

    shares = sorted({float(yaml.safe_load(c.read_text())["data"].get("holdout") or 0.0)
                     for c in _folder(data, tag).glob(f"{arm}-seed*/config.yaml")})
    return " or ".join("a tenth" if s == 0.1 else f"{s:.0%}" for s in shares) or "a share"


def _arm_recipes(summ: dict) -> list[str]:
    """One line naming what the held-out selection changed per arm (:data:`ARM_OPTIONS`, :data:`ARM_TRAIN`),
    against the recipe every other arm trains with; nothing where it changed none."""
    parts = []
    for arm in summ:
        changed = {**ARM_OPTIONS.get(RECIPE, {}).get(arm, {}), **ARM_TRAIN.get(RECIPE, {}).get(arm, {})}
        if changed:
            words = [("no heads-first phase (its epochs train everything)" if k == "head_epochs" and v == 0
                      else f"{k} {v}") for k, v in changed.items()]
            parts.append(f"{LABELS.get(arm, arm)}: {', '.join(words)}")
    if not parts:
        return []
    return ["Per-arm changes to the recipe, chosen on held-out training images (every other arm trains as the "
            "heading says): " + "; ".join(parts) + ".", ""]


def _precision_line(data: str, summ: dict) -> list[str]:
    """One line naming the runs whose test figure was scored in bfloat16 (reports made before ``evaluate``
    scored every CPU run in float32); nothing when every report is float32."""
    old = [f"{LABELS.get(arm, arm)} seed {p.parent.parent.name.rsplit('-seed', 1)[1]}" for arm in summ
           for p in sorted(_folder(data).glob(f"{arm}-seed*/final-eval/report.json"))
           if json.loads(p.read_text()).get("bf16")]
    if not old:
        return []
    return [f"Scored in bfloat16 (the earlier default on this CPU), the rest in float32: {', '.join(old)}; "
            f"`python benchmarks/looking_closer.py --recipe {RECIPE} evaluate {data}` redoes them.", ""]


def _crop_thresholds(data: str, summ: dict) -> list[str]:
    """One line naming the test crop threshold each WS-BAN/WS-DAN seed was scored at (its report's
    ``eval_theta``: chosen on the run's own held-out images), where the reports name it."""
    parts = []
    for arm in summ:
        thetas = [f"{r['eval_theta']:g}" for r in _final_reports(_folder(data), arm) if "eval_theta" in r]
        if thetas:
            parts.append(f"{LABELS.get(arm, arm)} θ {', '.join(thetas)}")
    if not parts:
        return []
    return ["WS-BAN/WS-DAN's test crop threshold (the share of the mean attention map's peak the object crop keeps; "
            "published 0.1), chosen by each run on its held-out images, per seed: " + "; ".join(parts) + ".", ""]


def _localization_table(data: str, summ: dict) -> list[str]:
    """Where the attention looked, where the data has object boxes: the pointing game (the attention peak in the
    box) and the IoU of what the zoom read with the box, mean ± std over seeds."""
    rows = []
    for arm in summ:
        locs = [r["localization"] for r in _final_reports(_folder(data), arm) if "localization" in r]
        if not locs:
            continue
        cells = []
        for key in ("pointing_game", "zoom_iou"):
            values = [loc[key] for loc in locs if key in loc]
            cells.append(f"{_mean_std(values)[0]:.1f} ± {_mean_std(values)[1]:.1f}" if values else "–")
        what = "class activation map" if ARMS.get(arm, ("baseline",))[0] == "baseline" else "its glance's attention"
        rows.append(f"| {LABELS.get(arm, arm)} | {what} | {cells[0]} | {cells[1]} | {len(locs)} |")
    if not rows:
        return []
    return ["Does the attention find the object? (test split; the pointing game: the share of images whose attention "
            "peak lies in the object's box; the zoom's IoU: WS-DAN's crop box, RRA's patch, the region TASN's sampler "
            "magnifies, against the box; mean ± std over seeds)", "",
            "| arm | attention | pointing game (%) | zoom IoU with the box (%) | seeds |", "|---|---|---|---|---|",
            *rows, ""]


def _curve_at(curve: list[tuple[float, float]], gflops: float) -> float | None:
    """The baseline's accuracy-against-cost line at ``gflops`` (linear between its two points around it); None
    outside its span."""
    pts = sorted(curve)
    for (g0, a0), (g1, a1) in zip(pts, pts[1:]):
        if g0 <= gflops <= g1:
            return a0 + (a1 - a0) * (gflops - g0) / (g1 - g0) if g1 > g0 else max(a0, a1)
    return None


def _goals(summ: dict, probes: dict, costs: dict, points: list, glance_only: set[str]) -> list[str]:
    """The scenes benchmark's goals, each said met or not with the figures that decide it; a point of
    ``glance_only`` (an adaptive point whose runs' thresholds zoom no image) is named the method's glance alone."""
    out = ["Goals:", ""]
    full = summ.get("full", {}).get("top1")
    full_g = costs.get("full", {}).get("gflops")
    glance = summ.get("glance", {}).get("top1")
    baseline = [(g, m) for label, g, m, _ in points if label.startswith("baseline") and g is not None]
    spread = {g: sd for label, g, _, sd in points if label.startswith("baseline") and g is not None}
    methods = [(label + (" (never zooms: its glance alone)" if label in glance_only else ""), g, m, sd)
               for label, g, m, sd in points if not label.startswith(("baseline", "probe")) and g]
    if full and full_g:
        cheap = [(label, g, m) for label, g, m, _ in methods if g <= full_g / 2]
        best = max(cheap, key=lambda x: x[2], default=None)
        verdict = ("met" if best and best[2] >= full[0] else "not met")
        out.append(f"- At no more than half the {SOURCE} px baseline's GFLOPs ({full_g / 2:.2f}), a method at least as "
                   f"accurate as it ({full[0]:.2f}): **{verdict}**" +
                   (f" (best: {best[0]}, {best[2]:.2f} at {best[1]:.2f} GFLOPs)" if best else " (no method that cheap)"))
    if probes:
        below = [f"{LABELS.get(a, a)} {s['top1'][0] - probes[VIEWS.get(a, VIEW)]:+.2f}" for a, s in summ.items()
                 if VIEWS.get(a, VIEW) in probes and s["top1"][0] < probes[VIEWS.get(a, VIEW)]]
        out.append("- Every arm at or above the linear probe of its view: " +
                   ("**met**" if not below else f"**not met** ({', '.join(below)})"))
    if glance:
        for arm in ("tasn", "wsdan"):
            if arm in summ:
                m, sd = summ[arm]["top1"]
                margin = 2 * max(sd, glance[1])
                out.append(f"- {arm} above the {VIEW} px baseline by more than twice the larger std ({margin:.2f}): "
                           f"{m - glance[0]:+.2f}, **{'met' if m - glance[0] > margin else 'not met'}**")
    if len(baseline) > 1:
        above, beyond = [], False
        for label, g, m, sd in methods:
            line = _curve_at(baseline, g)
            if line is None or m <= line:
                continue
            # the noise: twice the larger std of the method and the two baseline points the line joins there
            ordered = sorted(spread.items())
            near = [bsd for bg, bsd in ordered if bg <= g][-1:] + [bsd for bg, bsd in ordered if bg >= g][:1]
            margin = 2 * max([sd or 0.0] + [bsd or 0.0 for bsd in near])
            clear = m - line > margin
            beyond |= clear
            above.append(f"{label} ({m:.2f} against the line's {line:.2f} at {g:.2f} GFLOPs, {m - line:+.2f}"
                         + ("" if clear else f", within twice the seeds' std ({margin:.2f})") + ")")
        out.append("- A method above the baseline's accuracy-against-cost line: " +
                   (("**met**: " if beyond else "**met only within the seeds' spread**: ") + "; ".join(above)
                    if above else "**not met**"))
    return out + [""]


def _trained_at(folder: Path, fallback: str) -> str:
    """The code each finished run was trained by, counted: ``commit d680259 (4 runs), commit d1945ec (1 run)``;
    runs from before the commit was recorded count under ``fallback`` (the table's recorded commit)."""
    from lookcloser.benchmark import counted, trained_at

    made = Counter()
    for log in sorted(folder.glob("*-seed*/metrics.jsonl")):
        if (log.parent / "final-eval" / "report.json").is_file():
            made[trained_at([json.loads(x) for x in log.read_text().splitlines() if x.strip()])] += 1
    made = Counter({(fallback if k == "not recorded" else k): n for k, n in made.items()})
    return counted(made) or fallback


def _budget(train: dict) -> str:
    """A run's training budget in words: ``2 heads-first + 2 epochs`` or ``2 epochs``."""
    heads = train.get("head_epochs", 0)
    return (f"{heads} heads-first + " if heads and heads > 0 else "") + f"{train['epochs']} epochs"


def _made(env: dict) -> str:
    from lookcloser.benchmark import made_by

    return f"{env['device']}, torch {env['torch']}, {made_by(env)}"


def _device(device: str, folder: Path) -> str:
    """The device without the thread count of whichever run finished last, and each run's own thread count
    (from its ``metrics.jsonl``): ``CPU (x86_64); threads per run: 1 (12 runs), 2 (5 runs), 1 then 2 (1 run)``."""
    if not device.startswith("CPU"):  # a GPU's runs: the host's thread count does not set their speed
        return device
    from lookcloser.benchmark import counted, threads_used

    threads = Counter()
    for log in sorted(folder.glob("*-seed*/metrics.jsonl")):
        threads[threads_used([json.loads(line) for line in log.read_text().splitlines() if line.strip()])] += 1
    if not threads:
        return device
    bare = re.sub(r", \d+ threads?\)$", ")", device)
    return f"{bare}; threads per run: {counted(threads)}"


def _crop_ablation(data: str) -> list[str]:
    """Rows of the object-crop threshold ablation (zoom_sizes.py --eval-theta) found in the runs' folders: the
    main table's, then each tagged ablation's (its arm shown as ``wsdan (4ep)``)."""
    rows, tasn = [], []
    found = [("", path) for path in sorted(_folder(data).glob("*-seed*/zoom_sizes.json"))]
    found += [(tag, path) for tag, folder in _tagged(data) for path in sorted(folder.glob("*-seed*/zoom_sizes.json"))]
    for tag, path in found:
        z = json.loads(path.read_text())
        arm, seed = path.parent.name.rsplit("-seed", 1)
        if tag:
            arm += f" ({tag})"
        if "sides" not in z:  # TASN: magnification and its glance-only and zoom-only accuracy
            t, q = z["top1"], z["peak_zoom_over_resize"]
            tasn.append(f"| {arm} | {seed} | {q['50']:.2f} ({q['5']:.2f}-{q['95']:.2f}) | "
                        f"{z['peak_source_pixels_per_output_pixel']:.2f} | " + " | ".join(f"{v:.2f}" for v in t.values()) + " |")
            continue
        for mode, st in z["sides"].items():
            if mode == "train" or (mode == "eval" and "top1" not in st):
                continue
            theta = mode.split("=", 1)[1] if "=" in mode else "(patch)"
            alone = st.get("top1_streams", {})
            alone = " | ".join(f"{alone[k]:.2f}" if k in alone else "—" for k in ("glance", "zoom"))
            rows.append(f"| {arm} | {seed} | {theta} | {st['50']:.2f} | "
                        f"{100 * st['share_whole_image']:.0f} % | {alone} | {st['top1']:.2f} |")
    out = []
    if tasn:
        out += ["TASN's zoom (`python benchmarks/zoom_sizes.py RUN --limit 3000`, the same trained weights): the "
                "structure-sampled image's peak magnification over a plain resize of the source (16-pixel windows; "
                "median, 5-95 %), output pixels per source pixel there, and the top-1 of the attention net's own "
                "classifier on the glance, of the master net on the sampled image (TASN's prediction) and of their "
                "mean probability:", "",
                "| arm | seed | peak zoom over resize | output px per source px | glance top-1 (%) | zoom top-1 (%) | "
                "mean of both (%) |", "|---|---|---|---|---|---|---|", *tasn, ""]
    if not rows:
        return out
    return out + ["Zoom sizes at test time and the object-crop threshold θ (the same trained weights; "
            "`python benchmarks/zoom_sizes.py RUN --limit 3000 --eval-theta 0.1,0.3,0.5,0.7`; "
            "crop side as a fraction of the source side; RRA's row is its chosen patch), with the top-1 of each "
            "stream the method fuses, alone (glance: WS-BAN/WS-DAN's raw image, RRA's global view; zoom: the "
            "crop or patch) and of the method's prediction:", "",
            "| arm | seed | θ at test | crop side (median) | whole-image crops | glance stream alone (%) | "
            "zoom stream alone (%) | top-1 (%) |", "|---|---|---|---|---|---|---|---|",
            *rows, ""]


def _top1(run: Path) -> float | None:
    report = run / "final-eval" / "report.json"
    return json.loads(report.read_text())["top1"] if report.is_file() else None


def _recipe_ablations(data: str) -> list[str]:
    """One row per finished run of a tagged ablation (``train ... --tag NAME``), beside the main table's run of
    the same arm and seed: what the recipe changed and what that did to top-1."""
    import yaml

    from lookcloser.benchmark import made_by
    from lookcloser.models.registry import model_options

    def settings(run: Path) -> dict:
        """The recipe fields an ablation changes: epochs, learning rates and the method's options."""
        path = run / "config.yaml"
        if not path.is_file():
            return {}
        cfg = yaml.safe_load(path.read_text())
        return {**{k: cfg["train"].get(k, 1.0) for k in ("epochs", "lr", "backbone_lr_scale")},
                **{k: cfg["train"][k] for k in ("head_epochs", "head_lr", "bn") if k in cfg["train"]},
                "holdout": cfg["data"].get("holdout", 0.0),
                **model_options(cfg["model"]["method"]), **cfg["model"].get("options", {})}

    rows, made = [], []
    for tag, folder in _tagged(data):
        if not any(_top1(run) is not None for run in folder.glob("*-seed*")):
            continue  # nothing finished under this tag yet: no row, and no line saying where it trained
        if (folder / "results.json").is_file():
            res = json.loads((folder / "results.json").read_text())
            env = res["environment"]
            # a table redrawn by newer code keeps the commit each run was trained at
            at = sorted({r["trained_at"] for r in res["runs"] if "trained_at" in r}) or [made_by(env)]
            made.append(f"{tag}: {_device(env['device'], folder)}, torch {env['torch']}, {'; '.join(at)}")
        elif any(folder.glob("*-seed*/metrics.jsonl")):  # runs trained by `lookcloser train` itself: their own records
            first = json.loads(next(folder.glob("*-seed*/metrics.jsonl")).read_text().splitlines()[0])
            made.append(f"{tag}: {_device(first.get('device', 'device not recorded'), folder)}, "
                        f"{_trained_at(folder, 'commit not recorded')}")
        for run in sorted(folder.glob("*-seed*")):
            top1, main_run = _top1(run), _folder(data) / run.name
            if top1 is None:
                continue
            arm, seed = run.name.rsplit("-seed", 1)
            mine, theirs = settings(run), settings(main_run)
            changed = [f"{key} {mine.get(key, '–')} (main {theirs.get(key, '–')})"
                       for key in sorted(set(mine) | set(theirs)) if theirs and mine.get(key) != theirs.get(key)]
            ref = _top1(main_run)
            held, held_ref = _held_out_top1(run), _held_out_top1(main_run)
            g, g_ref = _run_gflops(run), _run_gflops(main_run)
            rows.append(f"| {tag} | {LABELS.get(arm, arm)} | {seed} | {'; '.join(changed) or '–'} | "
                        f"{_fig(held, '.2f')} | {_fig(held_ref, '.2f')} | "
                        f"{_fig(held - held_ref if held is not None and held_ref is not None else None, '+.2f')} | "
                        f"{_fig(g, '.2f')} | {_fig(g_ref, '.2f')} | {top1:.2f} | "
                        + (f"{ref:.2f} | {top1 - ref:+.2f} |" if ref is not None else "– | – |"))
    if not rows:
        return []
    return ["Recipe ablations (`python benchmarks/looking_closer.py train DATA ... --tag NAME`, finished runs only; "
            "each against the main table's run of the same arm and seed. Choose on the held-out columns (the run's "
            "held-out training images, `evaluate DATA`); the test columns are for the record. GFLOPs: one "
            f"{SOURCE} px image, as the run's model is built):", "",
            "| ablation | arm | seed | what changed | held-out top-1 (%) | main run | change | GFLOPs | main run | "
            "test top-1 (%) | main run | change |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "", "Trained on " + "; ".join(made) + ".", ""]


def _held_out_top1(run: Path) -> float | None:
    """A run's top-1 on its own held-out training images (``evaluate DATA`` writes eval-holdout/)."""
    report = run / "eval-holdout" / "report.json"
    return json.loads(report.read_text())["top1"] if report.is_file() else None


_GFLOPS: dict[str, float] = {}


def _run_gflops(run: Path) -> float | None:
    """Forward GFLOPs of one source-size image through the model a run's config.yaml builds (random weights,
    100 classes, as ``cost`` counts them); None without a config."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return None
    model = yaml.safe_load(path.read_text()).get("model") or {}
    if "method" not in model:
        return None
    key = json.dumps([model["method"], model.get("backbone"), model.get("options") or {}], sort_keys=True)
    if key not in _GFLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from lookcloser.models import create_model

        m = create_model(model["method"], backbone=model.get("backbone") or "efficientnet_lite0", num_classes=100,
                         **(model.get("options") or {})).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            m(torch.randn(1, 3, SOURCE, SOURCE))
        _GFLOPS[key] = counter.get_total_flops() / 1e9
    return _GFLOPS[key]


def _plot(panels, path: Path) -> None:
    from lookcloser.draw import separate_labels, use_agg

    plt = use_agg()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    labels = []
    for ax, (data, epochs, points, *more) in zip(axes[0], panels):
        for arm, curve in (more[0] if more else {}).items():  # zoom only when unsure, over its thresholds
            ax.plot(*zip(*sorted(curve)), "--", color=COLORS.get(arm, "C4"), lw=1, alpha=0.7, zorder=0)
        for prefix, style in (("baseline", "-"), ("probe", ":")):  # the curves: the baseline's and the probe's
            curve = sorted((g, m) for label, g, m, _ in points if label.startswith(prefix) and g is not None)
            if len(curve) > 1:
                ax.plot(*zip(*curve), style, color="0.55", lw=1, zorder=0)
        for label, gflops, mean, std in points:
            if gflops is None:
                continue
            base, hollow = label.startswith(("baseline", "probe")), "θ" in label or label.startswith("probe")
            color = "0.35" if base else COLORS.get(label.split(",")[0], "C4")
            ax.errorbar(gflops, mean, yerr=std, fmt="s" if base else "o", ms=7, capsize=3, color=color,
                        mfc="none" if hollow else color)
            labels.append(ax.annotate(label, (gflops, mean), textcoords="offset points",
                                      xytext=(-7, 4) if hollow else (6, 4), ha="right" if hollow else "left",
                                      fontsize=8, color=color))  # a label has its point's colour
        ax.set_xlabel("inference cost (GFLOPs per image)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{data} ({epochs}, mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2)  # room for the outermost points' labels
    views = sorted(VIEWS.values())
    fig.suptitle(f"Looking closer: accuracy against inference cost\n(EfficientNet-Lite0, {SOURCE} px source, "
                 f"{'GPU budget' if KIND == 'gpu' else 'CPU budget'})\n"
                 f"line: the baseline at {views[0]}-{views[-1]} px; dotted: linear probes" +
                 ("\ndashed: zoom only when unsure, over its thresholds" if any(p[3:] and p[3] for p in panels) else ""),
                 fontsize=10)
    fig.tight_layout()
    separate_labels(fig, labels)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global SHARED_ROOT, SCENES_ROOT, RESULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=list(RECIPES), default=RECIPE,
                   help="heads: heads-first (the current recipe, results/heads/); v1: every layer from the first "
                   "step (the first round, results/)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N]: runs on a GPU train there and go to "
                   "closer-DATA-gpu/ folders (report: closer-gpu.md), apart from the CPU's")
    p.add_argument("--data-root", default=str(SHARED), help="the folder holding cub100/ and flowers12/")
    p.add_argument("--scenes", default=str(SCENES_ROOT), help="the folder of cub100 in scenes (`build` writes it "
                   "there; never inside the repository)")
    p.add_argument("--results", default="", help="the recipe's results folder (default: benchmarks/results/...)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train and evaluate every arm (resumable)")
    t.add_argument("data", choices=[*CROP_DATASETS, *SCENE_DATASETS])
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--seeds", type=int, default=3)
    t.add_argument("--arms", default="", help="comma-separated subset of " + ",".join(ARMS))
    t.add_argument("--tag", default="", help="an ablation's name: its runs go to closer-DATA-TAG-cpu/ (e.g. "
                   "--epochs 4 --seeds 1 --arms glance,tasn,rra --tag 4ep), apart from the main tables")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's 1e-3); "
                   "for an ablation, with --tag")
    t.add_argument("-o", "--option", action="append", default=[], metavar="ARM.KEY=VALUE",
                   help="an option of one arm's method on top of the arm's own (repeatable), e.g. "
                   "-o wsdan.output_stride=8 --tag stride8")
    t.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="the backbone's learning rate as a fraction of --lr (default 1); --lr 0.01 "
                   "--backbone-lr-scale 0.1 trains the heads at 10x the backbone's rate")
    t.add_argument("--head-epochs", type=int, default=None, help="heads-first epochs (default: the recipe's)")
    t.add_argument("--head-lr", type=float, default=None, help="the heads-first epochs' rate (default: the recipe's)")
    t.add_argument("--bn", choices=["train", "frozen"], default=None,
                   help="the backbones' BatchNorm after the heads-first epochs (default: the recipe's)")
    t.add_argument("--holdout", type=float, default=None, help="the share of each class's training images held "
                   "out, on which a run chooses its zoom-only-when-unsure threshold (default: the recipe's; e.g. "
                   f"--holdout 0.1 --tag {ADAPTIVE_TAG} for the crop sets, whose recipe holds out none)")
    t.add_argument("--workers", type=int, default=None, help="loader workers per run (default: the recipe's 2)")
    t.add_argument("--cache", action="store_true", help="keep decoded images in shared memory after the first "
                   "epoch (a runtime setting: the recipe and results are unchanged)")
    t.add_argument("--first-seed", type=int, default=None, help="train seeds FIRST_SEED .. FIRST_SEED + SEEDS - 1 "
                   "(default: from 0), e.g. --first-seed 2 --seeds 1 for seed 2 alone")
    t.add_argument("--threads", type=int, default=None, help="intra-op threads per run (a runtime setting)")
    c = sub.add_parser("cost", help="FLOPs and interleaved inference images/s of every arm")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--rounds", type=int, default=7)
    c.add_argument("--steps", type=int, default=2)
    r = sub.add_parser("probe", help="the linear probe on frozen features at each view size")
    r.add_argument("data", choices=[*CROP_DATASETS, *SCENE_DATASETS])
    r.add_argument("--views", default="", help="comma-separated view sizes (default " +
                   ",".join(map(str, PROBE_VIEWS)) + ")")
    r.add_argument("--holdout", type=float, default=0.1, help="share of each class's training images the "
                   "strength is chosen on")
    r.add_argument("--quiet", action="store_true")
    sub.add_parser("report", help="write closer-cpu.md and closer-cpu.png from the results (--device cuda: "
                   "closer-gpu.md/.png from the GPU's)")
    q = sub.add_parser("queue", help="the scenes recipe: every run of the plan, two at a time, one thread each, "
                       "committing each as it finishes (resumable)")
    q.add_argument("data", help="a data set of " + ", ".join(SCENE_DATASETS) + ", or several, comma-separated")
    q.add_argument("--epochs", default="2", help="epochs after the heads-first ones, one per data set (2,10)")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--parallel", type=int, default=2)
    q.add_argument("--only", default="", help="comma-separated jobs (ARM or TAG/ARM) to run alone")
    q.add_argument("--no-candidates", action="store_true", help="leave out the recipe candidates")
    q.add_argument("--commit", action="store_true", help="git-commit each finished run's small files")
    q.add_argument("--dry-run", action="store_true", help="print the runs to go and start none")
    e = sub.add_parser("evaluate", help="score every finished run's held-out images (choosing its zoom threshold) "
                       "and redo test reports that lack the adaptive sweep or the localization")
    e.add_argument("data")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--speed-images", type=int, default=64)
    sub.add_parser("build", help="write cub100 in scenes where --scenes says (once)")
    args = p.parse_args()
    if args.cmd in ("queue", "build"):
        args.recipe = "scenes"
    use_recipe(args.recipe)
    use_device(args.device)
    SHARED_ROOT, SCENES_ROOT = Path(args.data_root), Path(args.scenes)
    if args.results:
        RESULTS = Path(args.results)
    {"train": train, "cost": cost, "report": report, "probe": probe, "queue": queue, "evaluate": evaluate_runs,
     "build": build}[args.cmd](args)


if __name__ == "__main__":
    main()
