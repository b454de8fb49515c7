"""The teacher's few-shot exemplars: every task has a well-formed prompt set built from real training questions."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pytest

from scotd_harness import formats
from scotd_harness.datasets import TASKS, load_examples
from scotd_harness.errors import ScotdError
from scotd_harness.prompts import available, load_prompt

#: Tasks with no train split: their exemplars are written by the project (ids "scotd-written-N").
WRITTEN = {"imdb_original", "imdb_contrast"}
#: The built-in demonstration set ships its own questions; its exemplars are written too (tested below).
DEMO = {"demo"}
#: Every other task's exemplars come from train-fit: real training questions outside the train-holdout tenth (used for
#: development evaluation where the official dev split is kept aside).
SPLIT = "train-fit"


@lru_cache(maxsize=None)
def _examples(task: str, split: str, data_dir: str) -> dict:
    return {ex.id: ex for ex in load_examples(task, split, data_dir=data_dir)}


def _validation(task: str, data_dir: str) -> dict:
    """The validation examples, or {} where that split is kept aside (no file in the data directory)."""
    try:
        return _examples(task, "validation", data_dir)
    except ScotdError:
        return {}


def _raw(task: str) -> dict:
    return json.loads((resources.files("scotd_harness.prompts") / f"{task}.json").read_text(encoding="utf-8"))


def test_every_task_has_a_prompt_file():
    assert set(TASKS) <= set(available())


@pytest.mark.parametrize("task", list(TASKS))
def test_prompt_set_is_well_formed(task):
    raw = _raw(task)
    assert raw["task"] == task
    assert raw["notes"].strip()
    prompt = load_prompt(task)
    assert prompt.task == task
    assert prompt.prompt_version.startswith(f"{task}-v")
    assert len(prompt.exemplars) >= (5 if task in DEMO else 6)  # the demo keeps its prompt short, for speed
    ids = [ex["id"] for ex in prompt.exemplars]
    assert len(set(ids)) == len(ids), "duplicate exemplar ids"
    n_choices = TASKS[task][1]
    for ex in prompt.exemplars:
        labels = [c[0] for c in ex["choices"]]
        assert labels == [formats.label_for_index(i) for i in range(n_choices)], ex["id"]
        assert ex["answer"] in labels, ex["id"]
        rationale = ex["rationale"]
        # The rationale is the reasoning alone: student_target adds the closing answer sentence.
        assert rationale.strip() and formats.clean_rationale(rationale) == rationale, ex["id"]
        assert "answer is" not in rationale.lower(), ex["id"]
    # Not all exemplars share one label (a teacher would learn the label prior from the prompt).
    assert len({ex["answer"] for ex in prompt.exemplars}) >= 2


@pytest.mark.parametrize("task", list(TASKS))
def test_render_and_parse_back(task):
    prompt = load_prompt(task)
    open_question = prompt.exemplars[0]
    rendered = prompt.render("An open question?", [tuple(c) for c in open_question["choices"]])
    assert rendered.endswith("\nA:")
    assert rendered.count("\nA:") == len(prompt.exemplars) + 1
    shots = rendered.split(formats.EXEMPLAR_SEPARATOR)
    assert len(shots) == len(prompt.exemplars) + 1, "an exemplar contains a blank line"
    for ex, shot in zip(prompt.exemplars, shots):
        choices = [tuple(c) for c in ex["choices"]]
        target = formats.student_target(ex["rationale"], ex["answer"])
        assert shot == formats.student_input(ex["question"], choices) + target
        assert formats.extract_answer(target, choices) == ex["answer"], ex["id"]
        # A teacher completion of the exemplar's own layout parses back to the gold label too.
        assert formats.extract_answer(target + "\n\nQ: next", choices) == ex["answer"], ex["id"]


@pytest.mark.parametrize("task", [t for t in TASKS if t not in WRITTEN | DEMO])
def test_exemplars_are_real_training_questions(task, data_dir, quarel_train_size):
    root = str(data_dir)
    split = SPLIT  # never plain "train": that would let an exemplar sit in train-holdout
    train = _examples(task, split, root)
    validation = _validation(task, root)
    # QuaRel's exemplars carry the ids of the partial rebuild; in the official file (`scotd data fetch`) the same
    # questions have official ids, so there they are found by their text.
    key = (lambda ex: ex["question"]) if task == "quarel" and quarel_train_size != 830 else (lambda ex: ex["id"])
    if task == "quarel" and quarel_train_size != 830:
        train = {e.question: e for e in train.values()}
        validation = {e.question: e for e in validation.values()}
    for ex in load_prompt(task).exemplars:
        assert key(ex) in train, f"{task} exemplar {ex['id']} is not in {split}"
        assert key(ex) not in validation, f"{task} exemplar {ex['id']} is a validation question"
        official = train[key(ex)]
        assert ex["question"] == official.question, ex["id"]
        assert [tuple(c) for c in ex["choices"]] == list(official.choices), ex["id"]
        assert ex["answer"] == official.answer, ex["id"]


@pytest.mark.parametrize("task", sorted(WRITTEN))
def test_written_exemplars_are_not_evaluation_reviews(task, data_dir):
    from scotd_harness.datasets.imdb_contrast import CHOICES, QUESTION

    prefix, suffix = QUESTION.split("{review}")
    evaluation = {ex.question for ex in _validation(task, str(data_dir)).values()}
    for ex in load_prompt(task).exemplars:
        assert ex["id"].startswith("scotd-written-"), ex["id"]
        assert ex["question"].startswith(prefix) and ex["question"].endswith(suffix), ex["id"]
        assert [tuple(c) for c in ex["choices"]] == list(CHOICES), ex["id"]
        assert ex["question"] not in evaluation, ex["id"]


def test_imdb_tasks_share_exemplars():
    assert load_prompt("imdb_original").exemplars == load_prompt("imdb_contrast").exemplars


def test_demo_exemplars_are_written_and_not_demo_questions():
    questions = {ex.question for split in ("train", "validation") for ex in load_examples("demo", split)}
    for ex in load_prompt("demo").exemplars:
        assert ex["id"].startswith("scotd-written-demo-") and ex["question"] not in questions
