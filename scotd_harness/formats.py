"""Every string the student is trained on, evaluated on and deployed with, and the one answer parser.

Teacher sampling, training, the lm-eval tasks, the ONNX runtime and the server all import this module, so a
prompt or parsing change happens here once and reaches every stage. It imports only the standard library:
the torch-free edge runtime depends on it.

The student format follows the SCoTD paper::

    Q: {question}
    Answer Choices:
    (a) {choice a}
    (b) {choice b}
    A: {rationale} So the answer is: (x)

The teacher sees the same layout, preceded by hand-written exemplars separated by blank lines, so a teacher
completion cut at the first blank line is already a student target.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

FORMAT_VERSION = 1

#: What a student or teacher says before its final label. Parsing also accepts "the answer is (x)".
ANSWER_PHRASE = "So the answer is:"
#: Generation stops here: a blank line ends one answer in the few-shot layout; "\nQ:" catches models that
#: skip the blank line and start inventing the next question.
STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQ:")
#: Sentinel for an output with no parsable answer (counted and reported, never silently dropped).
INVALID = "[invalid]"
#: Separates few-shot exemplars in the teacher prompt.
EXEMPLAR_SEPARATOR = "\n\n"

LABELS = "abcdefghij"

Choices = Sequence[tuple[str, str]]


def label_for_index(index: int) -> str:
    """The label of the index-th choice: 0 -> 'a'."""
    if not 0 <= index < len(LABELS):
        raise ValueError(f"choice index {index} out of range 0..{len(LABELS) - 1}")
    return LABELS[index]


def normalize_label(raw: str | int) -> str:
    """Official keys come as 'A', '(b)', ' c ' or 0-based ints; every stage compares the lower-case letter."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return label_for_index(raw)
    text = str(raw).strip().strip("()").strip().lower()
    if len(text) != 1 or text not in LABELS:
        raise ValueError(f"not an answer label: {raw!r}")
    return text


def normalize_choices(raw) -> list[tuple[str, str]]:
    """A question's choices as given by a user (`scotd infer`, `/v1/answer`, an input file) -> [(label, text)].

    Takes choice texts (labelled a, b, ... in order) or [label, text] pairs. Texts are stripped. Raises
    ValueError with the reason for anything a prompt cannot be built from: fewer than two or more than
    len(LABELS) choices, an empty or non-string text, a bad or repeated label.
    """
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        # ValueError like every other refusal here: callers catch one exception type for "bad choices"
        raise ValueError(f"expected a list of choice texts or [label, text] pairs, got {type(raw).__name__}")  # noqa: TRY004
    if not 2 <= len(raw) <= len(LABELS):
        raise ValueError(f"expected 2 to {len(LABELS)} choices, got {len(raw)}")
    if all(isinstance(c, str) for c in raw):
        pairs = [(label_for_index(i), c) for i, c in enumerate(raw)]
    elif all(isinstance(c, Sequence) and not isinstance(c, str) and len(c) == 2 for c in raw):
        pairs = [(normalize_label(label), text) for label, text in raw]
    else:
        raise ValueError("expected every choice to be a text, or every choice a [label, text] pair")
    out = []
    for i, (label, text) in enumerate(pairs):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"choice {i + 1} ({label}) has no text")
        out.append((label, text.strip()))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"repeated choice labels {labels}")
    return out


def format_choices(choices: Choices) -> str:
    return "\n".join(f"({label}) {text}" for label, text in choices)


def student_input(question: str, choices: Choices | None) -> str:
    """The prompt a student sees, ending in 'A:' (the target starts with a space). Without choices (a chat
    message that is an open question) the same frame without the "Answer Choices" block."""
    if not choices:
        return f"Q: {question.strip()}\nA:"
    return f"Q: {question.strip()}\nAnswer Choices:\n{format_choices(choices)}\nA:"


def answer_sentence(label: str) -> str:
    return f"{ANSWER_PHRASE} ({normalize_label(label)})"


def student_target(rationale: str, label: str) -> str:
    """' {rationale} So the answer is: (x)': the loss is taken on exactly this text."""
    rationale = clean_rationale(rationale)
    sentence = answer_sentence(label)
    return f" {rationale} {sentence}" if rationale else f" {sentence}"


def direct_target(label: str) -> str:
    """The label-only baseline's target: the answer sentence with no rationale."""
    return student_target("", label)


def teacher_exemplar(question: str, choices: Choices, rationale: str, label: str) -> str:
    return student_input(question, choices) + student_target(rationale, label)


