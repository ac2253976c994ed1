"""Evaluation reports: a checkpoint evaluated on a split, written as JSON, CSV, pictures and one
self-contained HTML page; and the gallery page of attention pictures.

Each page is ONE file: pictures are embedded as base64 PNG data URIs, the style sheet is inline, there is
no JavaScript and no external resource, so the file can be mailed, attached to an issue or opened offline.

The evaluation report (``report.html``, written beside ``report.json``) shows the headline metrics, the
per-class accuracy sorted worst first (a bar chart and a table), the confusion matrix, the most confused
class pairs with thumbnails of test images of the true class that were predicted as the other class, and
the training curves read from the run's ``metrics.jsonl``. The gallery (``gallery.html``) gathers the
pictures :func:`lookcloser.viz.visualize` wrote, each with its caption. The pages are Jinja2 templates in
``lookcloser/templates`` rendered with autoescaping, so every class name, path and caption is escaped.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .draw import use_agg
from .engine.evaluate import confusion_matrix

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
GALLERY_NAME = "gallery.html"
TOP_PAIRS = 10  # confused pairs listed in the report
PER_PAIR = 4  # example thumbnails per confused pair
THUMB_SIDE = 112  # pixels, longest side of an example thumbnail

# ---- embedding ---------------------------------------------------------------------------------
def png_data_uri(data: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_data_uri(image: Any, max_side: int | None = None) -> str:
    """Embed an image as a PNG data URI.

    Args:
        image: a file path, PNG bytes, a PIL image, or an H×W×3 (or H×W) array, float in [0, 1] or uint8.
        max_side: shrink so that the longest side is at most this many pixels (aspect kept).
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)) and max_side is None:
        return png_data_uri(bytes(image))
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.suffix.lower() == ".png" and max_side is None:
            return png_data_uri(path.read_bytes())  # already PNG: embed the file as it is
        from .data import load_image

        image = load_image(path)
    elif isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(a)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return png_data_uri(buf.getvalue())


def figure_data_uri(fig, dpi: int = 100) -> str:
    """Render a matplotlib figure as a PNG data URI and close it."""
    plt = use_agg()

    buf = io.BytesIO()
    # no Software tag: the file then carries no web address at all, not even inside the PNG metadata
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return png_data_uri(buf.getvalue())


# ---- what the report shows ---------------------------------------------------------------------
def per_class_order(per_class: Sequence[float | None]) -> list[int]:
    """Class indices sorted by accuracy, worst first; classes without test images come last.

    Ties keep the class order, so the order is deterministic.
    """
    present = [c for c, a in enumerate(per_class) if a is not None]
    absent = [c for c, a in enumerate(per_class) if a is None]
    return sorted(present, key=lambda c: (per_class[c], c)) + absent


