"""RRA: patch proposals, crops, the official box format, the two-stream model and its training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import lookcloser.models.rra  # noqa: F401  registers "rra"
from lookcloser.config import RunConfig
from lookcloser.layers.proposals import (BoxFile, box_iou, convert_official_npy, crop_patches, nested_boxes,
                                         official_to_view, official_to_xyxy, peak_proposals)
from lookcloser.models import create_model
from lookcloser.models.rra import RRA, RRAOutput

from tests.conftest import TINY_BACKBONE, fit_fixed_batch, tiny_config

TINY = dict(backbone=TINY_BACKBONE, num_classes=4, patch_size=16, steps=3, hidden_size=16, output_stride=8)


def _peaked_map(centres, heights, h=16, w=16, sigma=1.0):
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    m = torch.zeros(h, w)
    for (cy, cx), a in zip(centres, heights):
        m += a * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return m


def _reference_proposals(cam, size, k, box_size, nms_iou):
    """Greedy NMS written from its definition, one image at a time, over a Python list of candidates."""
    h, w = cam.shape
    flat = cam.flatten().tolist()
    lo, hi = min(flat), max(flat)
    cands = []
    for i in range(h):
        for j in range(w):
            v = cam[i, j].item()
            nb = cam[max(0, i - 1):i + 2, max(0, j - 1):j + 2]
            peak = v >= nb.max().item()
            cy, cx = (i + 0.5) * size / h, (j + 0.5) * size / w
            s = box_size * size
            x0, y0 = min(max(cx - s / 2, 0), size - s), min(max(cy - s / 2, 0), size - s)
            cands.append(((v - lo) / (hi - lo) + (1.0 if peak else 0.0), -(i * w + j), [x0, y0, x0 + s, y0 + s]))
    cands.sort(key=lambda c: (c[0], c[1]), reverse=True)  # ties: the first position wins, as argmax
    kept = []
    for _, _, box in cands:
        if all(box_iou(torch.tensor(box), torch.tensor(b)).item() <= nms_iou for b in kept):
            kept.append(box)
        if len(kept) == k:
            break
    return torch.tensor(kept)


# ---- proposals ------------------------------------------------------------------------------

def test_proposals_centred_on_separated_peaks_inside_and_nms():
    centres = [(3, 4), (11, 12), (4, 12)]
    cam = _peaked_map(centres, [3.0, 2.0, 1.0])
    props = peak_proposals(cam[None], 64, k=3, box_size=0.25, nms_iou=0.1)
    boxes = props.boxes[0]
    assert props.valid.all()
    # best first; each box centred on its peak's cell centre ((i + 0.5) · 4 pixels)
    for box, (cy, cx) in zip(boxes, centres):
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        assert centre == pytest.approx(((cx + 0.5) * 4, (cy + 0.5) * 4))
        assert (box[2] - box[0]).item() == pytest.approx(16) and (box[3] - box[1]).item() == pytest.approx(16)
    assert (boxes >= 0).all() and (boxes <= 64).all()
    assert props.scores[0].tolist() == sorted(props.scores[0].tolist(), reverse=True)
    iou = box_iou(boxes[:, None], boxes[None])
    assert (iou[~torch.eye(3, dtype=torch.bool)] <= 0.1).all()


def test_proposals_match_a_per_image_greedy_nms_and_are_deterministic():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(3, 1, 7, 9, generator=g)
    cams[1] = cams[1] ** 4  # a different shape of map in the same batch
    props = peak_proposals(cams, (56, 56), k=5, box_size=0.3, nms_iou=0.2)
    for b in range(3):
        ref = _reference_proposals(cams[b, 0], 56, 5, 0.3, 0.2)
        n = len(ref)
        assert props.valid[b].sum().item() == n
        assert torch.allclose(props.boxes[b, :n], ref, atol=1e-4)
    again = peak_proposals(cams, (56, 56), k=5, box_size=0.3, nms_iou=0.2)
    assert torch.equal(props.boxes, again.boxes) and torch.equal(props.scores, again.scores)


def test_proposals_shift_border_boxes_inside_and_flag_empty_slots():
    cam = torch.zeros(1, 8, 8)
    cam[0, 0, 7] = 1.0  # a peak in the top-right corner
    props = peak_proposals(cam, 64, k=3, box_size=0.5, nms_iou=0.0)
    assert props.boxes[0, 0].tolist() == [32.0, 0.0, 64.0, 32.0]  # shifted inside, side kept
    # a box as large as the image overlaps every other candidate fully: one valid box, the rest flagged
    props = peak_proposals(cam, 64, k=3, box_size=1.0, nms_iou=0.5)
    assert props.valid[0].tolist() == [True, False, False]
    assert torch.equal(props.boxes[0, 1], props.boxes[0, 0]) and props.scores[0, 1] == 0


def test_peaks_come_before_the_shoulders_of_a_broad_blob():
    # a bright broad blob whose shoulders stay brighter than a small, separate second peak
    cam = _peaked_map([(4, 4)], [5.0], sigma=4.0) + _peaked_map([(12, 12)], [1.0], sigma=0.6)
    props = peak_proposals(cam[None], 64, k=2, box_size=0.25, nms_iou=0.3)
    second = props.boxes[0, 1]
    assert ((second[0] + second[2]) / 2).item() == pytest.approx(50.0)  # (12 + 0.5) · 4
    assert ((second[1] + second[3]) / 2).item() == pytest.approx(50.0)
    # ranking every position by value alone puts the second box on the blob's shoulder
    plain = peak_proposals(cam[None], 64, k=2, box_size=0.25, nms_iou=0.3, peaks_only=False)
    assert ((plain.boxes[0, 1, 0] + plain.boxes[0, 1, 2]) / 2).item() < 40


def test_crop_patches_is_exact_at_unit_scale_and_nested_boxes_shrink_about_the_centre():
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    boxes = torch.tensor([[2.0, 1.0, 6.0, 5.0], [5.0, 3.0, 9.0, 7.0]])
    crops = crop_patches(img, boxes, 4)
    assert torch.allclose(crops[0], img[0, :, 1:5, 2:6]) and torch.allclose(crops[1], img[1, :, 3:7, 5:9])
    many = crop_patches(img, boxes[:, None].expand(2, 3, 4), 4)  # B×N boxes: image-major
    assert many.shape == (6, 3, 4, 4) and torch.allclose(many[3], crops[1])
    nb = nested_boxes(boxes, [1.0, 0.5])
    assert nb.shape == (2, 2, 4) and torch.equal(nb[:, 0], boxes)
    assert nb[0, 1].tolist() == [3.0, 2.0, 5.0, 4.0]


# ---- the official box format ----------------------------------------------------------------

def test_official_rows_map_onto_a_resized_image():
    rows = [[112, 336, 0, 224, 7], [0, 448, 224, 448, 7]]  # [y0, y1, x0, x1, label] in 448×448
    boxes, labels = official_to_xyxy(rows, 64)
    assert torch.allclose(boxes, torch.tensor([[0.0, 16.0, 32.0, 48.0], [32.0, 0.0, 64.0, 64.0]]), atol=1e-4)
    assert labels.tolist() == [7, 7]
    boxes, _ = official_to_xyxy(rows, (32, 64))  # (H, W)
    assert torch.allclose(boxes[0], torch.tensor([0.0, 8.0, 32.0, 24.0]), atol=1e-4)
    # pixel content: a red rectangle drawn at a box in a 448 image lands in the mapped crop after resizing
    big = torch.zeros(1, 3, 448, 448)
    big[0, 0, 112:336, 0:224] = 1.0
    small = torch.nn.functional.interpolate(big, size=(64, 64), mode="area")
    crop = crop_patches(small, official_to_xyxy(rows[:1], 64)[0], 8)
    assert crop[0, 0].min() == pytest.approx(1.0) and crop[0, 1:].abs().max() == 0


def test_official_rows_map_onto_the_toolkit_evaluation_view():
    from lookcloser.data import build_transform

    w0, h0 = 300, 200
    # the official frame squashes the original to 448×448: a box there covers this original region
    row = [112, 336, 224, 336, 0]  # y 112..336, x 224..336 of 448 → original y 50..150, x 150..225
    arr = np.zeros((h0, w0, 3), dtype=np.uint8)
    arr[50:150, 150:225] = (255, 0, 0)
    view = build_transform(False, 64, (0, 0, 0), (1, 1, 1), resize_ratio=1.25)(Image.fromarray(arr))[None]
    boxes, _ = official_to_view([row], (w0, h0), 64, resize_ratio=1.25)
    # resize short side to 80 (120×80), center crop 64 → offsets (28, 8); scale 0.4
    assert boxes[0].tolist() == pytest.approx([150 * 0.4 - 28, 50 * 0.4 - 8, 225 * 0.4 - 28, 150 * 0.4 - 8])
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    inside = view[0, 0, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    assert inside.min() > 0.9 and view[0, 0, :, : x0 - 1].max() < 0.1


def test_box_file_lookup_batch_and_official_npy_conversion(tmp_path):
    arr = np.array([[[0, 224, 0, 224, 0], [224, 448, 224, 448, 0]],
                    [[112, 336, 112, 336, 1], [0, 448, 0, 448, 1]]])
    np.save(tmp_path / "train_patches.npy", arr)
    keys = ["001.A/a.jpg", "002.B/b.jpg"]
    path = convert_official_npy(tmp_path / "train_patches.npy", keys, tmp_path / "boxes.json")
    bf = BoxFile(path)
    assert len(bf) == 2 and json.loads(path.read_text())["source_size"] == 448
    assert bf.rows("/data/CUB/images/002.B/b.jpg").tolist() == arr[1].tolist()
    assert bf.rows("002.B/b.jpg").tolist() == arr[1].tolist()
    batch = bf.batch(keys, 32)
    assert batch.shape == (2, 2, 4) and torch.allclose(batch[1, 0], torch.tensor([8.0, 8.0, 24.0, 24.0]), atol=1e-4)
    (tmp_path / "idx.json").write_text(json.dumps({"images": {"0": [[0, 10, 0, 10, 3]]}}))
    assert BoxFile(tmp_path / "idx.json").rows(index=0).tolist() == [[0, 10, 0, 10, 3]]
    from lookcloser.errors import LookcloserError

    with pytest.raises(LookcloserError, match="no boxes"):
        bf.rows("003.C/c.jpg")
    with pytest.raises(LookcloserError, match="does not exist"):
        BoxFile(tmp_path / "missing.json")


# ---- the model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("mode", ["official", "refine"])
def test_train_step_finite_with_gradients_everywhere(batch, mode):
    torch.manual_seed(0)
    model = create_model("rra", mode=mode, **TINY).train()
    x, y = batch
    out = model(x, y)
    assert isinstance(out, RRAOutput)
    loss, terms = model.loss(out, y)
    assert torch.isfinite(loss) and set(terms) == {"ce_global", "ce_local"}
    assert loss.item() == pytest.approx(terms["ce_global"] + terms["ce_local"], rel=1e-5)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []
    # both streams, the LSTM and the time attention are among them
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"backbone", "local_backbone", "lstm", "time_attention", "classifier", "local_classifier"} <= names
    assert not any(p is q for p in model.backbone.parameters() for q in model.local_backbone.parameters())


@pytest.mark.parametrize("mode", ["official", "refine"])
def test_outputs_time_attention_and_eval_determinism(batch, mode):
    torch.manual_seed(0)
    model = create_model("rra", mode=mode, num_proposals=3, **TINY)
    x, _ = batch
    model.train()
    tr = model(x)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert type(tr) is type(a) is RRAOutput
    assert a.step_weights.shape == (4, 3) and torch.allclose(a.step_weights.sum(1), torch.ones(4))
    assert (a.step_weights > 0).all()
    assert a.boxes.shape == (4, 3, 4) and a.step_boxes.shape == (4, 3, 4) and a.attention.shape[:2] == (4, 1)
    assert (a.boxes >= 0).all() and (a.boxes[..., 2] <= 32).all() and (a.boxes[..., 3] <= 32).all()
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)
    assert a.patch_index.tolist() == [0, 0, 0, 0]  # the top proposal at evaluation
    assert torch.allclose(a.logits, a.global_logits + a.local_logits)
    side = a.step_boxes[..., 2] - a.step_boxes[..., 0]  # B×T
    if mode == "official":
        assert torch.allclose(side, side[:, :1].expand_as(side))
    else:
        assert torch.allclose(side[:, -1], side[:, 0] * 0.5) and (side[:, 1:] < side[:, :-1]).all()
    # training picks a proposal at random among the valid ones
    model.train()
    picks = torch.stack([model(x).patch_index for _ in range(6)])
    assert picks.max() > 0 and (torch.gather(tr.box_valid, 1, tr.patch_index[:, None])).all()


def test_single_step_reduces_to_a_plain_classifier(batch):
    torch.manual_seed(0)
    model = create_model("rra", **{**TINY, "steps": 1}).eval()
    x, _ = batch
    with torch.no_grad():
        out = model(x)
        assert (out.step_weights == 1.0).all()
        crops = crop_patches(x, out.boxes[:, 0], 16)
        feat = model.local_backbone(crops).mean((2, 3))
        h, _ = model.lstm(feat[:, None])
        expected = model.local_classifier(h[:, 0])
    assert torch.allclose(out.local_logits, expected, atol=1e-6)


def test_precomputed_boxes_replace_the_proposals(batch):
    torch.manual_seed(0)
    model = create_model("rra", **TINY).eval()
    x, _ = batch
    given = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]]).expand(4, 2, 4)
    with torch.no_grad():
        out = model(x, boxes=given)
        other = model(x, boxes=given.flip(1))
    assert torch.equal(out.boxes, given) and torch.equal(out.step_boxes[:, 0], given[:, 0])
    assert torch.equal(out.global_logits, other.global_logits)
    assert not torch.allclose(out.local_logits, other.local_logits)


def test_probability_fusion_gives_log_probabilities(batch):
    torch.manual_seed(0)
    model = create_model("rra", fusion="probs", fusion_weight=0.5, **TINY).eval()
    with torch.no_grad():
        out = model(batch[0])
    expected = (out.global_logits.softmax(1) + 0.5 * out.local_logits.softmax(1)) / 1.5
    assert torch.allclose(out.logits.exp(), expected, atol=1e-6)


def test_loss_is_global_ce_plus_lambda_local_ce(batch):
    torch.manual_seed(0)
    model = create_model("rra", local_weight=0.3, **TINY).train()
    x, y = batch
    out = model(x, y)
    loss, _ = model.loss(out, y)
    ce = torch.nn.functional.cross_entropy
    assert loss.item() == pytest.approx((ce(out.global_logits, y) + 0.3 * ce(out.local_logits, y)).item(), rel=1e-6)


def test_panels_draw_the_patch_and_the_step_weights(batch):
    torch.manual_seed(0)
    model = create_model("rra", mode="refine", **TINY).eval()
    with torch.no_grad():
        out = model(batch[0])
    image = np.full((32, 32, 3), 0.5, dtype=np.float32)
    panels = model.panels(out, 1, image)
    assert [t.split(" ")[0] for t, _ in panels] == ["proposals", "patch", "step"]
    drawn = panels[0][1]
    assert drawn.shape == (32, 32, 3) and drawn.min() >= 0 and drawn.max() <= 1
    assert ((drawn[..., 0] == 1.0) & (drawn[..., 1] < 0.2)).any()  # the red patch outline
    bars = panels[2][1]
    assert bars.shape == (32, 32, 3) and (bars != 1).any()


def test_bad_options_are_clear_errors():
    from lookcloser.errors import LookcloserError

    with pytest.raises(LookcloserError, match="mode"):
        create_model("rra", mode="zoom", **{k: v for k, v in TINY.items()})
    with pytest.raises(LookcloserError, match="fusion"):
        create_model("rra", fusion="max", **TINY)


# ---- training -------------------------------------------------------------------------------

def test_a_short_run_lowers_the_loss_of_both_streams(batch):
    torch.manual_seed(0)
    model = create_model("rra", **TINY).train()
    x, y = batch
    # Adam: the LSTM stream starts from near-zero logits (official 0.01 init) and crawls under plain SGD
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # 50 steps, and the median of the last 10: the local stream crawls for its first ~20 steps and its loss
    # jumps now and then (the patch choice changes), so a mean of the last 3 after 25 steps depended on the CPU
    terms = [(loss, t["ce_global"], t["ce_local"]) for loss, t in fit_fixed_batch(model, x, y, opt, 50)]
    first, last = np.mean(terms[:3], 0), np.median(terms[-10:], 0)
    assert np.isfinite(terms).all()
    assert last[0] < 0.6 * first[0] and last[1] < 0.5 * first[1] and last[2] < 0.9 * first[2]


def test_trains_with_the_engine(tmp_path):
    from lookcloser.engine import train

    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, method="rra", options={k: v for k, v in TINY.items() if k not in ("backbone", "num_classes")}))
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(metrics["train_loss"]) and "eval_top1" in metrics


def test_precomputed_boxes_reach_the_model_through_training(tmp_path, monkeypatch):
    # a class-folder data set and a box file keyed by relative paths: the trainer must hand each image's
    # boxes, mapped onto its view, to the model as boxes=
    from lookcloser.engine import train
    from lookcloser.layers.proposals import official_to_view

    rows = {}
    for split, n in (("train", 3), ("test", 1)):
        for c, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 8 * i, 32), colour).save(d / f"{i}.png")
                rows[f"{c}/{i}.png" if split == "train" else f"{c}/t{i}.png"] = [[0, 224, 0, 336, 1]] + \
                    [[112, 448, 224, 448, 2]] * (i % 2)
            if split == "test":
                for i in range(n):
                    (d / f"{i}.png").rename(d / f"t{i}.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"format": "lookcloser-boxes", "version": 1,
                                                     "source_size": 448, "images": rows}))
    seen = []
    original = RRA.forward

    def spy(self, images, labels=None, *, boxes=None):
        seen.append(boxes.clone())
        return original(self, images, labels, boxes=boxes)

    monkeypatch.setattr(RRA, "forward", spy)
    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, data=str(tmp_path / "data"), batch_size=6, resize_ratio=1.0),
        model=dataclasses.replace(cfg.model, method="rra", options={
            **{k: v for k, v in TINY.items() if k not in ("backbone", "num_classes")},
            "box_file": str(tmp_path / "boxes.json")}))
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(metrics["train_loss"])
    assert seen and all(b.shape[1:] == (2, 4) for b in seen)  # padded to the file's largest count
    # every image's best box covers the top half and left three quarters of its frame, mapped onto its 32×32 center-cropped view
    first = {tuple(official_to_view([[0, 224, 0, 336, 1]], (40 + 8 * i, 32), 32, resize_ratio=1.0)[0][0].tolist())
             for i in range(3)}
    assert len(first) > 1  # the sizes differ, so the mapping depends on each image
    assert all(tuple(row[0].tolist()) in first for b in seen for row in b)


def test_official_global_head_and_a_vgg_local_map_without_its_last_pool():
    torch.manual_seed(0)
    model = create_model("rra", backbone="vgg11", num_classes=3, patch_size=32, steps=2, hidden_size=8,
                         lstm_layers=1, global_head="official", local_stride=16)
    convs = [m for m in model.global_head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(512, 1024, (1, 1)),
                                                                               (1024, 1024, (1, 1))]
    assert model.classifier.in_features == 1024
    assert isinstance(model.local_backbone.body.features[-1], torch.nn.Identity)  # the last max-pool is gone
    assert isinstance(model.backbone.body.features[-1], torch.nn.MaxPool2d)  # the global stream keeps it
    with torch.no_grad():
        assert model.local_backbone(torch.randn(1, 3, 224, 224)).shape[-2:] == (14, 14)
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 3) and out.attention.shape[-2:] == (2, 2)


def test_default_proposals_magnify_like_the_official_patches():
    model = create_model("rra", **{**TINY, "patch_size": 64})
    assert model.box_size == 0.32  # the official CUB patches' median side
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 96, 96))
    sides = out.boxes[..., 2] - out.boxes[..., 0]
    torch.testing.assert_close(sides, torch.full_like(sides, 0.32 * 96))
