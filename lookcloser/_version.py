"""The version of lookcloser and the git commit of its code (a leaf module, so that any floor can read them)."""

import functools
import os
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """Short git commit of the lookcloser code that is running, ``COMMIT+changes`` when the package's files
    differ from that commit (uncommitted edits).

    "" when the code is not a git checkout of lookcloser: an installed wheel, including one installed
    into a virtual environment that lies inside some other git repository (whose commit says nothing
    about this code), so the checkout's top level must be the folder holding this package. There the
    environment variable ``LOOKCLOSER_COMMIT`` names the commit, for a checkout's files copied without their
    ``.git`` to another machine (``benchmarks/run_gpu.sh`` on a rented GPU).
    """
    package = Path(__file__).resolve().parent
    fallback = os.environ.get("LOOKCLOSER_COMMIT", "").strip()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=package, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return fallback
    if len(out) < 2 or not out[0] or Path(out[0]).resolve() != package.parent:
        return fallback
    commit = out[1].strip()
    try:  # code changed since that commit: the commit alone would name code that did not run
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lookcloser"],
                                 capture_output=True, text=True, cwd=package.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        changed = ""
    return f"{commit}+changes" if commit and changed else commit

