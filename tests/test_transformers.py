"""Transformer backbones: patch tokens as an NCHW map at any image size, the native stride, every method
trained, evaluated and exported on a tiny ViT and on a tiny hierarchical transformer (Swin), random weights."""

import json

import pytest
import torch

import lookcloser.models  # noqa: F401  (registers every method)
from lookcloser.backbones import Backbone
from lookcloser.errors import LookcloserError
from lookcloser.models import create_model, list_models

from tests.conftest import TINY_BACKBONE, TINY_SWIN, TINY_VIT, tiny_config

# small internal sizes, so that every method runs in a fraction of a second on the tiny transformers
OPTIONS = {
    "baseline": {},
    "tasn": dict(view_size=64, sample_size=64, att_channels=8),
    "wsdan": dict(num_maps=4),
    "wsban": dict(num_maps=4),
    "rra": dict(patch_size=32, steps=3, hidden_size=8, num_proposals=2),
}


def test_the_map_is_the_normed_patch_tokens_without_the_class_token():
    torch.manual_seed(0)
    bb = Backbone(TINY_VIT).eval()
    assert bb.tokens and bb.output_stride == 16 and bb.channels == 64
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        fmap = bb(x)
        tokens = bb.body.forward_features(x)  # B×(1 + 6·4)×C, the class token first, the final norm applied
    assert fmap.shape == (2, 64, 6, 4)
    assert bb.body.num_prefix_tokens == 1 and tokens.shape[1] == 1 + 6 * 4
    expect = tokens[:, 1:].reshape(2, 6, 4, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(fmap, expect)


@pytest.mark.parametrize("size, side", [(32, 2), (64, 4), (100, 6), (128, 8), (200, 12)])
def test_position_embeddings_follow_the_image_size(size, side):
    """Any glance or zoom size works; a side that is no multiple of the stride is resized to the nearest one
    (100 → 96), so that the map covers the image."""
    bb = Backbone(TINY_VIT).eval()
    with torch.no_grad():
        assert bb(torch.randn(1, 3, size, size)).shape == (1, 64, side, side)


def test_a_hierarchical_transformer_gives_its_last_stage_as_a_map():
    bb = Backbone(TINY_SWIN).eval()
    assert bb.tokens and bb.output_stride == 32 and bb.channels == 128
    with torch.no_grad():
        assert bb(torch.randn(2, 3, 64, 96)).shape == (2, 128, 2, 3)
    stage = Backbone(TINY_SWIN, stage=2, output_stride=16).eval()
    assert stage.output_stride == 16 and stage.channels == 64
    with torch.no_grad():
        assert stage(torch.randn(1, 3, 64, 64)).shape == (1, 64, 4, 4)


def test_a_stride_the_transformer_cannot_give_is_one_sentence_unless_it_is_a_default(caplog):
    with pytest.raises(LookcloserError, match=r"test_vit is a transformer whose map keeps its own stride 16.*"
                                              r"cannot give output_stride=8: set output_stride=16 or leave"):
        create_model("baseline", backbone=TINY_VIT, num_classes=3, output_stride=8)
    with pytest.raises(LookcloserError, match=r"cannot give attention_stride=8 without dilation: leave"):
        create_model("tasn", backbone=TINY_VIT, num_classes=3, attention_strides="remove")
    # a request the native stride meets is no error, without dilation too
    assert create_model("tasn", backbone=TINY_VIT, num_classes=3, att_channels=8, attention_stride=16,
                        attention_strides="remove").attention_backbone.output_stride == 16
    with pytest.raises(LookcloserError, match=r"own stride 32.*cannot give local_stride=16"):
        create_model("rra", backbone=TINY_SWIN, num_classes=3, local_stride=16)
    # the methods' defaults (TASN's attention net at 8, WS-DAN at 16) give way to the native stride, logged
    with caplog.at_level("INFO", logger="lookcloser.backbones"):
        tasn = create_model("tasn", backbone=TINY_VIT, num_classes=3, att_channels=8)
        wsdan = create_model("wsdan", backbone=TINY_SWIN, num_classes=3)
    assert tasn.attention_backbone.output_stride == 16 and wsdan.backbone.output_stride == 32
    assert "keeps its own stride 16 (the method's default attention_stride 8 does not apply" in caplog.text
    assert "default output_stride 16 does not apply" in caplog.text and "output_stride 32" not in caplog.text


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_SWIN])
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_every_method_learns_on_a_transformer(method, backbone):
    """Forward, loss and backward reach every parameter; a few steps on one batch lower the loss."""
    assert set(OPTIONS) == set(list_models())
    torch.manual_seed(0)
    model = create_model(method, backbone=backbone, num_classes=4, **OPTIONS[method])
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model.train()
    loss, _ = model.loss(model(x, y), y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # RRA's tiny LSTM may leave a bias without gradient at step one; nothing of a backbone may
    assert not [n for n in missing if "backbone" in n], missing
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = loss.item()
    for _ in range(8):
        torch.manual_seed(1)  # the same random crops and drops each step: the loss must fall on one batch
        loss, _ = model.loss(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first, (first, loss.item())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 80, 80))
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()
    assert out.attention is not None and out.attention.dim() == 4


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_SWIN])
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_every_method_trains_evaluates_draws_and_exports_on_a_transformer(method, backbone, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    from PIL import Image

    from lookcloser.config import ModelConfig
    from lookcloser.engine import train
    from lookcloser.export import export_model
    from lookcloser.report import evaluate_checkpoint
    from lookcloser.viz import visualize

    cfg = tiny_config(epochs=1, lr=1e-3, optimizer="adamw")
    cfg.data.image_size = 64
    cfg.model = ModelConfig(method=method, backbone=backbone, options=dict(OPTIONS[method]))
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["train_loss"] == r["train_loss"] for r in records)  # finite, not NaN
    report = evaluate_checkpoint(run / "last.pt", out=tmp_path / "ev", workers=0, device="cpu", progress=False)
    assert report["top1"] == pytest.approx(records[-1]["eval_top1"]) and report["n"] == 12
    files = []
    for i in range(2):  # pictures of two images of another size than the training view
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(files[-1])
    pictures = visualize(run / "last.pt", files, tmp_path / "viz")
    assert len(pictures) == 2 and all(p.stat().st_size > 1000 for p in pictures)
    info = export_model(run / "last.pt", tmp_path / f"{method}.onnx")
    assert info["max_abs_diff"] < 1e-4


