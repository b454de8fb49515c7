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
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from . import atomic
from .errors import ScotdError

log = logging.getLogger(__name__)

STAGES = ("sample", "filter", "train", "evaluate", "export", "infer")
STATE_FILE = "stages.json"
#: `train` keys the pipeline sets itself (paths, the task, the variant, resumption)
PIPELINE_TRAIN_KEYS = ("student", "corpus", "output_dir", "task", "label_only", "resume_from_checkpoint")


class PipelineConfig(BaseModel):
    """One run's settings. A YAML config sets any of these keys; unknown keys and wrong types are refused.

    A pydantic model, strict (YAML's `n: "3"` or `n: 2.5` is an error, not a coercion; an int is accepted where a
    float is expected) with extra keys forbidden. `load_config` turns its errors into one message naming the file,
    the line and the key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: dataset task of the registry (csqa, quarel, openbookqa, ..., or demo)
    task: str = "csqa"
    #: teacher as BACKEND:MODEL (hf:embedded, hf:DIR_OR_HUB_ID, onnx:EXPORT_DIR, openai:MODEL)
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
    train_limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    #: chains per question and sampling temperature (the paper: 30 at 1.0)
    n: int = Field(30, ge=1)
    temperature: float = Field(1.0, ge=0)
    max_new_tokens: int = Field(128, ge=1)
    #: corpus filters, applied in order (`correct` is the paper's supervised setting; `all` its few-shot one)
    filters: list[str] = Field(default_factory=lambda: ["correct"])
    seed: int = 0
    #: options of `scotd train` (DistillConfig fields), e.g. {num_train_epochs: 3, learning_rate: 2e-5}
    train: dict[str, typing.Any] = Field(default_factory=dict)
    #: also train the label-only baseline on the same questions
    label_only_baseline: bool = True
    #: evaluate the teacher with its few-shot prompt (hf and onnx teachers; an endpoint is not evaluated)
    evaluate_teacher: bool = True
    #: also evaluate self-consistency (majority vote over sampled chains)
    self_consistency: bool = False
    eval_batch_size: int = Field(8, ge=1)
    #: cap on generated tokens per answer in evaluation (None: the tasks' 128)
    eval_max_new_tokens: int | None = Field(None, ge=1)
    #: ONNX export of the distilled student (quantize: int4, int4-uniform, int8 or null)
    export_quantize: str | None = "int4"
    export_accuracy_sample: int = Field(16, ge=0)
    #: questions answered by the exported student in the infer stage
    infer_questions: int = Field(8, ge=1)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from .datasets import TASKS

        if value not in TASKS:
            raise ValueError(f"unknown task {value!r} (known: {', '.join(TASKS)})")
        return value

    @field_validator("teacher")
    @classmethod
    def _backend_and_model(cls, value: str) -> str:
        """A known backend; an `onnx:` teacher's export directory is checked here, before the run directory is
        created and tied to this config (a typo found at the sample stage would lock the directory to it)."""
        from .teacher import BACKENDS

        backend, sep, model = value.partition(":")
        if not sep or not model:
            raise ValueError("must be BACKEND:MODEL, e.g. hf:embedded")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if backend == "onnx":
            from .teacher.onnx_backend import check_export_dir

            try:
                check_export_dir(model)
            except ScotdError as e:
                raise ValueError(str(e)) from None
        return value

    @field_validator("export_quantize")
    @classmethod
    def _known_quantization(cls, value: str | None) -> str | None:
        from .export.quantize import QUANTIZATIONS

        if value is not None and value not in QUANTIZATIONS:
            raise ValueError(f"must be one of {', '.join(QUANTIZATIONS)} or null, not {value!r}")
        return value

    @field_validator("train")
    @classmethod
    def _train_options(cls, value: dict) -> dict:
        from dataclasses import fields

        from .train import DistillConfig

        known = {f.name for f in fields(DistillConfig)}
        for key in value:
            if key in PIPELINE_TRAIN_KEYS:
                raise PydanticCustomError("train_key", "is set by the pipeline itself", {"key": key})
            if key not in known:
                raise PydanticCustomError("train_key", "is not an option of scotd train", {"key": key})
        return value

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", lines: dict | None = None) -> PipelineConfig:
        """Validate `data` (from `source`); any problem is one ScotdError naming the source, the line and the key."""
        if not isinstance(data, dict):
            raise ScotdError(f"{source}: expected a mapping of settings at the top level")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ScotdError("; ".join(_problem(err, source, lines or {}) for err in e.errors())) from None


#: pydantic's strict type errors -> the YAML type named in the message
_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
               "list_type": "list", "dict_type": "dict"}


def _problem(err: dict, source: str, lines: dict) -> str:
    """One pydantic error as `FILE:LINE: key 'K' ...`."""
    loc = tuple(err["loc"])
    if err["type"] == "train_key":
        loc = ("train", err["ctx"]["key"])
    key = ".".join(str(part) for part in loc)
    line = lines.get(loc[:2]) or lines.get(loc[:1])
    where = f"{source}:{line}" if line else source
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r} (known keys: {', '.join(PipelineConfig.model_fields)})"
    if kind in _TYPE_NAMES:
        annotation = PipelineConfig.model_fields[loc[0]].annotation
        expected = _TYPE_NAMES[kind] + (" or null" if type(None) in typing.get_args(annotation) else "")
        if len(loc) > 1:  # an item of a list
            return f"{where}: key {key!r} must be {_TYPE_NAMES[kind]}, got {err['input']!r}"
        return f"{where}: key {key!r} must be {expected}, got {err['input']!r}"
    if kind == "value_error":
        return f"{where}: key {key!r}: {err['ctx']['error']}"
    if kind == "train_key":
        return f"{where}: key {key!r} {err['msg']}"
    return f"{where}: key {key!r}: {err['msg'].lower()}"


#: The no-argument run: every stage on the embedded model and the built-in demonstration set, in minutes. Training
#: saves a checkpoint every 4 steps (keeping the newest; none after the last step), so that a killed demo resumes
#: inside training too at the cost of one or two checkpoint writes per student.
DEMO = PipelineConfig(
    task="demo",
    teacher="hf:embedded",
    student="embedded",
    # The paper's few-shot setting (every chain kept, but for the few with no rationale): a 135M teacher answers
    # these questions near chance, so answer filtering would leave a handful of chains; 8 chains per question
    # teach the student to write a rationale.
    n=8,
    temperature=1.0,
    max_new_tokens=48,
    filters=["all:drop_empty=true"],
    train={"num_train_epochs": 2, "learning_rate": 1e-4, "chains": "all", "per_device_train_batch_size": 8,
           "max_length": 160, "save_strategy": "steps", "save_steps": 10, "save_total_limit": 1,
           "logging_steps": 5, "dev_fraction": 0.0},
    label_only_baseline=True,
    evaluate_teacher=True,
    self_consistency=False,
    eval_batch_size=8,
    eval_max_new_tokens=64,
    export_quantize="int4",
    export_accuracy_sample=8,
    infer_questions=8,
)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line of each top-level key and of each key one level below (e.g. `train: {lr: ...}`), for error messages."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}
    root = yaml.compose(text)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            lines[(str(key.value),)] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for sub, _ in value.value:
                    lines[(str(key.value), str(sub.value))] = sub.start_mark.line + 1
    return lines


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
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ScotdError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return PipelineConfig.from_dict(data, str(path), lines)


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
        #: the fp32 export a quantised `onnx/` is derived from (kept, so a rerun of the stage reuses it)
        self.onnx_fp32 = self.root / "onnx-fp32"
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
        current = self.cfg.model_dump()
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
        if STAGES.index(from_stage) <= STAGES.index("train") and run.students.exists():
            say(f"--from {from_stage}: removing the students (and their checkpoints) of the earlier run")
            shutil.rmtree(run.students)
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
    # every backend gets the run seed: each chain's own seed derives from it (scotd_harness.seeding)
    backend = get_teacher(cfg.teacher, seed=cfg.seed, **({"api_base": cfg.api_base} if kind == "openai" else {}))
    resume = run.corpus.exists()
    # the onnx teacher keeps its batch full only when handed several batches' worth of questions at a time
    per_call = backend.questions_per_call(cfg.n) if kind == "onnx" else 8
    try:
        summary = run_sampling(examples, lambda ex: prompt.render(ex.question, ex.choices), backend, settings,
                               run.corpus, resume=resume, questions_per_call=per_call)
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


def _train_one(run: Run, name: str, label_only: bool, say) -> Path:
    """Train one student, resuming from its newest Trainer checkpoint when a killed run left one.

    A student whose scotd.json exists finished training (it is written last) and is kept. Once a student is saved
    its checkpoints (optimizer state included: about 12 bytes a parameter) are deleted: they only serve resumption.
    A stale checkpoint cannot leak in: the run directory is tied to one config and `--from` at or before `train`
    removes the students first."""
    from transformers.trainer_utils import get_last_checkpoint

    from .train import SCOTD_JSON, DistillConfig, train

    out = run.students / name
    if (out / SCOTD_JSON).is_file():
        say(f"  {name}: trained already (its {SCOTD_JSON} exists), kept")
        return out
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        say(f"  {name}: resuming from {Path(last).name} (a Trainer checkpoint of the interrupted run)")
    options = {"seed": run.cfg.seed, **run.cfg.train}
    cfg = DistillConfig(student=run.cfg.student, corpus=str(run.filtered), task=run.cfg.task, label_only=label_only,
                        output_dir=str(out), resume_from_checkpoint="last", **options)
    train(cfg, callbacks=[_no_final_checkpoint()])
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    return out


def _no_final_checkpoint():
    """A TrainerCallback that skips the checkpoint the Trainer writes after the last step: the student is saved
    right then, so that checkpoint (about 12 bytes a parameter) would only be written to be deleted. Kept when the
    best checkpoint is loaded at the end, which needs it."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and not args.load_best_model_at_end:
                control.should_save = False

    return NoFinalCheckpoint()


