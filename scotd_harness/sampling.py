"""`scotd sample`: the teacher's few-shot prompt per question, N chains each, one corpus line per chain.

Loss-free and resumable. The corpus is append-only JSONL: every finished chain is one line, flushed as soon as it
is written, and the file is fsync'd after each batch of questions. A kill at any moment leaves at worst a torn last
line, which a resume cuts away before appending. The sidecar `<corpus>.meta.json` (written atomically) records the
settings; a resume with other settings is refused and names the keys that differ. A resume samples only the
`(task, id, sample_index)` keys not yet in the file, so no key is ever written twice.

The backend is told which chains it samples (the question's key and the first chain index of each contiguous
run of missing indices), so each chain's seed derives from (run seed, question, chain index) and a resumed run
asks for new chains, never again for the ones already written (`scotd_harness.seeding`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import atomic, formats, seeding
from .corpus import CorpusRow, read_corpus
from .errors import ScotdError

log = logging.getLogger(__name__)

META_VERSION = 1


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides what a corpus holds; a resume must match it exactly."""

    task: str
    split: str
    teacher: str
    n: int
    temperature: float
    max_new_tokens: int
    prompt_version: str
    seed: int
    limit: int | None = None
    num_exemplars: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SampleSummary:
    questions: int = 0
    questions_skipped: int = 0
    chains_written: int = 0
    chains_skipped: int = 0
    correct: int = 0
    unparsed: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.chains_written / self.seconds if self.seconds else 0.0
        acc = f"{self.correct / self.chains_written:.1%}" if self.chains_written else "n/a"
        return (
            f"{self.chains_written} chains written for {self.questions} questions "
            f"({self.chains_skipped} already in the corpus), {rate:.2f} chains/s; "
            f"teacher accuracy {acc}, unparsed {self.unparsed}"
        )


def meta_path(corpus: str | os.PathLike) -> Path:
    return Path(f"{corpus}.meta.json")


def write_meta(corpus: str | os.PathLike, settings: SampleSettings) -> None:
    """Atomically (temp file + rename) so a kill never leaves half a meta file."""
    atomic.write_json(meta_path(corpus), {"meta_version": META_VERSION, "settings": settings.to_dict()})


def read_meta(corpus: str | os.PathLike) -> dict | None:
    path = meta_path(corpus)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ScotdError(f"{path}: unreadable sampling settings ({e})") from None


