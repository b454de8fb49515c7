"""CommonsenseQA (5 choices) and OpenBookQA (4): both ship the same official JSONL schema.

Official: {"id", "question": {"stem", "choices": [{"label": "A", "text"}...]}, "answerKey"}.
Hub: `tau/commonsense_qa` and `allenai/openbookqa` (config `main`), with choices as {"label": [...], "text": [...]}.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..formats import normalize_label
from ..jsonl import iter_jsonl
from .base import Example, get_field, load_hub, require_file

OFFICIAL_FILES = {
    "csqa": {
        "train": "commonsenseqa/train_rand_split.jsonl",
        "validation": "commonsenseqa/dev_rand_split.jsonl",
        "test": "commonsenseqa/test_rand_split_no_answers.jsonl",
    },
    "openbookqa": {
        "train": "openbookqa/Main/train.jsonl",
        "validation": "openbookqa/Main/dev.jsonl",
        "test": "openbookqa/Main/test.jsonl",
    },
}
HUB = {"csqa": ("tau/commonsense_qa", None, "question"), "openbookqa": ("allenai/openbookqa", "main", "question_stem")}


def _build(task, id_, stem, raw_choices, answer_key, path, lineno) -> Example:
    choices = []
    for i, (raw_label, text) in enumerate(raw_choices):
        try:
            label = normalize_label(raw_label)
        except ValueError:
            raise DataFormatError(path, lineno, f"choices[{i}].label", f"unknown label {raw_label!r}") from None
        if label != chr(ord("a") + i):
            raise DataFormatError(path, lineno, f"choices[{i}].label", f"expected {chr(ord('A') + i)}, got {raw_label!r}")
        choices.append((label, str(text).strip()))
    answer = None
    if answer_key not in (None, ""):
        labels = {label for label, _ in choices}
        try:
            answer = normalize_label(answer_key)
        except ValueError:
            answer = None
        if answer not in labels:
            raise DataFormatError(path, lineno, "answerKey", f"unknown answer key {answer_key!r} (choices {sorted(labels)})")
    return Example(task, str(id_), stem.strip(), tuple(choices), answer)


def load_official(task: str, split: str, data_dir: Path) -> list[Example]:
    path = require_file(data_dir / OFFICIAL_FILES[task][split], task, split)
    examples = []
    for lineno, rec in iter_jsonl(path):
        id_ = get_field(rec, "id", path, lineno)
        stem = get_field(rec, "question.stem", path, lineno)
        raw = get_field(rec, "question.choices", path, lineno, list)
        pairs = []
        for i, c in enumerate(raw):
            if not isinstance(c, dict):
                raise DataFormatError(path, lineno, f"question.choices[{i}]", "expected an object with label and text")
            pairs.append((get_field(c, "label", path, lineno), get_field(c, "text", path, lineno)))
        examples.append(_build(task, id_, stem, pairs, rec.get("answerKey"), path, lineno))
    return examples


def load_from_hub(task: str, split: str) -> list[Example]:
    name, config, stem_field = HUB[task]
    rows = load_hub(name, config, split)
    where = f"hub:{name}/{split}"
    return [
        _build(task, r["id"], r[stem_field], list(zip(r["choices"]["label"], r["choices"]["text"])), r.get("answerKey"), where, i)
        for i, r in enumerate(rows)
    ]