def test_models_checks_a_backbone_and_names_the_families():
    from typer.testing import CliRunner

    from lookcloser.models import check_backbone
    from lookcloser.cli import app

    report = check_backbone(TINY_VIT)
    assert report["kind"] == "transformer" and report["stride"] == 16 and report["channels"] == 64
    assert report["map"] == [64, 6, 6] and report["methods"] == {m: "ok" for m in list_models()}
    cnn = check_backbone(TINY_BACKBONE)
    assert cnn["kind"] == "CNN" and cnn["stride"] == 32 and set(cnn["methods"].values()) == {"ok"}
    r = CliRunner().invoke(app, ["models", "--backbone", TINY_VIT])
    assert r.exit_code == 0 and "test_vit: transformer, stride 16, 64 channels" in r.output
    listing = CliRunner().invoke(app, ["models"]).output
    assert "dynamic image size (ViT, DeiT, EVA, DINOv2" in listing and "fixed image size (BEiT" in listing


def test_a_transformer_of_fixed_image_size_is_one_sentence():
    with pytest.raises(LookcloserError, match=r"xcit_nano_12_p16_224 is a transformer that timm cannot build with "
                                              r"a dynamic image size.*lookcloser models"):
        create_model("baseline", backbone="xcit_nano_12_p16_224", num_classes=3)
