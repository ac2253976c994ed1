"""TASN: trilinear attention, the attention-based sampler, and the full method (train step, short runs)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lookcloser.models.tasn  # noqa: F401  (registers "tasn")
from lookcloser.config import ModelConfig, RunConfig
from lookcloser.layers.sampler import SampleResult, attention_sample, cap_density
from lookcloser.layers.trilinear import trilinear_attention
from lookcloser.models import create_model, model_options
from lookcloser.models.tasn import TASNOutput, distinct_channels_mask
from tests.conftest import TINY_BACKBONE, fit_fixed_batch, tiny_config

TINY_OPTS = dict(view_size=0, sample_size=32, att_channels=16)
# the per-axis cap on the centred grid: the rule these sampler tests were written for (the default is the
# official coupled cap on the official grid, tested in test_sampler_official.py)
PER_AXIS = dict(cap="per_axis", grid="centered")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these tensors are tiny: on a shared, busy machine two intra-op threads make each step ~10× slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- trilinear attention ---------------------------------------------------------------------------

def _trilinear_loop(x, scale=1.0):
    """M(X) = N2(N1(X)·Xᵀ)·X for each sample, written from the paper's formula."""
    out = []
    for xb in x.double():
        c, h, w = xb.shape
        flat = xb.reshape(c, h * w)
        n1 = torch.exp(scale * flat - (scale * flat).max(1, keepdim=True).values)
        n1 = n1 / n1.sum(1, keepdim=True)  # softmax over the spatial axis of each channel
        rel = n1 @ flat.T  # C×C
        n2 = torch.exp(rel - rel.max(1, keepdim=True).values)
        n2 = n2 / n2.sum(1, keepdim=True)  # softmax over each row
        out.append((n2 @ flat).reshape(c, h, w))
    return torch.stack(out).float()


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_trilinear_matches_per_sample_formula(scale):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6).relu()
    m = trilinear_attention(x, scale)
    assert m.shape == x.shape and m.dtype == torch.float32
    torch.testing.assert_close(m, _trilinear_loop(x, scale), rtol=1e-5, atol=1e-5)


def test_trilinear_normalizations():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 5)
    m = trilinear_attention(x)
    # N2 is row-stochastic: each map is a convex combination of the channels at every position
    assert (m >= x.min(1, keepdim=True).values - 1e-5).all()
    assert (m <= x.max(1, keepdim=True).values + 1e-5).all()
    const = torch.full((1, 4, 3, 3), 2.5)
    torch.testing.assert_close(trilinear_attention(const), const)
    # N1 runs over space: with a huge scale it picks each channel's spatial peak, so the relation of
    # channel i to channel j is X_j at the argmax of X_i
    flat = x.reshape(2, 6, 25)
    peak = flat.argmax(2)  # B×C
    rel = torch.stack([flat[b][:, peak[b]].T for b in range(2)])  # B×C×C, rel[b, i, j] = X_j(peak_i)
    expected = (torch.softmax(rel, 2) @ flat).reshape(x.shape)
    torch.testing.assert_close(trilinear_attention(x, scale=1e4), expected, rtol=1e-4, atol=1e-4)


def test_trilinear_is_float32_under_autocast():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = trilinear_attention(x)
    assert m.dtype == torch.float32
    torch.testing.assert_close(m, _trilinear_loop(x.float()), rtol=1e-5, atol=1e-5)


# ---- sampler ----------------------------------------------------------------------------------------

def _coords(grid, size, axis):
    """Input coordinates (pixel-edge units) of the output columns (axis 0) or rows (axis 1)."""
    g = grid[:, 0, :, 0] if axis == 0 else grid[:, :, 0, 1]
    return (g + 1) * size / 2


def _magnification(x, n_in, n_out):
    """Output pixels per input pixel between neighbouring samples, relative to the uniform rate."""
    return (n_in / n_out) / (x[:, 1:] - x[:, :-1])


