"""Importers of public rationale corpora into the corpus line format.

- The SCoTD release (`csqa_30x.json` and siblings): a JSON list of `{prompt, response, score, index, rationale}`
  (optionally `tokens`, `token_probs`), `index` being the question's position in the Hugging Face split, which
  follows the official file order. A file holding several pools (`{"pool id": [...]}`) is read pool by pool.
  Rows are joined to the dataset by index when the dataset is at hand; the question text in the prompt is
  checked against it. Without the dataset the question and choices are read back from the prompt's last
  `Q:` block.
- Distilling step-by-step's PaLM-540B CoT rationales for CSQA (`cqa_{train,test}.json` plus
  `llm/{train,test}_CoT_k.json`, element i of file k being the completion for line k*1000+i). Every completion
  goes on with invented `Q:/A:` turns, so it is cut at the first blank line. `test` is CSQA's dev split.
- CoS-E v1.11's human explanations for CSQA (`cose_{train,dev}_v1.11.jsonl`: `{id, explanation: {open-ended,
  selected}}`): the free-text `open-ended` explanation becomes the rationale of one row per question, closed with
  the official gold label, so a student trained on it sees a human's reason in the same format as a teacher's
  chain. The file has no question text, so rows are joined by id to the official CSQA split.

Answers are parsed and rationales cleaned by `formats`, as for sampled chains.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import formats
from .corpus import CorpusRow
from .errors import DataFormatError, ScotdError
from .jsonl import read_json, read_jsonl

log = logging.getLogger(__name__)

DSS_DIRNAME = "distilling_step_by_step_cqa"
DSS_TEACHER = "palm-540b"
DSS_PROMPT_VERSION = "distilling-step-by-step-cqa"
DSS_SPLITS = {"train": "train", "test": "validation", "validation": "validation", "dev": "validation"}

SCOTD_PROMPT_VERSION = "scotd-release"


@dataclass
class ImportReport:
    source: str
    chains: int = 0
    questions: int = 0
    parsed: int = 0
    matches_gold: int = 0
    with_gold: int = 0
    notes: list[str] = field(default_factory=list)
    #: reason -> rows of the source left out for it (reported, never dropped silently)
    left_out: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.chains} chains for {self.questions} questions",
            f"  parsed to a label: {self.parsed} ({self.parsed / self.chains:.1%})" if self.chains else "  no chains",
        ]
        if self.with_gold:
            share = self.matches_gold / self.with_gold
            out.append(f"  match gold: {self.matches_gold} of {self.with_gold} ({share:.1%})")
        out.extend(f"  left out: {count} ({reason})" for reason, count in self.left_out.items() if count)
        out.extend(f"  note: {n}" for n in self.notes)
        return out

    def count(self, row: CorpusRow) -> None:
        self.chains += 1
        self.parsed += row.prediction != formats.INVALID
        if row.correct is not None:
            self.with_gold += 1
            self.matches_gold += bool(row.correct)


# --- distilling step-by-step ---------------------------------------------------------------------------------


def find_dss_root(path: str | os.PathLike | None) -> Path:
    """The folder holding cqa_train.json: `path` itself, or `<path>/distilling_step_by_step_cqa`, or that folder
    under $SCOTD_DATA_DIR."""
    candidates = []
    if path is not None:
        candidates += [Path(path), Path(path) / DSS_DIRNAME]
    elif os.environ.get("SCOTD_DATA_DIR"):
        candidates.append(Path(os.environ["SCOTD_DATA_DIR"]) / DSS_DIRNAME)
    for c in candidates:
        if (c / "cqa_train.json").is_file() or (c / "cqa_test.json").is_file():
            return c
    raise ScotdError(
        f"no distilling step-by-step CQA folder (cqa_train.json, llm/) at {', '.join(map(str, candidates)) or '?'}; "
        "pass its path or set SCOTD_DATA_DIR"
    )


def import_distilling_step_by_step(
    path: str | os.PathLike | None = None, split: str = "train", examples=None
) -> tuple[list[CorpusRow], ImportReport]:
    """Rows (one chain per question) and an import report. With `examples` (the official CSQA split; ids are
    shared), gold labels come from the official answer key; without, from matching the answer text to a choice,
    which leaves the few questions with two identical choice texts without gold."""
    if split not in DSS_SPLITS:
        raise ScotdError(f"distilling step-by-step split must be train or test (CSQA dev), got {split!r}")
    file_split = "test" if DSS_SPLITS[split] == "validation" else "train"
    root = find_dss_root(path)
    cqa = root / f"cqa_{file_split}.json"
    records = read_jsonl(cqa)
    completions: list[str] = []
    parts = sorted((root / "llm").glob(f"{file_split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for k, part in enumerate(parts):
        if part.stem != f"{file_split}_CoT_{k}":
            raise ScotdError(f"{root / 'llm'}: expected {file_split}_CoT_{k}.json, found {part.name}")
        chunk = read_json(part)
        if not isinstance(chunk, list) or not all(isinstance(c, str) for c in chunk):
            raise DataFormatError(part, None, "<file>", "expected a JSON array of strings")
        completions.extend(chunk)
    if len(completions) != len(records):
        raise ScotdError(f"{cqa.name} has {len(records)} questions but llm/{file_split}_CoT_*.json "
                         f"hold {len(completions)} completions")
    report = ImportReport(source=f"distilling step-by-step CQA {file_split} ({DSS_TEACHER})")
    official = {ex.id: ex for ex in examples} if examples is not None else None
    rows = []
    no_gold = not_joined = 0
    for (lineno, rec), completion in zip(records, completions):
        for key in ("id", "question", "choices", "answer"):
            if key not in rec:
                raise DataFormatError(cqa, lineno, key, "missing")
        if not isinstance(rec["question"], str):
            raise DataFormatError(cqa, lineno, "question", "expected a string")
        try:
            choices = [list(c) for c in formats.normalize_choices(rec["choices"])]
        except ValueError as e:
            raise DataFormatError(cqa, lineno, "choices", str(e)) from None
        answer_text = rec["answer"].strip() if isinstance(rec["answer"], str) else None
        gold = [label for label, text in choices if text == answer_text]
        answer = gold[0] if len(gold) == 1 else None
        if official is not None:
            ex = official.get(str(rec["id"]))
            if ex is None:
                not_joined += 1
            else:
                answer = ex.answer
        no_gold += answer is None
        raw = formats.truncate_at_stop(completion)
        prediction = formats.extract_answer(raw, [tuple(c) for c in choices])
        row = CorpusRow(
            task="csqa",
            id=str(rec["id"]),
            sample_index=0,
            question=rec["question"],
            choices=choices,
            answer=answer,
            rationale=formats.clean_rationale(raw),
            prediction=prediction,
            correct=None if answer is None else prediction == answer,
            teacher=DSS_TEACHER,
            prompt_version=DSS_PROMPT_VERSION,
            raw=raw,
            extra={"split": DSS_SPLITS[split], "source": "distilling-step-by-step"},
        )
        report.count(row)
        rows.append(row)
    report.questions = len(rows)
    if not_joined:
        report.notes.append(f"{not_joined} ids not found in the official split")
    if no_gold:
        report.notes.append(f"{no_gold} questions without a gold label (answer text matching no single choice)")
    return rows, report


# --- the SCoTD release -----------------------------------------------------------------------------------------

_CHOICE_LINE = re.compile(r"^\(([a-j])\)\s?(.*)$")


def parse_prompt_question(prompt: str) -> tuple[str, list[list[str]]]:
    """The last `Q: ... Answer Choices: (a) ... A:` block of a few-shot prompt -> (question, choices)."""
    start = prompt.rfind("Q: ")
    if start == -1:
        raise ValueError("no 'Q: ' block in the prompt")
    block = prompt[start + 3 :]
    end = block.rfind("\nA:")
    block = block[:end] if end != -1 else block
    question, sep, rest = block.partition("\nAnswer Choices:\n")
    if not sep:
        raise ValueError("no 'Answer Choices:' in the last block of the prompt")
    choices = []
    for line in rest.splitlines():
        m = _CHOICE_LINE.match(line.strip())
        if m:
            choices.append([m.group(1), m.group(2).strip()])
    if not choices:
        raise ValueError("no '(a) ...' choice lines in the last block of the prompt")
    return question.strip(), choices


def _release_records(data, path) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):  # several pools: {"model*dataset*run*extra": [records]}
        records = []
        for key in sorted(data):
            if not isinstance(data[key], list):
                raise DataFormatError(path, None, key, "expected a list of records")
            records.extend(data[key])
        return records
    raise DataFormatError(path, None, "<file>", "expected a JSON list of records (or a dict of lists)")


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def import_scotd_release(
    path: str | os.PathLike,
    task: str,
    split: str = "train",
    examples=None,
    teacher: str = "scotd-release",
) -> tuple[list[CorpusRow], ImportReport]:
    """Rows from a SCoTD release file. `examples` (the task's split, in file order) joins rows by `index` to their
    official ids and gold answers; without it, ids are `<task>-<split>-<index>` and the question and choices
    come from the prompt (gold unknown: `correct` then follows the release's own score)."""
    path = Path(path)
    records = _release_records(read_json(path), path)
    report = ImportReport(source=f"SCoTD release {path.name}")
    rows = []
    next_index: dict[int, int] = {}
    mismatched = 0
    for i, rec in enumerate(records):
        where = f"{path}[{i}]"
        if not isinstance(rec, dict):
            raise DataFormatError(where, None, "<record>", "expected a JSON object")
        for key, kinds in (("prompt", str), ("response", str), ("score", (int, float)), ("index", int)):
            if key not in rec:
                raise DataFormatError(where, None, key, "missing")
            if not isinstance(rec[key], kinds) or isinstance(rec[key], bool):
                raise DataFormatError(where, None, key, f"expected {getattr(kinds, '__name__', 'a number')}, "
                                                        f"got {type(rec[key]).__name__}")
        index = rec["index"]
        try:
            p_question, p_choices = parse_prompt_question(rec["prompt"])
        except ValueError as e:
            p_question, p_choices = None, None
            if examples is None:
                raise DataFormatError(where, None, "prompt", str(e)) from None
        if examples is not None:
            if not 0 <= index < len(examples):
                raise DataFormatError(where, None, "index", f"{index} is outside {task} {split} ({len(examples)})")
            ex = examples[index]
            qid, question, choices, answer = ex.id, ex.question, [list(c) for c in ex.choices], ex.answer
            if p_question is not None and _norm(p_question) != _norm(question):
                mismatched += 1
        else:
            qid, question, choices, answer = f"{task}-{split}-{index}", p_question, p_choices, None
        raw = formats.truncate_at_stop(rec["response"])
        prediction = formats.extract_answer(raw, [tuple(c) for c in choices])
        score = float(rec["score"])
        correct = (prediction == answer) if answer is not None else score >= 0.5
        rationale = rec.get("rationale")
        rationale = formats.clean_rationale(rationale if isinstance(rationale, str) and rationale.strip() else raw)
        extra = {"split": split, "source": "scotd-release", "release_score": score}
        logprob = num_tokens = None
        if isinstance(rec.get("token_probs"), list) and rec["token_probs"]:
            # the release stores per-token log-probabilities where the sampler returned them
            logprob, num_tokens = float(sum(rec["token_probs"])), len(rec["token_probs"])
        sample_index = next_index.get(index, 0)
        next_index[index] = sample_index + 1
        row = CorpusRow(
            task=task, id=qid, sample_index=sample_index, question=question, choices=choices, answer=answer,
            rationale=rationale, prediction=prediction, correct=correct, logprob=logprob, num_tokens=num_tokens,
            teacher=teacher, prompt_version=SCOTD_PROMPT_VERSION, raw=raw, extra=extra,
        )
        report.count(row)
        rows.append(row)
    report.questions = len(next_index)
    if mismatched:
        report.notes.append(f"{mismatched} chains whose prompt question differs from {task} {split} at their index")
    return rows, report


# --- CoS-E v1.11 human explanations ------------------------------------------------------------------------------

COSE_DIRNAME = "cose_v1.11"
COSE_TEACHER = "human:cose-v1.11"
COSE_PROMPT_VERSION = "cose-v1.11-open-ended"
COSE_FILES = {"train": "cose_train_v1.11.jsonl", "validation": "cose_dev_v1.11.jsonl"}
COSE_SPLITS = {"train": "train", "validation": "validation", "dev": "validation"}


def find_cose_file(path: str | os.PathLike | None, split: str) -> Path:
    """The CoS-E file of `split`: `path` itself when it is a file; else `<path>/cose_v1.11/...` or `<path>/...` (a
    data folder or the CoS-E folder); without `path`, under $SCOTD_DATA_DIR."""
    name = COSE_FILES[COSE_SPLITS[split]]
    if path is not None and Path(path).is_file():
        return Path(path)
    roots = [Path(path)] if path is not None else (
        [Path(os.environ["SCOTD_DATA_DIR"])] if os.environ.get("SCOTD_DATA_DIR") else [])
    candidates = [c for root in roots for c in (root / COSE_DIRNAME / name, root / name)]
    for c in candidates:
        if c.is_file():
            return c
    where = f" at {', '.join(map(str, candidates))}" if candidates else ""
    raise ScotdError(f"no CoS-E v1.11 file {name}{where}; pass its path or folder, or set SCOTD_DATA_DIR / --data-dir")


def _cose_explanation(rec: dict, path: Path, lineno: int) -> tuple[str, str]:
    """(id, open-ended explanation) of one CoS-E line; anything else is a `DataFormatError` naming the field."""
    qid = rec.get("id")
    if not isinstance(qid, str) or not qid:
        raise DataFormatError(path, lineno, "id", "missing" if qid is None else f"expected a non-empty string, got {qid!r}")
    explanation = rec.get("explanation")
    if not isinstance(explanation, dict):
        raise DataFormatError(path, lineno, "explanation",
                              "missing" if explanation is None else "expected an object with 'open-ended'")
    text = explanation.get("open-ended")
    if not isinstance(text, str):
        raise DataFormatError(path, lineno, "explanation.open-ended",
                              "missing" if text is None else f"expected a string, got {type(text).__name__}")
    return qid, text


def _cose_stated_answer(rec: dict, choices, path: Path, lineno: int) -> str | None:
    """The answer a CoS-E line states, as a label, where it states one. v1.11 lines have none; the v1.0 release
    and hand-made files carry `answer` (a choice text or a label), which must then agree with the CSQA key."""
    said = rec.get("answer")
    if said is None:
        return None
    if not isinstance(said, str):
        raise DataFormatError(path, lineno, "answer", f"expected a string, got {type(said).__name__}")
    by_text = [label for label, text in choices if _norm(text) == _norm(said)]
    if len(by_text) == 1:
        return by_text[0]
    try:
        return formats.normalize_label(said)
    except ValueError:
        raise DataFormatError(path, lineno, "answer", f"{said!r} is neither a choice text nor a label") from None


def import_cose(
    path: str | os.PathLike | None = None, split: str = "train", examples=None, only_ids=None
) -> tuple[list[CorpusRow], ImportReport]:
    """One row per CoS-E question: the human `open-ended` explanation as the rationale, the official CSQA gold
    label as the answer (so the target is `{explanation} So the answer is: (x)`, built by `formats`).

    `examples` is the official CSQA split the file explains (required: CoS-E has ids and explanations only).
    `only_ids` keeps the questions of another corpus (the PaLM arm's answer-filtered questions), so the human and
    the machine arm train on the same questions. Left out, and counted in the report: explanations that leave no
    rationale, ids not in that split, ids outside `only_ids`, repeated ids, and lines that state an answer other
    than the gold one."""
    if split not in COSE_SPLITS:
        raise ScotdError(f"CoS-E split must be train or validation (CSQA dev), got {split!r}")
    if examples is None:
        raise ScotdError("CoS-E needs the official CSQA questions to join to (--data-dir / SCOTD_DATA_DIR or the hub)")
    source = find_cose_file(path, split)
    official = {ex.id: ex for ex in examples}
    report = ImportReport(source=f"CoS-E v1.11 {source.name} (human open-ended explanations)")
    not_in_split = f"id not in CSQA {COSE_SPLITS[split]}"
    # formats.clean_rationale cuts at "the answer is": an explanation that opens with it leaves no rationale
    no_rationale = "no rationale (empty, or nothing before 'the answer is')"
    not_wanted = "not among the questions asked for"
    skipped = dict.fromkeys([no_rationale, not_in_split, not_wanted, "repeated id", "no gold label in CSQA",
                             "stated answer differs from the CSQA key"], 0)
    rows: list[CorpusRow] = []
    seen: set[str] = set()
    for lineno, rec in read_jsonl(source):  # the whole file is read (and checked) before any row is built
        qid, text = _cose_explanation(rec, source, lineno)
        ex = official.get(qid)
        stated = _cose_stated_answer(rec, ex.choices, source, lineno) if ex is not None else None
        rationale = formats.clean_rationale(text)
        if ex is None:
            reason = not_in_split
        elif only_ids is not None and qid not in only_ids:
            reason = not_wanted
        elif qid in seen:
            reason = "repeated id"
        elif not rationale:
            reason = no_rationale
        elif ex.answer is None:
            reason = "no gold label in CSQA"
        elif stated not in (None, ex.answer):
            reason = "stated answer differs from the CSQA key"
        else:
            reason = None
        if reason is not None:
            skipped[reason] += 1
            continue
        seen.add(qid)
        row = CorpusRow(
            task="csqa", id=qid, sample_index=0, question=ex.question, choices=[list(c) for c in ex.choices],
            answer=ex.answer, rationale=rationale, prediction=ex.answer, correct=True, teacher=COSE_TEACHER,
            prompt_version=COSE_PROMPT_VERSION, raw=text,
            extra={"split": COSE_SPLITS[split], "source": "cose-v1.11", "selected": rec["explanation"].get("selected")},
        )
        report.count(row)
        rows.append(row)
    report.questions = len(rows)
    report.left_out = skipped
    wanted = official.keys() if only_ids is None else official.keys() & set(only_ids)
    missing = len(wanted) - len(seen)
    if missing:
        of = f"CSQA {COSE_SPLITS[split]} questions" + (" asked for" if only_ids is not None else "")
        report.notes.append(f"{missing} of {len(wanted)} {of} have no CoS-E row kept")
    return rows, report
