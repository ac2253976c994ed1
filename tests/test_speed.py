import math
import statistics
import time

import pytest
import torch

import lookcloser.speed as speed
from lookcloser.errors import LookcloserError
from lookcloser.speed import markdown_table, speed_benchmark, time_windows
from tests.conftest import TINY_BACKBONE

TINY = dict(backbone=TINY_BACKBONE, num_classes=4, image_size=32, batch_size=2, device="cpu", bf16=None,
            channels_last=False, compile=False, warmup=1, windows=3, steps=1)
WSDAN_TINY = {"wsdan": dict(output_stride=16, num_maps=4)}


@pytest.fixture(scope="module")
def result():
    # "baseline" is not asked for: it must be added as the reference
    return speed_benchmark(["wsdan"], method_options=WSDAN_TINY, command="lookcloser benchmark speed", **TINY)


def test_rows_structure_and_baseline_first(result):
    assert [r["method"] for r in result["rows"]] == ["baseline", "wsdan"]
    assert result["rows"][1]["options"] == WSDAN_TINY["wsdan"]
    s = result["settings"]
    assert (s["backbone"], s["image_size"], s["batch_size"], s["device"]) == (TINY_BACKBONE, 32, 2, "cpu")
    assert s["bf16"] is False and s["autocast"] is None  # auto: off on CPU
    assert (s["warmup"], s["windows"], s["steps"]) == (1, 3, 1)
    assert {"device", "torch", "timm", "commit", "date"} <= set(result["environment"])
    assert result["command"] == "lookcloser benchmark speed"


@pytest.mark.parametrize("key", ["train_images_per_s", "infer_images_per_s", "latency_ms"])
def test_medians_of_positive_finite_windows(result, key):
    for row in result["rows"]:
        win = row["windows"][key]
        assert len(win) == 3
        assert all(math.isfinite(v) and v > 0 for v in win)
        assert row[key] == statistics.median(win)
    assert result["rows"][1]["params"] > 0


def test_cpu_peak_memory_counts_what_the_phase_adds(result):
    if not speed.cpu_peak_supported():  # not Linux: the peak cannot be reset, so none is reported
        for row in result["rows"]:
            assert row["peak_memory_mb"] == {"train": None, "infer": None}
        assert "not measured" in result["settings"]["peak_memory"]
        return
    for row in result["rows"]:
        mem = row["peak_memory_mb"]
        assert mem["train"] > 0 and mem["infer"] >= 0
    assert "VmHWM" in result["settings"]["peak_memory"]


@pytest.mark.skipif(not speed.cpu_peak_supported(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_sees_a_transient_allocation_and_resets():
    base = speed._proc_status_mb("VmRSS")
    dev = torch.device("cpu")
    speed._reset_peak(dev)
    big = torch.ones(64 * 2**20)  # 256 MiB, touched, then freed
    del big
    peak = speed._peak_mb(dev, base)
    assert 240 < peak < 400
    speed._free(dev, compiled=False)
    speed._reset_peak(dev)
    assert speed._peak_mb(dev, base) < 100  # the reset forgets the earlier peak


def test_markdown_table_one_row_per_method(result):
    md = markdown_table(result)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["baseline", "wsdan"]
    assert "(1.00×)" in rows[0]  # the baseline is its own reference
    assert "random tensors" in md and "torch" in md and "Command: `lookcloser benchmark speed`" in md
    assert "output_stride=16" in md


def test_unknown_method_and_bad_settings_raise():
    with pytest.raises(LookcloserError, match="unknown method"):
        speed_benchmark(["no_such_method"], **TINY)
    with pytest.raises(LookcloserError, match="not benchmarked"):
        speed_benchmark([], method_options={"tasn": {"sample_size": 24}}, **TINY)
    with pytest.raises(LookcloserError, match="windows"):
        speed_benchmark([], **{**TINY, "windows": 0})
    with pytest.raises(LookcloserError, match="warmup"):
        speed_benchmark([], **{**TINY, "compile": True, "warmup": 0})


def test_methods_are_deduplicated_and_their_windows_interleaved(monkeypatch):
    built, calls = [], []

    class Fake:
        def __init__(self, name, options, **kw):
            built.append(name)
            self.name, self.params = name, 1
            self.steps = {phase: (lambda phase=phase: calls.append((phase, name)))
                          for phase in ("train", "infer", "latency")}

    monkeypatch.setattr(speed, "_Bench", Fake)
    monkeypatch.setattr(speed, "_peak_memory", lambda *a, **k: {"train": None, "infer": None})
    result = speed_benchmark(["wsdan", "baseline", "wsdan", "tasn"], **{**TINY, "warmup": 0, "windows": 2})
    assert built == ["baseline", "wsdan", "tasn"]
    # each round times every method once, phase after phase
    names = ["baseline", "wsdan", "tasn"]
    assert calls == [(p, n) for p in ("train", "infer", "latency") for _ in range(2) for n in names]
    assert all(r["ratio_to_baseline"]["train_images_per_s"] > 0 for r in result["rows"])


def test_time_windows_counts_calls_and_times_them():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    win = time_windows(fn, torch.device("cpu"), warmup=2, windows=3, steps=2)
    assert len(calls) == 2 + 3 * 2
    assert len(win) == 3 and all(0.002 <= w < 0.5 for w in win)