def test_uniform_attention_reproduces_resized_input():
    torch.manual_seed(0)
    for shape, att, out in [((2, 3, 48, 48), (2, 6, 6), 32), ((2, 3, 40, 56), (2, 7, 5), (24, 32))]:
        images = torch.randn(shape)
        r = attention_sample(images, torch.ones(att), out, grid="centered")
        assert isinstance(r, SampleResult)
        oh, ow = (out, out) if isinstance(out, int) else out
        assert r.images.shape == (shape[0], 3, oh, ow) and r.grid.shape == (shape[0], oh, ow, 2)
        ref = F.interpolate(images, size=(oh, ow), mode="bilinear", align_corners=False)
        torch.testing.assert_close(r.images, ref, rtol=0, atol=2e-4)


def _hot_spot(h=8, w=8, at=(2, 5)):
    a = torch.zeros(1, h, w)
    a[0, at[0], at[1]] = 1.0
    return a


@pytest.mark.parametrize("dense", [4.0, 2.0])
def test_hot_spot_gets_more_pixels_but_never_more_than_dense(dense):
    images = torch.randn(1, 3, 64, 64)
    r = attention_sample(images, _hot_spot(), 48, dense=dense, **PER_AXIS)
    for axis, (lo, hi) in ((0, (40, 48)), (1, (16, 24))):  # attention cell (2, 5) covers rows 16-23, cols 40-47
        x = _coords(r.grid, 64, axis)
        mag = _magnification(x, 64, 48)
        assert mag.max() <= dense * (1 + 1e-3)
        assert mag.max() >= 0.95 * dense  # a one-hot map saturates the cap
        inside = ((x >= lo) & (x < hi)).sum().item()
        uniform = 48 * (hi - lo) / 64
        assert uniform < inside <= dense * uniform + 1


def test_without_cap_a_peak_is_magnified_beyond_dense():
    r = attention_sample(torch.randn(1, 3, 64, 64), _hot_spot(), 48, dense=0, **PER_AXIS)
    assert _magnification(_coords(r.grid, 64, 0), 64, 48).max() > 6


def test_grid_is_monotone_and_separable():
    torch.manual_seed(3)
    att = torch.rand(4, 7, 9) ** 6  # peaky maps
    r = attention_sample(torch.randn(4, 3, 50, 60), att, (30, 40), **PER_AXIS)
    gx, gy = r.grid[..., 0], r.grid[..., 1]
    assert (gx[:, :, 1:] > gx[:, :, :-1]).all() and (gy[:, 1:, :] > gy[:, :-1, :]).all()
    assert (gx == gx[:, :1, :]).all() and (gy == gy[:, :, :1]).all()
    assert r.grid.abs().max() < 1


def test_batch_equals_samples_one_by_one():
    torch.manual_seed(4)
    images, att = torch.randn(3, 3, 40, 40), torch.rand(3, 5, 5) ** 4
    r = attention_sample(images, att, 24, dense=3.0, iters=5)
    for b in range(3):
        one = attention_sample(images[b:b + 1], att[b:b + 1], 24, dense=3.0, iters=5)
        torch.testing.assert_close(r.images[b:b + 1], one.images, rtol=0, atol=1e-6)
        torch.testing.assert_close(r.grid[b:b + 1], one.grid, rtol=0, atol=1e-6)


def _reference_axis(scores, out, dense, iters):
    """One axis of one sample, from the definitions: density with floor, cap loop, inverse CDF."""
    m = np.clip(scores.astype(np.float64), 0, None)
    m = m / max(m.max(), 1e-12) + 1e-6
    p = m / m.sum()
    n = len(p)
    cap = dense / n
    for _ in range(iters):
        p = np.minimum(p, cap)
        p = p + (1 - p.sum()) / n
    p = np.minimum(p, cap)
    room = cap - p
    p = p + room * (1 - p.sum()) / room.sum()
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    u = (np.arange(out) + 0.5) / out
    return np.interp(u, cdf / cdf[-1], np.arange(n + 1))


