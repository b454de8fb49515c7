"""The rationale corpus: JSONL, one teacher chain per line, append-only and resumable.

A line holds: task, id, sample_index, question, choices, answer, rationale, prediction, correct, logprob,
num_tokens, teacher, prompt_version, temperature, raw. The key (task, id, sample_index) is never written twice.
A sidecar `<corpus>.meta.json` records the sampling settings so a resume with other settings is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import atomic, formats
from .errors import DataFormatError
from .jsonl import iter_jsonl

#: field -> (accepted types, whether it must be present). Checked on read, so a bad line fails here with its file,
#: line and field, not later inside training or a filter.
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "task": ((str,), True),
    "id": ((str, int), True),
    "sample_index": ((int,), True),
    "question": ((str,), True),
    "choices": ((list,), True),
    "rationale": ((str,), True),
    "prediction": ((str,), True),
    "answer": ((str, type(None)), False),
    "correct": ((bool, type(None)), False),
    "logprob": ((int, float, type(None)), False),
    "num_tokens": ((int, type(None)), False),
    "teacher": ((str, type(None)), False),
    "prompt_version": ((str, type(None)), False),
    "temperature": ((int, float, type(None)), False),
    "raw": ((str, type(None)), False),
}
_TYPE_NAMES = {str: "a string", int: "an int", float: "a number", bool: "true or false", list: "a list",
               type(None): "null"}


def _check_fields(d: dict, path, lineno: int | None) -> None:
    for key, (kinds, required) in FIELDS.items():
        if key not in d:
            if required:
                raise DataFormatError(path, lineno, key, "missing")
            continue
        value = d[key]
        # bool is an int to Python, but never a valid id, index or count
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise DataFormatError(path, lineno, key, f"expected {expected}, got {json.dumps(value)[:60]}")
    if not all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in d["choices"]):
        raise DataFormatError(path, lineno, "choices", "expected a list of [label, text] pairs of strings")
    labels = {c[0] for c in d["choices"]}
    if d["prediction"] != formats.INVALID and d["prediction"] not in labels:
        raise DataFormatError(path, lineno, "prediction",
                              f"expected one of the choice labels {sorted(labels)} or {formats.INVALID!r}, "
                              f"got {d['prediction']!r}")


@dataclass
class CorpusRow:
    task: str
    id: str
    sample_index: int
    question: str
    choices: list[list[str]]
    answer: str | None
    rationale: str
    prediction: str
    correct: bool | None = None
    logprob: float | None = None
    num_tokens: int | None = None
    teacher: str | None = None
    prompt_version: str | None = None
    temperature: float | None = None
    raw: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.id, self.sample_index)

    @property
    def choice_pairs(self) -> list[tuple[str, str]]:
        return [(c[0], c[1]) for c in self.choices]

    def student_input(self) -> str:
        return formats.student_input(self.question, self.choice_pairs)

    def student_target(self) -> str:
        """The chain's rationale closed with the label it actually reached (its prediction)."""
        return formats.student_target(self.rationale, self.prediction)

    def to_json(self) -> str:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, path="<corpus>", lineno: int | None = None) -> CorpusRow:
        _check_fields(d, path, lineno)
        known = set(cls.__dataclass_fields__) - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs.setdefault("answer", None)
        kwargs["id"] = str(kwargs["id"])
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})


def read_corpus(path: str | Path, *, tolerate_torn_tail: bool = True) -> Iterator[CorpusRow]:
    """Rows of a corpus file. A last line cut short by a kill (no trailing newline) is skipped when
    `tolerate_torn_tail`; any other malformed line is an error naming file, line and field."""
    for lineno, d in iter_jsonl(path, tolerate_torn_tail=tolerate_torn_tail):
        yield CorpusRow.from_dict(d, path, lineno)


def write_corpus(rows, path: str | Path) -> int:
    """Write rows as a new corpus file (atomically: a temp file renamed into place); returns the count."""
    count = 0
    with atomic.atomic_open(path) as f:
        for row in rows:
            f.write(row.to_json() + "\n")
            count += 1
    return count


# --- statistics -------------------------------------------------------------------------------------------------