def stage_train(run: Run, say) -> dict:
    summary = {"scotd": str(_train_one(run, "scotd", False, say).relative_to(run.root))}
    say(f"  distilled student: {run.root / summary['scotd']}")
    if run.cfg.label_only_baseline:
        summary["label_only"] = str(_train_one(run, "label_only", True, say).relative_to(run.root))
        say(f"  label-only baseline: {run.root / summary['label_only']}")
    return summary


#: teacher backend -> the lm-eval model type that evaluates it (an `openai:` endpoint is not evaluated)
TEACHER_MODEL_TYPES = {"hf": "hf", "onnx": "scotd-onnx"}


def evaluated_models(run: Run) -> dict[str, tuple[str, str, str]]:
    """name -> (model, task suffix, lm-eval model type): what the evaluate stage scores, in the report's order."""
    models = {}
    backend, _, teacher = run.cfg.teacher.partition(":")
    if run.cfg.evaluate_teacher and backend in TEACHER_MODEL_TYPES:
        models["teacher"] = (teacher, "_fewshot", TEACHER_MODEL_TYPES[backend])
    models["undistilled"] = (run.cfg.student, "", "hf")
    if (run.students / "label_only").is_dir():
        models["label_only"] = (str(run.students / "label_only"), "_direct", "hf")
    models["scotd"] = (str(run.students / "scotd"), "", "hf")
    return models


