"""The ``lookcloser`` command: train, evaluate, predict, probe, visualize, export, data, models, demo, benchmark.

Each subcommand maps onto a library function; errors a user can cause print one line, no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import LookcloserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Weakly supervised attention for fine-grained visual classification.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect data sets and write the synthetic one.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: every method at the same budget.")
app.add_typer(bench_app, name="benchmark")


def _says_where_it_stopped(command):
    """A command stopped by Ctrl-C (or, while training, a SIGTERM) prints the interruption's own sentence (a
    training run says where it stands and how to continue it) and exits with 130; typer would turn the
    interruption into a bare exit 130, which the command line's caller never saw."""
    import functools

    @functools.wraps(command)
    def wrapped(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as e:
            typer.echo(f"error: {e}" if str(e) else "interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapped


def _parse_options(items: list[str] | None) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LookcloserError(f"bad --option {item!r}; write it as key=value, e.g. --option drop_rate=0.2")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _per_method(items: list[str] | None, labels: list[str] | None = None,
                arms: dict[str, str] | None = None) -> dict[str, dict]:
    """``METHOD.key=value`` (or ``LABEL.key=value``) options grouped by method or arm label, each checked
    against the registry's methods and the given labels. A plain ``key=value`` (the form ``train`` takes)
    goes to every arm of ``arms`` (``{label: method}``) whose method has that option."""
    from .models import list_models, model_options

    known = list(labels or []) + [m for m in list_models() if m not in (labels or [])]
    per_method: dict[str, dict] = {}
    for key, value in _parse_options(items).items():
        method, dot, name = key.partition(".")
        if not dot and arms:
            takers = [label for label, m in arms.items() if key in model_options(m)]
            if not takers:
                raise LookcloserError(f"bad --option {key}: no method of this benchmark ({', '.join(sorted(set(arms.values())))}) "
                                      f"has it; see `lookcloser models`, or write METHOD.key=value")
            for label in takers:
                per_method.setdefault(label, {})[key] = value
            continue
        if not dot or method not in known:
            raise LookcloserError(f"bad --option {key}; write METHOD.key=value with METHOD one of "
                                  f"{', '.join(known)}, or key=value for every method that has the option")
        per_method.setdefault(method, {})[name] = value
    return per_method


def _own_options(items: list[str] | None, method: str) -> dict:
    """``train``'s method options: ``key=value``, or ``METHOD.key=value`` (the form ``benchmark`` takes)
    naming the run's own method."""
    from .models import list_models

    out = {}
    for key, value in _parse_options(items).items():
        head, dot, name = key.partition(".")
        if dot and head in list_models():
            if head != method:
                raise LookcloserError(f"--option {key} is for {head}, but this run trains {method}; drop it, or "
                                      f"write it as {name}=... for {method}")
            key = name
        out[key] = value
    return out


_PY_TYPES = {bool: bool, int: int, float: float, str: str}


THRESHOLD_HELP = ("When a method that looks closer zooms: run (the threshold the checkpoint keeps, chosen on "
                  "held-out images), always (every image, as published), or a confidence in [0, 1] below which "
                  "it zooms (0: never).")


def _threshold(text: str) -> float | str | None:
    """``--threshold``: ``run``, ``always`` (None) or a confidence in [0, 1]."""
    if text in ("run", "always"):
        return None if text == "always" else text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise LookcloserError(f"--threshold takes run, always or a confidence between 0 and 1, got {text!r}")
    return value


def config_options(*groups: str, exclude: tuple[str, ...] = ()):
    """Give a command one option per field of the configuration groups named, declared once in
    :mod:`lookcloser.config` (the field's docstring is its help; ``--flag/--no-flag`` for booleans).

    The command receives the values given on the command line as ``overrides``: ``{group: {field: value}}``,
    ``None`` for the fields not given. ``exclude`` names fields (``"group.field"``) left out.
    """
    import dataclasses
    import functools
    import inspect

    from .config import GROUPS, field_docs

    def deco(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "overrides"]
        taken = {p.name for p in own}
        generated: list[tuple[inspect.Parameter, str, str]] = []
        for group in groups:
            klass = GROUPS[group]
            docs = field_docs(klass)
            for f in dataclasses.fields(klass):
                kind = type(f.default) if f.default is not dataclasses.MISSING else None
                if f"{group}.{f.name}" in exclude or kind not in _PY_TYPES:
                    continue  # model.options is given with -o key=value
                name = f.name if f.name not in taken else f"{group}_{f.name}"
                flag = "--" + f.name.replace("_", "-")
                decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
                default = f.default
                # the backslash keeps Rich from reading the brackets as markup (it would drop them)
                help_text = f"{docs.get(f.name, '').replace('``', '')} \\[default: {default!r}]"
                option = typer.Option(None, *decls, help=help_text, rich_help_panel=f"{group} options",
                                      show_default=False)
                generated.append((inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                    annotation=Optional[_PY_TYPES[kind]]), group, f.name))
                taken.add(name)

        @functools.wraps(fn)
        def wrapper(**kwargs):
            overrides: dict[str, dict] = {g: {} for g in groups}
            for param, group, field in generated:
                overrides[group][field] = kwargs.pop(param.name)
            return fn(**kwargs, overrides=overrides)

        params = own + [p for p, _, _ in generated]
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.config_fields = [(g, f) for _, g, f in generated]
        return wrapper

    return deco


@app.command()
@_says_where_it_stopped
@config_options("data", "model", "train", exclude=("model.options",))
def train(
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<method>-<backbone>)."),
    config: Optional[Path] = typer.Option(None, help="YAML recipe; the flags given here override it."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o",
                                               help="Method option key=value, or METHOD.key=value (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the resolved configuration as YAML and exit without training."),
    probe_check: bool = typer.Option(True, "--probe-check/--no-probe-check",
                                     help="From pretrained weights, with --holdout or a val split: after training, "
                                          "score a linear probe of the frozen features on the held-out (or val) "
                                          "images beside the fine-tuned weights, and say so when fine-tuning "
                                          "ended below it."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    overrides: dict = None,
):
    """Train a method; writes config.yaml, last.pt, metrics.jsonl and (when a val or held-out split chooses
    it) best.pt into the run folder."""
    from .config import RunConfig
    from .engine import train as run_train

    if resume is not None:
        if config is not None:
            raise LookcloserError(f"--resume continues {resume} with its saved configuration; drop --config {config}")
        if print_config:
            raise LookcloserError(f"--print-config shows a new run's configuration; {resume}/config.yaml holds the "
                                  "resumed run's")
        overrides["model"]["options"] = _parse_options(option)
        metrics = run_train(RunConfig(), resume, resume=True, progress=not quiet, changes=overrides)
        _print_final(metrics, resume)
        if probe_check:  # a resumed run says where it stands when it ends, as a run trained in one go does
            _where_it_stands(resume, quiet)
        return
    cfg = RunConfig.load(config) if config else RunConfig()
    method = overrides["model"].get("method") or cfg.model.method
    overrides["model"]["options"] = _own_options(option, method)
    cfg = cfg.merged(overrides)
    if print_config:
        import yaml

        from .models.registry import validate_options

        validate_options(cfg.model.method, dict(cfg.model.options))
        steps = None
        if cfg.starts_pretrained and (cfg.train.head_epochs < 0 or cfg.train.small_set == "auto"):  # from the data's size
            from .engine.distributed import DistInfo
            from .engine.rundata import RunData

            steps = RunData(cfg, DistInfo()).steps_per_epoch()
        typer.echo(yaml.safe_dump(cfg.resolved(steps).to_dict(), sort_keys=False), nl=False)
        return
    out = out or Path("runs") / f"{cfg.model.method}-{cfg.model.backbone}"
    metrics = run_train(cfg, out, progress=not quiet)
    _print_final(metrics, out)
    if probe_check:
        _where_it_stands(out, quiet)


def _where_it_stands(run: Path, quiet: bool) -> None:
    """The run's fine-tuned weights against a probe of its frozen features, on its held-out (or val) images
    (nothing for a run from random weights or one never scored; the run's own device, batch and workers)."""
    from .probe import stands_lines, where_it_stands

    r = where_it_stands(run, progress=not quiet)
    for line in stands_lines(r) if r else []:
        typer.echo(line)


def _print_final(metrics: dict, out: Path) -> None:
    if metrics and "eval_top1" in metrics:
        best = f" (best {metrics['best_top1']:.2f}%, best.pt)" if "best_top1" in metrics else ""
        typer.echo(f"done: {metrics['eval_split']} top-1 {metrics['eval_top1']:.2f}% after the last epoch{best}, "
                   f"run folder {out}")


@app.command()
@_says_where_it_stopped
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    data: Optional[str] = typer.Option(None, help="Dataset spec (default: the one the run trained on)."),
    split: Optional[str] = typer.Option(None, help="Split (default test, else val)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default <run>/eval-<split>)."),
    tta_flip: bool = typer.Option(False, "--tta-flip", help="Average with the mirrored image."),
    batch_size: int = typer.Option(64, help="Images per batch."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16",
                                        help="bfloat16 autocast (default: on CUDA; float32 on the CPU, as CPU training)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    speed_images: int = typer.Option(64, help="For a method that looks closer: time each zoom threshold on this "
                                              "many images (0: no timing)."),
):
    """Top-1, top-5, per-class accuracy, confusion matrix (PNG and CSV), a JSON report and report.html; for a
    method that looks closer, the zoom-only-when-unsure sweep (on the run's held-out images it chooses the
    run's threshold and keeps it in the checkpoint, and a WS-BAN/WS-DAN run's test crop threshold where the
    run has none); where the data has object boxes, the pointing game and the zoom's IoU."""
    from .report import adaptive_table, evaluate_checkpoint

    from .engine.checkpoint import describe_weights

    if speed_images < 0:
        raise LookcloserError(f"--speed-images must be 0 or more, got {speed_images}")
    m = evaluate_checkpoint(checkpoint, data, split=split, out=out, tta_flip=tta_flip, batch_size=batch_size,
                            workers=workers, device=device, progress=not quiet, bf16=bf16, speed_images=speed_images)
    scored = json.loads((Path(m["out"]) / "report.json").read_text()).get("split")
    typer.echo(f"weights: {describe_weights(checkpoint, scored)}")
    typer.echo(f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  mean per-class {m['mean_per_class']:.2f}%  "
               f"({m['n']} images) -> {m['out']} (open {m['html']})")
    report = json.loads((Path(m["out"]) / "report.json").read_text())
    if "localization" in report:
        loc = report["localization"]
        parts = [f"attention peak in the box {loc['pointing_game']:.1f}%" if "pointing_game" in loc else "",
                 f"zoom IoU with the box {loc['zoom_iou']:.1f}%" if "zoom_iou" in loc else ""]
        typer.echo(f"localization over {loc['boxes']} boxes: " + ", ".join(p for p in parts if p))
    if "adaptive" in report:
        typer.echo(adaptive_table(report["adaptive"]))