def test_grid_matches_per_sample_reference():
    torch.manual_seed(5)
    att = torch.rand(2, 6, 4) ** 5
    r = attention_sample(torch.randn(2, 3, 36, 28), att, (20, 16), dense=4.0, iters=5, **PER_AXIS)
    up = F.interpolate(att[:, None], size=(36, 28), mode="bilinear", align_corners=False)[:, 0].numpy()
    for b in range(2):
        ref_x = _reference_axis(up[b].max(0), 16, 4.0, 5)
        ref_y = _reference_axis(up[b].max(1), 20, 4.0, 5)
        np.testing.assert_allclose(_coords(r.grid, 28, 0)[b].numpy(), ref_x, atol=2e-4)
        np.testing.assert_allclose(_coords(r.grid, 36, 1)[b].numpy(), ref_y, atol=2e-4)


def test_cap_density_properties():
    torch.manual_seed(6)
    p = torch.rand(5, 30) ** 8
    p = p / p.sum(1, keepdim=True)
    q = cap_density(p, 3.0, 5)
    torch.testing.assert_close(q.sum(1), torch.ones(5))
    assert q.max() <= 3.0 / 30 * (1 + 1e-5) and q.min() > 0
    flat = torch.full((2, 10), 0.1)
    torch.testing.assert_close(cap_density(flat, 4.0, 5), flat)


def test_power_squares_the_upsampled_map():
    torch.manual_seed(7)
    images, att = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
    up = F.interpolate(att[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    a = attention_sample(images, att, 20, power=2.0, **PER_AXIS)
    b = attention_sample(images, up ** 2, 20, **PER_AXIS)
    torch.testing.assert_close(a.grid, b.grid, rtol=0, atol=1e-5)


def test_no_gradient_reaches_the_attention():
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    att = torch.rand(2, 4, 4, requires_grad=True)
    r = attention_sample(images, att, 16)
    assert not r.grid.requires_grad
    r.images.square().sum().backward()
    assert att.grad is None
    assert images.grad is not None and images.grad.abs().sum() > 0


# ---- the method -------------------------------------------------------------------------------------

def _model(**kw):
    torch.manual_seed(0)
    return create_model("tasn", backbone=TINY_BACKBONE, num_classes=4, **{**TINY_OPTS, **kw})


def test_train_step_losses_and_gradients_on_every_parameter():
    model = _model(view_size=40)  # also exercises the attention-input resize
    model.train()
    images, labels = torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 3])
    out = model(images, labels)
    assert type(out) is TASNOutput
    assert out.logits.shape == out.part_logits.shape == out.attention_logits.shape == (4, 4)
    assert out.attention.shape == (4, 16, 5, 5)  # 40 px at output stride 8, 16 attention channels
    assert out.structure_images.shape == out.detail_images.shape == (4, 3, 32, 32)
    assert out.structure_grid.shape == (4, 32, 32, 2)
    loss, terms = model.loss(out, labels)
    assert set(terms) == {"att_ce", "part_ce", "master_ce", "distill"}
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in terms.values())
    total = terms["att_ce"] + terms["part_ce"] + terms["master_ce"] + 2.0 * terms["distill"]
    assert loss.item() == pytest.approx(total, rel=1e-5)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


def test_attention_net_learns_only_from_its_own_classifier():
    model = _model(att_weight=0.0)
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    loss, _ = model.loss(model(torch.randn(4, 3, 48, 48), labels), labels)
    loss.backward()
    att_params = [*model.attention_backbone.parameters(), *model.att_head.parameters(),
                  *model.att_post.parameters(), *model.att_classifier.parameters()]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in att_params)
    assert model.classifier.weight.grad.abs().sum() > 0


def test_distillation_is_the_soft_target_cross_entropy():
    model = _model(temperature=10.0, distill_weight=1.0)
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    out = model(torch.randn(4, 3, 48, 48), labels)
    _, terms = model.loss(out, labels)
    q_d = torch.softmax(out.part_logits / 10, 1)
    expected = -(q_d * torch.log_softmax(out.logits / 10, 1)).sum(1).mean()
    assert terms["distill"] == pytest.approx(expected.item(), rel=1e-5)
    # detached targets: the distillation term gives no gradient to the part logits
    part = out.part_logits.detach().requires_grad_()
    out.part_logits = part
    model.loss(out, labels)[0].backward()
    ce_only = torch.autograd.grad(model.ce(part, labels), part)[0]
    torch.testing.assert_close(part.grad, ce_only)