def stage_evaluate(run: Run, say) -> dict:
    from .evaluate import evaluate

    cfg = run.cfg
    summary = {}
    for name, (model, suffix, model_type) in evaluated_models(run).items():
        tasks = [f"scotd_{cfg.task}{suffix}"]
        if cfg.self_consistency and suffix == "":
            tasks.append(f"scotd_{cfg.task}_sc")
        out = evaluate(model, tasks, model_type=model_type, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
                       output_dir=run.eval_dir / name, split=cfg.eval_split, data_dir=cfg.data_dir, seed=cfg.seed,
                       log_samples=True, max_gen_toks=cfg.eval_max_new_tokens)
        summary[name] = {"tasks": tasks, "results": str(out.json_path.relative_to(run.root))}
        say(f"  {name}:\n" + "\n".join("    " + line for line in out.table.splitlines()))
    return summary


def stage_export(run: Run, say) -> dict:
    """fp32 export (kept in onnx-fp32/ when quantising, so the slow graph export runs once per student), then the
    quantised one derived from it; each is swapped in only after its checks pass."""
    from .export.exporter import export

    cfg = run.cfg
    export(run.students / "scotd", run.onnx, quantization=cfg.export_quantize,
           fp32_dir=run.onnx_fp32 if cfg.export_quantize else None, accuracy_sample=cfg.export_accuracy_sample,
           accuracy_task=cfg.task, accuracy_split=cfg.eval_split, data_dir=cfg.data_dir, overwrite=True,
           progress=lambda msg: say("  " + msg))
    summary = {"onnx": str(run.onnx.relative_to(run.root)), "quantize": cfg.export_quantize}
    if cfg.export_quantize:
        summary["onnx_fp32"] = str(run.onnx_fp32.relative_to(run.root))
    return summary


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
            "correct": sum(a.answer == ex.answer for ex, a in zip(examples, answers)),
            "with_rationale": sum(bool(a.rationale.strip()) for a in answers)}


STAGE_FUNCTIONS = {
    "sample": stage_sample,
    "filter": stage_filter,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "export": stage_export,
    "infer": stage_infer,
}