@app.command()
@_says_where_it_stopped
def predict(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(5, "--top-k", help="Classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the results to a .csv or .json file."),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="Put every class's probability in the results (and --out file)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    workers: int = typer.Option(2, help="Data-loading worker processes (0: decode in this process)."),
    tta_flip: bool = typer.Option(False, "--tta-flip", help="Average with the mirrored image."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16",
                                        help="bfloat16 autocast (default: on CUDA; float32 on the CPU, as CPU training)."),
    threshold: str = typer.Option("run", help=THRESHOLD_HELP),
):
    """Class names and probabilities for images."""
    from .predict import Predictor, write_results

    if top_k < 1 or batch_size < 1:
        raise LookcloserError(f"--top-k and --batch-size must be at least 1, got {top_k} and {batch_size}")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise LookcloserError(f"--out {out}: write results to a .csv or a .json file")
    predictor = Predictor(checkpoint, device=device, tta_flip=tta_flip, bf16=bf16, threshold=_threshold(threshold))
    results = predictor.predict(images, top_k=top_k, batch_size=batch_size, workers=workers,
                                probabilities=probabilities)
    if out is not None:
        write_results(results, out, predictor.classes)
    for r in results:
        if as_json:
            typer.echo(json.dumps(r))
        elif "error" in r:
            typer.echo(f"{r['image']}: skipped ({r['error']})")
        else:
            how = "" if "zoomed" not in r else ("  [zoomed]" if r["zoomed"] else "  [glance only]")
            typer.echo(f"{r['image']}: " + ", ".join(f"{c} {p:.1%}" for c, p in r["top"]) + how)
    if out is not None:
        typer.echo(f"wrote {len(results)} result(s) to {out}", err=True)