def settings_diff(old: dict, new: dict) -> dict[str, tuple]:
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line left without its newline by a kill; returns the bytes removed."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the last newline (the torn line is at most one chain long)
        pos, chunk = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            i = buf.rfind(b"\n")
            if i != -1:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def check_output(out: str | os.PathLike, settings: SampleSettings, resume: bool) -> None:
    """Refuse, before any work, to clobber a corpus or to resume one with other settings (no side effects)."""
    out = Path(out)
    exists = out.is_file() and out.stat().st_size > 0
    if not resume:
        if exists:
            raise ScotdError(f"{out} already holds chains; pass --resume to continue it, or choose another --out")
        return
    old = read_meta(out)
    if old is None:
        if exists:
            raise ScotdError(f"cannot resume {out}: its settings file {meta_path(out)} is missing")
        return
    diff = settings_diff(old, settings.to_dict())
    if diff:
        detail = "; ".join(f"{k}: corpus has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise ScotdError(f"refusing to resume {out} with other settings ({detail})")


def prepare_output(out: str | os.PathLike, settings: SampleSettings, resume: bool) -> set[tuple[str, str, int]]:
    """Check the output against --resume and the sidecar, write the sidecar, return the keys already written."""
    check_output(out, settings, resume)
    out = Path(out)
    if read_meta(out) is None or not resume:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_meta(out, settings)
    if not out.exists():
        out.touch()
        return set()
    repair_torn_tail(out)
    return {row.key for row in read_corpus(out, tolerate_torn_tail=False)}


def chains_left(examples: Sequence, settings: SampleSettings, out: str | os.PathLike) -> int:
    """Chains of `examples` that `out` does not hold yet (no side effects): where none are left the teacher need
    not be loaded, so a finished sample restored where its teacher is not (another machine) goes on."""
    out = Path(out)
    if not out.is_file():
        return len(examples) * settings.n
    check_output(out, settings, resume=True)
    done = {row.key for row in read_corpus(out)}
    return sum((ex.task, ex.id, i) not in done for ex in examples for i in range(settings.n))


def make_row(example, index: int, completion, settings: SampleSettings, token_logprobs: bool = True) -> CorpusRow:
    """One chain as a corpus line: the answer parsed and checked by `formats`, provenance recorded, and (where
    the backend gives them and `token_logprobs`) the per-token log-probabilities, rounded to 4 decimals."""
    raw = completion.text
    prediction = formats.extract_answer(raw, example.choices)
    correct = None if example.answer is None else prediction == example.answer
    extra = {
        "split": settings.split,
        "seed": settings.seed,
        "max_new_tokens": settings.max_new_tokens,
        "finish_reason": completion.finish_reason,
    }
    per_token = getattr(completion, "token_logprobs", None)
    if token_logprobs and per_token is not None:
        extra["token_logprobs"] = [round(x, 4) for x in per_token]
    return CorpusRow(
        task=example.task,
        id=example.id,
        sample_index=index,
        question=example.question,
        choices=[list(c) for c in example.choices],
        answer=example.answer,
        rationale=formats.clean_rationale(raw),
        prediction=prediction,
        correct=correct,
        logprob=completion.logprob,
        num_tokens=completion.num_tokens,
        teacher=settings.teacher,
        prompt_version=settings.prompt_version,
        temperature=settings.temperature,
        raw=raw,
        extra=extra,
    )


def run_sampling(
    examples: Sequence,
    render,
    backend,
    settings: SampleSettings,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    questions_per_call: int = 8,
    stop: Sequence[str] = formats.STOP_STRINGS,
    progress: bool | None = None,
    token_logprobs: bool = True,
    after_call=None,
) -> SampleSummary:
    """Sample `settings.n` chains for each example into `out`.

    `render(example) -> str` builds the teacher prompt; `backend` is a `TeacherBackend`. Questions go to the
    backend `questions_per_call` at a time; each call's chains are written as soon as it returns, and then
    `after_call(summary)` is called (the file holds only whole lines then).
    """
    from tqdm.auto import tqdm

    done = prepare_output(out, settings, resume)
    summary = SampleSummary()
    todo: list[tuple[object, list[int]]] = []  # (example, one contiguous run of its missing chain indices)
    last_missing: dict[int, int] = {}  # id(example) -> its last missing chain index: written means question done
    for ex in examples:
        missing = [i for i in range(settings.n) if (ex.task, ex.id, i) not in done]
        summary.chains_skipped += settings.n - len(missing)
        if missing:
            todo.extend((ex, run) for run in _contiguous_runs(missing))
            last_missing[id(ex)] = missing[-1]
        else:
            summary.questions_skipped += 1
    total_chains = sum(len(m) for _, m in todo)
    total_questions = len(last_missing)
    if done:
        log.warning("resuming %s: %d chains already there, %d to sample", out, summary.chains_skipped, total_chains)
    start = time.monotonic()
    # disable=None: shown on a terminal, silent in logs and pipes, unless --progress/--no-progress says otherwise
    disable = None if progress is None else not progress
    bar = tqdm(total=total_chains, unit="chain", desc="sampling", disable=disable, dynamic_ncols=True)
    bar.set_postfix_str(f"questions 0/{total_questions}")
    try:
        with open(out, "a", encoding="utf-8") as f:
            for start_i in range(0, len(todo), questions_per_call):
                chunk = todo[start_i : start_i + questions_per_call]
                # questions needing the same number of chains go to the backend together
                by_count: dict[int, list[tuple[object, list[int]]]] = {}
                for item in chunk:
                    by_count.setdefault(len(item[1]), []).append(item)
                for count, items in by_count.items():
                    prompts = [render(ex) for ex, _ in items]
                    keys = [seeding.question_key(ex.task, ex.id) for ex, _ in items]
                    starts = [missing[0] for _, missing in items]
                    results = backend.sample(prompts, count, settings.temperature, settings.max_new_tokens, stop,
                                             keys=keys, starts=starts)
                    if len(results) != len(items):
                        raise ScotdError(f"teacher returned {len(results)} results for {len(items)} prompts")
                    for (ex, missing), completions in zip(items, results):
                        if len(completions) != len(missing):
                            raise ScotdError(f"teacher returned {len(completions)} chains, {len(missing)} asked")
                        for index, completion in zip(missing, completions):
                            row = make_row(ex, index, completion, settings, token_logprobs)
                            f.write(row.to_json() + "\n")
                            f.flush()
                            summary.chains_written += 1
                            summary.correct += bool(row.correct)
                            summary.unparsed += row.prediction == formats.INVALID
                        summary.questions += missing[-1] == last_missing[id(ex)]
                        bar.update(len(missing))
                        bar.set_postfix_str(f"questions {summary.questions}/{total_questions}")
                os.fsync(f.fileno())
                if after_call is not None:
                    after_call(summary)
    finally:
        bar.close()
        summary.seconds = time.monotonic() - start
    return summary


def _contiguous_runs(indices: list[int]) -> list[list[int]]:
    """[0, 1, 4, 5, 6] -> [[0, 1], [4, 5, 6]]: each run is one (key, first chain index, count) for the backend."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