def _percentiles(values: list[float], qs=(10, 50, 90)) -> dict:
    """mean, nearest-rank percentiles and max (no numpy: `corpus stats` stays light)."""
    if not values:
        return {"mean": None, **{f"p{q}": None for q in qs}, "max": None}
    ordered = sorted(values)
    out = {"mean": sum(ordered) / len(ordered)}
    for q in qs:
        rank = max(1, -(-q * len(ordered) // 100))  # ceil(q/100 * n), 1-based
        out[f"p{q}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def names_choices(row: CorpusRow) -> tuple[bool, bool]:
    """(the rationale names the gold answer's text, it names another choice's): as whole words, a plural too, in
    any case. A rationale that never names its answer leaves the student to guess the letter, which is what sets a
    useful chain apart from a loose human explanation. A choice inside another (`tree` in `oak tree`) counts for
    neither."""
    import re

    text = row.rationale.lower()
    choices = {letter: str(value).lower().strip() for letter, value in row.choice_pairs if str(value).strip()}
    gold = choices.get(row.answer or "")

    def named(value: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(value)}(?:e?s)?(?!\w)", text) is not None

    if gold is None:
        return False, False
    others = [v for k, v in choices.items() if k != row.answer and v not in gold and gold not in v]
    return named(gold), any(named(v) for v in others)


def corpus_stats(rows) -> dict:
    """Chains per question, teacher accuracy, unparsed share, rationale length (words, and teacher tokens where
    recorded), duplicate share (chains repeating an earlier chain of the same question, after whitespace and
    case are normalised) and how often a rationale names the gold answer or another choice (`names_choices`)."""
    from collections import Counter, defaultdict

    per_question: Counter = Counter()
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    checked = correct = unparsed = duplicates = 0
    words: list[float] = []
    tokens: list[float] = []
    solved: dict[tuple[str, str], bool] = {}
    teachers: Counter = Counter()
    chains = with_answer = names_gold = names_other = 0
    for row in rows:
        chains += 1
        if row.answer and row.answer in dict(row.choice_pairs):  # (a gold label with its text to look for)
            with_answer += 1
            gold, other = names_choices(row)
            names_gold += gold
            names_other += other
        q = (row.task, row.id)
        per_question[q] += 1
        teachers[row.teacher or "?"] += 1
        if row.correct is not None:
            checked += 1
            correct += bool(row.correct)
            solved[q] = solved.get(q, False) or bool(row.correct)
        unparsed += row.prediction == formats.INVALID
        norm = " ".join(row.rationale.lower().split())
        duplicates += norm in seen[q]
        seen[q].add(norm)
        words.append(len(row.rationale.split()))
        if row.num_tokens is not None:
            tokens.append(row.num_tokens)
    counts = list(per_question.values())
    return {
        "questions": len(per_question),
        "chains": chains,
        "chains_per_question": {"min": min(counts, default=0), "mean": (chains / len(counts)) if counts else 0.0,
                                "max": max(counts, default=0)},
        "teacher_accuracy": (correct / checked) if checked else None,
        "questions_with_a_correct_chain": (sum(solved.values()) / len(solved)) if solved else None,
        "unparsed_share": (unparsed / chains) if chains else None,
        "duplicate_share": (duplicates / chains) if chains else None,
        "rationale_words": _percentiles(words),
        "names_gold_answer": (names_gold / with_answer) if with_answer else None,
        "names_another_choice": (names_other / with_answer) if with_answer else None,
        "teacher_tokens": _percentiles(tokens) if tokens else None,
        "teachers": dict(teachers),
    }


def format_stats(stats: dict) -> str:
    """The statistics as an aligned two-column table."""

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    def dist(d):
        if not d or d["mean"] is None:
            return "n/a"
        return f"mean {d['mean']:.1f}, p10 {d['p10']}, median {d['p50']}, p90 {d['p90']}, max {d['max']}"

    cpq = stats["chains_per_question"]
    lines = [
        ("questions", str(stats["questions"])),
        ("chains", str(stats["chains"])),
        ("chains per question", f"min {cpq['min']}, mean {cpq['mean']:.2f}, max {cpq['max']}"),
        ("teacher accuracy", pct(stats["teacher_accuracy"])),
        ("questions with a correct chain", pct(stats["questions_with_a_correct_chain"])),
        ("unparsed share", pct(stats["unparsed_share"])),
        ("duplicate share", pct(stats["duplicate_share"])),
        ("rationale length (words)", dist(stats["rationale_words"])),
        ("rationale names gold answer", pct(stats.get("names_gold_answer"))),
        ("names another choice", pct(stats.get("names_another_choice"))),
        ("chain length (teacher tokens)", dist(stats["teacher_tokens"])),
        ("teachers", ", ".join(f"{k} ({v})" for k, v in stats["teachers"].items()) or "n/a"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
