"""What the data layer knows without loading PyTorch or Pillow: image file extensions and the synthetic
set's options (so that parsing a spec and counting files stay fast)."""

from __future__ import annotations

from ..errors import LookcloserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SYNTH_DEFAULTS = {"classes": 8, "train": 40, "test": 20, "size": 128, "seed": 0}


def parse_synth_options(text: str) -> dict[str, int]:
    """Parse ``classes=8,train=40,test=20,size=128,seed=0`` (any subset) into keyword options."""
    opts = dict(SYNTH_DEFAULTS)
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in opts or not value.strip().lstrip("-").isdigit():
            raise LookcloserError(
                f"bad synth option {item!r}; use synth:classes=8,train=40,test=20,size=128,seed=0 (integers)")
        opts[key] = int(value)
    if not 2 <= opts["classes"] <= 24:
        raise LookcloserError(f"synth classes must be between 2 and 24, got {opts['classes']}")
    if min(opts["train"], opts["test"]) < 1 or opts["size"] < 16 or opts["seed"] < 0:
        raise LookcloserError("synth needs at least 1 image per class, a size of at least 16 pixels and a seed >= 0")
    opts["val"] = opts["test"]
    return opts
