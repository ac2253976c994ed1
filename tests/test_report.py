"""The self-contained HTML pages: evaluation report and picture gallery."""

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from lookcloser.engine.evaluate import compute_metrics
from lookcloser.report import (
    collect_examples,
    confused_pairs,
    per_class_order,
    plot_per_class,
    read_metrics_log,
    write_gallery,
    write_html_report,
)

from tests.conftest import TINY_BACKBONE, TINY_SYNTH

CLASSES = ["alpha", "beta & <gamma>", "delta", "epsilon"]
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _labels_preds():
    # alpha 8/10 (2 -> beta), beta 5/10 (1 -> alpha, 4 -> delta), delta 6/6, epsilon has no test image
    pairs = [(0, 0)] * 8 + [(0, 1)] * 2 + [(1, 1)] * 5 + [(1, 0)] + [(1, 2)] * 4 + [(2, 2)] * 6
    labels = torch.tensor([t for t, _ in pairs])
    preds = torch.tensor([p for _, p in pairs])
    probs = torch.full((len(pairs), 4), 0.1)
    probs[torch.arange(len(pairs)), preds] = 0.7
    return probs, labels


@pytest.fixture
def metrics():
    probs, labels = _labels_preds()
    return compute_metrics(probs, labels, len(CLASSES))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"epoch": 1, "train_loss": 1.9, "train_top1": 30.0, "lr": 0.05},
            {"epoch": 2, "train_loss": 1.2, "train_top1": 55.0, "lr": 0.03, "eval_split": "test",
             "eval_top1": 60.0, "eval_mean_per_class": 58.0},
            {"epoch": 3, "train_loss": 0.7, "train_top1": 80.0, "lr": 0.01, "eval_split": "test",
             "eval_top1": 73.08, "eval_mean_per_class": 76.67}]
    lines = [json.dumps(r) for r in recs]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _pngs(text):
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in DATA_URI.findall(text)]


def _assert_self_contained(text):
    stripped = DATA_URI.sub("data:", text)
    assert "http://" not in stripped and "https://" not in stripped
    assert "<script" not in stripped.lower() and "url(" not in stripped and "@import" not in stripped
    assert "<link" not in stripped.lower()
    for attr, value in re.findall(r"\b(src|href)\s*=\s*\"([^\"]*)\"", text):
        if attr == "src":
            assert value.startswith("data:image/png;base64,"), value[:60]
        else:
            assert value.startswith("#"), value


def test_metric_helpers(metrics):
    assert metrics["per_class"] == [80.0, 50.0, 100.0, None]
    assert per_class_order(metrics["per_class"]) == [1, 0, 2, 3]
    assert per_class_order([50.0, None, 50.0, 10.0]) == [3, 0, 2, 1]
    assert confused_pairs(metrics["confusion"]) == [(1, 2, 4), (0, 1, 2), (1, 0, 1)]
    assert confused_pairs(metrics["confusion"], top=1) == [(1, 2, 4)]
    # a tie in count goes to the larger share of the true class
    conf = np.array([[10, 2, 0], [0, 2, 2], [0, 0, 1]])
    assert confused_pairs(conf) == [(1, 2, 2), (0, 1, 2)]


def test_read_metrics_log_skips_bad_lines_and_keeps_last_repeat(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_loss": 1.5}\nnot json\n'
                 '{"epoch": 2, "train_loss": 1.4}\n\n{"epoch": 3, "train_lo')
    recs = read_metrics_log(p)
    assert [r["epoch"] for r in recs] == [1, 2]
    assert recs[1]["train_loss"] == 1.4
    assert read_metrics_log(tmp_path / "missing.jsonl") == []


