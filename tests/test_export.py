"""Export: every registered method to ONNX (checked in onnxruntime), TorchScript and torch.export."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lookcloser.models  # noqa: F401  (registers every method)
from lookcloser import export as ex
from lookcloser.data import build_transform, open_dataset
from lookcloser.engine.checkpoint import FORMAT, VERSION, atomic_save, load_checkpoint
from lookcloser.errors import LookcloserError
from lookcloser.export import default_export_path, export_model, load_exported
from lookcloser.models import create_model, list_models

from tests.conftest import TINY_BACKBONE

SIZE = 32
# the smallest internal sizes of each method, so every export runs in well under a second
OPTIONS = {
    "baseline": {},
    "tasn": dict(view_size=SIZE, sample_size=SIZE, att_channels=8),
    "wsdan": dict(num_maps=4),
    "wsban": dict(num_maps=4),
    "rra": dict(patch_size=16, steps=3, hidden_size=8, num_proposals=2),
}
TOL = 1e-4

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def synth():
    return open_dataset("synth:classes=4,train=2,test=2,size=48", "test")


def _calibrate(model: nn.Module) -> None:
    """Make a random model's predictions differ from image to image and from uniform.

    At initialization the batch norms' running statistics do not match the activations, so every image
    gets nearly the same, nearly uniform probabilities and a 1e-4 bound would prove nothing. The
    statistics are set from one random batch and the linear layers sharpened.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average: one batch sets the statistics
                m.reset_running_stats()
        model.train()
        model(torch.randn(8, 3, SIZE, SIZE))
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synth):
    """One checkpoint file per method, in the dict layout the trainer writes."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for method in list_models():
        torch.manual_seed(0)
        model = create_model(method, backbone=TINY_BACKBONE, num_classes=4, **OPTIONS.get(method, {}))
        _calibrate(model)
        paths[method] = _save_checkpoint(model, synth, folder / f"{method}.pt")
    return paths


def _save_checkpoint(model: nn.Module, synth, path):
    """``model`` as a checkpoint file in the dict layout the trainer writes, for images of side SIZE."""
    ckpt = {"format": FORMAT, "version": VERSION, "method": model.method_name, "build_args": model.build_args,
            "classes": list(synth.classes),
            "preprocess": {"image_size": SIZE, "resize_ratio": 1.143, "mean": list(model.mean), "std": list(model.std)},
            "model": model.state_dict(), "epoch": 1, "best_top1": 0.0, "metrics": {}, "config": {}}
    atomic_save(ckpt, path)
    return path


def _real_batch(synth, ckpt: dict) -> torch.Tensor:
    """The synthetic test images through the evaluation transform, plus a mirrored one: 3×3×S×S."""
    pre = ckpt["preprocess"]
    t = build_transform(False, pre["image_size"], pre["mean"], pre["std"], resize_ratio=pre["resize_ratio"])
    x = torch.stack([t(synth.load(i)) for i in range(len(synth))])
    return torch.cat([x, x[:1].flip(3)])


def _compare(checkpoint, run, synth) -> float:
    """Max |Δprobability| between PyTorch and ``run`` on random batches of 1 and 3 and on real images."""
    model, ckpt = load_checkpoint(checkpoint)
    g = torch.Generator().manual_seed(123)
    batches = [torch.randn(1, 3, SIZE, SIZE, generator=g), torch.randn(3, 3, SIZE, SIZE, generator=g),
               _real_batch(synth, ckpt)]
    diff = 0.0
    for x in batches:
        with torch.no_grad():
            expected = model(x).logits.float().softmax(1).numpy()
        got = run(x)
        assert got.shape == (len(x), 4)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
        diff = max(diff, float(np.abs(got - expected).max()))
    # the bound only means something if the predictions vary: they do after _calibrate
    assert expected.std(0).mean() > 0.02, expected
    return diff


def test_every_method_is_covered():
    assert set(OPTIONS) == set(list_models()), "add the new method's small options to OPTIONS"


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_onnx_matches_pytorch(method, checkpoints, synth, tmp_path):
    out = tmp_path / f"{method}.onnx"
    info = export_model(checkpoints[method], out)
    assert out.is_file() and info["path"] == str(out) and info["format"] == "onnx" and info["opset"] == 18
    assert info["batch_sizes"] == [2, 3] and info["max_abs_diff"] < TOL
    assert "dynamo=False" in info["exporter"]
    # the batch dimension is symbolic in the graph, the image side fixed
    import onnx

    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    diff = _compare(checkpoints[method], load_exported(out), synth)
    assert diff < TOL, f"{method}: onnxruntime differs from PyTorch by {diff:.2e}"

    side = json.loads((tmp_path / f"{method}.onnx.json").read_text())
    _, ckpt = load_checkpoint(checkpoints[method])
    assert side["format"] == "lookcloser-export" and side["method"] == method
    assert side["classes"] == ckpt["classes"]
    pre = side["preprocess"]
    assert pre["image_size"] == SIZE and pre["resize"] == 37
    assert pre["mean"] == pytest.approx(ckpt["preprocess"]["mean"])
    assert side["input"]["shape"] == ["batch", 3, SIZE, SIZE] and side["output"]["shape"] == ["batch", 4]
    assert side["export"]["max_abs_diff"] == info["max_abs_diff"]


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_torchscript_round_trip(method, checkpoints, synth, tmp_path):
    out = tmp_path / f"{method}.torchscript.pt"
    info = export_model(checkpoints[method], out, format="torchscript")
    assert info["max_abs_diff"] <= 1e-6 and "opset" not in info
    assert _compare(checkpoints[method], load_exported(out), synth) <= 1e-6  # the same kernels: equal


@pytest.mark.parametrize("method", ["tasn", "rra"])
def test_exported_program(method, checkpoints, synth, tmp_path):
    out = tmp_path / f"{method}.pt2"
    info = export_model(checkpoints[method], out, format="exported_program")
    assert info["max_abs_diff"] <= 1e-6
    assert _compare(checkpoints[method], load_exported(out), synth) <= 1e-6


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_eval_is_deterministic(method, checkpoints):
    model, _ = load_checkpoint(checkpoints[method])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x).logits
        torch.manual_seed(2)  # a random draw in eval would now give another answer
        b = model(x).logits
    assert torch.equal(a, b)


def test_a_glance_smaller_than_the_image_exports_its_antialiased_resize(synth, tmp_path):
    """PyTorch's antialiased resize has no symbolic in the TorchScript-based exporter; it is written as ONNX's
    Resize with antialias (opset 18), and onnxruntime agrees with PyTorch. Opset 17 is one clear sentence."""
    torch.manual_seed(0)
    model = create_model("baseline", backbone=TINY_BACKBONE, num_classes=4, view_size=SIZE // 2 + 3)
    _calibrate(model)
    _save_checkpoint(model, synth, tmp_path / "glance.pt")
    info = export_model(tmp_path / "glance.pt", tmp_path / "glance.onnx")
    assert info["opset"] == 18 and info["max_abs_diff"] < TOL
    import onnx

    ops = {n.op_type: n for n in onnx.load(str(tmp_path / "glance.onnx")).graph.node}
    assert any(a.name == "antialias" and a.i == 1 for a in ops["Resize"].attribute)
    assert _compare(tmp_path / "glance.pt", load_exported(tmp_path / "glance.onnx"), synth) < TOL
    with pytest.raises(LookcloserError, match="resizes with antialiasing .* use --opset 18"):
        export_model(tmp_path / "glance.pt", tmp_path / "g17.onnx", opset=17)
    assert not (tmp_path / "g17.onnx").exists()


def test_checkpoint_dict_and_image_size(checkpoints, tmp_path):
    ckpt = torch.load(checkpoints["baseline"], weights_only=True)
    info = export_model(ckpt, tmp_path / "b.onnx", image_size=40)
    assert info["image_size"] == 40 and info["max_abs_diff"] < TOL
    assert load_exported(tmp_path / "b.onnx")(np.zeros((5, 3, 40, 40), np.float32)).shape == (5, 4)


def test_failed_verification_writes_nothing(checkpoints, tmp_path, monkeypatch):
    real = ex._runner

    def off_by_a_little(path, format, threads):
        run = real(path, format, threads)
        return lambda x: run(x) + 2e-4

    monkeypatch.setattr(ex, "_runner", off_by_a_little)
    with pytest.raises(LookcloserError, match="differs from PyTorch by 2.0"):
        export_model(checkpoints["baseline"], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_onnx_packages(module, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(LookcloserError, match=r"pip install lookcloser\[export\]"):
        export_model(checkpoints["baseline"], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments(checkpoints, tmp_path):
    with pytest.raises(LookcloserError, match="format must be one of"):
        export_model(checkpoints["baseline"], tmp_path / "m.x", format="tflite")
    with pytest.raises(LookcloserError, match="opset must be at least 16"):
        export_model(checkpoints["tasn"], tmp_path / "m.onnx", opset=15)
    with pytest.raises(LookcloserError, match="is the checkpoint itself"):
        export_model(checkpoints["baseline"], checkpoints["baseline"], format="torchscript")
    p = checkpoints["baseline"]
    assert default_export_path(p) == p.with_name("baseline.onnx")
    assert default_export_path(p, "torchscript") == p.with_name("baseline.torchscript.pt")
    with pytest.raises(LookcloserError, match="does not exist"):
        default_export_path(p.parent / "missing.pt")
