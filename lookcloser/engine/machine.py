"""The machine a run trains on: how many threads it gets, what its CPU is called, and the device in words.

A result names the device it was computed on (float results of the same code and seed differ in their last
bits between CPU models), and a training process on a shared 2-core machine picks its thread count from the
cores other work leaves free.
"""

from __future__ import annotations

import math
import os
import platform
import time

import torch


def busy_cores(window: float = 0.3) -> float:
    """How many of the machine's cores other work keeps busy right now: the non-idle share of all CPU time
    over ``window`` seconds (from /proc/stat) times the core count, while this process waits. A load average
    would count this process's own past work, e.g. the model trained just before in the same process.
    Elsewhere than Linux: the last minute's load average."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user nice system idle iowait irq softirq steal (guest is inside user)

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def auto_threads() -> int:
    """Intra-op threads for a training process: OMP_NUM_THREADS where set, else the cores that other work
    does not keep busy (``busy_cores``; a core counts as busy from 0.7 of it), at least one. Measured on
    this project's 2-core machine: idle, 2 threads trained the baseline at 19.9 images/s against 16.6 with
    1; while other jobs kept both cores busy, 1 thread reached 12.4 images/s against 6.6 with PyTorch's
    default of 2."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, cores - math.floor(busy_cores() + 0.3)))


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name where the system says it (Linux's ``/proc/cpuinfo``), else ``""``. Float results
    of the same code and seed differ in their last bits between CPU models, so a result names it."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return ""


def device_name(device: torch.device | str, threads: int | None = None) -> str:
    """What a result was computed on, in words: the GPU's name, or ``CPU (x86_64, MODEL)`` (with ``threads``:
    ``CPU (x86_64, MODEL, 2 threads)``; the model where the system names it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = cpu_model()
        return (f"CPU ({platform.processor() or platform.machine()}" + (f", {model}" if model else "")
                + (f", {threads} threads)" if threads else ")"))
    return device.type
