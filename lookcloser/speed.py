"""Speed benchmark: training and inference images/s, single-image latency and peak memory per method.

Every method runs on the same backbone, image size, batch, device and precision settings, beside the plain
backbone (method ``baseline``), which is always measured in the same run as the reference. The methods'
timed windows are interleaved: every model is built first, then each round times each method once, so a
change in the machine's load during the run hits every method alike, and the ratios to the baseline are
taken within each round (their median is reported). Inputs are
random tensors already on the device, so the numbers are those of the model alone: no decoding,
augmentation or host-to-device copies.

How it times (the same for every phase): ``warmup`` untimed calls, then ``windows`` timed windows of
``steps`` calls each; on CUDA the device is synchronized at every window boundary (``torch.cuda.synchronize``),
on CPU ``time.perf_counter`` alone is used. Each window gives one value; the reported value is the median
over the windows, and the window values are kept beside it.

- training step: ``out = net(images, labels)``, ``loss, terms = model.loss(out, labels)``, ``backward``,
  optimizer step and ``zero_grad``, with the optimizer of the training loop (``build_optimizer`` at the
  default :class:`~lookcloser.config.TrainConfig`). Like the loop, a step includes the host syncs that the
  method's ``loss`` makes to log its terms.
- inference: ``net(images).logits`` in eval mode under ``torch.no_grad`` (as evaluation does).
- latency: batch 1 in eval mode; here the device is synchronized after every call, because a latency is the
  time until one image's answer exists, not a throughput at batch 1.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start of
the timed windows of each phase (weights, optimizer state for training, activations and workspaces; the
optimizer is freed before inference). On CPU (Linux) it is the process's peak resident set size during the
timed windows of the phase (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``) minus
the resident size just before the method's model was built, after freed heap memory was handed back to the
system (``malloc_trim``): the memory the model, its optimizer state and the phase's working set added. Where
the peak cannot be reset (not Linux) it is ``None``.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from typing import Any, Callable

import torch

from .benchmark import environment, made_by
from .errors import LookcloserError

log = logging.getLogger(__name__)

REFERENCE = "baseline"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_windows(fn: Callable[[], Any], device: torch.device, *, warmup: int, windows: int, steps: int,
                 sync_each: bool = False) -> list[float]:
    """Seconds per call of ``fn`` in each of ``windows`` timed windows of ``steps`` calls, after ``warmup``.

    Args:
        fn: the call to time.
        device: on CUDA the device is synchronized at every window boundary.
        warmup: untimed calls first (compilation, cuDNN autotuning, allocator growth).
        windows: timed windows.
        steps: calls per window.
        sync_each: also synchronize after every call (for latencies).
    """
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(windows):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
            if sync_each:
                _sync(device)
        _sync(device)
        per_call.append((time.perf_counter() - t0) / steps)
    return per_call


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; ``None`` where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Hand freed C-heap memory back to the system (glibc), so a later resident size is not inflated by it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_supported() -> bool:
    """Whether this system reports a resettable resident-set peak (the probe resets it)."""
    return _proc_status_mb("VmHWM") is not None and _reset_rss_peak()


def _peak_mb(device: torch.device, base_mb: float | None) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    return None if peak is None or base_mb is None else max(peak - base_mb, 0.0)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_rss_peak()


def _free(device: torch.device, compiled: bool) -> None:
    gc.collect()
    if compiled:
        import torch._dynamo

        torch._dynamo.reset()  # drop the compiled graphs of the previous method
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        _trim_heap()


class _Bench:
    """One method's model, inputs and step functions, built once and timed in interleaved rounds."""

    def __init__(self, name: str, options: dict, *, backbone: str, num_classes: int, image_size: int,
                 batch_size: int, device: torch.device, amp: bool, channels_last: bool, compile: bool):
        from .config import TrainConfig
        from .engine.schedule import build_optimizer
        from .models import create_model

        torch.manual_seed(0)  # the same random weights and inputs on every run
        self.name, self.options, self.batch_size = name, options, batch_size
        model = create_model(name, backbone=backbone, num_classes=num_classes, pretrained=False, **options)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model = model.to(device).to(memory_format=fmt)
        self.params = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
        images = images.contiguous(memory_format=fmt)
        labels = torch.randint(num_classes, (batch_size,), generator=g).to(device)
        single = images[:1].clone().contiguous(memory_format=fmt)
        # dynamic=False: one specialized graph per shape (batch B and batch 1), as a deployed model would have
        net = torch.compile(model, dynamic=False) if compile else model
        autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
        optimizer = build_optimizer(model, TrainConfig())

        def train_step():
            model.train()
            with torch.autocast(**autocast):
                out = net(images, labels)
                loss, _ = model.loss(out, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def infer(x):
            def step():
                model.eval()
                with torch.no_grad(), torch.autocast(**autocast):
                    return net(x).logits
            return step

        self.steps = {"train": train_step, "infer": infer(images), "latency": infer(single)}


def _peak_memory(name: str, options: dict, settings: dict, device: torch.device, timing: dict) -> dict:
    """Peak memory of one method's training and inference phases, measured with no other model resident."""
    _free(device, compiled=False)
    base_mb = _proc_status_mb("VmRSS") if device.type == "cpu" else None  # what this method adds, on CPU
    b = _Bench(name, options, device=device, **settings)
    peaks = {}
    for phase in ("train", "infer"):
        if phase == "infer":
            b.model.zero_grad(set_to_none=True)  # inference holds no gradients
            _free(device, compiled=False)
        for _ in range(max(1, timing["warmup"])):
            b.steps[phase]()
        _reset_peak(device)
        time_windows(b.steps[phase], device, warmup=0, windows=1, steps=timing["steps"])
        peaks[phase] = _peak_mb(device, base_mb)
    del b
    _free(device, compiled=settings["compile"])
    return peaks


def speed_benchmark(methods: list[str], *, backbone: str = "efficientnet_lite0", num_classes: int = 200,
                    image_size: int = 224, batch_size: int = 32, device: str = "auto", bf16: bool | None = None,
                    channels_last: bool = False, compile: bool = False, warmup: int = 5, windows: int = 5,
                    steps: int = 10, method_options: dict[str, dict] | None = None,
                    command: str = "") -> dict[str, Any]:
    """Time training, inference and single-image latency of each method beside the plain backbone.

    Args:
        methods: registered method names; ``baseline`` is added (first) when missing.
        backbone: timm backbone shared by every method (random weights: speed does not depend on them).
        num_classes: classifier size.
        image_size: input side in pixels, the same for every method.
        batch_size: images per training and inference step.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        bf16: bfloat16 autocast; ``None`` means on with CUDA, off on CPU. On CPU an explicit ``True`` runs
            CPU autocast (recorded in the settings), which the training loop never does.
        channels_last: channels-last memory format for the model and its inputs.
        compile: ``torch.compile`` the model (``dynamic=False``); needs ``warmup >= 1``.
        warmup: untimed calls before each phase (compilation and cuDNN autotuning happen here).
        windows: timed windows per phase; every value is the median over them.
        steps: calls per window.
        method_options: extra keyword options per method, e.g. ``{"tasn": {"sample_size": 224}}``.
        command: the command line, recorded so the table can be reproduced.

    Returns:
        ``{"benchmark", "environment", "settings", "command", "rows"}``; each row holds ``method``,
        ``options``, ``params``, ``train_images_per_s``, ``infer_images_per_s``, ``latency_ms`` (medians),
        ``peak_memory_mb`` (``{"train", "infer"}`` in MiB; ``None`` on a CPU system whose peak cannot be
        reset) and ``windows`` (each value's list).
    """
    from .engine.distributed import resolve_device
    from .models import check_methods

    names = check_methods([REFERENCE] + [m for m in dict.fromkeys(methods) if m != REFERENCE])
    method_options = {k: dict(v) for k, v in (method_options or {}).items()}
    stray = sorted(set(method_options) - set(names))
    if stray:
        raise LookcloserError(f"options were given for {stray}, which are not benchmarked; add them to the methods")
    for what, value, low in (("image_size", image_size, 8), ("batch_size", batch_size, 1), ("warmup", warmup, 0),
                             ("windows", windows, 1), ("steps", steps, 1), ("num_classes", num_classes, 1)):
        if value < low:
            raise LookcloserError(f"{what} must be at least {low}, got {value}")
    if compile and warmup < 1:
        raise LookcloserError("with compile, warmup must be at least 1 so that compilation is not timed")
    dev = resolve_device(device)
    amp = dev.type == "cuda" if bf16 is None else bool(bf16)
    cpu_peak = dev.type == "cpu" and cpu_peak_supported()
    cudnn_before = torch.backends.cudnn.benchmark
    if dev.type == "cuda":
        # let cuDNN pick its fastest kernels during warm-up; this is where channels-last gains show
        torch.backends.cudnn.benchmark = True
    settings = {
        "backbone": backbone, "pretrained": False, "num_classes": num_classes, "image_size": image_size,
        "batch_size": batch_size, "device": str(dev), "bf16": amp,
        "autocast": f"{dev.type} bfloat16" if amp else None, "channels_last": channels_last, "compile": compile,
        "cudnn_benchmark": dev.type == "cuda", "warmup": warmup, "windows": windows, "steps": steps,
        "threads": torch.get_num_threads(), "method_options": method_options,
        "data": "random tensors on the device (no data loading, decoding or augmentation)",
        "optimizer": "build_optimizer(TrainConfig()): SGD momentum 0.9, weight decay 1e-4",
        "peak_memory": ("torch.cuda.max_memory_allocated per phase" if dev.type == "cuda" else
                        "peak resident set size per phase (VmHWM, reset before the phase) minus the resident "
                        "size before the model was built" if cpu_peak else
                        "not measured (the resident-set peak of this system cannot be reset)"),
    }
    build = dict(backbone=backbone, num_classes=num_classes, image_size=image_size, batch_size=batch_size,
                 amp=amp, channels_last=channels_last, compile=compile)
    timing = dict(warmup=warmup, windows=windows, steps=steps)
    try:
        benches = [_Bench(n, method_options.get(n, {}), device=dev, **build) for n in names]
        # interleaved: every round times each method once, so a change of the machine's load hits all alike
        per_call: dict[str, dict[str, list[float]]] = {b.name: {} for b in benches}
        for phase in ("train", "infer", "latency"):
            for b in benches:
                for _ in range(warmup):
                    b.steps[phase]()
            for _ in range(windows):
                for b in benches:
                    t = time_windows(b.steps[phase], dev, warmup=0, windows=1, steps=steps,
                                     sync_each=phase == "latency")
                    per_call[b.name].setdefault(phase, []).extend(t)
        params = {b.name: b.params for b in benches}
        del benches
        peaks = {n: _peak_memory(n, method_options.get(n, {}), build, dev, timing) if dev.type == "cuda" or cpu_peak
                 else {"train": None, "infer": None} for n in names}
    finally:
        torch.backends.cudnn.benchmark = cudnn_before
    ref = per_call[REFERENCE]
    rows = []
    for name in names:
        t = per_call[name]
        train_ips = [batch_size / x for x in t["train"]]
        infer_ips = [batch_size / x for x in t["infer"]]
        latency_ms = [1000 * x for x in t["latency"]]
        # ratios to the baseline within each round, then their median: the load of a round cancels out
        ratios = {k: statistics.median(r / b for r, b in zip(mine, base)) for k, mine, base in (
            ("train_images_per_s", t["train"], ref["train"]), ("infer_images_per_s", t["infer"], ref["infer"]),
            ("latency_ms", t["latency"], ref["latency"]))}
        ratios["train_images_per_s"] = 1 / ratios["train_images_per_s"]  # time ratios → speed ratios
        ratios["infer_images_per_s"] = 1 / ratios["infer_images_per_s"]
        rows.append({
            "method": name, "options": method_options.get(name, {}), "params": params[name],
            "train_images_per_s": statistics.median(train_ips), "infer_images_per_s": statistics.median(infer_ips),
            "latency_ms": statistics.median(latency_ms), "ratio_to_baseline": ratios,
            "peak_memory_mb": peaks[name],
            "windows": {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips, "latency_ms": latency_ms},
        })
        log.info("%s: train %.1f images/s, inference %.1f images/s, latency %.2f ms", name,
                 rows[-1]["train_images_per_s"], rows[-1]["infer_images_per_s"], rows[-1]["latency_ms"])
    return {"benchmark": "speed", "environment": environment(), "settings": settings, "command": command,
            "rows": rows}


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The speed benchmark as a Markdown table (ratios to the baseline in brackets) with its setting below."""
    s, env, rows = result["settings"], result["environment"], result["rows"]
    ref = next((r for r in rows if r["method"] == REFERENCE), None)

    def rel(row: dict, key: str) -> str:
        if "ratio_to_baseline" in row:  # the median of the per-round ratios
            return f" ({row['ratio_to_baseline'][key]:.2f}×)"
        return f" ({row[key] / ref[key]:.2f}×)" if ref and ref[key] > 0 else ""

    lines = ["| method | params (M) | train images/s | inference images/s | latency, batch 1 (ms) | "
             "peak train memory (MB) | peak inference memory (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['params'] / 1e6:.2f} | {r['train_images_per_s']:.1f}"
                     f"{rel(r, 'train_images_per_s')} | {r['infer_images_per_s']:.1f}{rel(r, 'infer_images_per_s')} | "
                     f"{r['latency_ms']:.2f}{rel(r, 'latency_ms')} | {_mb(r['peak_memory_mb']['train'])} | "
                     f"{_mb(r['peak_memory_mb']['infer'])} |")
    flags = ", ".join(f"{k} {'on' if s[k] else 'off'}" for k in ("bf16", "channels_last", "compile"))
    if s["bf16"] and not s["device"].startswith("cuda"):
        flags += " (CPU bfloat16 autocast; the training loop uses bf16 on CUDA only)"
    opts = "; ".join(f"{m}: " + ", ".join(f"{k}={v!r}" for k, v in o.items())
                     for m, o in s["method_options"].items() if o)
    lines += [
        "",
        f"Backbone `{s['backbone']}` (random weights), image {s['image_size']}, batch {s['batch_size']}, "
        f"{s['num_classes']} classes; {flags}. Data: {s['data']}, so these are the model's speeds alone.",
        f"Medians over {s['windows']} rounds; each round times every method once ({s['steps']} steps, after "
        f"{s['warmup']} warm-up steps){', device synchronized at window boundaries' if s['device'].startswith('cuda') else ''}; "
        "a training step is forward, loss, backward and SGD step; latency is one image in eval mode, "
        "synchronized per call; ratios in brackets are to the baseline, the median of the rounds' ratios.",
        f"Peak memory: {s['peak_memory']}.",
    ]
    if opts:
        lines.append(f"Method options: {opts}.")
    lines.append(f"Device {env['device']}; torch {env['torch']}, timm {env['timm']}, {made_by(env)}, "
                 f"{env['date']} UTC.")
    if result.get("command"):
        lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"
