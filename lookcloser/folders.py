"""The one rule every command that writes a folder follows, so that a user's own files are never touched.

A command writes into a folder that is new, empty, or its own earlier output, which it may reuse or
refresh; any other folder is refused in one sentence naming the folder and what it holds. A command's own
output is marked by a small file, :data:`MARK`, naming the command; output written before the mark existed
is recognized by the command's own signature (a file only it writes, in its own format).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from .errors import LookcloserError

MARK = ".lookcloser.json"


def shown(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 3 more``: a folder's entries in a sentence."""
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def written_by(folder: str | Path) -> str | None:
    """The command whose output ``folder`` is, from its mark (None without a readable mark)."""
    try:
        return json.loads((Path(folder) / MARK).read_text(encoding="utf-8")).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def json_with(path: Path, *keys: str) -> bool:
    """Whether ``path`` is a JSON object with every one of ``keys``: how a command recognizes a file it wrote
    before folders were marked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def output_folder(folder: str | Path, command: str, *, recognize: Callable[[Path], bool] | None = None,
                  flag: str = "--out") -> Path:
    """Check that ``folder`` may take ``command``'s output, create it and mark it; return it.

    Args:
        folder: where the command writes.
        command: the command's name as a user types it (``probe``, ``benchmark accuracy``, ...).
        recognize: for a folder with no mark, whether it is the command's output from before marks were
            written (its signature file); a folder it recognizes is marked and reused.
        flag: the option that names the folder, for the message.

    Raises:
        LookcloserError: ``folder`` is a file, holds files the command did not write, or cannot be written.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise LookcloserError(f"{flag} {path} is a file; give a folder for `lookcloser {command}` to write into")
    if path.is_dir():
        held = [p.name for p in path.iterdir()]
        mine = written_by(path) == command or (recognize is not None and held and recognize(path))
        if held and not mine:
            owner = written_by(path)
            whose = f" (`lookcloser {owner}` wrote it)" if owner and owner != command else ""
            raise LookcloserError(f"{path} already holds files that `lookcloser {command}` did not write{whose}: "
                                  f"{shown(held)}; it writes only into a new or empty folder or its own earlier "
                                  f"output, so pass another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark = path / MARK
        if written_by(path) != command:
            tmp = path / f".{MARK}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"written_by": command}) + "\n", encoding="utf-8")
            os.replace(tmp, mark)
    except OSError as e:
        raise LookcloserError(f"cannot write into {path} ({e.strerror or e}); choose a writable {flag}") from e
    return path
