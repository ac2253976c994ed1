"""One writer per run folder.

Two processes training into the same folder (the same command started twice, or two benchmark queues
that meet) would each resume from the other's checkpoints and interleave their metrics. ``run_lock``
takes an exclusive advisory lock on the run folder itself (``flock`` on the directory: no file is added to
the folder) for as long as a process writes into it, and refuses a second process at once with a
sentence saying so. Within one process the lock is re-entrant, so a benchmark can hold it around a run's
training and evaluation while the trainer takes it again. Where ``fcntl`` does not exist (Windows) runs
are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import LookcloserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_held: dict[str, list[int]] = {}  # resolved folder -> [descriptor, depth]


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LookcloserError(f"cannot write into {path} ({e.strerror or e}); choose a writable --out") from e
    key = str(path.resolve())
    if fcntl is None:
        yield
        return
    if key in _held:
        _held[key][1] += 1
    else:
        fd = os.open(key, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LookcloserError(f"{path} is being written by another lookcloser process; wait for it to finish "
                                  "(or pass another --out)") from None
        _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
