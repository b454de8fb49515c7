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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import atomic
from .errors import ScotdError
from .student_stages import (  # the stages that make and score students
    TEACHER_MODEL_TYPES,  # noqa: F401  (part of this module's interface)
    best_student,  # noqa: F401
    choose_candidate,  # noqa: F401
    evaluated_models,  # noqa: F401
    stage_evaluate,
    stage_export,
    stage_train,
    stage_tune,
)

log = logging.getLogger(__name__)

#: named corpus sources; any other value of `corpus_source` is a corpus file
CORPUS_SOURCES = ("sample", "distilling-step-by-step")
#: every stage in run order; `tune` runs only in a run with a learning-rate grid (see `stages_of`)
STAGES = ("sample", "filter", "tune", "train", "evaluate", "export", "infer")
STATE_FILE = "stages.json"
#: how often the sample stage packs the run's records while it samples (a sampled corpus is hours of work)
RECORDS_WHILE_SAMPLING_S = 600
#: `train` keys the pipeline sets itself (paths, the task, the variant, resumption)
PIPELINE_TRAIN_KEYS = ("student", "corpus", "output_dir", "task", "label_only", "resume_from_checkpoint")


def _check_train_options(value: dict) -> dict:
    """Keys of a `train:` mapping must be `scotd train` options the pipeline does not set itself."""
    from dataclasses import fields

    from .train import DistillConfig

    known = {f.name for f in fields(DistillConfig)}
    for key in value:
        if key in PIPELINE_TRAIN_KEYS:
            raise PydanticCustomError("train_key", "is set by the pipeline itself", {"key": key})
        if key not in known:
            raise PydanticCustomError("train_key", "is not an option of scotd train", {"key": key})
    return value


