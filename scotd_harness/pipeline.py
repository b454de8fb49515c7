"""`scotd pipeline`: sample -> filter -> train -> evaluate -> export -> infer, as one resumable job.

Every stage writes its outputs into one run directory and then records itself in `stages.json` (atomically), so
a killed run restarts at the first unfinished stage and `--from STAGE` reruns a stage and everything after it.
Sampling and training resume inside their stage too (append-only corpus, Trainer checkpoints).

Without a config the pipeline runs `DEMO`: the embedded model as teacher and student on the built-in
demonstration set, small enough to finish in minutes on two CPU cores. With a YAML config it runs the real
thing; the defaults of `PipelineConfig` are the paper's settings (N=30 chains at T=1.0, answer filtering).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import atomic
from .errors import ScotdError

log = logging.getLogger(__name__)

STAGES = ("sample", "filter", "train", "evaluate", "export", "infer")
STATE_FILE = "stages.json"


@dataclass
class PipelineConfig:
    """One run's settings. A YAML config sets any of these keys; unknown keys and wrong types are refused."""

    #: dataset task of the registry (csqa, quarel, openbookqa, ..., or demo)
    task: str = "csqa"
    #: teacher as BACKEND:MODEL (hf:embedded, hf:DIR_OR_HUB_ID, openai:MODEL)
    teacher: str = "hf:embedded"
    #: OpenAI-compatible endpoint for an openai teacher (the key comes from OPENAI_API_KEY)
    api_base: str | None = None
    #: student to distil into: `embedded`, a model directory or a hub id
    student: str = "embedded"
    #: official data files; None: $SCOTD_DATA_DIR, else the hub
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    #: first N questions of each split (None: all)
    train_limit: int | None = None
    eval_limit: int | None = None
    #: chains per question and sampling temperature (the paper: 30 at 1.0)
    n: int = 30
    temperature: float = 1.0
    max_new_tokens: int = 128
    #: corpus filters, applied in order (`correct` is the paper's supervised setting; `all` its few-shot one)
    filters: list = field(default_factory=lambda: ["correct"])
    seed: int = 0
    #: options of `scotd train` (DistillConfig fields), e.g. {num_train_epochs: 3, learning_rate: 2e-5}
    train: dict = field(default_factory=dict)
    #: also train the label-only baseline on the same questions
    label_only_baseline: bool = True
    #: evaluate the teacher with its few-shot prompt (hf teachers only)
    evaluate_teacher: bool = True
    #: also evaluate self-consistency (majority vote over sampled chains)
    self_consistency: bool = False
    eval_batch_size: int = 8
    #: cap on generated tokens per answer in evaluation (None: the tasks' 128)
    eval_max_new_tokens: int | None = None
    #: ONNX export of the distilled student (quantize: int4, int8 or null)
    export_quantize: str | None = "int4"
    export_accuracy_sample: int = 16
    #: questions answered by the exported student in the infer stage
    infer_questions: int = 8

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> PipelineConfig:
        if not isinstance(data, dict):
            raise ScotdError(f"{source}: expected a mapping of settings at the top level")
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if key not in known:
                raise ScotdError(f"{source}: unknown key {key!r} (known keys: {', '.join(known)})")
            if not _type_ok(value, hints[key]):
                raise ScotdError(f"{source}: key {key!r} must be {_type_name(hints[key])}, got {value!r}")
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        from .datasets import TASKS

        if self.task not in TASKS:
            raise ScotdError(f"{source}: key 'task': unknown task {self.task!r} (known: {', '.join(TASKS)})")
        if self.n < 1:
            raise ScotdError(f"{source}: key 'n' must be at least 1")
        if self.temperature < 0:
            raise ScotdError(f"{source}: key 'temperature' must be >= 0")
        if ":" not in self.teacher:
            raise ScotdError(f"{source}: key 'teacher' must be BACKEND:MODEL, e.g. hf:embedded")
        from .export.quantize import QUANTIZATIONS

        if self.export_quantize not in (None, *QUANTIZATIONS):
            raise ScotdError(f"{source}: key 'export_quantize' must be one of {', '.join(QUANTIZATIONS)} or null")
        from .train import DistillConfig

        train_keys = {f.name for f in fields(DistillConfig)}
        for key in self.train:
            if key not in train_keys:
                raise ScotdError(f"{source}: key 'train.{key}' is not an option of scotd train")
        for key in ("student", "corpus", "output_dir", "task", "label_only"):
            if key in self.train:
                raise ScotdError(f"{source}: key 'train.{key}' is set by the pipeline itself")


