"""Per-question outcomes from lm-eval's logged samples (`--log_samples`; `scotd eval` and the pipeline always log).

The report needs more than the mean accuracy lm-eval aggregates: the paired test compares two students question by
question, and the failure check looks at which answer a student gives. Both come from the samples files:
`samples_<task>.jsonl` (as `scotd eval` names them) or `samples_<task>_<timestamp>.jsonl` (the stock `lm_eval`
CLI), one line per question and filter, each with the `doc`, the filtered response and the per-question `acc`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import formats
from .errors import DataFormatError
from .jsonl import iter_jsonl

_TIMESTAMP = re.compile(r"_\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?$")


@dataclass(frozen=True)
class Outcome:
    correct: bool
    prediction: str  # the label answered, or formats.INVALID


def task_of(path: Path) -> str:
    """`samples_scotd_csqa_sc_2026-01-01T10-00-00.123.jsonl` -> `scotd_csqa_sc`."""
    return _TIMESTAMP.sub("", path.stem.removeprefix("samples_"))


def _is_loglikelihoods(resps) -> bool:
    return bool(resps) and all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float)) and not isinstance(r[0], bool)
        for r in resps)


def prediction_of(rec: dict) -> str:
    """The label a logged sample answered: the filtered label of a generative task (greedy or voted), or the
    likeliest choice of a multiple-choice (log-likelihood) task such as `scotd_*_direct`."""
    resps = rec.get("filtered_resps")
    choices = (rec.get("doc") or {}).get("choices") or []
    if _is_loglikelihoods(resps) and len(resps) == len(choices):
        best = max(range(len(resps)), key=lambda i: resps[i][0])
        return str(choices[best][0])
    first = resps[0] if isinstance(resps, list) and resps else resps
    if isinstance(first, list):  # a filter that kept a list per question (no take_first)
        first = first[0] if first else None
    return first if isinstance(first, str) and first else formats.INVALID


def question_key(rec: dict) -> str:
    """The question's id from its doc (stable across tasks of one split), else lm-eval's doc_id."""
    doc = rec.get("doc")
    if isinstance(doc, dict) and doc.get("id") is not None:
        return str(doc["id"])
    return f"doc_id:{rec.get('doc_id')}"


def read_outcomes(folder: Path) -> dict[tuple[str, str], dict[str, Outcome]]:
    """(task, filter) -> question id -> Outcome, over every samples file in `folder` (empty when none)."""
    out: dict[tuple[str, str], dict[str, Outcome]] = {}
    for path in sorted(folder.glob("samples_*.jsonl")) if folder.is_dir() else []:
        task = task_of(path)
        for lineno, rec in iter_jsonl(path):
            if "acc" not in rec.get("metrics", ["acc"]):  # a task scored otherwise (not a scotd task): no outcome
                continue
            acc = rec.get("acc")
            if not isinstance(acc, (int, float)) or isinstance(acc, bool):
                raise DataFormatError(path, lineno, "acc", "expected the per-question accuracy (0 or 1)")
            outcomes = out.setdefault((task, str(rec.get("filter", "none"))), {})
            outcomes[question_key(rec)] = Outcome(correct=acc >= 0.5, prediction=prediction_of(rec))
    return out
