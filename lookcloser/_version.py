"""The version of lookcloser and the git commit of its code (a leaf module, so that any floor can read them)."""

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """Short git commit of the lookcloser code that is running ("" outside a git checkout, e.g. a wheel)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
