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

REQUIRED = ("task", "id", "sample_index", "question", "choices", "rationale", "prediction")


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
        for key in REQUIRED:
            if key not in d:
                raise DataFormatError(path, lineno, key, "missing")
        if not isinstance(d["sample_index"], int):
            raise DataFormatError(path, lineno, "sample_index", f"expected an int, got {d['sample_index']!r}")
        if not isinstance(d["choices"], list) or not all(isinstance(c, list) and len(c) == 2 for c in d["choices"]):
            raise DataFormatError(path, lineno, "choices", "expected a list of [label, text] pairs")
        known = set(cls.__dataclass_fields__) - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs.setdefault("answer", None)
        kwargs["id"] = str(kwargs["id"])
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})


def read_corpus(path: str | Path, *, tolerate_torn_tail: bool = True) -> Iterator[CorpusRow]:
    """Rows of a corpus file. A last line cut short by a kill (no trailing newline) is skipped when
    `tolerate_torn_tail`; any other malformed line is an error naming file, line and field."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and lineno == len(lines) and not line.endswith("\n"):
                return
            raise DataFormatError(path, lineno, "<line>", f"not valid JSON ({e.msg})") from None
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


def corpus_stats(rows) -> dict:
    """Chains per question, teacher accuracy, unparsed share, rationale length (words, and teacher tokens where
    recorded) and duplicate share (chains repeating an earlier chain of the same question, after whitespace and
    case are normalised)."""
    from collections import Counter, defaultdict

    per_question: Counter = Counter()
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    checked = correct = unparsed = duplicates = 0
    words: list[float] = []
    tokens: list[float] = []
    solved: dict[tuple[str, str], bool] = {}
    teachers: Counter = Counter()
    chains = 0
    for row in rows:
        chains += 1
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
        ("chain length (teacher tokens)", dist(stats["teacher_tokens"])),
        ("teachers", ", ".join(f"{k} ({v})" for k, v in stats["teachers"].items()) or "n/a"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