#: The no-argument run: every stage on the embedded model and the built-in demonstration set, in minutes.
DEMO = PipelineConfig(
    task="demo",
    teacher="hf:embedded",
    student="embedded",
    n=4,
    temperature=1.0,
    max_new_tokens=48,
    filters=["correct"],
    train={"num_train_epochs": 4, "learning_rate": 5e-5, "per_device_train_batch_size": 8, "max_length": 160,
           "save_strategy": "no", "logging_steps": 5, "dev_fraction": 0.0},
    label_only_baseline=True,
    evaluate_teacher=True,
    self_consistency=False,
    eval_batch_size=8,
    eval_max_new_tokens=64,
    export_quantize="int4",
    export_accuracy_sample=8,
    infer_questions=4,
)


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def load_config(path: str | os.PathLike | None) -> PipelineConfig:
    if path is None:
        return DEMO
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScotdError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ScotdError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return PipelineConfig.from_dict(data, str(path))


class Run:
    """A run directory: its config, its stage records and the paths every stage reads and writes."""

    def __init__(self, root: str | os.PathLike, cfg: PipelineConfig):
        self.root = Path(root)
        self.cfg = cfg
        self.corpus = self.root / "corpus.jsonl"
        self.filtered = self.root / "corpus.filtered.jsonl"
        self.students = self.root / "students"
        self.eval_dir = self.root / "eval"
        self.onnx = self.root / "onnx"
        self.infer = self.root / "infer.jsonl"

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        return json.loads(self.state_path.read_text(encoding="utf-8")).get("stages", {})

    def record(self, stage: str, summary: dict, seconds: float) -> None:
        stages = self.state()
        stages[stage] = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}
        atomic.write_json(self.state_path, {"stages": stages}, default=str)

    def forget(self, from_stage: str) -> None:
        later = STAGES[STAGES.index(from_stage):]
        atomic.write_json(self.state_path, {"stages": {k: v for k, v in self.state().items() if k not in later}}, default=str)

    def open(self) -> None:
        """Create the directory or check that it belongs to the same config."""
        self.root.mkdir(parents=True, exist_ok=True)
        saved = self.root / "config.json"
        current = asdict(self.cfg)
        if saved.is_file():
            old = json.loads(saved.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(old) | set(current) if old.get(k) != current.get(k))
            if diff:
                raise ScotdError(
                    f"{self.root} holds a run with other settings ({', '.join(diff)} differ); "
                    f"use another --out directory"
                )
        else:
            atomic.write_json(saved, current, default=str)


def run_pipeline(cfg: PipelineConfig, out: str | os.PathLike, from_stage: str | None = None,
                 until: str | None = None, say=print) -> Run:
    """Run every stage not yet recorded as done (from `from_stage` on, if given) up to `until`."""
    for name in (from_stage, until):
        if name is not None and name not in STAGES:
            raise ScotdError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    run = Run(out, cfg)
    run.open()
    if from_stage:
        run.forget(from_stage)
    last = STAGES.index(until) if until else len(STAGES) - 1
    done = run.state()
    for i, stage in enumerate(STAGES[: last + 1]):
        if stage in done:
            say(f"[{i + 1}/{len(STAGES)}] {stage}: done already, skipped")
            continue
        say(f"[{i + 1}/{len(STAGES)}] {stage} ...")
        started = time.monotonic()
        summary = STAGE_FUNCTIONS[stage](run, say) or {}
        run.record(stage, summary, time.monotonic() - started)
        say(f"[{i + 1}/{len(STAGES)}] {stage}: finished in {time.monotonic() - started:.0f} s")
    return run


# --- the stages -------------------------------------------------------------------------------------------


def _examples(run: Run, split: str, limit: int | None):
    from .datasets import load_examples

    return load_examples(run.cfg.task, split, data_dir=run.cfg.data_dir, limit=limit)


def stage_sample(run: Run, say) -> dict:
    from .prompts import load_prompt
    from .sampling import SampleSettings, run_sampling
    from .teacher import get_teacher, parse_teacher

    cfg = run.cfg
    examples = [ex for ex in _examples(run, cfg.train_split, cfg.train_limit) if ex.answer is not None]
    prompt = load_prompt(cfg.task)
    settings = SampleSettings(task=cfg.task, split=cfg.train_split, teacher=cfg.teacher, n=cfg.n,
                              temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                              prompt_version=prompt.prompt_version, seed=cfg.seed, limit=cfg.train_limit)
    kind, _ = parse_teacher(cfg.teacher)
    backend = get_teacher(cfg.teacher, **({"api_base": cfg.api_base} if kind == "openai" else {"seed": cfg.seed}))
    resume = run.corpus.exists()
    try:
        summary = run_sampling(examples, lambda ex: prompt.render(ex.question, ex.choices), backend, settings,
                               run.corpus, resume=resume)
    finally:
        backend.close()
    say("  " + summary.line())
    return {"chains": summary.chains_written + summary.chains_skipped, "questions": len(examples),
            "teacher_accuracy": summary.correct / summary.chains_written if summary.chains_written else None}


