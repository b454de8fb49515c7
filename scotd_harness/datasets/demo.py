"""The built-in demonstration set: 24 everyday five-choice questions written by this project.

It exists so `scotd pipeline` shows every stage working offline in minutes. It is NOT a benchmark: the questions
are easy, few and unreviewed, and accuracy on them says little. Ships inside the package; no data directory.
"""

from __future__ import annotations

from importlib import resources

from ..errors import ScotdError
from ..formats import normalize_choices
from ..jsonl import iter_jsonl
from .base import Example

RESOURCE = ("scotd_harness", "demo/questions.jsonl")


def _load(task: str, split: str) -> list[Example]:
    if split not in ("train", "validation"):
        raise ScotdError(f"the demonstration set has splits train and validation, not {split!r}")
    examples = []
    with resources.as_file(resources.files(RESOURCE[0]).joinpath(RESOURCE[1])) as path:
        for _, r in iter_jsonl(path):
            if r["split"] == split:
                choices = tuple(normalize_choices(r["choices"]))
                examples.append(Example(task, r["id"], r["question"], choices, r["answer"], {"demonstration": True}))
    return examples


def load_official(task, split, data_dir):  # the set ships with the package; a data directory changes nothing
    return _load(task, split)


def load_from_hub(task, split):
    return _load(task, split)
