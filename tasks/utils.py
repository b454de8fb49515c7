"""Hooks the scotd task YAMLs call. Each one is a thin call into `scotd_harness.formats` (prompts, answer parser,
majority vote) or the dataset registry (data); no format or regex lives here.

Data comes only from `scotd_harness.datasets.load_examples`, as lm-eval's `custom_dataset`: the official files
when `SCOTD_DATA_DIR` is set (or `--metadata '{"scotd_data_dir": DIR}'`), the Hugging Face hub otherwise. The
split is `validation`, the one the paper reports; `--metadata '{"scotd_split": "train-holdout"}'` (or
`scotd eval --split`) picks another, e.g. where the official dev file is kept aside (QuaRel, CSQA 2.0 offline).
"""

from __future__ import annotations

import functools
import logging

from lm_eval.api.filter import Filter

from scotd_harness import formats
from scotd_harness.datasets import load_examples
from scotd_harness.errors import ScotdError
from scotd_harness.prompts import load_prompt

log = logging.getLogger(__name__)

DEFAULT_SPLIT = "validation"
#: `--metadata` keys read by `load_dataset` (lm-eval passes the run's metadata to `custom_dataset`).
SPLIT_KEY = "scotd_split"
DATA_DIR_KEY = "scotd_data_dir"


def load_dataset(scotd_task: str, **metadata) -> dict:
    """lm-eval's `custom_dataset`: the registry's examples of one task as a one-split dataset of docs.

    `scotd_task` comes from the task YAML's `dataset_kwargs`; the other keyword arguments are the run's metadata
    (the task's `version`, the model arguments, `--metadata`), of which only SPLIT_KEY and DATA_DIR_KEY are read.
    The docs always sit under `validation`, the split the YAMLs evaluate; each doc records the split it came from.
    """
    import datasets

    split = metadata.get(SPLIT_KEY) or DEFAULT_SPLIT
    if split != DEFAULT_SPLIT:
        log.warning("scotd %s: evaluating on split %r (from metadata %s), not %r", scotd_task, split, SPLIT_KEY, DEFAULT_SPLIT)
    try:
        examples = load_examples(scotd_task, split, data_dir=metadata.get(DATA_DIR_KEY))
    except ScotdError as e:
        raise ScotdError(
            f"{e}\nTo evaluate another split with lm_eval, pass --metadata '{{\"{SPLIT_KEY}\": \"train-holdout\"}}' "
            f"(scotd eval: --split train-holdout)."
        ) from e
    unlabelled = sum(ex.answer is None for ex in examples)
    if unlabelled:
        raise ScotdError(f"{scotd_task} {split}: {unlabelled} of {len(examples)} examples have no answer; pick a labelled split")
    if not examples:
        raise ScotdError(f"{scotd_task} {split}: no examples")
    docs = [
        {
            "task": ex.task,
            "id": ex.id,
            "split": split,
            "question": ex.question,
            "choices": [list(choice) for choice in ex.choices],
            "answer": ex.answer,
        }
        for ex in examples
    ]
    return datasets.DatasetDict({DEFAULT_SPLIT: datasets.Dataset.from_list(docs)})


def _choices(doc: dict) -> list[tuple[str, str]]:
    return [(label, text) for label, text in doc["choices"]]


def doc_to_text(doc: dict) -> str:
    """The student prompt, ending in 'A:'."""
    return formats.student_input(doc["question"], _choices(doc))


@functools.lru_cache(maxsize=None)
def _prompt(task: str):
    return load_prompt(task)


def doc_to_text_fewshot(doc: dict) -> str:
    """The teacher's few-shot CoT prompt: the task's exemplars, then the question in the student format."""
    return _prompt(doc["task"]).render(doc["question"], _choices(doc))


def doc_to_target(doc: dict) -> str:
    """The gold label ('a', 'b', ...), as recorded in logged samples."""
    return doc["answer"]


class ExtractAnswer(Filter):
    """Each response -> the label it commits to (`formats.extract_answer`, with the doc's choices), or INVALID."""

    def apply(self, resps, docs):
        return [[formats.extract_answer(r, _choices(doc)) for r in rs] for rs, doc in zip(resps, docs)]


class MajorityVote(Filter):
    """The labels of a doc's sampled chains -> [the `formats.majority_vote` winner] (INVALID if none parsed)."""

    def apply(self, resps, docs):
        return [[formats.majority_vote(labels)[0]] for labels in resps]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """`acc`: the extracted (or voted) label is the gold one; `invalid_rate`: no parsable answer."""
    (label,) = results
    return {"acc": float(label == doc["answer"]), "invalid_rate": float(label == formats.INVALID)}


def doc_to_choice_direct(doc: dict) -> list[str]:
    """The answer sentences a label-only student is trained to write, one per choice: ' So the answer is: (x)'."""
    return [formats.direct_target(label) for label, _ in doc["choices"]]


def doc_to_target_direct(doc: dict) -> int:
    return [label for label, _ in doc["choices"]].index(doc["answer"])


def process_results_direct(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """The most likely answer sentence wins; every choice is a valid answer, so `invalid_rate` is 0 by construction."""
    lls = [ll for ll, _ in results]
    best = max(range(len(lls)), key=lls.__getitem__)
    return {"acc": float(doc["choices"][best][0] == doc["answer"]), "invalid_rate": 0.0}