def confused_pairs(confusion: np.ndarray, top: int = TOP_PAIRS) -> list[tuple[int, int, int]]:
    """The most frequent mistakes as ``(true, predicted, count)``, largest count first.

    Ties go to the larger share of the true class's images, then to the class order.
    """
    conf = np.asarray(confusion)
    support = conf.sum(1)
    t, p = np.nonzero(conf)
    pairs = [(int(a), int(b), int(conf[a, b])) for a, b in zip(t, p) if a != b]
    pairs.sort(key=lambda x: (-x[2], -x[2] / max(support[x[0]], 1), x[0], x[1]))
    return pairs[:top]


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl``, one per epoch, in epoch order.

    Lines that do not parse are skipped (a run killed mid-write leaves half a line); where an epoch appears
    twice (a resumed run that repeated it) the later record wins.
    """
    path = Path(path)
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            epoch = int(rec["epoch"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s line %d is not a metrics record; skipped", path, n)
            continue
        by_epoch[epoch] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect_examples(dataset, probs, labels, *, skipped: Iterable[str] = (), top: int = TOP_PAIRS,
                     per_pair: int = PER_PAIR, side: int = THUMB_SIDE) -> dict[tuple[int, int], list]:
    """Thumbnails of the test images behind the most confused class pairs.

    The predictions must come from an unshuffled pass over ``dataset`` (as
    :func:`lookcloser.engine.evaluate.predict_loader` makes), minus the unreadable images it reported.

    Args:
        dataset: the evaluated :class:`lookcloser.data.ImageDataset` (``samples`` and ``load``).
        probs: N×K class probabilities.
        labels: N true labels.
        skipped: paths of the images the pass skipped.
        top: pairs to collect (the same ones :func:`confused_pairs` lists).
        per_pair: thumbnails per pair.
        side: longest side of a thumbnail in pixels.

    Returns:
        ``{(true, predicted): [(caption, PIL thumbnail), ...]}``, the caption being the image's file name
        and the predicted class's probability.
    """
    import torch

    probs = torch.as_tensor(probs).float()
    labels = torch.as_tensor(labels).long()
    bad = set(map(str, skipped))
    kept = [i for i, (p, _) in enumerate(dataset.samples) if p not in bad]
    if len(kept) != len(labels) or any(dataset.samples[i][1] != y for i, y in zip(kept, labels.tolist())):
        log.warning("the predictions do not line up with the data set's images; no example images in the report")
        return {}
    if len(labels) == 0:
        return {}
    pred = probs.topk(1, dim=1).indices[:, 0]  # as compute_metrics, so the pairs are the ones it counted
    conf = confusion_matrix(labels, pred, probs.shape[1])
    examples: dict[tuple[int, int], list] = {}
    for t, p, _ in confused_pairs(conf, top):
        rows = torch.nonzero((labels == t) & (pred == p)).flatten().tolist()
        # the most confident mistakes first: they say most about the confusion
        rows.sort(key=lambda r: -probs[r, p].item())
        thumbs = []
        for r in rows:
            if len(thumbs) == per_pair:
                break
            i = kept[r]
            try:
                img = dataset.load(i)
            except Exception as e:  # noqa: BLE001 - a report must not fail on one image
                log.warning("no thumbnail for %s (%s)", dataset.samples[i][0], e)
                continue
            img.thumbnail((side, side))
            name = dataset.samples[i][0].replace("\\", "/").rsplit("/", 1)[-1]
            thumbs.append((f"{name} · {probs[r, p].item():.0%}", img))
        examples[(t, p)] = thumbs
    return examples


# ---- pictures ----------------------------------------------------------------------------------
def plot_per_class(per_class: Sequence[float | None], classes: Sequence[str], mean: float | None = None):
    """Per-class accuracy, sorted worst first, as a matplotlib figure.

    Up to 60 classes: one labelled horizontal bar per class. More: the sorted accuracy profile (the table
    beside it names the classes).
    """
    plt = use_agg()
    import matplotlib

    order = [c for c in per_class_order(per_class) if per_class[c] is not None]
    acc = np.array([per_class[c] for c in order], dtype=float)
    colors = matplotlib.colormaps["RdYlGn"](acc / 100 * 0.8 + 0.1) if len(acc) else []
    k = len(order)
    if k <= 60:
        fig, ax = plt.subplots(figsize=(9, min(max(2.2, 0.26 * k + 1.0), 18)))
        y = np.arange(k)
        ax.barh(y, acc, color=colors, edgecolor="none")
        ax.set_yticks(y, [str(classes[c]) for c in order], fontsize=8 if k <= 30 else 6)
        ax.invert_yaxis()  # worst at the top, as in the table
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
        for yy, a in zip(y, acc):
            ax.text(min(a + 1, 92), yy, f"{a:.1f}", va="center", fontsize=7)
        if mean is not None:
            ax.axvline(mean, color="#333", ls="--", lw=1)
    else:
        fig, ax = plt.subplots(figsize=(10, 3.6))
        ax.bar(np.arange(k), acc, width=1.0, color=colors, edgecolor="none")
        ax.set_xlim(-0.5, k - 0.5)
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"classes, sorted worst first ({k})")
        ax.set_ylabel("accuracy (%)")
        if mean is not None:
            ax.axhline(mean, color="#333", ls="--", lw=1)
    # the mean goes in the title: a legend box would hide the bars of the best classes
    ax.set_title("per-class accuracy" + (f" (dashed: mean per-class {mean:.1f}%)" if mean is not None else ""))
    fig.tight_layout()
    return fig


def plot_training_curves(records: Sequence[Mapping[str, Any]]):
    """Loss, accuracy and learning rate per epoch from ``metrics.jsonl`` records (None without records)."""
    if not records:
        return None
    plt = use_agg()

    def series(key):
        pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    has_lr = any("lr" in r for r in records)
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(13 if has_lr else 10, 3.6))
    ax = axes[0]
    ax.plot(*series("train_loss"), marker="o", ms=3, label="train loss")
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax = axes[1]
    split = next((r["eval_split"] for r in records if r.get("eval_split")), "eval")
    for key, label in (("train_top1", "train top-1"), ("eval_top1", f"{split} top-1"),
                       ("eval_mean_per_class", f"{split} mean per-class")):
        x, y = series(key)
        if x:
            ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_title("accuracy (%)")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    if has_lr:
        ax = axes[2]
        ax.plot(*series("lr"), marker="o", ms=3, color="gray")
        ax.set_title("learning rate (end of epoch)")
        ax.set_xlabel("epoch")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return fig


def _confusion_uri(out: Path, confusion: np.ndarray, classes: Sequence[str]) -> str:
    png = out / "confusion.png"
    if png.is_file():  # written by write_report just before: embed it rather than draw it again
        return png_data_uri(png.read_bytes())
    buf = io.BytesIO()
    plot_confusion(np.asarray(confusion), list(classes), buf)
    return png_data_uri(buf.getvalue())


def plot_confusion(conf: np.ndarray, classes: list[str], path) -> None:
    """A row-normalized confusion-matrix picture (class names shown up to 40 classes) at ``path`` (a file
    path or a binary file object)."""
    plt = use_agg()
    k = len(classes)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    side = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 16:
            for i in range(k):
                for j in range(k):
                    if conf[i, j]:
                        ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalized)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_report(out_dir: str | Path, metrics: dict[str, Any], classes: list[str], extra: dict | None = None) -> Path:
    """Write ``report.json``, ``confusion.csv`` and ``confusion.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = metrics["confusion"]
    report = {k: v for k, v in metrics.items() if k not in ("confusion", "per_class")}
    report["per_class"] = {c: a for c, a in zip(classes, metrics["per_class"])}
    report.update(extra or {})
    (out / "report.json").write_text(json.dumps(report, indent=2))
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, conf):
            w.writerow([c, *row.tolist()])
    plot_confusion(conf, classes, out / "confusion.png")
    return out / "report.json"