@app.command()
@_says_where_it_stopped
def visualize(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(Path("viz"), help="Output folder."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    threshold: str = typer.Option("run", help=THRESHOLD_HELP),
):
    """One picture per image: the input, where the method looked, and its top predictions; plus gallery.html."""
    from .predict import expand_images
    from .viz import visualize as run_viz

    written = run_viz(checkpoint, expand_images(images), out, device=device, threshold=_threshold(threshold))
    typer.echo(f"wrote {len(written)} picture(s) to {out}; all of them in {out / 'gallery.html'}")


@app.command()
@_says_where_it_stopped
def export(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    out: Optional[Path] = typer.Option(None, help="Output file (default: beside the checkpoint)."),
    format: str = typer.Option("onnx", "--format", help="onnx, torchscript or exported_program."),
    opset: int = typer.Option(18, help="ONNX opset (>= 16; 18 writes antialiased resizes: glances smaller than "
                              "the image, transformers' position embeddings)."),
    image_size: Optional[int] = typer.Option(None, help="Input side (default: the checkpoint's)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare with PyTorch on batches of 2 and 3."),
):
    """Export a model: normalized images in, class probabilities out, dynamic batch size."""
    from .export import default_export_path, export_model

    info = export_model(checkpoint, out or default_export_path(checkpoint, format), format=format, opset=opset,
                        image_size=image_size, verify=verify)
    diff = "" if info["max_abs_diff"] is None else f", max |Δp| {info['max_abs_diff']:.1e}"
    typer.echo(f"wrote {info['path']} ({info['exporter']}{diff}) and {info['sidecar']}")
    if "adaptive" in info:
        typer.echo(f"note: {info['adaptive']['note']} (threshold {info['adaptive']['threshold']})")


@app.command()
@_says_where_it_stopped
def probe(
    data: str = typer.Argument(..., help="Dataset spec: FORMAT:PATH, a folder, or synth[:options]."),
    backbone: str = typer.Option("efficientnet_lite0", help="Any timm model name."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained",
                                    help="ImageNet weights (a probe of random features says little)."),
    weights: str = typer.Option("", help="A local state dict for the backbone instead."),
    view_size: List[int] = typer.Option([224], "--view-size", help="Glance side(s) to probe (repeatable)."),
    image_size: int = typer.Option(224, help="Side of the source each view is resized from."),
    resize_ratio: float = typer.Option(1.143, help="Resize to image_size * resize_ratio before the center crop."),
    holdout: float = typer.Option(0.1, help="Share of each class's training images the strength is chosen on."),
    split: Optional[str] = typer.Option(None, help="Split scored at the end (default test, else val)."),
    out: Optional[Path] = typer.Option(None, help="Folder for probe.json, the classifiers and the kept features "
                                                  "(default runs/probe-<backbone>)."),
    batch_size: int = typer.Option(64, help="Images per batch."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Linear probe: a logistic regression on the frozen backbone's features, its strength chosen on held-out
    training images; the floor any fine-tuning should beat."""
    from .probe import linear_probe, markdown

    if any(v < 16 for v in view_size):
        raise LookcloserError(f"--view-size must be at least 16, got {min(view_size)}")
    result = linear_probe(data, out or Path("runs") / f"probe-{backbone}", backbone=backbone, pretrained=pretrained,
                          weights=weights, view_sizes=view_size, image_size=image_size, resize_ratio=resize_ratio,
                          holdout=holdout, split=split, batch_size=batch_size, workers=workers, device=device,
                          progress=not quiet)
    typer.echo(markdown(result))


@app.command()
@_says_where_it_stopped
def models(
    backbone: Optional[str] = typer.Option(None, help="Check one timm backbone (random weights): its kind, stride "
                                                      "and channels, and which methods build and run on it."),
):
    """List the registered methods and their options, and the backbone families they run on."""
    if backbone:
        from .models import check_backbone

        r = check_backbone(backbone)
        typer.echo(f"{r['backbone']}: {r['kind']}, stride {r['stride']}, {r['channels']} channels "
                   f"(a {r['size']} px image gives a {r['map'][1]}x{r['map'][2]} map)")
        for method, verdict in r["methods"].items():
            typer.echo(f"  {method}: {verdict}")
        return
    from .models.catalog import BACKBONE_FAMILIES, catalog  # read from the method files: no PyTorch to load

    for name, opts in catalog().items():
        typer.echo(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    typer.echo("\nbackbones: any timm model name or tag (`--backbone`); check one with `lookcloser models "
               "--backbone NAME`")
    for family, methods in BACKBONE_FAMILIES:
        typer.echo(f"  {family}: {methods}")


@data_app.command("synth")
@_says_where_it_stopped
def data_synth(
    out: Path = typer.Option(..., help="Folder to write train/<class>/ and test/<class>/ into."),
    classes: int = typer.Option(8, help="Number of classes (2-24)."),
    train: int = typer.Option(40, help="Training images per class."),
    test: int = typer.Option(20, help="Test images per class."),
    size: int = typer.Option(128, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same images."),
):
    """Write the built-in synthetic fine-grained data set as class folders."""
    from .data import write_synth

    write_synth(out, classes=classes, train=train, test=test, size=size, seed=seed)
    typer.echo(f"wrote {(train + test) * classes} images in {classes} classes to {out}")


@data_app.command("scenes")
@_says_where_it_stopped
def data_scenes(
    objects: str = typer.Argument(..., help="Data spec of the object crops (e.g. cub:../data/cub100): their classes "
                                           "and train/test split are kept."),
    backgrounds: str = typer.Argument(..., help="Data spec of the background photographs (train objects go onto its "
                                               "train split, test objects onto its test split)."),
    out: Path = typer.Option(..., help="Folder to write the scenes into, in CUB-200-2011's format with "
                                       "bounding_boxes.txt (new, empty, or an earlier build)."),
    canvas: int = typer.Option(448, help="Side of every scene in pixels."),
    scale: str = typer.Option("0.36,0.51", help="LOW,HIGH: the object's side as a share of the canvas, drawn "
                                                "uniformly (never enlarged beyond its own side)."),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same scenes."),
    quality: int = typer.Option(95, help="JPEG quality (0: lossless PNG)."),
    workers: int = typer.Option(2, help="Processes building scenes in parallel (the output does not depend on it)."),
    limit: int = typer.Option(0, help="Only the first N objects of each split (0: all)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Place each object crop, at its own resolution, into a larger background photograph: the papers'
    regime (a small object in a high-resolution scene) made from tight crops."""
    from .data.scenes import SceneOptions, write_scenes

    try:
        lo, hi = (float(v) for v in scale.split(","))
    except ValueError:
        raise LookcloserError(f"--scale takes two shares LOW,HIGH such as 0.36,0.51, got {scale!r}") from None
    if workers < 1:
        raise LookcloserError(f"--workers must be at least 1, got {workers}")
    m = write_scenes(objects, backgrounds, out, options=SceneOptions(canvas=canvas, scale=(lo, hi), seed=seed,
                                                                      quality=quality),
                     workers=workers, progress=not quiet, limit=limit)
    typer.echo(f"wrote {m['images']['train']} train / {m['images']['test']} test scenes of {m['classes']} classes "
               f"({canvas} px) to {out}; read them as cub:{out}")


@data_app.command("shard")
@_says_where_it_stopped
def data_shard(
    spec: str = typer.Argument(..., help="Dataset spec to write as shards: FORMAT:PATH, a folder, hf:..., synth."),
    out: Path = typer.Option(..., help="Folder for SPLIT-NNNNN.tar shards and info.json (new, empty, or an "
                                       "earlier shard set)."),
    shard_size: int = typer.Option(1000, help="Images per shard."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated splits (default: train and whichever of val "
                                                    "and test the data set has)."),
    seed: int = typer.Option(0, help="Seed of the order the images are written in (every shard mixes classes)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Write a data set as WebDataset tar shards that `--data wds:DIR` streams (images as stored, class index,
    position), for sets past one disk or page cache and multi-node training."""
    from .data.shardwriter import write_shards

    info = write_shards(spec, out, shard_size=shard_size, splits=splits.split(",") if splits else None, seed=seed,
                        progress=not quiet)
    for split, s in info["splits"].items():
        typer.echo(f"{split}: {s['images']} images in {len(s['shards'])} shard(s)")
    typer.echo(f"wrote {out}; train on it with --data wds:{out}")


@data_app.command("info")
@_says_where_it_stopped
def data_info(spec: str = typer.Argument(..., help="Dataset spec: FORMAT:PATH, a folder, or synth[:options].")):
    """Show the format, splits, image and class counts of a data set."""
    from .data import read_counts

    fmt, counts = read_counts(spec)
    typer.echo(f"format: {fmt}")
    for split, c in counts.items():
        typer.echo(f"  {split}: " + (f"unavailable ({c})" if isinstance(c, str) else f"{c[0]} images, {c[1]} classes"))


@app.command()
@_says_where_it_stopped
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder to write into (the next free name if it is taken)."),
    method: str = typer.Option("tasn", help="The attention method to show beside the baseline (TASN: the largest "
                                             "lead on held-out images of the demo's set)."),
    epochs: int = typer.Option(5, help="Training epochs of each model."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """The main job on the built-in default: baseline against an attention method on synthetic data."""
    from .demo import run_demo

    run_demo(out, method=method, epochs=epochs, progress=not quiet, echo=typer.echo)


@bench_app.command("accuracy")
@_says_where_it_stopped
@config_options("data", "model", "train", exclude=("model.method", "model.options", "train.seed"))
def bench_accuracy(
    methods: str = typer.Option("baseline,tasn,wsban,wsdan,rra",
                                help="Comma-separated method names; LABEL=METHOD names an arm, so one method can "
                                     "run twice with different options (-o LABEL.key=value)."),
    seeds: int = typer.Option(3, help="Seeds per method (the train seed, then the next ones)."),
    first_seed: Optional[int] = typer.Option(None, help="The first seed (default: the recipe's train seed, 0); "
                                                        "--first-seed 2 --seeds 1 trains seed 2 alone."),
    out: Path = typer.Option(Path("benchmarks/results/accuracy"), help="Output folder."),
    config: Optional[Path] = typer.Option(None, help="YAML recipe for the shared budget; flags override it."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o",
                                               help="Per-method option METHOD.key=value (or LABEL.key=value), or "
                                                    "key=value for every method that has it (repeatable)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    overrides: dict = None,
):
    """Train and evaluate each method at the same budget; write results.json and results.md.

    The shared budget starts from pretrained EfficientNet-Lite0 on the synthetic set, then the recipe,
    then the flags given.
    """
    from .benchmark import accuracy_benchmark, markdown_table, parse_arms
    from .config import RunConfig

    arms = parse_arms(methods)
    if seeds < 1:
        raise LookcloserError(f"--seeds must be at least 1, got {seeds}")
    base = RunConfig.load(config) if config else RunConfig().merged(
        {"model": {"backbone": "efficientnet_lite0", "pretrained": True}})
    base = base.merged(overrides)
    if first_seed is not None:
        base = base.merged({"train": {"seed": first_seed}})
    result = accuracy_benchmark(base, arms, seeds, out, progress=not quiet,
                                method_options=_per_method(option, list(arms), arms),
                                command="lookcloser " + " ".join(sys.argv[1:]))
    typer.echo(markdown_table(result))


@bench_app.command("speed")
@_says_where_it_stopped
def bench_speed(
    methods: str = typer.Option("baseline,tasn,wsban,wsdan,rra",
                                help="Comma-separated method names; baseline is always included as the reference."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone shared by every method (random weights)."),
    num_classes: int = typer.Option(200, help="Classifier size."),
    image_size: int = typer.Option(224, help="Input side in pixels."),
    batch_size: int = typer.Option(32, help="Images per training and inference step."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16",
                                        help="bfloat16 autocast (default: on with CUDA, off on CPU)."),
    channels_last: bool = typer.Option(False, "--channels-last/--no-channels-last",
                                       help="Channels-last memory format for model and inputs."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model."),
    warmup: int = typer.Option(5, help="Untimed steps before each phase."),
    windows: int = typer.Option(5, help="Timed windows per phase; values are medians over them."),
    steps: int = typer.Option(10, help="Steps per timed window."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o",
                                               help="Per-method option METHOD.key=value (repeatable)."),
    out: Path = typer.Option(Path("benchmarks/results/speed"), help="Folder for speed.json and speed.md."),
):
    """Training and inference images/s, batch-1 latency and peak memory per method, beside the baseline."""
    from .folders import json_with, output_folder
    from .models import check_methods
    from .speed import markdown_table, speed_benchmark

    names = check_methods(m.strip() for m in methods.split(",") if m.strip())
    output_folder(out, "benchmark speed", recognize=lambda p: json_with(p / "speed.json", "benchmark", "rows"))
    result = speed_benchmark(names, backbone=backbone, num_classes=num_classes, image_size=image_size,
                             batch_size=batch_size, device=device, bf16=bf16, channels_last=channels_last,
                             compile=compile, warmup=warmup, windows=windows, steps=steps,
                             method_options=_per_method(option), command="lookcloser " + " ".join(sys.argv[1:]))
    (out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "speed.md").write_text(table)
    typer.echo(table)


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Errors a user can cause print one line, ``error: ...``, and return 2; Ctrl-C returns 130 after saying
    where a training run stands; nothing else is caught, so a bug still shows its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("timm").setLevel(logging.WARNING)
    try:
        code = app(args=argv, prog_name="lookcloser", standalone_mode=False)  # an exit's status, or None
    except LookcloserError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt as e:
        typer.echo(f"error: {e}" if str(e) else "interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # a usage error of the command line
            ctx = getattr(e, "ctx", None)
            where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            typer.echo(f"error: {e.format_message()}{where}", err=True)
            return e.exit_code
        raise
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