class TrainSize(BaseModel):
    """One training-set size: every arm trains on the same `questions` corpus questions (a seeded subset, nested in
    the larger sizes; null: all of them), with `train` options overriding the run's (e.g. fewer epochs on more data)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    questions: int | None = Field(None, ge=1)
    train: dict[str, typing.Any] = Field(default_factory=dict)

    _train = field_validator("train")(classmethod(lambda cls, value: _check_train_options(value)))


class TuneConfig(BaseModel):
    """Learning rate (and, per arm, epochs) chosen on questions no student trains on and the report never scores:
    each arm is trained at the size `questions` once per rate in `learning_rate`, scored on `limit` questions of
    `split`, and the best rate (the smaller on a tie) trains that arm at every size. An arm listed in `epochs` is
    then trained at its chosen rate once per number of epochs there, and the best of all its candidates wins (the
    fewer epochs on a tie); its other sizes train for their own epochs scaled by chosen / tuning-size epochs. The
    students of the tuning size are the tuned ones themselves, not retrained."""

    model_config = ConfigDict(extra="forbid", strict=True)

    learning_rate: list[float] = Field(min_length=1)
    #: the training size (a `train_sizes` entry's `questions`) the grid runs at; null: the first size
    questions: int | None = None
    split: str = "train-holdout"
    limit: int | None = Field(300, ge=1)
    #: arm -> numbers of epochs tried at that arm's chosen rate (a short target, as label-only's, may need more
    #: passes than a chain does); the tuning size's own epochs count is already a candidate of the rate grid
    epochs: dict[str, list[int]] = Field(default_factory=dict)

    @field_validator("epochs")
    @classmethod
    def _epochs_grid(cls, value: dict) -> dict:
        from .arms import ARMS

        for arm, grid in value.items():
            if arm not in ARMS:
                raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")
            if not grid or any(e < 1 for e in grid) or len(set(grid)) != len(grid):
                raise ValueError(f"epochs of {arm}: distinct whole numbers of at least 1")
        return value

    @field_validator("split")
    @classmethod
    def _known_split(cls, value: str) -> str:
        from .datasets import HOLDOUT_SPLITS, SPLITS

        if value not in SPLITS + HOLDOUT_SPLITS:
            raise ValueError(f"unknown split {value!r} (known: {', '.join(SPLITS + HOLDOUT_SPLITS)})")
        return value


class PipelineConfig(BaseModel):
    """One run's settings. A YAML config sets any of these keys; unknown keys and wrong types are refused.

    A pydantic model, strict (YAML's `n: "3"` or `n: 2.5` is an error, not a coercion; an int is accepted where a
    float is expected) with extra keys forbidden. `load_config` turns its errors into one message naming the file,
    the line and the key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: dataset task of the registry (csqa, quarel, openbookqa, ..., or demo)
    task: str = "csqa"
    #: where the chains come from: `sample` (from `teacher`), `distilling-step-by-step` (the released PaLM-540B
    #: CSQA chains, one per train question, imported from $SCOTD_DATA_DIR or data_dir), or the path of a corpus
    #: file (`scotd sample` output) whose first `n` chains per question are used
    corpus_source: str = "sample"
    #: a corpus file whose questions the sample stage leaves out (a teacher's own training questions)
    exclude_questions: str | None = None
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
    #: students to train, all on the same questions: `scotd` (the teacher's chains), `label_only` (the gold answer
    #: alone) and `cose` (CoS-E v1.11 human explanations, csqa only). Null: scotd, and label_only if
    #: label_only_baseline. Given, it replaces label_only_baseline.
    arms: list[typing.Literal["scotd", "label_only", "cose"]] | None = Field(None, min_length=1)
    #: training-set sizes; a student per arm and size, named `<arm>_2k` for 2000 questions, `<arm>` for all
    train_sizes: list[TrainSize] = Field(default_factory=lambda: [TrainSize()], min_length=1)
    #: a learning-rate grid searched per arm on held-out train questions (the `tune` stage); null: train.learning_rate
    tune: TuneConfig | None = None
    #: lm-eval model the students are scored with: `hf` (PyTorch), or `onnx` (each exported to fp32 ONNX first,
    #: parity-checked, and scored by `scotd-onnx`: about 3x faster on CPU, same greedy outputs)
    eval_backend: typing.Literal["hf", "onnx"] = "hf"
    #: other tasks every student is also scored on (the paper's transfer study: openbookqa, quarel for csqa), on
    #: eval_split, or `TASK:SPLIT` for another split (a task whose dev file is missing: its train is unseen too)
    transfer_tasks: list[str] = Field(default_factory=list)
    #: evaluate the teacher with its few-shot prompt (hf and onnx teachers; an endpoint is not evaluated)
    evaluate_teacher: bool = True
    #: evaluate the base student before training (off in a sweep's runs after the first: the same model each time)
    evaluate_undistilled: bool = True
    #: also evaluate self-consistency (majority vote over sc_samples chains at the task's temperature, 0.7) of the
    #: best distilled student (the best greedy accuracy on the task), with the same lm-eval model as its greedy score
    self_consistency: bool = False
    sc_samples: int = Field(16, ge=8)
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
    def _backend_and_model(cls, value: str, info: ValidationInfo) -> str:
        """A known backend; an `onnx:` teacher's export directory is checked here, before the run directory is
        created and tied to this config (a typo found at the sample stage would lock the directory to it), unless
        the context says `check_teacher: False` (a config read back, or a run whose chains are all sampled)."""
        from .teacher import BACKENDS

        backend, sep, model = value.partition(":")
        if not sep or not model:
            raise ValueError("must be BACKEND:MODEL, e.g. hf:embedded")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if backend == "onnx" and (info.context or {}).get("check_teacher", True):
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
        return _check_train_options(value)

    @field_validator("corpus_source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in CORPUS_SOURCES and not Path(value).expanduser().is_file():
            raise ValueError(f"must be {' or '.join(CORPUS_SOURCES)}, or a corpus file; {value!r} is neither")
        return value

    @field_validator("exclude_questions")
    @classmethod
    def _existing_corpus(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"no corpus file {value!r}")
        return value

    @field_validator("transfer_tasks")
    @classmethod
    def _known_transfer_tasks(cls, value: list[str]) -> list[str]:
        from .datasets import HOLDOUT_SPLITS, SPLITS, TASKS

        for item in value:
            task, _, split = item.partition(":")
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
            if split and split not in SPLITS + HOLDOUT_SPLITS:
                raise ValueError(f"unknown split {split!r} in {item!r} (known: {', '.join(SPLITS + HOLDOUT_SPLITS)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        """Settings that are each valid but contradict one another."""
        if self.corpus_source == "distilling-step-by-step" and self.task != "csqa":
            raise ValueError("corpus_source distilling-step-by-step holds CSQA chains: task must be csqa")
        if "cose" in self.arm_names and self.task != "csqa":
            raise ValueError("the cose arm explains CSQA questions: task must be csqa")
        if len(set(self.arm_names)) != len(self.arm_names):
            raise ValueError("arms: each arm once")
        if not set(self.arm_names) - {"label_only"}:
            raise ValueError("arms: needs a distilled arm (scotd or cose); it is the one exported")
        if self.exclude_questions and self.corpus_source != "sample":
            raise ValueError("exclude_questions leaves questions out of sampling; this run imports its corpus")
        transfer = [item.partition(":")[0] for item in self.transfer_tasks]
        if len(set(transfer)) != len(transfer) or self.task in transfer:
            raise ValueError("transfer_tasks: each task once, and not the run's own task")
        sizes = [s.questions for s in self.train_sizes]
        if len(set(sizes)) != len(sizes):
            raise ValueError("train_sizes: each number of questions once")
        from .train import dev_split_problem

        for size in self.train_sizes:
            options = {**self.train, **size.train}
            problem = dev_split_problem(options.get("dev_fraction", 0.0), options.get("dev_questions"),
                                        options.get("max_dev_questions"))
            if problem:
                raise ValueError(f"train{'' if not size.train else f' (with train_sizes {size.questions})'}: "
                                 f"{problem}")
        if self.tune is not None:
            if self.tune.questions not in sizes and self.tune.questions is not None:
                raise ValueError(f"tune.questions {self.tune.questions} is not one of train_sizes ({sizes})")
            if self.tune.split == self.eval_split:
                raise ValueError(f"tune.split is the evaluation split {self.eval_split!r}: tuning on it would "
                                 "select on the test")
            splits = {self.tune.split, self.train_split}
            if splits <= {"train", "train-fit", "train-holdout"} and splits != {"train-fit", "train-holdout"}:
                raise ValueError(f"tune.split {self.tune.split} needs train_split: train-fit (else the students "
                                 "train on the questions they are tuned on)" if self.tune.split == "train-holdout"
                                 else f"tune.split {self.tune.split} overlaps train_split {self.train_split}")
            if "learning_rate" in self.train or any("learning_rate" in s.train for s in self.train_sizes):
                raise ValueError("tune chooses the learning rate: remove learning_rate from train")
            if set(self.tune.epochs) - set(self.arm_names):
                raise ValueError(f"tune.epochs names arms this run does not train: "
                                 f"{', '.join(sorted(set(self.tune.epochs) - set(self.arm_names)))}")
            if self.tune.epochs and any(options.get("max_steps", -1) > 0
                                        for options in [self.train, *(s.train for s in self.train_sizes)]):
                raise ValueError("tune.epochs needs training measured in epochs: remove max_steps from train")
        return self

    @property
    def arm_names(self) -> list[str]:
        if self.arms is not None:
            return list(self.arms)
        return ["scotd"] + (["label_only"] if self.label_only_baseline else [])

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", lines: dict | None = None,
                  check_teacher: bool = True) -> PipelineConfig:
        """Validate `data` (from `source`); any problem is one ScotdError naming the source, the line and the key.
        `check_teacher=False` leaves an `onnx:` teacher's folder unchecked: a run restored from records whose chains
        are all sampled goes on where its teacher is not."""
        if not isinstance(data, dict):
            raise ScotdError(f"{source}: expected a mapping of settings at the top level")
        try:
            return cls.model_validate(data, context={"check_teacher": check_teacher})
        except ValidationError as e:
            raise ScotdError("; ".join(_problem(err, source, lines or {}) for err in e.errors())) from None


#: pydantic's strict type errors -> the YAML type named in the message
_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
               "list_type": "list", "dict_type": "dict"}


def _problem(err: dict, source: str, lines: dict) -> str:
    """One pydantic error as `FILE:LINE: key 'K' ...`."""
    loc = tuple(err["loc"])
    if err["type"] == "train_key":
        loc = (*loc, err["ctx"]["key"])
    key = ".".join(str(part) for part in loc)
    line = lines.get(loc[:2]) or lines.get(loc[:1])
    where = f"{source}:{line}" if line else source
    kind = err["type"]
    if not loc:  # a check of several settings together (PipelineConfig._consistent)
        return f"{where}: {err['ctx']['error'] if kind == 'value_error' else err['msg']}"
    if kind == "extra_forbidden":
        model = {"tune": TuneConfig, "train_sizes": TrainSize}.get(loc[0], PipelineConfig) if len(loc) > 1 else PipelineConfig
        return f"{where}: unknown key {key!r} (known keys: {', '.join(model.model_fields)})"
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


def _config_loader():
    """PyYAML reads YAML 1.1, where a number with an exponent and no dot (`1e-4`, and the `5e-05` Python writes
    into a run's config.json) is a string: that config would not load back with --config. This loader reads such
    numbers as YAML 1.2 and JSON do, as floats."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return Loader


def load_config(path: str | os.PathLike | None, check_teacher: bool = True) -> PipelineConfig:
    """The config at `path` (YAML or JSON), or the demo run's; `check_teacher`: see PipelineConfig.from_dict."""
    if path is None:
        return DEMO
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScotdError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_config_loader()) or {}
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ScotdError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return PipelineConfig.from_dict(data, str(path), lines, check_teacher=check_teacher)


def stages_of(cfg: PipelineConfig) -> tuple[str, ...]:
    """The stages a run with these settings goes through (`tune` only with a learning-rate grid)."""
    return tuple(stage for stage in STAGES if stage != "tune" or cfg.tune is not None)


def config_differences(old: dict, current: dict) -> list[str]:
    """The settings in which a saved config (a run directory's, or a records archive's) differs from `current`.
    A setting the saved config lacks (added in a later version) counts as the same when it has its default."""
    try:  # a nested setting added later (tune.epochs) gets its default too
        old = PipelineConfig.model_validate(old, context={"check_teacher": False}).model_dump()
    except ValidationError:
        pass
    defaults = PipelineConfig.model_construct().model_dump()
    return sorted(k for k in set(old) | set(current) if old.get(k, defaults.get(k)) != current.get(k))


class Run:
    """A run directory: its config, its stage records and the paths every stage reads and writes."""

    def __init__(self, root: str | os.PathLike, cfg: PipelineConfig):
        self.root = Path(root)
        self.cfg = cfg
        self.corpus = self.root / "corpus.jsonl"
        self.filtered = self.root / "corpus.filtered.jsonl"
        self.students = self.root / "students"
        self.tune_dir = self.root / "tune"
        self.eval_dir = self.root / "eval"
        self.onnx = self.root / "onnx"
        #: the fp32 export a quantised `onnx/` is derived from (kept, so a rerun of the stage reuses it)
        self.onnx_fp32 = self.root / "onnx-fp32"
        self.infer = self.root / "infer.jsonl"
        #: score each student as soon as it is trained (stage_train); set by run_pipeline
        self.score_as_trained = False
        #: a second place for the records (run_pipeline's `keep_records`), e.g. a results folder that is committed
        self.keep_records: Path | None = None

    def pack_records(self) -> None:
        """Pack the run's records (run_records) into records.tar.gz, and into `keep_records` where one is set."""
        from . import run_records

        packed = run_records.pack(self.root)
        if self.keep_records is not None:
            with atomic.atomic_open(self.keep_records, "wb") as f:
                f.write(packed.read_bytes())

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
        """Create the directory or check that it belongs to the same config (see `config_differences`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        saved = self.root / "config.json"
        current = self.cfg.model_dump()
        if saved.is_file():
            diff = config_differences(json.loads(saved.read_text(encoding="utf-8")), current)
            if diff:
                raise ScotdError(
                    f"{self.root} holds a run with other settings ({', '.join(diff)} differ); "
                    f"use another --out directory"
                )
        else:
            atomic.write_json(saved, current, default=str)


def run_pipeline(cfg: PipelineConfig, out: str | os.PathLike, from_stage: str | None = None,
                 until: str | None = None, say=print, after_stage=None, restore: str | os.PathLike | None = None,
                 score_as_trained: bool = False, keep_records: str | os.PathLike | None = None) -> Run:
    """Run every stage not yet recorded as done (from `from_stage` on, if given) up to `until`; `after_stage(run)`
    is called after each stage that ran (the CLI rewrites the report, so a long run shows its figures so far).
    `restore`: a records archive of a run of this config (run_records), put in first. After each stage the run's
    own records are packed (records.tar.gz), so the next sitting can go on from them on another machine;
    `keep_records`: a file that gets a copy of them each time (it may be the `restore` archive itself).
    `score_as_trained`: the train stage scores each student as soon as it is trained (see stage_train)."""
    from . import run_records

    stages = stages_of(cfg)
    for name in (from_stage, until):
        if name is not None and name not in stages:
            raise ScotdError(f"unknown stage {name!r}; this run's stages: {', '.join(stages)}")
    if from_stage and until and stages.index(until) < stages.index(from_stage):
        raise ScotdError(f"--until {until} comes before --from {from_stage}: nothing would run")
    records = run_records.read(restore, cfg.model_dump(), config_differences) if restore is not None else None
    if records is not None:
        lacking = run_records.behind(records, out)
        if lacking:
            raise ScotdError(f"{out} is behind the records of {restore} ({'; '.join(lacking)}): going on from it "
                             "would pack its records over theirs; move it aside, or use another --out")
        if "corpus.jsonl" in records and not (Path(out) / "corpus.jsonl").exists():
            records = run_records.with_questions(records, _examples_of(cfg, cfg.train_split, None), str(restore))
    run = Run(out, cfg)
    run.score_as_trained = score_as_trained
    run.keep_records = Path(keep_records) if keep_records is not None else None
    run.open()
    if records is not None:
        put = run_records.put(records, run.root)
        say(f"restored {len(put)} of {len(records)} records from {restore} (files already in {run.root} kept)")
    if from_stage:
        run.forget(from_stage)
        _remove_outputs_from(run, from_stage, say)
    last = stages.index(until) if until else len(stages) - 1
    done = run.state()
    for i, stage in enumerate(stages[: last + 1]):
        if stage in done:
            say(f"[{i + 1}/{len(stages)}] {stage}: done already, skipped")
            continue
        say(f"[{i + 1}/{len(stages)}] {stage} ...")
        started = time.monotonic()
        summary = STAGE_FUNCTIONS[stage](run, say) or {}
        run.record(stage, summary, time.monotonic() - started)
        run.pack_records()
        say(f"[{i + 1}/{len(stages)}] {stage}: finished in {time.monotonic() - started:.0f} s")
        if after_stage is not None:
            after_stage(run)
    return run


def _remove_outputs_from(run: Run, from_stage: str, say) -> None:
    """`--from STAGE` reruns that stage and the later ones: the outputs they would resume from are removed first
    (tuning candidates, students and their checkpoints, evaluations). The sampled corpus is kept: `--from sample`
    resumes it (a corpus is append-only; a new one needs a new run directory)."""
    at = STAGES.index(from_stage)
    for stage, path in (("tune", run.tune_dir), ("train", run.students), ("evaluate", run.eval_dir)):
        if at <= STAGES.index(stage) and path.exists():
            say(f"--from {from_stage}: removing {path.name}/ of the earlier run")
            shutil.rmtree(path)


# --- the stages -------------------------------------------------------------------------------------------


def _examples(run: Run, split: str, limit: int | None):
    return _examples_of(run.cfg, split, limit)


def _examples_of(cfg: PipelineConfig, split: str, limit: int | None):
    from .datasets import load_examples

    return load_examples(cfg.task, split, data_dir=cfg.data_dir, limit=limit)


def stage_sample(run: Run, say) -> dict:
    if run.cfg.corpus_source != "sample":
        return _import_corpus(run, say)
    from .prompts import load_prompt
    from .sampling import SampleSettings, chains_left, run_sampling
    from .teacher import get_teacher, parse_teacher

    cfg = run.cfg
    if cfg.exclude_questions:  # the first train_limit questions of those left
        from .corpus import read_corpus

        seen = {row.id for row in read_corpus(cfg.exclude_questions)}
        examples = [ex for ex in _examples(run, cfg.train_split, None) if ex.id not in seen][: cfg.train_limit]
        say(f"  {len(seen)} questions of {cfg.exclude_questions} left out")
    else:
        examples = _examples(run, cfg.train_split, cfg.train_limit)
    examples = [ex for ex in examples if ex.answer is not None]
    prompt = load_prompt(cfg.task)
    settings = SampleSettings(task=cfg.task, split=cfg.train_split, teacher=cfg.teacher, n=cfg.n,
                              temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                              prompt_version=prompt.prompt_version, seed=cfg.seed, limit=cfg.train_limit)
    def render(ex) -> str:
        return prompt.render(ex.question, ex.choices)

    resume = run.corpus.exists()
    if resume and chains_left(examples, settings, run.corpus) == 0:
        summary = run_sampling(examples, render, None, settings, run.corpus, resume=True)
        say(f"  every question has its {cfg.n} chains already (the teacher is not loaded): " + summary.line())
        return _sample_summary(summary, examples)
    kind, _ = parse_teacher(cfg.teacher)
    # every backend gets the run seed: each chain's own seed derives from it (scotd_harness.seeding)
    backend = get_teacher(cfg.teacher, seed=cfg.seed, **({"api_base": cfg.api_base} if kind == "openai" else {}))
    # the onnx teacher keeps its batch full only when handed several batches' worth of questions at a time
    per_call = backend.questions_per_call(cfg.n) if kind == "onnx" else 8
    last_pack = time.monotonic()

    def pack_now_and_then(_summary) -> None:
        """Records while sampling, so a run folder lost hours into the stage keeps its chains (`--restore`)."""
        nonlocal last_pack
        if time.monotonic() - last_pack >= RECORDS_WHILE_SAMPLING_S:
            try:
                run.pack_records()
            except (OSError, ValueError, ScotdError) as e:  # (a safeguard: hours of sampling go on without it)
                say(f"  could not pack the records while sampling ({e}); sampling goes on")
            last_pack = time.monotonic()

    try:
        summary = run_sampling(examples, render, backend, settings, run.corpus, resume=resume,
                               questions_per_call=per_call, after_call=pack_now_and_then)
    finally:
        backend.close()
    say("  " + summary.line())
    return _sample_summary(summary, examples)


def _sample_summary(summary, examples) -> dict:
    return {"chains": summary.chains_written + summary.chains_skipped, "questions": len(examples),
            "teacher_accuracy": summary.correct / summary.chains_written if summary.chains_written else None}


def _import_corpus(run: Run, say) -> dict:
    """The sample stage of a run on chains sampled before: a released corpus, joined to the official split, or a
    corpus file of which the first `n` chains of each question are kept (a smaller n from one large sample: the
    chains-per-question curve, each chain's seed unchanged)."""
    from .corpus import read_corpus, write_corpus

    cfg = run.cfg
    if cfg.corpus_source == "distilling-step-by-step":
        from .corpus_import import import_distilling_step_by_step

        rows, report = import_distilling_step_by_step(cfg.data_dir, "train", examples=_examples(run, "train", None))
        for line in report.lines():
            say("  " + line)
    else:
        rows = [r for r in read_corpus(cfg.corpus_source) if r.sample_index < cfg.n]
        other = {r.task for r in rows} - {cfg.task}
        if other:
            raise ScotdError(f"{cfg.corpus_source} holds chains of {', '.join(sorted(other))}, not {cfg.task}")
        say(f"  {len(rows)} chains (the first {cfg.n} of each question) from {cfg.corpus_source}")
    write_corpus(rows, run.corpus)
    correct = sum(bool(r.correct) for r in rows)
    return {"source": cfg.corpus_source, "chains": len(rows), "questions": len({r.id for r in rows}),
            "teacher_accuracy": correct / len(rows) if rows else None}


def stage_filter(run: Run, say) -> dict:
    """Filter the chains, keep the questions of the training split every arm has a target for, and write each
    arm's corpus at each size (see scotd_harness.arms)."""
    from .arms import corpus_path, students, subsample
    from .corpus import read_corpus, write_corpus
    from .corpus_filters import apply_filters

    cfg = run.cfg
    rows = list(read_corpus(run.corpus))
    kept = apply_filters(rows, cfg.filters)
    summary = {"chains_in": len(rows)}
    if cfg.corpus_source != "sample":  # a released corpus covers all of train: keep the training split's questions
        split_ids = {ex.id for ex in _examples(run, cfg.train_split, cfg.train_limit)}
        kept = [r for r in kept if r.id in split_ids]
        say(f"  {len({r.id for r in kept})} filtered questions are in {cfg.train_split}")
    corpora = {"chains": kept}
    if "cose" in cfg.arm_names:
        from .corpus_import import import_cose

        official = _examples(run, "train", None)
        cose, report = import_cose(_cose_source(cfg), "train", examples=official, only_ids={r.id for r in kept})
        for line in report.lines():
            say("  " + line)
        both = {r.id for r in cose}
        corpora = {"chains": [r for r in kept if r.id in both], "cose": cose}
        summary["cose_questions"] = len(cose)
    questions = {r.id for r in corpora["chains"]}
    if not corpora["chains"]:
        raise ScotdError(
            f"the filters {cfg.filters} kept no chain of {len(rows)}: the teacher answered no question "
            f"correctly; sample more chains (n), use a stronger teacher, or filter with 'all'"
        )
    written = {}
    for student in students(cfg):
        stem = student.corpus
        if stem in written:
            continue
        chosen = subsample(questions, student.questions, cfg.seed)
        if student.questions is not None and student.questions > len(questions):
            raise ScotdError(f"train_sizes asks for {student.questions} questions but the filtered corpus has "
                             f"{len(questions)}")
        part = [r for r in corpora[stem.split("_")[0]] if r.id in chosen]
        path = corpus_path(run.root, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_corpus(part, path)
        written[stem] = {"chains": len(part), "questions": len({r.id for r in part}),
                         "file": str(path.relative_to(run.root))}
    if "chains" not in written:  # a plain run trains on corpus.filtered.jsonl; keep it whole in any case
        write_corpus(corpora["chains"], run.filtered)
    say(f"  kept {len(corpora['chains'])} of {len(rows)} chains ({len(questions)} questions) with "
        f"{', '.join(cfg.filters)}" + (f"; corpora: {', '.join(written)}" if len(written) > 1 else ""))
    return {**summary, "chains_kept": len(corpora["chains"]), "questions_kept": len(questions), "corpora": written}


def _cose_source(cfg: PipelineConfig):
    return cfg.data_dir  # find_cose_file looks in <data_dir>/cose_v1.11, or under $SCOTD_DATA_DIR


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
    "tune": stage_tune,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "export": stage_export,
    "infer": stage_infer,
}
