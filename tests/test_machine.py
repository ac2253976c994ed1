"""The machine a run trains on: its thread count from the free cores, its CPU model, the device in words."""

import io
import os

import pytest
import torch


def test_threads_are_picked_from_the_free_cores_unless_given(monkeypatch):
    import lookcloser.engine.machine as T

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for busy, expected in ((0.2, 2), (0.6, 2), (0.8, 1), (1.1, 1), (1.9, 1), (2.7, 1), (0.0, 2)):
        monkeypatch.setattr(T, "busy_cores", lambda busy=busy: busy)
        assert T.auto_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert T.auto_threads() == torch.get_num_threads()  # an explicit setting (torchrun's) is kept


def test_busy_cores_sees_other_work_and_not_this_process_past(monkeypatch):
    import lookcloser.engine.machine as T

    # a fake /proc/stat: between the two samples 100 ticks pass on 2 cores, 150 of the 200 busy
    samples = iter(["cpu  1000 0 0 5000 0 0 0 0 0 0\n", "cpu  1150 0 0 5050 0 0 0 0 0 0\n"])
    real_open = open
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: io.StringIO(next(samples)) if p == "/proc/stat"
                        else real_open(p, *a, **k))
    assert T.busy_cores() == pytest.approx(1.5)
    monkeypatch.setattr("builtins.open", real_open)
    busy = T.busy_cores(0.05)  # the real machine: somewhere between idle and every core busy
    assert 0.0 <= busy <= (os.cpu_count() or 1)


def test_a_cpu_result_names_the_cpu_model(tmp_path):
    """Float results of one seed differ in their last bits between CPU models (measured: the same heads-first
    epoch's loss 2.1277300465 on one machine, 2.1277300539 on another), so the device line names the model."""
    from lookcloser.engine.machine import cpu_model, device_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  9654 96-Core Processor\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(str(info)) == "AMD EPYC 9654 96-Core Processor"
    assert cpu_model(str(tmp_path / "absent")) == ""
    name = device_name("cpu", threads=2)
    assert name.startswith("CPU (") and name.endswith(", 2 threads)")
    if cpu_model():
        assert f", {cpu_model()}, 2 threads)" in name
