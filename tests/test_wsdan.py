"""WS-BAN / WS-DAN: bilinear attention pooling, attention crop/drop, center loss, and the full method."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lookcloser.models.wsdan  # noqa: F401  (registers "wsdan" and "wsban")
from lookcloser.config import ModelConfig, RunConfig
from lookcloser.errors import LookcloserError
from lookcloser.layers.bap import bilinear_attention_pooling
from lookcloser.layers.crop_drop import (attention_boxes, attention_crop, attention_drop, attention_drop_mask,
                                         crop_resize, select_attention)
from lookcloser.models import create_model, model_options
from lookcloser.models.wsdan import WSDANOutput
from tests.conftest import TINY_BACKBONE, fit_fixed_batch, tiny_config

# test_efficientnet's last map at output stride 16: 4×4 maps from 64 px images
TINY_OPTS = dict(output_stride=16, num_maps=4)
C = 256  # channels of that map (timm's head convolution)


# ---- bilinear attention pooling ---------------------------------------------------------------------

def _bap_loop(features, attentions, scale=1.0):
    """f_k = GAP(A_k ⊙ F) for every image and part, then signed sqrt and L2 norm of the M·C vector."""
    out = []
    for fb, ab in zip(features.double(), attentions.double()):
        parts = torch.stack([(ak[None] * fb).mean((1, 2)) for ak in ab])  # M×C
        parts = torch.sign(parts) * torch.sqrt(parts.abs() + 1e-12)
        out.append(parts / parts.flatten().norm() * scale)
    return torch.stack(out).float()


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_bap_matches_per_part_loop_and_is_unit_norm(scale):
    torch.manual_seed(0)
    features = torch.randn(3, 5, 4, 6)  # signed features exercise the signed square root
    attentions = torch.rand(3, 7, 4, 6)
    parts = bilinear_attention_pooling(features, attentions, scale=scale)
    assert parts.shape == (3, 7, 5) and parts.dtype == torch.float32
    torch.testing.assert_close(parts, _bap_loop(features, attentions, scale), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.flatten(1).norm(dim=1), torch.full((3,), scale))


def test_bap_edge_cases():
    torch.manual_seed(1)
    features = torch.randn(2, 3, 4, 4)
    attentions = torch.rand(2, 2, 2, 2)
    # maps of another size are resized to the feature map
    up = F.interpolate(attentions, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear_attention_pooling(features, attentions),
                               bilinear_attention_pooling(features, up))
    # an image with all-zero attention gives zero features, not NaN
    attentions[1] = 0
    parts = bilinear_attention_pooling(features, attentions)
    assert torch.isfinite(parts).all() and parts[1].abs().sum() == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bilinear_attention_pooling(features, up).dtype == torch.float32


# ---- attention cropping -----------------------------------------------------------------------------

def test_crop_box_from_a_known_blob():
    # a full-resolution map: the box is the blob's pixel-edge box, padded by 0.1 of the side
    a = torch.full((1, 64, 80), 0.1)
    a[0, 20:30, 30:45] = 1.0
    box = attention_boxes(a, (64, 80), theta=0.5, padding=0.1)[0]
    torch.testing.assert_close(box, torch.tensor([30 - 8.0, 20 - 6.4, 45 + 8.0, 30 + 6.4]))
    # a low-resolution map: cells 2..3 (rows) × 4..5 (columns) of an 8×8 grid, upsampled to 64 px;
    # at θ = 0.5 the bilinear ramp crosses the threshold on the cell edges 16..32 and 32..48
    low = torch.zeros(1, 1, 8, 8)
    low[0, 0, 2:4, 4:6] = 1.0
    box = attention_boxes(low, (64, 64), theta=0.5, padding=0.05)[0]
    expected = torch.tensor([32 - 3.2, 16 - 3.2, 48 + 3.2, 32 + 3.2])
    assert (box - expected).abs().max() <= 1.0, box
    # padding is clamped to the image
    corner = torch.zeros(1, 64, 64)
    corner[0, :5, 60:] = 1.0
    torch.testing.assert_close(attention_boxes(corner, (64, 64), 0.5, 0.1)[0], torch.tensor([60 - 6.4, 0, 64, 5 + 6.4]))


def test_empty_and_constant_maps_fall_back_to_the_whole_image():
    torch.manual_seed(2)
    images = torch.randn(4, 3, 16, 20)
    maps = torch.stack([torch.zeros(4, 5), torch.full((4, 5), 3.0), torch.full((4, 5), float("nan")),
                        -torch.rand(4, 5)])  # zero, constant, not finite, no pixel at θ·max
    crops, boxes = attention_crop(images, maps, theta=0.5, padding=0.1)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 20.0, 16.0]]).expand(4, 4))
    torch.testing.assert_close(crops, images)  # the whole box resized to its own size is the image
    assert not attention_drop_mask(maps, (16, 20), 0.3).any()  # and nothing is dropped


def test_crops_are_batched_and_cut_the_box():
    torch.manual_seed(3)
    images = torch.randn(3, 3, 24, 32)
    maps = torch.rand(3, 1, 6, 8) ** 4
    theta = torch.tensor([0.4, 0.5, 0.6])
    crops, boxes = attention_crop(images, maps, theta, padding=0.1)
    assert crops.shape == images.shape and boxes.shape == (3, 4)
    for i in range(3):  # the batch equals the images one at a time
        c, b = attention_crop(images[i:i + 1], maps[i:i + 1], theta[i:i + 1], padding=0.1)
        torch.testing.assert_close(c, crops[i:i + 1])
        torch.testing.assert_close(b, boxes[i:i + 1])
    # a 2× crop of a non-square integer box equals resizing the cut-out region (away from its border,
    # where roi_align may read the neighbouring pixels and interpolate clamps instead)
    box = torch.tensor([[8.0, 4.0, 24.0, 16.0]]).expand(3, 4)  # x0, y0, x1, y1: 16 wide, 12 high
    crop = crop_resize(images, box, size=(24, 32))
    ref = F.interpolate(images[:, :, 4:16, 8:24], size=(24, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(crop[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], rtol=1e-5, atol=1e-5)


# ---- attention dropping -----------------------------------------------------------------------------

def test_drop_region_is_exactly_the_thresholded_one():
    torch.manual_seed(4)
    images = torch.randn(2, 3, 16, 16) + 5  # no pixel is 0 before the drop
    full = torch.rand(2, 16, 16)
    theta = torch.tensor([0.2, 0.5])
    dropped, mask = attention_drop(images, full, theta)
    expected = full >= theta[:, None, None] * full.amax((1, 2), keepdim=True)
    assert torch.equal(mask, expected) and mask.any()
    assert torch.equal(dropped == 0, expected[:, None].expand_as(images))
    assert torch.equal(dropped[~expected[:, None].expand_as(images)], images[~expected[:, None].expand_as(images)])
    # a low-resolution map is upsampled bilinearly first
    low = torch.rand(2, 1, 4, 4)
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    mask = attention_drop_mask(low, (16, 16), 0.35)
    assert torch.equal(mask, up >= 0.35 * up.amax((1, 2), keepdim=True))


# ---- map choice -------------------------------------------------------------------------------------

def test_sampled_maps_follow_sqrt_of_mean_activation():
    maps = torch.stack([torch.full((3, 3), v) for v in (1.0, 4.0, 9.0, 0.0)])[None]  # sqrt(mean) = 1, 2, 3, 0
    torch.manual_seed(5)
    chosen, index = select_attention(maps.expand(6000, -1, -1, -1), "sample", num=2)
    assert chosen.shape == (6000, 2, 3, 3) and index.shape == (6000, 2)
    freq = torch.bincount(index.flatten(), minlength=4).float() / index.numel()
    torch.testing.assert_close(freq, torch.tensor([1 / 6, 2 / 6, 3 / 6, 0.0]), atol=0.015, rtol=0)
    torch.testing.assert_close(chosen[:, 0], maps[0, index[:, 0]])
    torch.manual_seed(5)
    assert torch.equal(select_attention(maps.expand(6000, -1, -1, -1), "sample", num=2)[1], index)  # seeded
    mean, idx = select_attention(maps, "mean")
    torch.testing.assert_close(mean[:, 0], maps.mean(1))
    assert (idx == -1).all()
    # all-zero maps draw uniformly instead of failing
    assert select_attention(torch.zeros(2, 3, 2, 2), "sample")[1].shape == (2, 1)


# ---- the method -------------------------------------------------------------------------------------

def _model(name="wsdan", **kw):
    torch.manual_seed(0)
    return create_model(name, backbone=TINY_BACKBONE, num_classes=4, **{**TINY_OPTS, **kw})


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("name", ["wsdan", "wsban"])
def test_train_step_losses_and_gradients_on_every_parameter(name):
    model = _model(name)
    model.train()
    images, labels = _batch()
    out = model(images, labels)
    assert type(out) is WSDANOutput
    assert out.logits.shape == out.raw_logits.shape == out.crop_logits.shape == (4, 4)
    assert out.attention.shape == (4, 4, 4, 4) and out.features.shape == out.centers.shape == (4, 4, C)
    assert out.crop_box.shape == (4, 4)
    loss, terms = model.loss(out, labels)
    ces = {"wsdan": ["ce_raw", "ce_crop", "ce_drop"], "wsban": ["ce_raw", "ce_crop", "ce_joint"]}[name]
    assert set(terms) == {*ces, "center"}
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in terms.values())
    assert loss.item() == pytest.approx(sum(terms[k] for k in ces) / 3 + terms["center"], rel=1e-5)
    if name == "wsdan":
        assert out.drop_logits.shape == (4, 4) and out.drop_mask.shape == (4, 64, 64) and out.drop_mask.any()
    else:
        assert out.drop_logits is None and model.joint_fc is not None and (out.crop_index == -1).all()
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


def test_center_loss_value_and_weights():
    model = _model(center_weight=0.5, crop_weight=2.0)
    model.train()
    images, labels = _batch()
    with torch.no_grad():
        model.update_centers(torch.randn(4, 4, C), labels)  # non-zero centers before the step
    out = model(images, labels)
    loss, terms = model.loss(out, labels)
    expected_center = (out.features - out.centers).pow(2).sum((1, 2)).mean()
    assert terms["center"] == pytest.approx(expected_center.item(), rel=1e-5) and terms["center"] > 0
    ce = (terms["ce_raw"] + 2.0 * terms["ce_crop"] + terms["ce_drop"]) / 3
    assert loss.item() == pytest.approx(ce + 0.5 * terms["center"], rel=1e-5)


def test_centers_move_toward_class_features_by_beta_and_stay_unit_norm():
    model = _model(center_beta=0.05, center_update="normalized")
    torch.manual_seed(6)
    start = F.normalize(torch.randn(4, 4 * C), dim=1)
    model.centers.copy_(start.view(4, 4, C))
    feats = F.normalize(torch.randn(3, 4 * C), dim=1).view(3, 4, C)
    labels = torch.tensor([1, 3, 3])  # class 3 twice: its center moves toward the mean of the two
    targets = model.update_centers(feats, labels)
    torch.testing.assert_close(targets, start[labels].view(3, 4, C))  # the loss uses the old centers
    flat = model.centers.view(4, -1)
    torch.testing.assert_close(flat[1], F.normalize(start[1] + 0.05 * (feats[0].flatten() - start[1]), dim=0))
    mean3 = (feats[1] + feats[2]).flatten() / 2
    torch.testing.assert_close(flat[3], F.normalize(start[3] + 0.05 * (mean3 - start[3]), dim=0))
    torch.testing.assert_close(flat[[0, 2]], start[[0, 2]])  # classes not in the batch stay put
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(4))
    # moving toward f: the distance shrinks and the cosine grows
    assert (flat[1] - feats[0].flatten()).norm() < (start[1] - feats[0].flatten()).norm()


def test_centers_update_in_training_forward_only_and_survive_a_checkpoint():
    model = _model(center_update="normalized")
    images, labels = _batch()
    model.eval()
    with torch.no_grad():
        model(images, labels)
    assert model.centers.abs().sum() == 0  # no update in eval
    model.train()
    model(images)
    assert model.centers.abs().sum() == 0  # nor without labels
    out = model(images, labels)
    # from zero, a class's first center is the direction of its (raw-image) features
    torch.testing.assert_close(model.centers[labels].flatten(1), F.normalize(out.features.detach().flatten(1), dim=1))
    assert "centers" in model.state_dict()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _model()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh.centers, model.centers, rtol=0, atol=0)


def _official_center_step(centers, feats, labels, beta):
    """The official TF rule, per image: gather every normalized center first, then scatter_sub
    (1 - α)(ĉ - f) with α = 1 - β; repeated labels accumulate."""
    c = centers.clone()
    normalized = F.normalize(c[labels], dim=1)  # tf.gather + l2_normalize, before the update
    for i, y in enumerate(labels.tolist()):
        c[y] -= beta * (normalized[i] - feats[i])
    return c, normalized


def test_official_center_update_matches_the_tf_rule_over_a_sequence_of_batches():
    model = _model(center_beta=0.05)  # center_update="official" is the default
    torch.manual_seed(8)
    ref = torch.zeros(4, 4 * C)
    batches = [torch.tensor([0, 1, 1, 2]), torch.tensor([1, 3, 3, 3]), torch.tensor([2, 0]), torch.tensor([1, 1])]
    for labels in batches:
        feats = F.normalize(torch.randn(len(labels), 4 * C), dim=1)
        targets = model.update_centers(feats.view(-1, 4, C), labels)
        ref, expected_targets = _official_center_step(ref, feats, labels, 0.05)
        torch.testing.assert_close(targets.flatten(1), expected_targets)
        torch.testing.assert_close(model.centers.view(4, -1), ref, rtol=1e-5, atol=1e-6)


def test_official_center_points_at_the_class_previous_feature():
    model = _model(center_beta=0.05)
    torch.manual_seed(9)
    for _ in range(3):
        f = F.normalize(torch.randn(1, 4 * C), dim=1)
        model.update_centers(f.view(1, 4, C), torch.tensor([2]))
        c = model.centers.view(4, -1)[2]
        # after each step the stored center is β·f: its direction is exactly the last feature
        assert c.norm().item() == pytest.approx(0.05, rel=1e-5)
        assert F.cosine_similarity(c, f[0], dim=0).item() == pytest.approx(1.0, abs=1e-6)
    assert model.centers.view(4, -1)[[0, 1, 3]].abs().sum() == 0  # other classes untouched


def test_center_update_touches_only_the_batch_rows_without_reading_the_others():
    model = _model(center_beta=0.05)
    model.centers[0] = float("nan")  # a row outside the batch: any full-table arithmetic would spread it
    feats = F.normalize(torch.randn(2, 4 * C), dim=1).view(2, 4, C)
    model.update_centers(feats, torch.tensor([1, 2]))
    assert torch.isfinite(model.centers[1:]).all() and model.centers[0].isnan().all()
    model2 = _model(center_beta=0.05, center_update="normalized")
    model2.centers[3] = float("nan")
    model2.update_centers(feats, torch.tensor([1, 1]))
    assert torch.isfinite(model2.centers[:3]).all() and model2.centers[3].isnan().all()


def test_attention_init_pretrained_copies_the_first_channels_of_mixed_7a_branch_0(tmp_path):
    import timm

    torch.manual_seed(12)
    ref = timm.create_model("inception_v3")
    with torch.no_grad():
        ref.Mixed_7a.branch3x3_1.bn.running_mean.uniform_(-1, 1)  # not the default 0, so a copy shows
    torch.save(ref.state_dict(), tmp_path / "inception.pth")
    model = create_model("wsdan", backbone="inception_v3", num_classes=3, feature_stage=3, num_maps=8,
                         attention_init="pretrained", weights=str(tmp_path / "inception.pth"))
    layer = ref.Mixed_7a.branch3x3_1
    torch.testing.assert_close(model.attention[0].weight, layer.conv.weight[:8])
    torch.testing.assert_close(model.attention[1].weight, layer.bn.weight[:8])
    torch.testing.assert_close(model.attention[1].running_mean, layer.bn.running_mean[:8])
    assert model.attention[1].eps == layer.bn.eps
    assert not any("Mixed_7" in n for n, _ in model.named_parameters())  # the later layers are pruned
    with pytest.raises(LookcloserError, match="attention_init"):
        _model(attention_init="pretrained")  # test_efficientnet has no such layer


def test_attention_dropout_zeroes_whole_maps_in_training_only():
    model = _model("wsban", attention_dropout=0.5, num_maps=8)
    images, _ = _batch()
    model.train()
    with torch.no_grad():
        fmap = model.backbone(images)
        maps = model.attention(fmap)
        torch.manual_seed(7)
        keep = torch.rand(4, 8, 1, 1) >= 0.5
        torch.manual_seed(7)
        got_maps, parts, pooled = model.encode(images)
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(got_maps, maps)
    torch.testing.assert_close(pooled, bilinear_attention_pooling(fmap, maps * keep))
    torch.testing.assert_close(parts, bilinear_attention_pooling(fmap, maps))  # the center loss sees every map
    model.eval()
    with torch.no_grad():
        _, parts, pooled = model.encode(images)
    assert pooled is parts


def test_random_draws_are_reproducible_with_a_seed():
    model = _model()
    model.train()
    images, labels = _batch()
    torch.manual_seed(11)
    a = model(images, labels)
    torch.manual_seed(11)
    b = model(images, labels)
    assert torch.equal(a.crop_box, b.crop_box) and torch.equal(a.drop_mask, b.drop_mask)
    assert torch.equal(a.crop_index, b.crop_index) and torch.equal(a.drop_index, b.drop_index)


@pytest.mark.parametrize("combine", ["prob", "logit"])
def test_eval_is_deterministic_and_combines_raw_and_object_crop(combine):
    model = _model(combine=combine)
    model.eval()
    images, _ = _batch(3)
    with torch.no_grad():
        a, b = model(images), model(images)
    assert type(a) is WSDANOutput and a.drop_logits is None and a.centers is None
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    # the object crop: mean map, θ = 0.1, padding 0.05
    torch.testing.assert_close(a.crop_box, attention_boxes(a.attention.mean(1), (64, 64), 0.1, 0.05))
    if combine == "prob":  # .logits are logits whose softmax is the mean of the two probabilities
        mean = (a.raw_logits.softmax(1) + a.crop_logits.softmax(1)) / 2
        torch.testing.assert_close(a.logits.softmax(1), mean)
        torch.testing.assert_close(a.logits.exp().sum(1), torch.ones(3))
    else:
        torch.testing.assert_close(a.logits, (a.raw_logits + a.crop_logits) / 2)
    loss, terms = model.loss(a, torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss) and set(terms) == {"ce_raw", "ce_crop", "center"}


def test_joint_classifier_sees_raw_and_crop_part_features():
    model = _model("wsban")
    model.eval()
    images, _ = _batch(2)
    with torch.no_grad():
        out = model(images)
        crops = crop_resize(images, out.crop_box)
        _, _, crop_parts = model.encode(crops)
        joint = torch.cat([out.features.flatten(1), crop_parts.flatten(1)], 1) * 100.0
        torch.testing.assert_close(out.logits, model.joint_fc(joint))
        torch.testing.assert_close(out.crop_logits, model.classify(crop_parts))


def test_panels_show_maps_box_and_dropped_region():
    model = _model()
    image = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    images, labels = _batch(2)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out = model(images, labels if train else None)
        panels = model.panels(out, 1, image)
        titles = [t for t, _ in panels]
        assert titles[0].startswith("maps") and titles[1].startswith("crop box") and titles[2] == "crop"
        assert titles[3].startswith("dropped" if train else "drop region")
        for _, arr in panels:
            assert arr.shape == (64, 64, 3) and arr.min() >= 0 and arr.max() <= 1
    # the box is drawn in red on its edges
    box = torch.tensor([10.0, 20.0, 40.0, 50.0])
    model.eval()
    with torch.no_grad():
        out = model(images)
    out.crop_box[1] = box
    drawn = model.panels(out, 1, image)[1][1]
    assert (drawn[20, 10:40] == [1, 0, 0]).all() and (drawn[25:45, 10] == [1, 0, 0]).all()
    assert np.array_equal(drawn[0], image[0])


@pytest.mark.parametrize("name", ["wsdan", "wsban"])
def test_short_run_lowers_the_loss(name):
    model = _model(name)
    model.train()
    images, labels = _batch(8, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    losses = [loss for loss, _ in fit_fixed_batch(model, images, labels, opt, 20)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses


def test_engine_trains_evaluates_and_reloads_wsdan(tmp_path):
    from lookcloser.engine import train
    from lookcloser.engine.checkpoint import load_checkpoint

    cfg = tiny_config(epochs=1)
    cfg.model = ModelConfig(method="wsdan", backbone=TINY_BACKBONE,
                            options=dict(TINY_OPTS, center_update="normalized"))
    record = train(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(record["train_loss"]) and 0 <= record["eval_top1"] <= 100
    assert math.isfinite(record["train_center"]) and math.isfinite(record["train_ce_drop"])
    model, ckpt = load_checkpoint(tmp_path / "run")
    seen = model.centers.flatten(1).norm(dim=1) > 0
    assert seen.any()
    torch.testing.assert_close(model.centers.flatten(1)[seen].norm(dim=1), torch.ones(int(seen.sum())))


def test_bad_options_are_refused():
    with pytest.raises(LookcloserError, match="joint"):
        _model(joint="sum")
    with pytest.raises(LookcloserError, match="crop_theta"):
        _model(crop_theta=(0.6, 0.4))
    with pytest.raises(LookcloserError, match="feature_stage"):
        _model(feature_stage=-2)


def test_inception_mixed_6e_is_features_only_index_3():
    import timm

    with torch.device("meta"):  # structure only, no weights initialized
        net = timm.create_model("inception_v3", features_only=True, out_indices=(3,))
    assert net.feature_info.module_name() == ["Mixed_6e"]
    assert net.feature_info.channels() == [768] and net.feature_info.reduction() == [16]