# ---- pages -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                              autoescape=True, keep_trailing_newline=True)


def _render(name: str, path: Path, **context) -> Path:
    from ._version import __version__

    path.write_text(_templates().get_template(name).render(version=__version__, **context), encoding="utf-8")
    return path


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def _thumb(item: Any) -> tuple[str, str] | None:
    """``(caption, data URI)`` of one example (a path, PIL image, array or ``(caption, image)`` pair)."""
    caption = ""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        caption, item = item
    elif isinstance(item, (str, Path)):
        caption = Path(item).name
    try:
        return caption, image_data_uri(item, max_side=THUMB_SIDE)
    except Exception as e:  # noqa: BLE001 - a missing example must not cost the whole report
        log.warning("cannot embed example image %s (%s)", caption or type(item).__name__, e)
        return None


def write_html_report(out_dir: str | Path, metrics: Mapping[str, Any], classes: Sequence[str], *,
                      run_dir: str | Path | None = None,
                      examples: Mapping[tuple[int, int], Sequence[Any]] | None = None,
                      extra: Mapping[str, Any] | None = None, title: str = "lookcloser evaluation report",
                      top_pairs: int = TOP_PAIRS) -> Path:
    """Write ``report.html``, one self-contained page, into ``out_dir``.

    Args:
        out_dir: report folder (the one holding ``report.json``; its ``confusion.png`` is reused if there).
        metrics: :func:`lookcloser.engine.evaluate.compute_metrics`'s dict (top1, top5, mean_per_class,
            per_class, confusion, n).
        classes: class names in label order.
        run_dir: the run folder; its ``metrics.jsonl`` gives the training curves.
        examples: per confused pair ``(true, predicted)`` (class indices), the images to show: file paths,
            PIL images, arrays, or ``(caption, image)`` pairs (as :func:`collect_examples` returns).
        extra: facts shown under the headline (checkpoint, data, split, method, ...).
        title: page title.
        top_pairs: confused pairs listed.

    Returns:
        The path of the page.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in classes]
    conf = np.asarray(metrics["confusion"])
    per_class = list(metrics["per_class"])
    support = conf.sum(1)
    examples = examples or {}
    n = metrics.get("n", int(support.sum()))
    subtitle = [f"{int(n)} images", f"{len(classes)} classes"]
    if extra:
        subtitle = [str(extra[k]) for k in ("method", "backbone", "split") if extra.get(k)] + subtitle
    cards = [("top-1 accuracy", _pct(metrics.get("top1"))), ("top-5 accuracy", _pct(metrics.get("top5"))),
             ("mean per-class accuracy", _pct(metrics.get("mean_per_class"))), ("images", str(n)),
             ("classes", str(len(classes)))]
    rows = []
    for rank, c in enumerate(per_class_order(per_class), 1):
        wrong = conf[c].copy()
        wrong[c] = 0
        j = int(wrong.argmax())
        a = per_class[c]
        rows.append({"rank": rank, "name": classes[c], "accuracy": _pct(a),
                     "bar": f"{a:.0f}" if a is not None else None, "correct": int(conf[c, c]),
                     "images": int(support[c]), "often": classes[j] if wrong[j] else "",
                     "often_count": int(wrong[j])})
    pairs = []
    for t, p, count in confused_pairs(conf, top_pairs):
        thumbs = [x for x in map(_thumb, examples.get((t, p), ())) if x is not None]
        pairs.append({"true": classes[t], "predicted": classes[p], "count": count, "support": int(support[t]),
                      "share": count / max(int(support[t]), 1) * 100, "thumbs": thumbs})
    records = read_metrics_log(Path(run_dir) / "metrics.jsonl") if run_dir is not None else []
    fig = plot_training_curves(records)
    facts = []
    if fig is not None:
        last = records[-1]
        facts = [f"{len(records)} epochs logged", f"last train loss {last.get('train_loss', float('nan')):.4f}"]
        best = [r["eval_top1"] for r in records if isinstance(r.get("eval_top1"), (int, float))]
        if best:
            split = next((r["eval_split"] for r in records if r.get("eval_split")), "eval")
            facts.append(f"best {split} top-1 during training {max(best):.2f}%")
    chart = (figure_data_uri(plot_per_class(per_class, classes, metrics.get("mean_per_class")))
             if any(a is not None for a in per_class) else None)
    return _render("report.html.j2", out / REPORT_NAME, title=title, subtitle=subtitle, cards=cards,
                   info=[(k.replace("_", " "), v) for k, v in (extra or {}).items()], per_class_chart=chart,
                   rows=rows, confusion_chart=_confusion_uri(out, conf, classes), pairs=pairs,
                   curves=figure_data_uri(fig) if fig is not None else None, curve_facts=facts,
                   run_dir=str(run_dir) if run_dir is not None else "")


def write_gallery(out_dir: str | Path, pictures: Sequence[str | Path], captions: Sequence[str], *,
                  title: str = "lookcloser attention pictures") -> Path:
    """Write ``gallery.html``, one self-contained page showing ``pictures`` with their captions.

    Args:
        out_dir: folder to write into (usually the one holding the pictures).
        pictures: picture files (PNG embedded as is; other formats converted to PNG).
        captions: one per picture; its first line is shown in bold (the image's file name), the other lines
            below it (the top predictions).
        title: page title.

    Returns:
        The path of the page.
    """
    if len(pictures) != len(captions):
        raise ValueError(f"{len(pictures)} pictures but {len(captions)} captions; give one caption per picture")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for pic, caption in zip(pictures, captions):
        pic = Path(pic)
        figures.append({"uri": image_data_uri(pic), "lines": str(caption).splitlines() or [pic.name],
                        "name": pic.name})
    count = f"{len(pictures)} picture{'s' if len(pictures) != 1 else ''}"
    return _render("gallery.html.j2", out / GALLERY_NAME, title=title, count=count, figures=figures)


# ---- evaluation of a checkpoint ------------------------------------------------------------------
def write_predictions(path: Path, images: Sequence[str], probs, labels, classes: Sequence[str]) -> None:
    """One row per image scored: image, true class and index, predicted class and index, its probability,
    and whether it was right (written to a temporary file and renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    best, pred = probs.max(1)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "index", "predicted", "predicted_index", "probability", "correct"])
        for image, y, j, q in zip(images, labels.tolist(), pred.tolist(), best.tolist()):
            writer.writerow([image, classes[y], y, classes[j], j, f"{q:.6f}", int(y == j)])
    tmp.replace(path)


