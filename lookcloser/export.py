"""Export a trained model to ONNX, TorchScript or a ``torch.export`` program, checked against PyTorch.

The exported module is the method's inference path wrapped as ``images → probabilities``:

* input ``images``: B×3×S×S float32, already preprocessed (S is the checkpoint's image size unless
  ``image_size`` says otherwise; the batch size B is dynamic, the side is fixed at export time);
* output ``probabilities``: B×K float32, the softmax of the method's ``.logits`` (for WS-DAN and RRA's
  ``fusion="probs"``, whose ``.logits`` are log-probabilities, this is their mean probability).

Preprocessing is the caller's, exactly as :func:`lookcloser.data.build_transform` does it at evaluation:
RGB image, resize the short side to ``resize`` (bilinear, antialiased), center-crop S×S, scale to [0, 1],
subtract ``mean`` and divide by ``std`` per channel. A JSON sidecar written next to the file
(``<file>.json``, e.g. ``model.onnx.json``) holds those numbers and the class names, so a consumer
needs nothing from this package.

ONNX files come from the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): on
torch 2.14 it exports every registered method, TASN's sampler and the RoIAlign crops included, in a
fraction of a second, where the dynamo exporter needs ``onnxscript``, cannot write opset 17 and fails
on RRA's proposals. Antialiased resizes (a glance smaller than the image; a transformer's position
embeddings resampled to the image's grid) have no symbolic in that exporter: from opset 18, ONNX's
``Resize`` has an ``antialias`` attribute, and :func:`_antialiased_resize` writes PyTorch's antialiased
bilinear and bicubic resizes as that op (they agree to ~1e-6), so 18 is the default opset. Every file is checked before it is kept: the exported model and the PyTorch model
see the same random batches of 2 and 3 images (the second proves the dynamic batch), ONNX files run in
onnxruntime on the CPU, and the largest absolute difference in probability must stay under 1e-4.

Example::

    from lookcloser.export import export_model, load_exported
    info = export_model("runs/tasn", "tasn.onnx")        # {"path", "sidecar", "max_abs_diff", ...}
    probs = load_exported("tasn.onnx")(images)           # N×3×S×S normalized array → N×K
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .data.transforms import resize_side
from .engine.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
from .errors import LookcloserError

FORMATS = ("onnx", "torchscript", "exported_program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
TOLERANCE = 1e-4
MIN_OPSET = 16  # grid_sample (TASN) and RoIAlign with half-pixel coordinates (WS-DAN, RRA) need it
DEFAULT_OPSET = 18  # Resize with antialias: glances smaller than the image, transformers' position embeddings
AA_OPSET = 18
VERIFY_BATCHES = (2, 3)
SIDECAR_FORMAT = "lookcloser-export"
SIDECAR_VERSION = 1
INSTALL_HINT = "pip install lookcloser[export]` (or `pip install onnx onnxruntime`)"

__all__ = ["FORMATS", "ProbabilityModel", "default_export_path", "export_model", "load_exported"]


class ProbabilityModel(nn.Module):
    """A method's inference path as one tensor in, one tensor out.

    Args:
        model: a registered method in eval mode.

    ``forward(images)``: B×3×H×W normalized images → B×K class probabilities (float32).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits.float().softmax(1)  # B×K


MIN_SIZE, MAX_SIZE = 16, 4096
# files of a run folder: an export never replaces one of them
_RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl")


def _check_destination(out_path: Path) -> None:
    """An export writes a new file, or replaces an earlier export (one with our sidecar), nothing else."""
    if out_path.is_dir():
        raise LookcloserError(f"the export path {out_path} is a folder; give a file name such as {out_path / 'model.onnx'}")
    if not out_path.exists():
        return
    sidecar = _sidecar_path(out_path)
    earlier = False
    if sidecar.is_file():
        try:
            earlier = json.loads(sidecar.read_text(encoding="utf-8")).get("format") == SIDECAR_FORMAT
        except (OSError, ValueError):
            earlier = False
    if not earlier or out_path.name in _RUN_FILES:
        raise LookcloserError(f"{out_path} already exists and is not an earlier export (it may be a checkpoint or a "
                              "run's own file), so it is left alone; choose another --out")


