"""QuaRel (2 choices): the question text carries its options as '... (A) x (B) y'.

Official: {"id", "answer_index": 0|1, "question", ...}. Hub: `allenai/quarel`, same fields.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataFormatError
from ..formats import label_for_index
from ..jsonl import iter_jsonl
from .base import Example, get_field, load_hub, require_file

OFFICIAL_FILES = {s: f"quarel/quarel-v1-{f}.jsonl" for s, f in (("train", "train"), ("validation", "dev"), ("test", "test"))}
_OPTIONS_RE = re.compile(r"^(?P<stem>.*?)\s*\(A\)\s*(?P<a>.*?)\s*\(B\)\s*(?P<b>.*?)\s*$", re.S)


def _build(id_, question, answer_index, where, lineno) -> Example:
    m = _OPTIONS_RE.match(question)
    if not m or not m["stem"] or not m["a"] or not m["b"]:
        raise DataFormatError(where, lineno, "question", "expected '... (A) option (B) option'")
    if answer_index not in (0, 1) or isinstance(answer_index, bool):
        raise DataFormatError(where, lineno, "answer_index", f"expected 0 or 1, got {answer_index!r}")
    choices = (("a", m["a"].strip()), ("b", m["b"].strip()))
    return Example("quarel", str(id_), m["stem"].strip(), choices, label_for_index(answer_index))


def load_official(task: str, split: str, data_dir: Path) -> list[Example]:
    path = require_file(data_dir / OFFICIAL_FILES[split], task, split)
    return [
        _build(get_field(r, "id", path, n), get_field(r, "question", path, n), get_field(r, "answer_index", path, n, int), path, n)
        for n, r in iter_jsonl(path)
    ]


def load_from_hub(task: str, split: str) -> list[Example]:
    rows = load_hub("allenai/quarel", None, split)
    return [_build(r["id"], r["question"], r["answer_index"], f"hub:allenai/quarel/{split}", i) for i, r in enumerate(rows)]