def test_html_report_content(metrics, run_dir, tmp_path):
    thumb_file = tmp_path / "bird_0007.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(thumb_file)
    examples = {(1, 2): [Image.new("RGB", (64, 48), (0, 128, 0)),
                         ("b<1>.jpg · 70%", np.full((40, 40, 3), 0.5)),
                         thumb_file]}
    extra = {"method": "baseline", "backbone": "test_efficientnet", "split": "test",
             "checkpoint": "/runs/a&b/best.pt"}
    out = tmp_path / "eval"
    path = write_html_report(out, metrics, CLASSES, run_dir=run_dir, examples=examples, extra=extra)
    assert path == out / "report.html"
    text = path.read_text(encoding="utf-8")

    # headline numbers: 19 of 26 correct; mean of 80, 50, 100; all within the top 4 of 4 classes
    assert "73.08%" in text and "76.67%" in text and "100.00%" in text
    assert re.search(r">26</div><div class=\"label\">images<", text)

    # class names and paths escaped
    assert "<gamma>" not in text and "beta &amp; &lt;gamma&gt;" in text
    assert "/runs/a&amp;b/best.pt" in text and "b&lt;1&gt;.jpg" in text

    # per-class table sorted worst first, classes without images last
    table = text.split("<table class=\"per-class\">", 1)[1].split("</table>", 1)[0]
    names = re.findall(r"<tr><td class=\"num\">\d+</td><td>([^<]*)</td>", table)
    assert names == ["beta &amp; &lt;gamma&gt;", "alpha", "delta", "epsilon"]
    assert "50.00%" in table and "80.00%" in table

    # the most confused pair comes first, with its count and its thumbnails
    pairs = text.split("id=\"confused-pairs\"", 1)[1].split("</section>", 1)[0]
    heads = re.findall(r"<h3>(.*?)</h3>", pairs)
    assert heads[0] == "beta &amp; &lt;gamma&gt; &rarr; predicted as delta"
    assert heads[1] == "alpha &rarr; predicted as beta &amp; &lt;gamma&gt;"
    assert "4 of 10 images" in pairs
    first = pairs.split("<div class=\"pair\">")[1]
    assert len(DATA_URI.findall(first)) == 3 and "bird_0007.png" in first

    # pictures: per-class chart, confusion matrix, training curves, 3 thumbnails; all valid PNGs
    pngs = _pngs(text)
    assert len(pngs) == 6
    for im in pngs:
        im.load()
        assert im.format == "PNG" and min(im.size) > 10
    thumbs = _pngs(first)
    assert all(max(im.size) <= 112 for im in thumbs)
    assert "training curves" in text and "3 epochs logged" in text
    assert "best test top-1 during training 73.08%" in text
    _assert_self_contained(text)


def test_html_report_without_run_log_or_mistakes(tmp_path):
    probs = torch.eye(3)
    m = compute_metrics(probs, torch.arange(3), 3)
    text = write_html_report(tmp_path, m, ["a", "b", "c"]).read_text()
    assert "No mistakes" in text and "No training log" in text
    assert len(_pngs(text)) == 2  # per-class chart and confusion matrix (drawn here: no confusion.png)
    _assert_self_contained(text)


def test_per_class_chart_for_many_classes():
    acc = [float(i % 101) for i in range(80)] + [None]
    fig = plot_per_class(acc, [f"c{i}" for i in range(81)], mean=50.0)
    assert len(fig.axes[0].patches) == 80
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_separate_labels_moves_only_what_overlaps():
    from lookcloser.draw import separate_labels, use_agg

    plt = use_agg()
    fig, (ax, other) = plt.subplots(1, 2, figsize=(6, 3))
    kw = dict(textcoords="offset points", xytext=(6, 4), fontsize=8)
    stacked = [ax.annotate(f"label {i}", (0.5, 0.5), **kw) for i in range(3)]
    alone = other.annotate("label 0", (0.5, 0.5), **kw)  # same place, other axes: never moved
    far = ax.annotate("far away", (0.1, 0.1), **kw)
    labels = [*stacked, alone, far]
    before = {id(label): label.xyann for label in labels}
    assert separate_labels(fig, labels) >= 2
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in stacked]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    assert stacked[0].xyann == before[id(stacked[0])]  # the top one keeps its place
    assert alone.xyann == before[id(alone)] and far.xyann == before[id(far)]
    assert sorted(label.xyann[1] for label in stacked) != [4, 4, 4]
    assert separate_labels(fig, labels) == 0  # nothing left to move
    plt.close(fig)


class _FakeDataset:
    """Images whose red channel encodes the sample index, so a thumbnail tells which image it came from."""

    def __init__(self, labels):
        self.samples = [(f"/data/img_{i:02d}.jpg", int(y)) for i, y in enumerate(labels)]

    def load(self, index):
        if index == 3:
            raise OSError("truncated")
        return Image.new("RGB", (200, 100), (index, 0, 0))


def test_collect_examples_picks_the_right_images():
    # labels of 8 images; image 5 is unreadable and was skipped by the prediction pass
    labels_all = [0, 0, 0, 0, 1, 1, 1, 0]
    ds = _FakeDataset(labels_all)
    kept = [0, 1, 2, 3, 4, 6, 7]
    labels = torch.tensor([labels_all[i] for i in kept])
    # predicted: images 1, 3, 7 (class 0) as 1 with confidences .6/.9/.8, image 6 (class 1) as 0
    probs = torch.tensor([[.9, .1], [.4, .6], [.8, .2], [.1, .9], [.3, .7], [.55, .45], [.2, .8]])
    ex = collect_examples(ds, probs, labels, skipped=["/data/img_05.jpg"], per_pair=2, side=50)
    assert list(ex) == [(0, 1), (1, 0)]
    # most confident mistakes first; image 3 cannot be read and is passed over
    got = [(cap, im.getpixel((0, 0))[0], im.size) for cap, im in ex[(0, 1)]]
    assert got == [("img_07.jpg · 80%", 7, (50, 25)), ("img_01.jpg · 60%", 1, (50, 25))]
    assert [im.getpixel((0, 0))[0] for _, im in ex[(1, 0)]] == [6]
    # predictions that do not line up with the data set give no examples rather than wrong ones
    assert collect_examples(ds, probs, labels) == {}


