"""What the data layer knows without loading PyTorch or Pillow: image file extensions and the synthetic
set's options (so that parsing a spec and counting files stay fast)."""

from __future__ import annotations

import os
import stat

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


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an image file, without opening it (opening a named pipe would wait for a writer):
    ``"a named pipe"``, ``"a socket"``, ``"a folder"``, a device, ``"a symbolic link to nothing"`` or
    ``"missing"``; None for a regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing" if os.path.islink(path) else "missing"
    except OSError as e:  # a loop of links, a name too long, no permission to look
        return f"not readable ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def odd_entries(paths) -> list[tuple[str, str]]:
    """``(path, why)`` for each of ``paths`` that is no regular file (see :func:`not_a_file`)."""
    return [(str(p), why) for p in paths if (why := not_a_file(p)) is not None]