def default_export_path(checkpoint: str | Path, format: str = "onnx") -> Path:
    """Where ``lookcloser export`` writes by default: beside the checkpoint, with the format's suffix.

    ``runs/x`` (a run folder holding ``best.pt``) → ``runs/x/best.onnx``; ``a/last.pt`` → ``a/last.onnx``
    (``last.torchscript.pt``, ``last.pt2`` for the other formats, so a checkpoint is never overwritten).
    """
    _check_format(format)
    ckpt = resolve_checkpoint(checkpoint)
    return ckpt.with_name(ckpt.stem + SUFFIXES[format])


def export_model(checkpoint: str | Path | dict[str, Any], out_path: str | Path, *, format: str = "onnx",
                 opset: int = DEFAULT_OPSET, image_size: int | None = None, verify: bool = True) -> dict[str, Any]:
    """Export a checkpoint's model as ``images → probabilities`` with a dynamic batch size.

    The file is written only once it has passed verification (through a temporary name in the same
    folder, then renamed), so a failed export never leaves a file behind; the JSON sidecar
    ``<out_path>.json`` with classes and preprocessing is written next to it.

    Args:
        checkpoint: a run folder, a checkpoint file, or a checkpoint dict as the trainer saves it.
        out_path: the file to write (``.onnx``, ``.pt`` or ``.pt2`` by convention).
        format: ``"onnx"`` (TorchScript-based ONNX exporter), ``"torchscript"`` (``torch.jit.trace``,
            load with ``torch.jit.load``) or ``"exported_program"`` (``torch.export``, load with
            ``torch.export.load(path).module()``).
        opset: ONNX opset (at least 16; 18, the default, is needed by antialiased resizes: a glance smaller
            than the image, a transformer's position embeddings at another grid).
        image_size: side of the square input; default the checkpoint's training image size.
        verify: compare the exported model with PyTorch on random batches of 2 and 3 images.

    Returns:
        ``{"path", "sidecar", "format", "exporter", "opset" (ONNX only), "method", "image_size",
        "num_classes", "input_name", "output_name", "batch_sizes", "max_abs_diff"}``; ``batch_sizes`` and
        ``max_abs_diff`` are empty / None without verification.

    Raises:
        LookcloserError: unknown format, opset below 16, onnx or onnxruntime missing, an operation the
            exporter cannot write, or a verified difference of 1e-4 or more.
    """
    _check_format(format)
    if format == "onnx":
        if opset < MIN_OPSET:
            raise LookcloserError(f"ONNX opset must be at least {MIN_OPSET} (grid_sample and aligned RoIAlign need "
                                  f"it), got {opset}")
        _import_onnx()
        if verify:
            _import_onnxruntime()
    if isinstance(checkpoint, dict):
        ckpt = checkpoint
        model = build_from_checkpoint(ckpt)
        source = None
    else:
        model, ckpt = load_checkpoint(checkpoint)
        source = resolve_checkpoint(checkpoint)
    out_path = Path(out_path)
    if source is not None and out_path.resolve() == source.resolve():
        raise LookcloserError(f"the export path {out_path} is the checkpoint itself; choose another file name")
    _check_destination(out_path)
    pre = ckpt["preprocess"]
    size = int(image_size or pre["image_size"])
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise LookcloserError(f"--image-size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")

    wrapper = ProbabilityModel(model.float().cpu()).eval()
    example = torch.randn(VERIFY_BATCHES[0], 3, size, size, generator=torch.Generator().manual_seed(0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp" + SUFFIXES[format],
                                    dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        exporter = _EXPORTERS[format](wrapper, example, tmp, opset)
        diff = _verify(wrapper, tmp, format, size) if verify else None
        if diff is not None and not diff < TOLERANCE:
            raise LookcloserError(
                f"the exported {format} model differs from PyTorch by {diff:.2e} in probability (limit {TOLERANCE:g}), "
                "so it was not written; try another --format or --opset")
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()

    info: dict[str, Any] = {
        "path": str(out_path), "sidecar": str(_sidecar_path(out_path)), "format": format, "exporter": exporter,
        "method": ckpt["method"], "image_size": size, "num_classes": len(ckpt["classes"]),
        "input_name": "images", "output_name": "probabilities",
        "batch_sizes": list(VERIFY_BATCHES) if verify else [], "max_abs_diff": diff,
    }
    if format == "onnx":
        info["opset"] = opset
    adaptive = ckpt.get("adaptive") or {}
    if adaptive:  # the graph is one batch in, one batch out: the data-dependent skip stays in PyTorch
        t = adaptive.get("threshold")
        info["adaptive"] = {"threshold": t, "applied": False,
                            "note": "the exported model zooms every image (the method as published); the run's "
                                    "zoom-only-when-unsure threshold, chosen on held-out images, is applied by "
                                    "`lookcloser predict` and Predictor, not by this graph"}
    _write_sidecar(out_path, ckpt, info)
    return info


def load_exported(path: str | Path, *, threads: int | None = None) -> Callable[[Any], np.ndarray]:
    """A function running an exported file: N×3×S×S normalized images (array or tensor) → N×K probabilities.

    Args:
        path: a file written by :func:`export_model`; the format is read from its sidecar, else from
            its suffix (``.onnx``, ``.pt2``, anything else TorchScript).
        threads: CPU threads for onnxruntime (default: torch's current setting).
    """
    path = Path(path)
    if not path.is_file():
        raise LookcloserError(f"exported model {path} does not exist; write it with `lookcloser export`")
    format = None
    side = _sidecar_path(path)
    if side.is_file():
        format = json.loads(side.read_text()).get("export", {}).get("format")
    if format is None:
        format = "onnx" if path.suffix == ".onnx" else "exported_program" if path.suffix == ".pt2" else "torchscript"
    return _runner(path, format, threads)


# ---- exporters: (wrapper, example batch, file, opset) -> name of the exporter ------------------

def _antialiased_resize(mode: str):
    """The ONNX symbolic of PyTorch's antialiased ``interpolate`` (``aten::_upsample_{bilinear,bicubic}2d_aa``):
    ``Resize`` with ``antialias=1``, half-pixel coordinates and the weights outside the image excluded and
    renormalized, as PyTorch (and PIL) compute them; the cubic kernel's coefficient is -0.5 there."""
    from torch.onnx import symbolic_helper

    def symbolic(g, input, output_size, align_corners, *scales):
        if symbolic_helper._maybe_get_const(align_corners, "b"):
            return symbolic_helper._unimplemented(f"_upsample_{mode}2d_aa", "align_corners=True")
        size = symbolic_helper._maybe_get_const(output_size, "is")
        if isinstance(size, (list, tuple)):  # a constant size
            spatial = g.op("Constant", value_t=torch.tensor(list(size), dtype=torch.int64))
        elif symbolic_helper._is_packed_list(output_size):  # sizes read from shapes (a ViT's token grid)
            one = g.op("Constant", value_t=torch.tensor([1]))
            spatial = g.op("Concat", *[g.op("Reshape", g.op("Cast", v, to_i=7), one)  # 7: int64
                                       for v in symbolic_helper._unpack_list(output_size)], axis_i=0)
        else:
            return symbolic_helper._unimplemented(f"_upsample_{mode}2d_aa", "an output size of this form")
        batch_channels = g.op("Slice", g.op("Shape", input), g.op("Constant", value_t=torch.tensor([0])),
                              g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", batch_channels, spatial, axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        extra = {"cubic_coeff_a_f": -0.5} if mode == "cubic" else {}
        return g.op("Resize", input, empty, empty, sizes, mode_s=mode, antialias_i=1, exclude_outside_i=1,
                    coordinate_transformation_mode_s="half_pixel", **extra)

    return symbolic


_REGISTERED: set[int] = set()


def _register_antialiased_resizes(opset: int) -> None:
    if opset < AA_OPSET or opset in _REGISTERED:
        return
    for mode, op in (("linear", "aten::_upsample_bilinear2d_aa"), ("cubic", "aten::_upsample_bicubic2d_aa")):
        torch.onnx.register_custom_op_symbolic(op, _antialiased_resize(mode), opset)
    _REGISTERED.add(opset)


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    onnx = _import_onnx()
    _register_antialiased_resizes(opset)
    # the tracer warns about shape checks frozen into the graph, the LSTM's batch size, RoIAlign's
    # sampling ratio and the legacy exporter itself; the side is fixed and the batch size is checked
    # by verification, which is the test that matters
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["probabilities"],
                              dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                              do_constant_folding=True)
        except torch.onnx.OnnxExporterError as e:
            first = str(e).splitlines()[0]
            if "_aa'" in first and opset < AA_OPSET:
                raise LookcloserError(f"ONNX export failed: this model resizes with antialiasing (a glance smaller "
                                      f"than the image, or a transformer's position embeddings), which ONNX writes "
                                      f"from opset {AA_OPSET}; use --opset {AA_OPSET} (the default)") from e
            raise LookcloserError(f"ONNX export failed: {first}; try a higher --opset or "
                                  "--format torchscript") from e
    onnx.checker.check_model(str(path))
    return f"torch.onnx.export(dynamo=False) torch {torch.__version__}"


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    # tracing records the sizes it reads as graph values, so the batch size stays free (verified)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        traced.save(str(path))
    return f"torch.jit.trace torch {torch.__version__}"


def _export_program(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    batch = torch.export.Dim("batch", min=1)
    # no_grad: the methods' no_grad blocks (CAMs, sampling) would otherwise become grad-mode subgraphs
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
        except Exception as e:  # torch.export raises many unrelated types for unsupported code
            raise LookcloserError(f"torch.export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                                  "use --format onnx or torchscript") from e
        torch.export.save(program, str(path))
    return f"torch.export torch {torch.__version__}"


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "exported_program": _export_program}


# ---- verification and running ------------------------------------------------------------------

@torch.no_grad()
def _verify(wrapper: nn.Module, path: Path, format: str, size: int) -> float:
    """Largest |Δprobability| between PyTorch and the exported file over random batches of 2 and 3."""
    run = _runner(path, format, None)
    g = torch.Generator().manual_seed(1)
    diff = 0.0
    for b in VERIFY_BATCHES:
        x = torch.randn(b, 3, size, size, generator=g)
        expected = wrapper(x).numpy()
        got = run(x)
        if got.shape != expected.shape:
            raise LookcloserError(f"the exported {format} model returned shape {got.shape} for a batch of {b} "
                                  f"instead of {expected.shape}; its batch size is not dynamic")
        diff = max(diff, float(np.abs(got - expected).max()))
    return diff


def _runner(path: Path, format: str, threads: int | None) -> Callable[[Any], np.ndarray]:
    if format == "onnx":
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(images) -> np.ndarray:
            x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
            return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

        return run
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu")
    elif format == "exported_program":
        module = torch.export.load(str(path)).module()
    else:
        _check_format(format)

    @torch.no_grad()
    def run_torch(images) -> np.ndarray:
        x = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
        return module(x.float().cpu()).numpy()

    return run_torch


# ---- helpers ---------------------------------------------------------------------------------

def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise LookcloserError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")


def _import_onnx():
    try:
        import onnx
    except ImportError as e:
        raise LookcloserError(f"ONNX export needs the onnx package; install it with `{INSTALL_HINT}") from e
    return onnx


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise LookcloserError(f"checking an ONNX export needs onnxruntime; install it with `{INSTALL_HINT}") from e
    return onnxruntime


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_sidecar(path: Path, ckpt: dict[str, Any], info: dict[str, Any]) -> None:
    pre = ckpt["preprocess"]
    size = info["image_size"]
    ratio = float(pre.get("resize_ratio", 1.143))
    squash = bool(pre.get("squash", False))
    resize_steps = (["resize the whole image to image_size x image_size (bilinear, antialiased; aspect not kept)"]
                    if squash else ["resize the short side to `resize` (bilinear, antialiased)",
                                    "center-crop image_size x image_size"])
    sidecar = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
        "method": ckpt["method"], "build_args": ckpt.get("build_args", {}),
        "classes": list(ckpt["classes"]),
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW, RGB"},
        "output": {"name": "probabilities", "shape": ["batch", len(ckpt["classes"])], "dtype": "float32"},
        "preprocess": {
            "image_size": size, "resize_ratio": ratio, "squash": squash,
            # the same integer build_transform(train=False) resizes the short side to
            "resize": size if squash else resize_side(size, ratio),
            "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]],
            "steps": ["convert to RGB", *resize_steps, "scale to [0, 1]",
                      "subtract mean and divide by std per channel", "stack as batch x 3 x H x W float32"],
        },
        "export": {k: info[k] for k in ("format", "exporter", "opset", "batch_sizes", "max_abs_diff") if k in info},
        **({"adaptive": info["adaptive"]} if "adaptive" in info else {}),
    }
    tmp = path.with_name(f".{path.name}.json.tmp")
    tmp.write_text(json.dumps(sidecar, indent=2))
    os.replace(tmp, _sidecar_path(path))
