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

from . import formats
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