def teacher_prompt(exemplars: Iterable[dict], question: str, choices: Choices) -> str:
    """Few-shot CoT prompt: exemplars (dicts with question, choices, rationale, answer) then the open question."""
    shots = [
        teacher_exemplar(ex["question"], [tuple(c) for c in ex["choices"]], ex["rationale"], ex["answer"])
        for ex in exemplars
    ]
    return EXEMPLAR_SEPARATOR.join([*shots, student_input(question, choices)])


def truncate_at_stop(text: str, stop: Iterable[str] = STOP_STRINGS) -> str:
    """Cut a completion at the earliest stop string (teachers often continue with invented questions)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# "So the answer is: (b)", "the answer is (b) math problem.", "The answer is b." -- the last one wins, because
# rationales sometimes mention an option before concluding.
_ANSWER_RE = re.compile(r"answer is\s*:?\s*\(?\s*([a-j])\s*\)(?!\w)|answer is\s*:?\s*([a-j])(?:[.\s]|$)", re.I)
_ANSWER_TEXT_RE = re.compile(r"answer is\s*:?\s*(.+?)\s*\.?\s*$", re.I | re.S)
_CONNECTIVE = r"(?:so|therefore|thus|hence)\s*,?\s+"
# the closing answer sentence is the last one: an earlier "the answer is (b), but ..." is part of the reasoning
_RATIONALE_END_RE = re.compile(rf"\s*(?:{_CONNECTIVE})?the answer is\b(?!.*the answer is\b).*$", re.I | re.S)
# ... and a label-only answer sentence left before it ("So the answer is (b). Therefore the answer is b.") too
_LABEL_SENTENCE_END_RE = re.compile(rf"\s*(?:{_CONNECTIVE})?the answer is\s*:?\s*\(?\s*[a-j]\s*\)?\s*\.?\s*$", re.I)


def _norm_text(s: str) -> str:
    """Choice text compared without case, punctuation or a leading article ("a cat" says choice "cat")."""
    text = re.sub(r"[^a-z0-9 ]+", "", s.lower()).strip()
    return re.sub(r"^(?:a|an|the)\s+", "", text)


def _choice_named(said: str, choices: Choices) -> str | None:
    """The label of the one choice whose text is `said`, or None."""
    said = _norm_text(said)
    hits = [label for label, choice in choices if _norm_text(choice) == said]
    return hits[0] if len(hits) == 1 else None


def extract_answer(completion: str, choices: Choices | None = None) -> str:
    """The label a completion commits to, or INVALID.

    Reads the first answer (up to the first stop string) and takes the last "answer is (x)" in it. With
    ``choices`` given, a label outside them is INVALID and "the answer is <choice text>" maps to its label; a bare
    lower-case "a" that opens a choice's text ("the answer is a cat.") is that choice, not label (a).
    """
    text = truncate_at_stop(completion)
    valid = {label for label, _ in choices} if choices else set(LABELS)
    matches = list(_ANSWER_RE.finditer(text))
    if matches:
        m = matches[-1]
        label = (m.group(1) or m.group(2)).lower()
        if m.group(2) == "a" and choices:  # the article, where the words after it name a choice
            named = _choice_named(re.split(r"[.!?\n]", text[m.start(2):], maxsplit=1)[0], choices)
            if named is not None:
                return named
        return label if label in valid else INVALID
    if choices:
        m = _ANSWER_TEXT_RE.search(text)
        if m:
            named = _choice_named(m.group(1), choices)
            if named is not None:
                return named
    return INVALID


def clean_rationale(text: str) -> str:
    """The reasoning alone: cut at the stop strings, drop the closing answer sentence, squash whitespace."""
    text = truncate_at_stop(text)
    text = _RATIONALE_END_RE.sub("", text)
    while (shorter := _LABEL_SENTENCE_END_RE.sub("", text)) != text:
        text = shorter
    return " ".join(text.split())


def majority_vote(labels: Iterable[str]) -> tuple[str, dict[str, int]]:
    """Self-consistency: the most frequent valid label (ties go to the first seen) and the vote counts.

    Returns INVALID only when no chain produced a parsable answer.
    """
    counts = Counter(label for label in labels if label != INVALID)
    if not counts:
        return INVALID, {}
    best = max(counts.values())
    for label in counts:  # Counter keeps first-seen order
        if counts[label] == best:
            return label, dict(counts)
    raise AssertionError("unreachable")
