"""timm's pretrained route, tested offline through the real code: a Hugging Face cache laid out as the hub
client writes it, in a temporary folder, with the weights of a tiny timm model; no mock of timm or the hub."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_BACKBONE, TINY_VIT

ROOT = Path(__file__).resolve().parent.parent
TAG = "r160_in1k"  # timm's pretrained tag of the tiny test model: hf_hub_id timm/test_efficientnet.r160_in1k


def _hub_cache(root: Path, repo: str, tensors: dict) -> Path:
    """``root/models--ORG--NAME/{refs/main, snapshots/REV/model.safetensors}``, as hf_hub_download leaves it."""
    from safetensors.torch import save_file

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / "model.safetensors"))
    return root


def _run(code: str, cache: Path, offline: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    if not offline:  # no offline switch, and a hub that cannot answer: a closed port on this machine
        env.pop("HF_HUB_OFFLINE")
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache holding the tiny EfficientNet's and the tiny ViT's weights (``expected.pt``,
    ``expected-vit.pt``: random tensors that the test knows and no one else has)."""
    import timm

    root = tmp_path_factory.mktemp("hub")
    for name, file in ((TINY_BACKBONE, "expected.pt"), (TINY_VIT, "expected-vit.pt")):
        torch.manual_seed(123)
        tensors = timm.create_model(name).state_dict()
        _hub_cache(root, f"timm/{name}.{TAG}", tensors)
        torch.save(tensors, root / file)
    return root


def test_pretrained_loads_exactly_the_cached_tensors_into_every_backbone_of_two_methods(cache):
    code = f"""
import json, torch
from lookcloser import create_model
expected = torch.load({str(cache / 'expected.pt')!r}, weights_only=True)
report = {{}}
for method, opts in (("baseline", {{}}), ("tasn", {{"att_channels": 8}})):
    model = create_model(method, backbone={TINY_BACKBONE!r}, num_classes=3, pretrained=True, **opts)
    backbones = [m for m in model.modules() if type(m).__name__ == "Backbone"]
    same = []
    for b in backbones:
        got = b.body.state_dict()
        same.append(all(torch.equal(got[k], expected[k]) for k in got))
    report[method] = same
print(json.dumps(report))
"""
    p = _run(code, cache)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report == {"baseline": [True], "tasn": [True, True]}  # TASN: the master net and the attention net


def test_a_transformer_loads_exactly_the_cached_tensors_for_two_methods(cache):
    """The ViT's tensors (position embeddings at the pretrained grid included) reach the backbone of the
    baseline and of WS-DAN, which then run at another image size than the weights were trained at."""
    code = f"""
import json, torch
from lookcloser import create_model
expected = torch.load({str(cache / 'expected-vit.pt')!r}, weights_only=True)
report = {{}}
for method in ("baseline", "wsdan"):
    model = create_model(method, backbone={TINY_VIT!r}, num_classes=3, pretrained=True).eval()
    got = model.backbone.body.state_dict()
    same = all(torch.equal(got[k], expected[k]) for k in got) and "pos_embed" in got
    with torch.no_grad():
        shape = list(model.backbone(torch.randn(1, 3, 96, 96)).shape)
    report[method] = [same, len(got), shape]
print(json.dumps(report))
"""
    p = _run(code, cache)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    keys = len(torch.load(cache / "expected-vit.pt", weights_only=True))
    for method in ("baseline", "wsdan"):
        same, count, shape = report[method]
        assert same and count == keys - 2, report  # all but the classifier head (head.weight, head.bias)
        assert shape == [1, 64, 6, 6]


def test_a_training_run_from_the_cache_and_the_error_without_it(cache, tmp_path):
    train = ["lookcloser.cli", "train", "--data", "synth:classes=3,train=4,test=2,size=32", "--backbone",
             f"{TINY_BACKBONE}.{TAG}", "--pretrained", "--epochs", "1", "--image-size", "32", "--batch-size", "12",
             "--eval-every", "0", "--workers", "0", "--device", "cpu", "--quiet"]
    p = _run(f"import sys; from lookcloser.cli import main; sys.argv = {[*train, '--out', str(tmp_path / 'r')]!r}; main()",
             cache)
    assert p.returncode == 0, p.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # pretrained: heads first by default, here the most epochs (12 images at batch 12 are 1 step an epoch)
    assert [r["phase"] for r in records] == ["heads"] * 30 + ["all"]
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    p = _run(f"import sys; from lookcloser.cli import main; sys.argv = {[*train, '--out', str(tmp_path / 's')]!r}; main()",
             empty)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr
    assert str(empty) in errors[0] and "--weights FILE" in errors[0] and "HF_HUB_OFFLINE" in errors[0]


def test_a_name_timm_has_no_weights_for_is_one_sentence():
    from lookcloser.backbones import Backbone
    from lookcloser.errors import LookcloserError

    with pytest.raises(LookcloserError, match="timm knows no pretrained tag 'nothing' for test_efficientnet "
                                              r"\(its tags: r160_in1k\)"):
        Backbone(f"{TINY_BACKBONE}.nothing", pretrained=True)
    with pytest.raises(LookcloserError, match="timm has no pretrained weights for 'resnet50t'.*--weights FILE"):
        Backbone("resnet50t", pretrained=True)  # a model timm has no weights for at all


def test_without_the_offline_switch_an_unanswering_hub_falls_back_to_the_cache(cache, tmp_path):
    """No HF_HUB_OFFLINE and a hub that does not answer: the cache is read at once (the hub client's retries
    are skipped); with nothing cached, the sentence says the hub did not answer."""
    code = f"""
import torch
from lookcloser.backbones import Backbone
expected = torch.load({str(cache / 'expected.pt')!r}, weights_only=True)
got = Backbone({TINY_BACKBONE!r}, pretrained=True).body.state_dict()
print(all(torch.equal(got[k], expected[k]) for k in got))
"""
    p = _run(code, cache, offline=False)
    assert p.returncode == 0 and p.stdout.strip().endswith("True"), p.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _run(code, empty, offline=False)
    assert p.returncode != 0 and "did not answer within 3 s" in p.stderr and str(empty) in p.stderr
