"""Atomic file writes: a temp file in the target's folder, fsynced, then renamed over the target.

A reader (or a run resumed after a kill) sees the old file or the new one, never half of one; on any error the
temp file is removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """`with atomic_open(p) as f: ...` writes `p` only if the block finishes; text modes use UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are results meant for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, data, **dumps_kwargs) -> None:
    dumps_kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(data, **dumps_kwargs) + "\n")