def stage_filter(run: Run, say) -> dict:
    from .corpus import read_corpus, write_corpus
    from .corpus_filters import apply_filters

    rows = list(read_corpus(run.corpus))
    kept = apply_filters(rows, run.cfg.filters)
    write_corpus(kept, run.filtered)
    questions = len({r.id for r in kept})
    say(f"  kept {len(kept)} of {len(rows)} chains ({questions} questions) with {', '.join(run.cfg.filters)}")
    if not kept:
        raise ScotdError(
            f"the filters {run.cfg.filters} kept no chain of {len(rows)}: the teacher answered no question "
            f"correctly; sample more chains (n), use a stronger teacher, or filter with 'all'"
        )
    return {"chains_in": len(rows), "chains_kept": len(kept), "questions_kept": questions}


def _train_one(run: Run, name: str, label_only: bool) -> Path:
    from .train import DistillConfig, train

    out = run.students / name
    options = {"seed": run.cfg.seed, **run.cfg.train}
    cfg = DistillConfig(student=run.cfg.student, corpus=str(run.filtered), task=run.cfg.task, label_only=label_only,
                        output_dir=str(out), **options)
    return train(cfg)


def stage_train(run: Run, say) -> dict:
    summary = {"scotd": str(_train_one(run, "scotd", label_only=False).relative_to(run.root))}
    say(f"  distilled student: {run.root / summary['scotd']}")
    if run.cfg.label_only_baseline:
        summary["label_only"] = str(_train_one(run, "label_only", label_only=True).relative_to(run.root))
        say(f"  label-only baseline: {run.root / summary['label_only']}")
    return summary


def evaluated_models(run: Run) -> dict[str, tuple[str, str]]:
    """name -> (model, task suffix): what the evaluate stage scores, in the report's order."""
    models = {}
    backend, _, teacher = run.cfg.teacher.partition(":")
    if run.cfg.evaluate_teacher and backend == "hf":
        models["teacher"] = (teacher, "_fewshot")
    models["undistilled"] = (run.cfg.student, "")
    if (run.students / "label_only").is_dir():
        models["label_only"] = (str(run.students / "label_only"), "_direct")
    models["scotd"] = (str(run.students / "scotd"), "")
    return models


def stage_evaluate(run: Run, say) -> dict:
    from .evaluate import evaluate

    cfg = run.cfg
    summary = {}
    for name, (model, suffix) in evaluated_models(run).items():
        tasks = [f"scotd_{cfg.task}{suffix}"]
        if cfg.self_consistency and suffix == "":
            tasks.append(f"scotd_{cfg.task}_sc")
        out = evaluate(model, tasks, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
                       output_dir=run.eval_dir / name, split=cfg.eval_split, data_dir=cfg.data_dir, seed=cfg.seed,
                       log_samples=True, max_gen_toks=cfg.eval_max_new_tokens)
        summary[name] = {"tasks": tasks, "results": str(out.json_path.relative_to(run.root))}
        say(f"  {name}:\n" + "\n".join("    " + line for line in out.table.splitlines()))
    return summary


def stage_export(run: Run, say) -> dict:
    from .export.exporter import export

    if run.onnx.exists():
        shutil.rmtree(run.onnx)  # an earlier, interrupted export of this run
    task = run.cfg.task
    export(run.students / "scotd", run.onnx, quantization=run.cfg.export_quantize,
           accuracy_sample=run.cfg.export_accuracy_sample, accuracy_task=task,
           progress=lambda msg: say("  " + msg))
    return {"onnx": str(run.onnx.relative_to(run.root)), "quantize": run.cfg.export_quantize}


def stage_infer(run: Run, say) -> dict:
    from .export.runtime import GenerationConfig, load

    examples = _examples(run, run.cfg.eval_split, run.cfg.infer_questions)
    student = load(run.onnx)
    started = time.monotonic()
    answers = student.answer_many([(ex.question, ex.choices) for ex in examples],
                                  config=GenerationConfig(max_new_tokens=run.cfg.max_new_tokens))
    seconds = time.monotonic() - started
    with atomic.atomic_open(run.infer) as f:
        for ex, ans in zip(examples, answers):
            f.write(json.dumps({"id": ex.id, "question": ex.question, "choices": [list(c) for c in ex.choices],
                                "gold": ex.answer, "answer": ans.answer, "rationale": ans.rationale}) + "\n")
    tokens = sum(len(g.token_ids) for a in answers for g in a.chains)
    for ex, ans in list(zip(examples, answers))[:2]:
        say(f"  Q: {ex.question}\n  -> {ans.rationale!r} => ({ans.answer}), gold ({ex.answer})")
    return {"questions": len(examples), "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "correct": sum(a.answer == ex.answer for ex, a in zip(examples, answers))}


STAGE_FUNCTIONS = {
    "sample": stage_sample,
    "filter": stage_filter,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "export": stage_export,
    "infer": stage_infer,
}