def adaptive_table(adaptive: dict[str, Any]) -> str:
    """The zoom-only-when-unsure sweep of a report as a Markdown table, the run's threshold marked."""
    from .engine.adaptive import threshold_label

    run = adaptive.get("run_threshold", "unset")
    lines = [f"zoom only when unsure (glance {adaptive['glance_gflops']:.2f} + zoom {adaptive['zoom_gflops']:.2f} "
             "GFLOPs per image):", "",
             "| zoom when the glance's confidence is below | top-1 (%) | zoomed (%) | mean GFLOPs | images/s |",
             "|---|---|---|---|---|"]
    for r in adaptive["sweep"]:
        mark = " (the run's)" if "run_threshold" in adaptive and r["threshold"] == run else ""
        speed = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "–"
        lines.append(f"| {threshold_label(r['threshold'])}{mark} | {r['top1']:.2f} | {100 * r['zoomed']:.0f} | "
                     f"{r['gflops']:.2f} | {speed} |")
    return "\n".join(lines)


def with_object_boxes(ds, pre: dict) -> bool:
    """Add each image's object box, on the evaluation view, to the data set's per-sample extras
    (``object_box``) where the data set has a box for every image; whether it did."""
    import torch

    from .data.transforms import box_in_view

    boxes = ds.object_boxes
    if not boxes or any(path not in boxes for path, _ in ds.samples):
        return False
    model_extras = ds.extras

    def extras(index: int, original: tuple[int, int]) -> dict:
        out = dict(model_extras(index, original)) if model_extras is not None else {}
        out["object_box"] = torch.tensor(box_in_view(boxes[ds.samples[index][0]], original, pre))
        return out

    ds.extras = extras
    return True


