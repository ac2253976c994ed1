"""Self-contained HTML pages: the evaluation report and the gallery of attention pictures.

Each page is ONE file: pictures are embedded as base64 PNG data URIs, the style sheet is inline, there is
no JavaScript and no external resource, so the file can be mailed, attached to an issue or opened offline.

The evaluation report (``report.html``, written beside ``report.json``) shows the headline metrics, the
per-class accuracy sorted worst first (a bar chart and a table), the confusion matrix, the most confused
class pairs with thumbnails of test images of the true class that were predicted as the other class, and
the training curves read from the run's ``metrics.jsonl``. The gallery (``gallery.html``) gathers the
pictures :func:`lookcloser.viz.visualize` wrote, each with its caption.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
GALLERY_NAME = "gallery.html"
TOP_PAIRS = 10  # confused pairs listed in the report
PER_PAIR = 4  # example thumbnails per confused pair
THUMB_SIDE = 112  # pixels, longest side of an example thumbnail

_CSS = """
:root { --fg: #1d232b; --muted: #5f6b7a; --line: #dde2e8; --card: #f5f7fa; --accent: #2f6fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.sub, .muted { color: var(--muted); }
nav { margin: 14px 0 4px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 18px;
        min-width: 150px; }
.card .value { font-size: 26px; font-weight: 650; }
.card .label { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--card); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.info td:first-child { color: var(--muted); }
img.plot { display: block; max-width: 100%; height: auto; margin: 8px 0; border: 1px solid var(--line); }
td.barcell { width: 112px; padding-left: 0; }
.bar { display: inline-block; height: 10px; background: var(--accent); vertical-align: middle; }
.pair { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; margin: 10px 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 6px; }
.thumbs figure { margin: 0; text-align: center; font-size: 11px; color: var(--muted); max-width: 130px;
                 overflow-wrap: anywhere; }
/* a fixed height: small test images (synthetic ones are 48 px) are enlarged to a readable size */
.thumbs img { display: block; height: 96px; width: auto; max-width: 130px; object-fit: contain;
              margin: 0 auto 2px; border: 1px solid var(--line); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 18px; }
.gallery figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff; }
.gallery img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
.gallery figcaption { margin-top: 6px; font-size: 13px; overflow-wrap: anywhere; }
.gallery figcaption b { font-size: 14px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


# ---- embedding ---------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


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
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # no Software tag: the file then carries no web address at all, not even inside the PNG metadata
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return png_data_uri(buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    k = probs.shape[1]
    pred = probs.topk(1, dim=1).indices[:, 0]  # as compute_metrics, so the pairs are the ones it counted
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (labels.numpy(), pred.numpy()), 1)
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
    plt = _pyplot()
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
    plt = _pyplot()

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
    from .engine.evaluate import plot_confusion

    buf = io.BytesIO()
    plot_confusion(np.asarray(confusion), list(classes), buf)
    return png_data_uri(buf.getvalue())


# ---- pages -------------------------------------------------------------------------------------
def _page(title: str, body: str) -> str:
    from . import __version__

    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
            f"<footer>written by lookcloser {_e(__version__)}; a single self-contained file.</footer>\n"
            "</main>\n</body>\n</html>\n")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def _thumb_html(item: Any) -> str:
    caption = ""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        caption, item = item
    elif isinstance(item, (str, Path)):
        caption = Path(item).name
    try:
        uri = image_data_uri(item, max_side=THUMB_SIDE)
    except Exception as e:  # noqa: BLE001 - a missing example must not cost the whole report
        log.warning("cannot embed example image %s (%s)", caption or type(item).__name__, e)
        return ""
    return (f"<figure><img src=\"{uri}\" alt=\"{_e(caption or 'example')}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


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
    parts = [f"<h1>{_e(title)}</h1>"]
    sub = [f"{int(metrics.get('n', support.sum()))} images", f"{len(classes)} classes"]
    if extra:
        sub = [str(extra[k]) for k in ("method", "backbone", "split") if extra.get(k)] + sub
    parts.append(f"<p class=\"sub\">{' · '.join(_e(s) for s in sub)}</p>")
    parts.append("<nav><a href=\"#per-class\">per-class accuracy</a><a href=\"#confusion\">confusion matrix</a>"
                 "<a href=\"#confused-pairs\">most confused pairs</a><a href=\"#training\">training curves</a></nav>")

    # headline
    cards = [("top-1 accuracy", _pct(metrics.get("top1"))), ("top-5 accuracy", _pct(metrics.get("top5"))),
             ("mean per-class accuracy", _pct(metrics.get("mean_per_class"))),
             ("images", str(metrics.get("n", int(support.sum())))), ("classes", str(len(classes)))]
    parts.append("<section id=\"summary\"><div class=\"cards\">" + "".join(
        f"<div class=\"card\"><div class=\"value\">{_e(v)}</div><div class=\"label\">{_e(k)}</div></div>"
        for k, v in cards) + "</div>")
    if extra:
        parts.append("<table class=\"info\">" + "".join(
            f"<tr><td>{_e(k.replace('_', ' '))}</td><td>{_e(v)}</td></tr>" for k, v in extra.items()) + "</table>")
    parts.append("</section>")

    # per-class accuracy
    order = per_class_order(per_class)
    parts.append("<section id=\"per-class\"><h2>Per-class accuracy</h2>"
                 "<p class=\"muted\">Sorted worst first; classes without test images come last.</p>")
    if any(a is not None for a in per_class):
        fig = plot_per_class(per_class, classes, metrics.get("mean_per_class"))
        parts.append(f"<img class=\"plot\" src=\"{figure_data_uri(fig)}\" alt=\"per-class accuracy chart\">")
    rows = []
    for rank, c in enumerate(order, 1):
        wrong = conf[c].copy()
        wrong[c] = 0
        j = int(wrong.argmax())
        often = f"{_e(classes[j])} ({int(wrong[j])})" if wrong[j] else ""
        a = per_class[c]
        bar = f"<span class=\"bar\" style=\"width:{a:.0f}px\"></span>" if a is not None else ""
        rows.append(f"<tr><td class=\"num\">{rank}</td><td>{_e(classes[c])}</td><td class=\"num\">{_pct(a)}</td>"
                    f"<td class=\"barcell\">{bar}</td><td class=\"num\">{int(conf[c, c])}</td>"
                    f"<td class=\"num\">{int(support[c])}</td><td>{often}</td></tr>")
    parts.append("<table class=\"per-class\"><thead><tr><th class=\"num\">#</th><th>class</th>"
                 "<th class=\"num\">accuracy</th><th></th><th class=\"num\">correct</th><th class=\"num\">images</th>"
                 "<th>most often predicted instead</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                 "</section>")

    # confusion matrix
    parts.append("<section id=\"confusion\"><h2>Confusion matrix</h2>"
                 f"<img class=\"plot\" src=\"{_confusion_uri(out, conf, classes)}\" alt=\"confusion matrix\">"
                 "</section>")

    # most confused pairs
    parts.append("<section id=\"confused-pairs\"><h2>Most confused pairs</h2>")
    pairs = confused_pairs(conf, top_pairs)
    if not pairs:
        parts.append("<p class=\"muted\">No mistakes: every image was predicted as its own class.</p>")
    for t, p, count in pairs:
        share = count / max(int(support[t]), 1) * 100
        items = examples.get((t, p), ())
        thumbs = "".join(_thumb_html(x) for x in items)
        parts.append(f"<div class=\"pair\"><h3>{_e(classes[t])} &rarr; predicted as {_e(classes[p])}</h3>"
                     f"<div class=\"muted\">{count} of {int(support[t])} images of {_e(classes[t])} "
                     f"({share:.1f}%)</div>"
                     + (f"<div class=\"thumbs\">{thumbs}</div>" if thumbs else "") + "</div>")
    parts.append("</section>")

    # training curves
    parts.append("<section id=\"training\"><h2>Training curves</h2>")
    records = read_metrics_log(Path(run_dir) / "metrics.jsonl") if run_dir is not None else []
    fig = plot_training_curves(records)
    if fig is None:
        where = f" in {run_dir}" if run_dir is not None else ""
        parts.append(f"<p class=\"muted\">No training log (metrics.jsonl){_e(where)}.</p>")
    else:
        parts.append(f"<img class=\"plot\" src=\"{figure_data_uri(fig)}\" alt=\"training curves\">")
        last = records[-1]
        facts = [f"{len(records)} epochs logged", f"last train loss {last.get('train_loss', float('nan')):.4f}"]
        best = [r["eval_top1"] for r in records if isinstance(r.get("eval_top1"), (int, float))]
        if best:
            split = next((r["eval_split"] for r in records if r.get("eval_split")), "eval")
            facts.append(f"best {_e(split)} top-1 during training {max(best):.2f}%")
        parts.append(f"<p class=\"muted\">{' · '.join(facts)}</p>")
    parts.append("</section>")

    path = out / REPORT_NAME
    path.write_text(_page(title, "\n".join(parts)), encoding="utf-8")
    return path


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
        lines = str(caption).splitlines() or [pic.name]
        text = f"<b>{_e(lines[0])}</b>" + "".join(f"<br>{_e(x)}" for x in lines[1:])
        figures.append(f"<figure><img src=\"{image_data_uri(pic)}\" alt=\"{_e(lines[0])}\">"
                       f"<figcaption>{text}<br><span class=\"muted\">{_e(pic.name)}</span></figcaption></figure>")
    count = f"{len(pictures)} picture{'s' if len(pictures) != 1 else ''}"
    body = (f"<h1>{_e(title)}</h1><p class=\"sub\">{count}</p>\n<div class=\"gallery\">\n" + "\n".join(figures)
            + "\n</div>")
    path = out / GALLERY_NAME
    path.write_text(_page(title, body), encoding="utf-8")
    return path
