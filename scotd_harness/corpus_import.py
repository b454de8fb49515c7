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

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.chains} chains for {self.questions} questions",
            f"  parsed to a label: {self.parsed} ({self.parsed / self.chains:.1%})" if self.chains else "  no chains",
        ]
        if self.with_gold:
            share = self.matches_gold / self.with_gold
            out.append(f"  match gold: {self.matches_gold} of {self.with_gold} ({share:.1%})")
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
