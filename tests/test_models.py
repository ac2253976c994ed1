"""Registry, backbones and the baseline, on every registered method where it applies."""

import pytest
import torch

from lookcloser import create_model, list_models
from lookcloser.backbones import Backbone
from lookcloser.errors import LookcloserError
from lookcloser.models import ModelOutput, register_model
from tests.conftest import TINY_BACKBONE


def test_registry_lists_methods_and_refuses_duplicates():
    assert {"baseline", "tasn"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("baseline")(object)
    with pytest.raises(LookcloserError, match="no option"):
        create_model("baseline", backbone=TINY_BACKBONE, num_classes=3, not_an_option=1)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_backbone_output_stride(stride):
    bb = Backbone(TINY_BACKBONE, output_stride=stride)
    assert bb(torch.randn(1, 3, 64, 64)).shape[-1] == 64 // stride


def test_backbone_stage_features():
    bb = Backbone(TINY_BACKBONE, stage=2, output_stride=8)
    f = bb(torch.randn(2, 3, 64, 64))
    assert f.shape == (2, bb.channels, 8, 8) and bb.channels == 32


def test_packaged_pretrained_weights_reach_the_backbone():
    from lookcloser.weights import find_packaged_weights, read_state_dict, remap_efficientnet_pytorch

    bb = Backbone("efficientnet_lite0", pretrained=True, output_stride=16)
    assert bb.name == "tf_efficientnet_lite0"
    ref = remap_efficientnet_pytorch(read_state_dict(find_packaged_weights("tf_efficientnet_lite0")))
    assert torch.equal(bb.body.conv_stem.weight, ref["conv_stem.weight"])
    assert torch.equal(bb.body.blocks[5][0].conv_pw.weight, ref["blocks.5.0.conv_pw.weight"])
    assert bb.mean == (0.5, 0.5, 0.5)
    staged = Backbone("efficientnet_lite0", pretrained=True, stage=3)
    assert torch.equal(staged.body.blocks[3][0].conv_pw.weight, ref["blocks.3.0.conv_pw.weight"])


def test_weights_file_is_loaded_and_reported(tmp_path):
    src = Backbone(TINY_BACKBONE)
    sd = {k[len("body."):]: v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "w.pth")
    bb = Backbone(TINY_BACKBONE, weights=str(tmp_path / "w.pth"))
    for (k, a), b in zip(src.state_dict().items(), bb.state_dict().values()):
        assert torch.equal(a, b), k
    assert "classifier" in bb.load_report  # the file has no classifier: reported, not silent


def test_pretrained_unavailable_is_a_clear_error():
    with pytest.raises(LookcloserError, match="--weights"):
        Backbone("resnet18", pretrained=True)


# TASN's default 512-channel attention head costs seconds per step even on the tiny backbone
SMALL = {"tasn": {"att_channels": 8}}


@pytest.mark.parametrize("name", list_models())
def test_forward_output_type_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, backbone=TINY_BACKBONE, num_classes=5, **SMALL.get(name, {}))
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 3])
    model.train()
    out = model(x, y)
    assert isinstance(out, ModelOutput) and out.logits.shape == (4, 5)
    loss, terms = model.loss(out, y)
    assert torch.isfinite(loss) and terms
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    model.eval()
    with torch.no_grad():
        ev = model(x)
    assert type(ev) is type(out) and ev.logits.shape == (4, 5)


def test_baseline_cam_is_the_predicted_class_map():
    torch.manual_seed(0)
    model = create_model("baseline", backbone=TINY_BACKBONE, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        fmap = model.backbone(x)
    k = out.logits.argmax(1)
    expect = torch.einsum("bc,bchw->bhw", model.classifier.weight[k], fmap)
    assert torch.allclose(out.attention[:, 0], expect, atol=1e-5)
    # the CAM's spatial mean plus the bias is the logit of that class
    assert torch.allclose(expect.mean((1, 2)) + model.classifier.bias[k], out.logits.gather(1, k[:, None])[:, 0],
                          atol=1e-5)


def test_vgg_backbone_drops_its_unused_fc_head():
    bb = Backbone("vgg11")
    assert not any(n.startswith("body.pre_logits") for n, _ in bb.named_parameters())
    f = bb(torch.randn(1, 3, 64, 64))
    assert f.shape == (1, 512, 2, 2)


def test_the_static_catalog_lists_what_the_registry_builds():
    from lookcloser.models import list_models, model_options
    from lookcloser.models.catalog import catalog

    listed = catalog()
    assert list(listed) == list_models()
    for name, options in listed.items():
        live = {k: v for k, v in model_options(name).items() if k not in ("backbone", "num_classes", "pretrained")}
        assert options == live, name