def test_report_from_a_real_prediction_pass(tmp_path):
    """The integration path evaluate_checkpoint takes, on the synthetic set with an untrained tiny model."""
    from lookcloser.data import build_transform, open_dataset
    from lookcloser.engine.evaluate import make_loader, predict_loader
    from lookcloser.report import write_report
    from lookcloser.models import create_model

    torch.manual_seed(0)
    model = create_model("baseline", backbone=TINY_BACKBONE, num_classes=4)
    ds = open_dataset(TINY_SYNTH, "test", build_transform(False, 32, model.mean, model.std))
    probs, labels, bad = predict_loader(model, make_loader(ds, 8, 0), torch.device("cpu"), progress=False)
    # a few confident mistakes, whatever the untrained model does
    probs = probs.roll(1, dims=1) if (probs.argmax(1) == labels).all() else probs
    m = compute_metrics(probs, labels, 4)
    write_report(tmp_path, m, ds.classes)
    ex = collect_examples(ds, probs, labels, skipped=bad)
    assert ex and all(len(v) > 0 for v in ex.values())
    text = write_html_report(tmp_path, m, ds.classes, examples=ex).read_text()
    assert len(_pngs(text)) == 2 + sum(len(v) for v in ex.values())
    assert text.count("· ") >= sum(len(v) for v in ex.values())  # each thumbnail captioned
    _assert_self_contained(text)


def _pictures(tmp_path):
    a, b = tmp_path / "000_a.png", tmp_path / "001_b&c.png"
    Image.new("RGB", (90, 60), (255, 0, 0)).save(a)
    Image.new("RGB", (60, 90), (0, 0, 255)).save(b)
    return [a, b], ["a.jpg\npredicted: sparrow 80%, wren 10%", "b&c.jpg\ntrue: <wren>   predicted: wren 95%"]


def test_gallery(tmp_path):
    pics, caps = _pictures(tmp_path)
    path = write_gallery(tmp_path, pics, caps, title="attention <pictures>")
    assert path == tmp_path / "gallery.html"
    text = path.read_text(encoding="utf-8")
    assert "<title>attention &lt;pictures&gt;</title>" in text
    assert "<b>a.jpg</b><br>predicted: sparrow 80%, wren 10%" in text
    assert "<b>b&amp;c.jpg</b><br>true: &lt;wren&gt;   predicted: wren 95%" in text
    assert "000_a.png" in text and "001_b&amp;c.png" in text
    pngs = _pngs(text)
    assert [im.size for im in pngs] == [(90, 60), (60, 90)]  # embedded as they are, in order
    assert text.index("a.jpg") < text.index("b&amp;c.jpg")
    _assert_self_contained(text)
    with pytest.raises(ValueError, match="one caption per picture"):
        write_gallery(tmp_path, pics, caps[:1])


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine to render the HTML report")
def test_report_renders_in_headless_chromium(metrics, run_dir, tmp_path):
    examples = {(1, 2): [Image.new("RGB", (64, 48), (0, 128, 0))]}
    page = write_html_report(tmp_path / "eval", metrics, CLASSES, run_dir=run_dir, examples=examples)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
           page.resolve().as_uri()]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 120 s on this machine")
    assert shot.is_file(), f"no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 1600)
    colors = im.getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "the screenshot is blank"
    # the headline cards (light grey) and dark text are there, not just the white page
    a = np.asarray(im)
    assert (a.sum(2) < 200).mean() > 0.001 and (a == 255).all(2).mean() < 0.98


def test_top1_takes_the_first_of_tied_classes_as_the_zoom_sweep_does():
    """A row of equal probabilities predicts class 0 (argmax's first maximum) in the metrics and in the
    zoom-only-when-unsure sweep alike, so always zooming scores exactly the report's top-1."""
    import torch

    from lookcloser.engine.adaptive import sweep

    probs = torch.full((4, 200), 1 / 200)
    probs[1] = torch.nn.functional.one_hot(torch.tensor(7), 200).float()
    labels = torch.tensor([0, 7, 3, 0])
    m = compute_metrics(probs, labels, 200)
    assert m["top1"] == 75.0 and m["confusion"][3, 0] == 1  # the equal rows all predict class 0
    always = sweep(probs, probs, labels, {"glance_gflops": 1.0, "zoom_gflops": 1.0}, [None])[0]
    assert always["top1"] == m["top1"]