@pytest.mark.parametrize("distinct", [False, True])
def test_detail_map_is_one_channel_per_image_in_training(distinct):
    model = _model(distinct_channels=distinct)
    model.train()
    out = model(torch.randn(3, 3, 48, 48))
    for b in range(3):
        diffs = (out.attention[b] - out.detail_map[b]).abs().flatten(1).amax(1)
        assert diffs.min() == 0
    if not distinct:
        torch.testing.assert_close(out.structure_map, out.attention.mean(1))


def test_distinct_channels_mask():
    maps = torch.zeros(1, 5, 2, 2)
    maps[0, 1] = 1.0
    maps[0, 3] = 1.0  # copy of channel 1
    maps[0, 4] = 2.0
    keep = distinct_channels_mask(maps)[0]
    assert keep.sum() == 3 and keep[4]
    assert keep[[0, 2]].sum() == 1 and keep[[1, 3]].sum() == 1


def test_eval_is_deterministic_and_runs_master_on_the_structure_image():
    model = _model(square_structure=True)
    model.eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a, b = model(images), model(images)
        assert type(a) is TASNOutput and a.part_logits is None
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        assert torch.equal(a.structure_map, a.attention.mean(1))
        assert torch.equal(a.detail_map, a.attention.mean(1))  # official: the average at test time
        assert torch.equal(a.detail_images, b.detail_images)
        master = model.classifier(model.backbone(a.structure_images).mean((2, 3)))
        torch.testing.assert_close(a.logits, master)
    loss, terms = model.loss(a, torch.tensor([0, 1]))
    assert torch.isfinite(loss) and set(terms) == {"att_ce", "master_ce"}


def test_the_mean_prediction_averages_the_master_and_attention_nets_probabilities_in_eval_only():
    torch.manual_seed(0)
    master = _model()
    torch.manual_seed(0)
    mean = _model(prediction="mean")
    images, labels = torch.randn(3, 3, 48, 48), torch.tensor([0, 1, 2])
    master.eval()
    mean.eval()
    with torch.no_grad():
        a, b = master(images), mean(images)
    expect = (a.logits.softmax(1) + a.attention_logits.softmax(1)) / 2
    torch.testing.assert_close(b.logits.exp(), expect)
    assert not torch.allclose(b.logits.softmax(1), a.logits.softmax(1), atol=1e-3)
    master.train()
    mean.train()
    torch.manual_seed(1)
    x = master(images, labels)
    torch.manual_seed(1)
    y = mean(images, labels)
    torch.testing.assert_close(x.logits, y.logits, rtol=0, atol=0)  # training is the same either way


def test_channels_last_gives_the_same_prediction():
    model = _model()
    model.eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(images).logits
        model = model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_panels_show_maps_and_sampled_images():
    model = _model()
    model.eval()
    image = np.random.default_rng(0).random((2, 48, 48, 3))
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).float().permute(0, 3, 1, 2) - mean) / std
    with torch.no_grad():
        out = model(x)
    panels = model.panels(out, 1, image[1])
    titles = [t for t, _ in panels]
    assert titles[0] == "structure map" and titles[1].startswith("detail map (channel ")
    assert titles[2:] == ["structure-preserved", "detail-preserved"]
    for _, arr in panels:
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.min() >= 0 and arr.max() <= 1
    # the picture is the model's own structure-preserved image, de-normalized
    shown = (out.structure_images[1:2] * std + mean)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(panels[2][1], shown, atol=1e-5)


