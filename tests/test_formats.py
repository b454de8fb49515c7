"""The one module of prompt strings and answer parsing: pure Python, and right on real model output."""

import json
import subprocess
import sys

import pytest

from scotd_harness import formats as F

CHOICES = [("a", "bank"), ("b", "library"), ("c", "department store"), ("d", "mall"), ("e", "new york")]


def test_student_input_and_target_layout():
    text = F.student_input("Where is a revolving door?", CHOICES[:2])
    assert text == "Q: Where is a revolving door?\nAnswer Choices:\n(a) bank\n(b) library\nA:"
    target = F.student_target("Banks have revolving doors for security.", "a")
    assert target == " Banks have revolving doors for security. So the answer is: (a)"
    assert F.direct_target("B") == " So the answer is: (b)"


def test_student_target_strips_a_closing_answer_sentence_from_the_rationale():
    target = F.student_target("Malls have many stores. So the answer is (d) mall.\n\nQ: next", "d")
    assert target == " Malls have many stores. So the answer is: (d)"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" Banks are secure. So the answer is: (a)", "a"),
        (" So the answer is (d) mall.\n\nQ: other question\nA: So the answer is (b)", "d"),
        ("The answer is c.", "c"),
        ("Of the above choices, (b) is tempting, but the answer is (e) new york.", "e"),
        ("So the answer is either (b) couch or (e) bed.", F.INVALID),  # two answers are no answer
        ("So the answer is: (z)", F.INVALID),
        ("I am not sure.", F.INVALID),
        ("", F.INVALID),
        ("So the answer is department store.", "c"),
        ("So the answer is: (A)", "a"),
        ("Shoppers go there. So the answer is a mall.", "d"),  # the article before a choice's text, not label (a)
        ("The answer is a bank. No, the answer is a mall.", "d"),  # ... and the last answer still wins
        ("the answer is a because banks are safe.", "a"),  # no choice is named "because ...": label (a)
        ("The answer is a.", "a"),
        ("The answer is A because banks are secure.", "a"),
    ],
)
def test_extract_answer_cases(completion, expected):
    assert F.extract_answer(completion, CHOICES) == expected


def test_the_rationale_ends_at_the_last_answer_sentence():
    """A chain that weighs an option ("one might say the answer is (b), but ...") keeps that reasoning."""
    text = " One might say the answer is (b), but libraries lend books. So the answer is: (a)"
    assert F.clean_rationale(text) == "One might say the answer is (b), but libraries lend books."
    assert F.extract_answer(text, CHOICES) == "a"
    assert F.student_target(text, "a") == f" {F.clean_rationale(text)} So the answer is: (a)"
    # an answer said twice leaves no answer sentence behind
    assert F.clean_rationale("Banks are safe. So the answer is (a). Therefore the answer is a.") == "Banks are safe."


def test_majority_vote_ignores_invalid_and_breaks_ties_by_first_seen():
    assert F.majority_vote(["b", F.INVALID, "a", "b", "a"]) == ("b", {"b": 2, "a": 2})
    assert F.majority_vote([F.INVALID, F.INVALID]) == (F.INVALID, {})


def test_teacher_prompt_joins_exemplars_and_ends_open():
    ex = {"question": "Q1?", "choices": [["a", "x"], ["b", "y"]], "answer": "b", "rationale": "Because y."}
    prompt = F.teacher_prompt([ex, ex], "Q2?", CHOICES[:2])
    shots = prompt.split(F.EXEMPLAR_SEPARATOR)
    assert len(shots) == 3 and shots[0].endswith("A: Because y. So the answer is: (b)")
    assert prompt.endswith("(b) library\nA:")


def test_formats_imports_no_heavy_library():
    code = (
        "import sys, scotd_harness.formats, scotd_harness.prompts, scotd_harness.corpus;"
        "bad=[m for m in ('torch','transformers','numpy','datasets','onnxruntime') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_label_normalisation():
    assert F.normalize_label("C") == "c" and F.normalize_label(1) == "b" and F.normalize_label("(d)") == "d"
    with pytest.raises(ValueError):
        F.normalize_label("ab")


def test_extraction_on_the_palm_540b_chains(data_dir):
    """The real large-teacher corpus: each completion cut at its first blank line, parsed against its choices.

    9741 train chains: 9559 parse to a single label and 7385 of those match gold. Most of the 182 unparsed ones
    say "either (x) or (y)" or "one of these four" -- counted as no answer rather than guessed.
    """
    root = data_dir / "distilling_step_by_step_cqa"
    rows = [json.loads(line) for line in open(root / "cqa_train.json", encoding="utf-8")]
    chains = [c for k in range(10) for c in json.load(open(root / "llm" / f"train_CoT_{k}.json", encoding="utf-8"))]
    assert len(rows) == len(chains) == 9741
    parsed = matched = 0
    for row, chain in zip(rows, chains):
        choices = [(F.LABELS[i], t) for i, t in enumerate(row["choices"])]
        label = F.extract_answer(chain, choices)
        if label != F.INVALID:
            parsed += 1
            matched += label == F.LABELS[row["choices"].index(row["answer"])]
    assert (parsed, matched) == (9559, 7385)


def test_extraction_on_recorded_embedded_model_outputs(fixtures_dir):
    """12 completions of the embedded SmolLM2-135M under the CSQA teacher prompt (6 CSQA dev questions, greedy
    and sampled at T=1.0), recorded verbatim; expected labels checked by hand. They run on past the blank line
    into invented questions, say "(a) completion job", or never commit ("So that would be (b)")."""
    rows = [json.loads(line) for line in open(fixtures_dir / "embedded_teacher_outputs.jsonl", encoding="utf-8")]
    assert len(rows) == 12
    for row in rows:
        choices = [tuple(c) for c in row["choices"]]
        assert F.extract_answer(row["completion"], choices) == row["expected"], row["completion"]
    assert sum(row["expected"] == F.INVALID for row in rows) == 2


def test_normalize_choices_texts_and_pairs():
    assert F.normalize_choices([" fridge", "oven "]) == [("a", "fridge"), ("b", "oven")]
    assert F.normalize_choices([["A", "yes"], ("(b)", "no")]) == [("a", "yes"), ("b", "no")]
    assert F.normalize_choices([[0, "yes"], [1, "no"]]) == [("a", "yes"), ("b", "no")]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (["only"], "2 to 10 choices, got 1"),
        ([f"c{i}" for i in range(11)], "2 to 10 choices, got 11"),
        (["x", "  "], "choice 2 (b) has no text"),
        ([["a", "x"], ["b", None]], "choice 2 (b) has no text"),
        ([["a", "x"], ["a", "y"]], "repeated choice labels"),
        ([["a", "x"], ["z", "y"]], "not an answer label"),
        (["x", ["b", "y"]], "every choice to be a text"),
        ("x|y", "got str"),
        (None, "got NoneType"),
    ],
)
def test_normalize_choices_refuses_with_the_reason(raw, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        F.normalize_choices(raw)