def _adaptive_report(model, ckpt: dict, ckpt_path: Path, passed: dict, ds, dev, image_size: int, batch_size: int,
                     speed_images: int, keep: bool) -> dict[str, Any]:
    """The threshold sweep of one evaluation (with images/s where ``speed_images``), the run's threshold, and,
    on the run's held-out images (``keep``), the threshold chosen there, kept in the checkpoint."""
    import torch

    from .engine.adaptive import THRESHOLDS, as_json, kept_choice, stage_cost, sweep, time_thresholds
    from .engine.checkpoint import atomic_save, load_checkpoint_file

    cost = stage_cost(model, image_size, dev)
    rows = sweep(passed["glance_probs"], passed["probs"], passed["labels"], cost)
    if speed_images > 0:
        batches, n = [], 0
        for i in range(len(ds)):  # preloaded: the timing is the model's, not the loader's
            if n >= speed_images:
                break
            try:
                batches.append(ds[i][0])
                n += 1
            except Exception:  # an unreadable image is left out of the timing, as out of the metrics
                continue
        stacked = [torch.stack(batches[j:j + batch_size]).to(dev).contiguous(memory_format=torch.channels_last)
                   for j in range(0, len(batches), batch_size)]
        if stacked:
            speeds = time_thresholds(model, stacked, THRESHOLDS)
            for r in rows:
                r["images_per_s"] = speeds[r["threshold"]]
    report = {**cost, "sweep": as_json(rows), "timed_images": min(speed_images, len(ds))}
    if keep:
        full = load_checkpoint_file(ckpt_path)
        full["adaptive"] = kept_choice(rows, cost, ds.name, len(passed["labels"]))
        atomic_save(full, ckpt_path)
        ckpt["adaptive"] = full["adaptive"]
    if ckpt.get("adaptive"):
        t = ckpt["adaptive"]["threshold"]
        report["run_threshold"] = t
        report["at_run_threshold"] = sweep(passed["glance_probs"], passed["probs"], passed["labels"], cost, [t])[0]
    return report


