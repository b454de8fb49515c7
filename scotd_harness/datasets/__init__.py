"""Dataset registry: `load_examples(task, split)` turns official files or hub datasets into `Example`s.

With a data directory (argument or `SCOTD_DATA_DIR`) the official files are read in the layout of their
releases (`commonsenseqa/`, `openbookqa/Main/`, `quarel/`, `contrast_sets_imdb/`, `csqa2/`); without one the
Hugging Face hub copy users know is loaded. Both give the same `Example`s.

Besides `train`, `validation` and `test`, every task has `train-fit` and `train-holdout`: a fixed 10% of train
(chosen by a hash of the id, so it never moves) held out for development where the official dev split is kept
aside, as it is for QuaRel here.
"""

from __future__ import annotations

import importlib
import os

from ..errors import ScotdError
from ..hashsplit import in_hash_fraction
from .base import SPLITS, Example, data_dir_from_env

__all__ = ["SPLITS", "TASKS", "Example", "choices_of", "load_examples", "task_names"]

#: task name -> (module, number of choices, human name). Modules import lazily: `datasets` costs seconds.
TASKS: dict[str, tuple[str, int, str]] = {
    "csqa": ("multiple_choice", 5, "CommonsenseQA"),
    "openbookqa": ("multiple_choice", 4, "OpenBookQA"),
    "quarel": ("quarel", 2, "QuaRel"),
    "imdb_original": ("imdb_contrast", 2, "IMDb contrast set, original reviews"),
    "imdb_contrast": ("imdb_contrast", 2, "IMDb contrast set, contrast reviews"),
    "csqa2": ("csqa2", 2, "CommonsenseQA 2.0"),
    "demo": ("demo", 5, "built-in demonstration set (not a benchmark)"),
}
SPLIT_ALIASES = {"dev": "validation", "val": "validation"}
HOLDOUT_SPLITS = ("train-fit", "train-holdout")
#: train-holdout is the ids with sha1 % 10 == 0 (a tenth); fraction and modulus together fix that set
HOLDOUT_FRACTION, HOLDOUT_MODULUS = 0.1, 10


def task_names() -> list[str]:
    return list(TASKS)


def choices_of(name: str) -> int | None:
    """How many answer choices a question of a task has, by its name here (`csqa`) or as an lm-eval task
    (`scotd_quarel_direct`, `scotd_csqa2_sc`); None for a task not in the registry."""
    name = name.removeprefix("scotd_")
    for task in sorted(TASKS, key=len, reverse=True):  # csqa2 before csqa
        if name == task or name.startswith(task + "_"):
            return TASKS[task][1]
    return None


def in_holdout(example_id: str) -> bool:
    """Whether an example of train belongs to train-holdout (else to train-fit)."""
    return in_hash_fraction(example_id, HOLDOUT_FRACTION, HOLDOUT_MODULUS)


def load_examples(
    task: str, split: str, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> list[Example]:
    """Examples of one task and split, in file order; `limit` keeps the first N."""
    if task not in TASKS:
        raise ScotdError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS + HOLDOUT_SPLITS:
        raise ScotdError(f"unknown split {split!r}; known splits: {', '.join(SPLITS + HOLDOUT_SPLITS)}")
    module = importlib.import_module(f"{__name__}.{TASKS[task][0]}")
    base_split = "train" if split in HOLDOUT_SPLITS else split
    root = data_dir_from_env(data_dir)
    examples = module.load_official(task, base_split, root) if root else module.load_from_hub(task, base_split)
    if split in HOLDOUT_SPLITS:
        keep = split == "train-holdout"
        examples = [ex for ex in examples if in_holdout(ex.id) == keep]
    return examples[:limit] if limit is not None else examples
