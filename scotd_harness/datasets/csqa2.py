"""CommonsenseQA 2.0: yes/no statements, cast as two choices so every stage keeps one format.

Files: `csqa2/CSQA2_{train,dev}.json.gz`, `CSQA2_test_no_answers.json.gz` (gzipped JSON lines with id, question,
answer). Without a data directory they are fetched from the public repository at a pinned commit, checked
against their pinned sha256 (`scotd data fetch`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..jsonl import iter_jsonl
from .base import Example, fetch_official, get_field, require_file

FILES = {"train": "CSQA2_train.json.gz", "validation": "CSQA2_dev.json.gz", "test": "CSQA2_test_no_answers.json.gz"}
CHOICES = (("a", "yes"), ("b", "no"))


def parse(path: Path, task: str) -> list[Example]:
    examples = []
    for n, r in iter_jsonl(path):
        statement = get_field(r, "question", path, n).strip()
        answer = r.get("answer")
        if answer is not None and answer not in ("yes", "no"):
            raise DataFormatError(path, n, "answer", f"expected 'yes' or 'no', got {answer!r}")
        label = None if answer is None else ("a" if answer == "yes" else "b")
        question = statement if statement.endswith("?") else f"Is this true? {statement}"
        examples.append(Example(task, get_field(r, "id", path, n), question, CHOICES, label))
    return examples


def load_official(task: str, split: str, data_dir: Path) -> list[Example]:
    return parse(require_file(data_dir / "csqa2" / FILES[split], task, split), task)


def load_from_hub(task: str, split: str) -> list[Example]:
    return parse(fetch_official(f"csqa2/{FILES[split]}"), task)
