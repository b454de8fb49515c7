"""The one JSONL reader: every corpus, dataset file, `--input` file and lm-eval samples file goes through it.

Standard library only (the torch-free runtime side reads JSONL too). Blank lines are skipped; a line that is not
a JSON object is a `DataFormatError` naming the file and line, so callers only check their own fields.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import DataFormatError


def iter_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line of `path` (gzip when it ends in `.gz`).

    With `tolerate_torn_tail`, a last line cut short by a kill (invalid JSON with no trailing newline, which only
    the last line can lack) ends the file quietly: append-only files such as the corpus resume from there.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if tolerate_torn_tail and not line.endswith("\n"):
                    return
                raise DataFormatError(path, lineno, "<line>", f"not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(path, lineno, "<line>", f"expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | os.PathLike, **kwargs) -> list[tuple[int, dict]]:
    """All of `iter_jsonl` at once, for callers that must check the whole file before acting on any line."""
    return list(iter_jsonl(path, **kwargs))


def read_json(path: str | os.PathLike):
    """A whole-file JSON document; invalid JSON is a `DataFormatError` naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, "<file>", f"not valid JSON ({e.msg})") from None
