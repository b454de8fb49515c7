"""sha256 of files, read in blocks: pinned downloads, corpus identities and student identities all hash this way.

Standard library only.
"""

from __future__ import annotations

import hashlib
import os

_BLOCK = 1 << 20


def update_with_file(digest, path: str | os.PathLike) -> None:
    """Feed the bytes of `path` into a hashlib object, a block at a time (weights run to gigabytes)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