def _keep_eval_theta(model, ckpt: dict, ckpt_path: Path, ds, dev, batch_size: int, workers: int,
                     amp: bool) -> None:
    """WS-BAN/WS-DAN's test crop threshold chosen on the run's held-out images ``ds``
    (:func:`~lookcloser.engine.adaptive.choose_eval_theta`), as a run that holds out images does at its end:
    written into the checkpoint's build arguments (atomically) and set on ``model``."""
    from .engine.adaptive import choose_eval_theta
    from .engine.checkpoint import atomic_save, load_checkpoint_file

    theta = choose_eval_theta(model, ds, dev, batch_size=batch_size, workers=workers, amp=amp)
    full = load_checkpoint_file(ckpt_path)
    full["eval_theta_choice"] = theta
    full["build_args"] = {**full["build_args"], "eval_theta": theta["eval_theta"]}
    atomic_save(full, ckpt_path)
    ckpt["eval_theta_choice"], ckpt["build_args"] = theta, full["build_args"]
    model.eval_theta = theta["eval_theta"]
    log.info("%s: test crop threshold %g (chosen on %d images of %s: top-1 %.2f%% against %.2f%% at %g)",
             ckpt_path.name, theta["eval_theta"], theta["images"], theta["chosen_on"], theta["top1"],
             theta["top1_was"], theta["was"])


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, *, split: str | None = None,
                        out: str | Path | None = None, tta_flip: bool = False, batch_size: int = 64,
                        workers: int = 2, device: str = "auto", progress: bool = True,
                        bf16: bool | None = None, speed_images: int = 64) -> dict[str, Any]:
    """Evaluate a trained model on a split and write its report.

    For a method that looks closer (a glance and a zoom) the report adds the sweep of zoom-only-when-unsure
    thresholds (:mod:`lookcloser.engine.adaptive`): per threshold, top-1, the share zoomed, mean GFLOPs
    and images/s (timed on the first ``speed_images`` images, preloaded; 0: not timed), and the run's own
    threshold where its checkpoint keeps one. On the run's held-out images (``split="holdout"``) the
    threshold is chosen there and kept in the checkpoint (and, for a WS-BAN/WS-DAN run trained before runs
    chose it, first its test crop threshold). Where the data set has object boxes it adds the pointing game
    and the zoom's IoU with them.

    Args:
        checkpoint: a run folder or checkpoint file.
        data: dataset spec; defaults to the one the run was trained on.
        split: defaults to test (val where there is no test).
        out: report folder; defaults to ``<run>/eval-<split>``.
        tta_flip: average the probabilities of the image and its mirror.
        bf16: bfloat16 autocast; None: on CUDA and on CPUs that compute bfloat16 natively.

    Returns:
        The metrics (confusion matrix included).
    """
    import torch

    from .data import eval_split, eval_transform, open_dataset
    from .errors import LookcloserError

    if batch_size < 1 or workers < 0:
        raise LookcloserError(f"--batch-size must be at least 1 and --workers at least 0, got {batch_size} and {workers}")
    from .engine.checkpoint import load_checkpoint, resolve_checkpoint
    from .engine.distributed import resolve_device
    from .engine.adaptive import localization, look_closer_pass
    from .engine.evaluate import check_classes, compute_metrics, make_loader, predict_loader, use_bf16
    from .folders import json_with, output_folder

    model, ckpt = load_checkpoint(checkpoint)
    data = data or ckpt["config"]["data"]["data"]
    split = split or eval_split(data)
    pre = ckpt["preprocess"]
    # the run's held-out share: its holdout split is the images it did not train on
    trained_data = ckpt["config"]["data"]
    held = trained_data.get("holdout", 0.0) if data == trained_data["data"] else 0.0
    ds = open_dataset(data, split, eval_transform(pre), holdout=held)
    check_classes(ds.classes, ckpt["classes"], data)
    inputs = model.sample_inputs(ds, pre)
    if inputs is not None:
        ds.extras = inputs.per_sample
    boxed = with_object_boxes(ds, pre)
    dev = resolve_device(device)
    model.to(dev, memory_format=torch.channels_last)
    ckpt_path = resolve_checkpoint(checkpoint)
    if split == "holdout" and held > 0 and hasattr(model, "eval_theta") and "eval_theta_choice" not in ckpt:
        # a run trained before runs chose their test crop threshold: chosen now, on the same held-out images
        _keep_eval_theta(model, ckpt, ckpt_path, ds, dev, batch_size, workers, use_bf16(dev, bf16))
    out = output_folder(Path(out) if out else resolve_checkpoint(checkpoint).parent / f"eval-{split}", "evaluate",
                        recognize=lambda p: json_with(p / "report.json", "top1", "split", "checkpoint"))
    loader = make_loader(ds, batch_size, workers, pin=dev.type == "cuda")
    amp = use_bf16(dev, bf16)
    passed = None
    if (model.looks_closer or boxed) and not tta_flip:  # one pass that keeps the glance and the boxes too
        passed = look_closer_pass(model, loader, dev, amp=amp, progress=progress, channels_last=True)
        probs, labels, bad = passed["probs"], passed["labels"], passed["skipped"]
    else:
        probs, labels, bad = predict_loader(model, loader, dev, tta_flip=tta_flip, amp=amp, progress=progress,
                                            channels_last=True)
    for p in bad:
        log.warning("skipped unreadable image %s: %s", p, getattr(p, "reason", "unreadable"))
    if len(labels) == 0:
        raise LookcloserError(f"no image of the {split} split of {data} could be read ({len(bad)} unreadable); "
                              "check the data folder")
    metrics = compute_metrics(probs, labels, len(ds.classes))
    unreadable = {str(b) for b in bad}
    read = [path for path, _ in ds.samples if path not in unreadable]  # the order of probs
    try:
        write_predictions(out / "predictions.csv", read, probs, labels, ds.classes)
    except OSError as e:
        raise LookcloserError(f"cannot write the report into {out} ({e.strerror or e}); choose a writable --out") from e
    info = {"checkpoint": str(ckpt_path), "data": data, "split": split, "tta_flip": tta_flip,
            "method": ckpt["method"], "backbone": ckpt["build_args"].get("backbone"), "skipped_images": len(bad),
            "image_size": pre["image_size"], "device": str(dev), "bf16": amp}
    if hasattr(model, "eval_theta"):  # the test-time crop threshold it was scored at
        info["eval_theta"] = float(model.eval_theta)
    if passed is not None and "object_boxes" in passed:
        info["localization"] = localization(passed.get("peaks"), passed.get("zoom_boxes"), passed["object_boxes"])
    if passed is not None and model.looks_closer:
        info["adaptive"] = _adaptive_report(model, ckpt, ckpt_path, passed, ds, dev, int(pre["image_size"]),
                                            batch_size, speed_images, keep=split == "holdout" and held > 0)
    try:
        write_report(out, metrics, ds.classes, extra=info)
    except OSError as e:
        raise LookcloserError(f"cannot write the report into {out} ({e.strerror or e}); choose a writable --out") from e
    html = write_html_report(out, metrics, ds.classes, run_dir=ckpt_path.parent, extra=info,
                             examples=collect_examples(ds, probs, labels, skipped=bad))
    metrics["out"] = str(out)
    metrics["html"] = str(html)
    return metrics