def test_short_run_lowers_the_loss():
    model = _model()
    model.train()
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 48, 48, generator=g), torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [loss for loss, _ in fit_fixed_batch(model, images, labels, opt, 20)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses


def test_engine_trains_and_evaluates_tasn(tmp_path):
    from lookcloser.engine import train

    cfg = tiny_config(epochs=1)
    cfg.model = ModelConfig(method="tasn", backbone=TINY_BACKBONE, options=dict(TINY_OPTS, sample_size=24))
    record = train(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(record["train_loss"]) and 0 <= record["eval_top1"] <= 100
    assert math.isfinite(record["train_distill"]) and (tmp_path / "run" / "last.pt").is_file()


# ---- the official code's options ------------------------------------------------------------------------

def test_official_heads_losses_and_prediction():
    model = _model(heads="official", distill_weight=1.0, detach_soft_targets=False)
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    out = model(torch.randn(4, 3, 48, 48), labels)
    assert out.master_logits.shape == out.part_logits.shape == out.shared_part_logits.shape == (4, 4)
    loss, terms = model.loss(out, labels)
    assert set(terms) == {"att_ce", "master_ce", "shared_master_ce", "part_ce", "distill", "shared_part_ce"}
    expected = terms["att_ce"] + 0.5 * (terms["master_ce"] + terms["part_ce"] + terms["shared_master_ce"]
                                        + terms["shared_part_ce"]) + terms["distill"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the distillation pairs the separate part and master classifiers
    q = torch.softmax(out.part_logits / 10, 1)
    assert terms["distill"] == pytest.approx(-(q * torch.log_softmax(out.master_logits / 10, 1)).sum(1).mean().item(),
                                             rel=1e-5)
    # not detached: the distillation alone sends a gradient into the part classifier
    model.zero_grad()
    model.distillation(out.master_logits, out.part_logits).backward()
    assert model.part_classifier.weight.grad.abs().sum() > 0
    model.zero_grad()
    loss2, _ = model.loss(model(torch.randn(4, 3, 48, 48), labels), labels)
    loss2.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    # the prediction is the shared classifier on the structure image
    model.eval()
    with torch.no_grad():
        e = model(torch.randn(2, 3, 48, 48))
        torch.testing.assert_close(e.logits, model.classifier(model.backbone(e.structure_images).mean((2, 3))))


def test_attention_strides_removed_without_dilation_on_a_resnet():
    torch.manual_seed(0)
    model = create_model("tasn", backbone=TINY_BACKBONE, num_classes=3, attention_backbone="resnet18",
                         attention_strides="remove", attention_stride=8, view_size=64, sample_size=32,
                         att_channels=8)
    net = model.attention_backbone.body
    assert all(m.dilation == (1, 1) for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    # the official pattern: stage strides 1, 1, 2, 1 after the stem
    assert net.layer2[0].conv1.stride == (1, 1) and net.layer3[0].conv1.stride == (2, 2)
    assert net.layer4[0].conv1.stride == (1, 1) and net.layer2[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 96, 96))
    assert out.attention.shape[-2:] == (8, 8)  # 64 / 8
    from lookcloser.errors import LookcloserError

    with pytest.raises(LookcloserError, match="ResNet"):
        _model(attention_strides="remove")  # an EfficientNet has no layer1..layer4


def test_the_default_sampler_gives_back_the_image_under_uniform_attention():
    """Uniform attention must sample a plain resize: the default (centered) grid does, to float rounding; the
    official operator's indexing samples the first column twice and moves the image by about one pixel."""
    import torch.nn.functional as F

    from lookcloser import create_model
    from lookcloser.layers.sampler import attention_sample

    model = create_model("tasn", backbone=TINY_BACKBONE, num_classes=3)
    assert model.grid == "centered"
    torch.manual_seed(0)
    image, uniform = torch.rand(1, 3, 96, 128), torch.ones(1, 12, 16)
    plain = F.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False)
    default = attention_sample(image, uniform, (64, 64)).images
    assert (default - plain).abs().mean() < 1e-6
    official = attention_sample(image, uniform, (64, 64), grid="official").images
    assert (official - plain).abs().mean() > 0.1
