"""Student fine-tuning on a rationale corpus (SCoTD), and the label-only baseline, through the transformers `Trainer`.

The training text comes only from `formats`: the prompt is `CorpusRow.student_input()` and the target is
`CorpusRow.student_target()` (rationale + " So the answer is: (x)") or, with `label_only`, `formats.direct_target`
of the gold label. The loss is taken on the target tokens only: prompt positions carry the label -100.

Chains per question (`chains`):

* ``balanced`` (the paper's sampling): one epoch visits every question once, with one of its chains drawn afresh
  each epoch. The draw is a pure function of (seed, epoch, question), so a resumed run and every process of an
  `accelerate launch` run see the same chains.
* ``all``: every chain is its own example (a question with 30 chains is seen 30 times per epoch).

Batches (`batching`): ``length`` groups examples of similar length (transformers' LengthGroupedSampler, whose
lengths are taken once, from the chains of epoch 0), ``packed`` concatenates a batch into one row with position ids
restarting per example (padding-free; attention stays within each example), ``padded`` pads a random batch.

Because it is the stock `Trainer`, `accelerate launch --multi_gpu --num_processes N -m scotd_harness.train ...`
(or `torchrun --nproc_per_node N -m scotd_harness.train ...`) shards the batches over N processes and process 0
writes one student directory. On a machine without GPUs the same launcher starts CPU processes, which join over
gloo; accelerate 1.15's `launch --cpu --num_processes N` starts a single process unless given an MPI hostfile. The student directory is a plain
Hugging Face model (safetensors; LoRA adapters are merged) plus `scotd.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import types
import typing
from collections import OrderedDict
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

from transformers import TrainingArguments

from . import formats
from .checksums import sha256_of
from .corpus import CorpusRow, read_corpus
from .errors import ScotdError
from .hashsplit import hash_rank, in_hash_fraction

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
SCOTD_JSON = "scotd.json"
CHAIN_MODES = ("balanced", "all")
BATCHING_MODES = ("length", "packed", "padded")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def dev_split_problem(dev_fraction: float, dev_questions: int | None, max_dev_questions: int | None) -> str | None:
    """What is wrong with these dev-slice settings together, or None; the pipeline asks before it samples, so a
    run's `train:` and a size's `train:` that contradict each other are refused before hours of work, not after."""
    if dev_questions is not None and dev_questions < 1:
        return f"dev_questions must be at least 1, not {dev_questions}"
    if dev_questions is not None and dev_fraction > 0:
        return (f"give dev_questions ({dev_questions}) or dev_fraction ({dev_fraction}), not both: each chooses "
                "the held-out questions")
    if dev_questions is not None and max_dev_questions is not None and max_dev_questions < dev_questions:
        return (f"max_dev_questions {max_dev_questions} would leave some of the dev_questions {dev_questions} "
                f"neither trained on nor scored: give dev_questions {max_dev_questions} alone")
    return None


@dataclass
class DistillConfig(TrainingArguments):
    """All options of `scotd train`: the corpus and student fields below plus the `TrainingArguments` fields.

    Defaults changed from `TrainingArguments`:

    - `learning_rate`: `2e-5` instead of `5e-5` (full fine-tuning of a small student on short targets).
    - `logging_steps`: `10` instead of `500`.
    - `report_to`: `"none"` instead of every installed integration.
    - `remove_unused_columns`: `False` (the datasets here are already model inputs).
    - `save_total_limit`: `2` (a checkpoint holds the optimizer state: about 12 bytes per parameter).
    """

    # --- what to train
    student: str = field(
        default="embedded",
        metadata={"help": "The student: a Hugging Face model directory or hub name, or `embedded` (SmolLM2-135M)."},
    )
    corpus: str | None = field(
        default=None, metadata={"help": "The rationale corpus (JSONL, one chain per line) to train on."}
    )
    task: str | None = field(
        default=None,
        metadata={"help": "The task the corpus must hold (e.g. csqa); a row of any other task is an error. "
                  "Default: the corpus's own task, which must then be a single one."},
    )
    label_only: bool = field(
        default=False,
        metadata={"help": "Train the label-only baseline: the same questions, target = the gold answer sentence "
                  "with no rationale."},
    )
    chains: str = field(
        default="balanced",
        metadata={"help": "balanced: one chain per question per epoch, drawn afresh each epoch from the seed "
                  "(the paper's sampling); all: every chain is an example.", "choices": list(CHAIN_MODES)},
    )
    only_correct: bool = field(
        default=False,
        metadata={"help": "Keep only chains whose answer matches the gold label (for corpora not filtered yet)."},
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Longest prompt + target in tokens; longer examples are dropped (counted in the log and "
                  "scotd.json), never cut, so the answer sentence is always trained."},
    )
    append_eos: bool = field(
        default=True, metadata={"help": "End each target with the tokenizer's EOS token so the student stops."}
    )
    batching: str = field(
        default="length",
        metadata={"help": "length: group examples of similar length; packed: one padding-free row per batch; "
                  "padded: random batches padded to their longest example.", "choices": list(BATCHING_MODES)},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 on a GPU that has it, else fp16 on a GPU; on a CPU, bf16 autocast where the "
                  "CPU computes bf16 natively (AVX512-BF16 or AMX; about 2x faster than fp32, bench/train_precision.py), "
                  "else fp32. Weights and optimizer state stay fp32 in every mode; the student is saved in fp32.",
                  "choices": list(PRECISIONS)},
    )
    # --- validation
    dev_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the corpus questions (fixed by a hash of the id) as a "
                  "dev set; they are not trained on."},
    )
    dev_corpus: str | None = field(
        default=None, metadata={"help": "A separate corpus whose questions form the dev set."}
    )
    max_dev_questions: int | None = field(
        default=None, metadata={"help": "Use at most this many dev questions (the first by id hash). The rest of "
                                "a dev_fraction are still held out of training: dev_questions trains on them."}
    )
    dev_questions: int | None = field(
        default=None,
        metadata={"help": "Instead of dev_fraction: hold out this many corpus questions (the first by id hash, "
                  "among those with a usable chain) as the dev set, beside a dev_corpus's questions if one is "
                  "given, and train on every other one."},
    )
    keep_best: bool = field(
        default=True,
        metadata={"help": "With a dev set: evaluate the dev loss every eval_steps (default: save_steps) and keep "
                  "the checkpoint with the lowest one as the student."},
    )
    # --- LoRA
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) and merge them into the student."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names for LoRA, or all-linear."}
    )

    # --- changed TrainingArguments defaults (see the docstring)
    learning_rate: float = field(default=2e-5, metadata={"help": "The peak learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    report_to: str | list[str] | None = field(
        default="none", metadata={"help": "Integrations to report to (none, tensorboard, wandb, ...)."}
    )
    remove_unused_columns: bool | None = field(default=False, metadata={"help": "Kept False: inputs are ready."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})

    def __post_init__(self):
        if self.chains not in CHAIN_MODES:
            raise ScotdError(f"chains must be one of {', '.join(CHAIN_MODES)}, not {self.chains!r}")
        if self.batching not in BATCHING_MODES:
            raise ScotdError(f"batching must be one of {', '.join(BATCHING_MODES)}, not {self.batching!r}")
        if self.precision not in PRECISIONS:
            raise ScotdError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ScotdError(f"dev_fraction must be in [0, 1), not {self.dev_fraction}")
        problem = dev_split_problem(self.dev_fraction, self.dev_questions, self.max_dev_questions)
        if problem:
            raise ScotdError(problem)
        if self.max_length < 8:
            raise ScotdError(f"max_length {self.max_length} is too short for any example")
        self.group_by_length = self.batching == "length"
        # The balanced draw is told its epoch by a callback; persistent workers would keep a stale copy.
        self.dataloader_persistent_workers = False
        self._resolve_precision()
        if self.ddp_find_unused_parameters is None and not self.lora and not self.gradient_checkpointing:
            self.ddp_find_unused_parameters = False  # every parameter of a full fine-tune gets a gradient
        if self.has_dev and self.keep_best:
            if str(self.eval_strategy).endswith("no"):
                self.eval_strategy = "steps"
            if self.eval_steps is None:
                self.eval_steps = self.save_steps
            self.save_strategy = self.eval_strategy
            self.save_steps = self.eval_steps
            self.load_best_model_at_end = True
            self.metric_for_best_model = "eval_loss"
            self.greater_is_better = False
        super().__post_init__()

    @property
    def has_dev(self) -> bool:
        return self.dev_fraction > 0 or self.dev_questions is not None or self.dev_corpus is not None

    def _resolve_precision(self) -> None:
        import torch

        if not torch.cuda.is_available() and not torch.backends.mps.is_available():
            # No accelerator: say CPU explicitly, so that processes started by torchrun / accelerate launch form a
            # gloo process group and shard the data (without it each would train alone on everything).
            self.use_cpu = True
            self.dataloader_pin_memory = False
        if self.bf16 or self.fp16:  # set explicitly through the Python API
            self.precision = "bf16" if self.bf16 else "fp16"
            return
        precision = self.precision
        on_gpu = torch.cuda.is_available() and not self.use_cpu and not os.environ.get("ACCELERATE_USE_CPU")
        if precision == "auto":
            if on_gpu:
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if cpu_has_native_bf16() else "fp32"
        elif not on_gpu and precision == "fp16":
            raise ScotdError("precision fp16 needs a CUDA GPU (mixed-precision fp16 training does not run on a CPU); "
                             "use bf16 or fp32")
        elif not on_gpu and precision == "bf16" and not cpu_has_native_bf16():
            log.warning("precision bf16 on a CPU without native bf16 (AVX512-BF16/AMX): it is emulated and may be "
                        "slower than fp32")
        self.bf16, self.fp16 = precision == "bf16", precision == "fp16"
        self.precision = precision

    def summary(self) -> dict:
        """The settings recorded in scotd.json: this class's own fields and the usual optimisation ones."""
        own = [f.name for f in fields(DistillConfig) if f.name in DistillConfig.__annotations__]
        usual = ["num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "warmup_ratio", "warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "eval_steps",
                 "save_steps"]
        out = {}
        for name in own + usual:
            value = getattr(self, name)
            out[name] = value if isinstance(value, (int, float, str, bool, type(None), list)) else str(value)
        out["world_size"] = self.world_size
        return out


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX, Arm BF16), read from /proc/cpuinfo.

    Only then is bf16 autocast a speed-up on a CPU (about 2x over fp32 on a Zen 5 core); elsewhere oneDNN emulates
    it and it is slower. Machines without /proc/cpuinfo (macOS, Windows) answer False and train in fp32."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


# ----------------------------------------------------------------------------------------------------------------
# Examples


@dataclass
class Question:
    """One corpus question with its tokenized prompt and the tokenized targets of its usable chains."""

    key: tuple[str, str]
    prompt_ids: list[int]
    targets: list[list[int]]

    def example(self, j: int) -> dict:
        target = self.targets[j]
        return {
            "input_ids": self.prompt_ids + target,
            "labels": [IGNORE_INDEX] * len(self.prompt_ids) + target,
        }


@dataclass
class CorpusStats:
    rows: int = 0
    questions: int = 0
    chains: int = 0
    dev_questions: int = 0
    dropped: dict = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _in_dev(question_id: str, fraction: float) -> bool:
    return in_hash_fraction(question_id, fraction)


def _hold_out(questions: list[Question], n: int, corpus, stats: CorpusStats) -> tuple[list[Question], list[Question]]:
    """(questions to train on, the n held out for the dev loss): the first n by a hash of the id among those that
    keep a chain, so each held-out question is scored (on its first chain, as a dev question always is) and no
    question is lost to both. The training statistics count what is trained on."""
    if len(questions) <= n:
        raise ScotdError(f"corpus {corpus}: dev_questions {n} would hold out all its {len(questions)} usable "
                         "questions, leaving nothing to train on")
    held = set(sorted((q.key[1] for q in questions), key=hash_rank)[:n])
    train = [q for q in questions if q.key[1] not in held]
    dev = [Question(q.key, q.prompt_ids, q.targets[:1]) for q in questions if q.key[1] in held]
    stats.questions -= len(dev)
    stats.chains -= sum(len(q.targets) for q in questions if q.key[1] in held)
    return train, dev


def load_rows(path: str | os.PathLike, task: str | None) -> tuple[list[CorpusRow], str]:
    """The corpus rows, checked: not empty, one task (the asked one when `task` is given)."""
    path = Path(path)
    if not path.is_file():
        raise ScotdError(f"corpus {path} does not exist")
    rows = list(read_corpus(path))
    if not rows:
        raise ScotdError(f"corpus {path} holds no rows: nothing to train on")
    tasks = sorted({row.task for row in rows})
    if task is not None and tasks != [task]:
        raise ScotdError(f"corpus {path} holds rows of task(s) {', '.join(tasks)}, but task {task!r} was asked "
                         f"for; filter the corpus or pass the matching --task")
    if task is None and len(tasks) > 1:
        raise ScotdError(f"corpus {path} mixes tasks {', '.join(tasks)}; pass --task to say which to train")
    return rows, tasks[0]


def _usable(row: CorpusRow, only_correct: bool, stats: CorpusStats) -> bool:
    labels = {label for label, _ in row.choice_pairs}
    if row.prediction not in labels:  # formats.INVALID or a label outside the choices
        stats.drop("no parsed answer")
        return False
    if only_correct and row.prediction != row.answer:
        stats.drop("answer differs from gold" if row.answer else "no gold answer")
        return False
    return True


def build_questions(
    rows: list[CorpusRow], tokenizer, cfg: DistillConfig, stats: CorpusStats, *, dev: bool = False
) -> list[Question]:
    """Group chains by question, tokenize prompt and targets apart (as generation sees the prompt), drop
    unusable chains and over-long examples with a count, and return the questions that keep a target."""
    grouped: OrderedDict[tuple[str, str], list[CorpusRow]] = OrderedDict()
    for row in rows:
        grouped.setdefault((row.task, row.id), []).append(row)
    eos = [tokenizer.eos_token_id] if cfg.append_eos and tokenizer.eos_token_id is not None else []
    questions = []
    for key, chains in grouped.items():
        first = chains[0]
        if cfg.label_only:
            if first.answer is None:
                stats.drop("no gold answer (label-only)")
                continue
            texts = [formats.direct_target(first.answer)]
        else:
            chains = sorted((c for c in chains if _usable(c, cfg.only_correct, stats)), key=lambda c: c.sample_index)
            if dev:
                chains = chains[:1]  # a fixed chain per dev question: the dev loss is comparable across evals
            texts = [c.student_target() for c in chains]
        prompt_ids = tokenizer(first.student_input(), add_special_tokens=False)["input_ids"]
        targets = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            if len(prompt_ids) + len(ids) > cfg.max_length:
                stats.drop(f"longer than max_length {cfg.max_length}")
                continue
            targets.append(ids)
        if not targets:
            stats.drop("question with no usable chain")
            continue
        questions.append(Question(key, prompt_ids, targets))
        stats.chains += len(targets)
    stats.rows += len(rows)
    stats.questions += len(questions)
    return questions


class BalancedChainDataset:
    """One example per question per epoch; which chain is a pure function of (seed, epoch, question)."""

    def __init__(self, questions: list[Question], seed: int):
        self.questions, self.seed, self.epoch = questions, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chain_index(self, i: int) -> int:
        q = self.questions[i]
        if len(q.targets) == 1:
            return 0
        return random.Random(f"{self.seed}:{self.epoch}:{q.key[0]}:{q.key[1]}").randrange(len(q.targets))

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> dict:
        return self.questions[i].example(self.chain_index(i))


class AllChainsDataset:
    """Every (question, chain) pair is an example."""

    def __init__(self, questions: list[Question]):
        self.questions = questions
        self.index = [(qi, j) for qi, q in enumerate(questions) for j in range(len(q.targets))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        qi, j = self.index[i]
        return self.questions[qi].example(j)


class PadCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest example of the batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.multiple = pad_token_id, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            longest = math.ceil(longest / self.multiple) * self.multiple
        ids, mask, labels = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


class PackCollator:
    """One padding-free row per batch: examples concatenated, position ids restarting at each example.

    transformers builds the block-diagonal causal mask from the restarting position ids only when no KV cache
    exists, so the batch carries `use_cache=False`; with a cache, attention would cross examples silently."""

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.flatten(features)
        batch["use_cache"] = False
        return batch


def make_collator(cfg: DistillConfig, tokenizer):
    if cfg.batching == "packed":
        return PackCollator()
    return PadCollator(tokenizer.pad_token_id, 8 if (cfg.bf16 or cfg.fp16) else None)


# ----------------------------------------------------------------------------------------------------------------
# Model and tokenizer


def load_tokenizer(student: str):
    """The student's tokenizer, with a pad token: a tokenizer without one pads with EOS (WARNING, recorded)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    pad_from_eos = False
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ScotdError(f"the tokenizer of {student} has neither a pad nor an EOS token; set tokenizer.pad_token "
                             f"in the model directory")
        log.warning("the tokenizer of %s has no pad token; padding with its EOS token %r (padded positions are "
                    "masked out of attention and loss)", student, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
        pad_from_eos = True
    tokenizer.padding_side = "right"
    return tokenizer, pad_from_eos


def load_model(cfg: DistillConfig, student: str, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # no KV cache in training (and packing needs none); restored before saving
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=targets))
    return model


class _EpochCallback:
    """Tells the balanced dataset which epoch begins. `state.epoch` is a whole number at the start of an epoch
    and the resumed fraction after a resume, so its floor is the epoch the Trainer is in."""

    def __init__(self, dataset: BalancedChainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


class _LastStepEvaluation:
    """The Trainer evaluates on multiples of eval_steps only, so the last steps of a run whose length is not one
    (or all of a run shorter than eval_steps) would never be scored, nor be chosen as the best-dev-loss student.
    Evaluating, and so saving, at the last step too closes that gap."""

    def on_step_end(self, args, state, control, **kwargs):
        last = state.max_steps and state.global_step >= state.max_steps
        if last and args.eval_strategy == "steps" and state.global_step >= (args.eval_delay or 0):
            control.should_evaluate = control.should_save = True
        return control


def _resolve_resume(cfg: DistillConfig) -> str | None:
    value = cfg.resume_from_checkpoint
    if value in (None, "", "no", "false", "False"):
        return None
    if value in ("last", "auto", "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
        if last is None:
            log.info("no checkpoint in %s to resume from; starting afresh", cfg.output_dir)
        return last
    if not os.path.isdir(value):
        raise ScotdError(f"checkpoint {value} to resume from does not exist")
    return value


def _checkpoint_step(checkpoint: str) -> int:
    """The global step a Trainer checkpoint was saved at, from its trainer_state.json."""
    state = Path(checkpoint) / "trainer_state.json"
    return json.loads(state.read_text())["global_step"] if state.is_file() else -1


def _whole_run_train_loss(training_loss: float, global_step: int, log_history: list[dict], resumed_at: int) -> float:
    """The mean training loss over every step of the run, resumed or not.

    After a resume, Trainer sums the loss of the resumed steps only but divides by all of them (the sum is not kept in
    a checkpoint), so its figure understates the loss by the share of steps done before the resume. Those steps come
    back from the losses logged before the checkpoint (which it keeps); the few after the last log before the resume
    were never logged and are left out of the mean rather than guessed."""
    if resumed_at <= 0:
        return training_loss
    total, steps, last = training_loss * global_step, global_step - resumed_at, 0
    for entry in log_history:
        if "loss" in entry and last < entry.get("step", 0) <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps > 0 else training_loss


# ----------------------------------------------------------------------------------------------------------------
# Training


def prepare_data(cfg: DistillConfig, tokenizer) -> tuple[object, object | None, CorpusStats, str]:
    """(train dataset, dev dataset or None, corpus statistics, task) from the corpus and the config."""
    if not cfg.corpus:
        raise ScotdError("no corpus given (--corpus)")
    rows, task = load_rows(cfg.corpus, cfg.task)
    stats = CorpusStats()
    dev_rows: list[CorpusRow] = []
    if cfg.dev_corpus:
        dev_rows, _ = load_rows(cfg.dev_corpus, task)
        dev_ids = {r.id for r in dev_rows}
        overlap = len({r.id for r in rows} & dev_ids)
        if overlap:
            log.warning("%d dev questions also appear in the training corpus; they are left out of training", overlap)
            before = len(rows)
            rows = [r for r in rows if r.id not in dev_ids]
            stats.drop("question also in the dev corpus", before - len(rows))
    if cfg.dev_fraction > 0:
        dev_rows += [r for r in rows if _in_dev(r.id, cfg.dev_fraction)]
        rows = [r for r in rows if not _in_dev(r.id, cfg.dev_fraction)]
    held_ids = {r.id for r in dev_rows}  # (the fraction's, for the count of those left unused below)
    questions = build_questions(rows, tokenizer, cfg, stats)
    held: list[Question] = []
    if cfg.dev_questions is not None and questions:
        questions, held = _hold_out(questions, cfg.dev_questions, cfg.corpus, stats)
    if stats.dropped:
        log.warning("corpus %s: dropped %s", cfg.corpus, ", ".join(f"{n} ({why})" for why, n in stats.dropped.items()))
    if not questions:
        raise ScotdError(f"corpus {cfg.corpus}: no usable example is left ({stats.rows} rows; dropped "
                         f"{stats.dropped or 'none'}): nothing to train on")
    train_ds = (BalancedChainDataset(questions, cfg.seed) if cfg.chains == "balanced" and not cfg.label_only
                else AllChainsDataset(questions))
    dev_ds = None
    if cfg.has_dev:
        dev_stats = CorpusStats()
        dev_questions = build_questions(dev_rows, tokenizer, cfg, dev_stats, dev=True) + held
        dev_questions.sort(key=lambda q: hash_rank(q.key[1]))
        if cfg.max_dev_questions is not None:
            unused = [q for q in dev_questions[cfg.max_dev_questions:] if q.key[1] in held_ids]
            if unused and cfg.dev_fraction > 0:
                log.warning("%d held-out questions (dev_fraction %s) are neither trained on nor scored "
                            "(max_dev_questions %d); dev_questions %d in place of both would train on them (and "
                            "score the dev loss on other questions)", len(unused), cfg.dev_fraction,
                            cfg.max_dev_questions, cfg.max_dev_questions)
            dev_questions = dev_questions[: cfg.max_dev_questions]
        if not dev_questions:
            raise ScotdError("the dev set is empty: raise dev_fraction or dev_questions, or give a dev corpus with "
                             "usable chains")
        dev_ds = AllChainsDataset(dev_questions)
        stats.dev_questions = len(dev_questions)
    return train_ds, dev_ds, stats, task


def train(cfg: DistillConfig, callbacks: list | None = None) -> Path:
    """Fine-tune `cfg.student` on `cfg.corpus`; save the student (safetensors + scotd.json) in `cfg.output_dir`.

    `callbacks` are extra `TrainerCallback`s (progress reporting, tests)."""
    from transformers import Trainer, TrainerCallback

    from .embedded import resolve_model

    started = time.time()
    student = resolve_model(cfg.student)
    tokenizer, pad_from_eos = load_tokenizer(student)
    train_ds, dev_ds, stats, task = prepare_data(cfg, tokenizer)
    model = load_model(cfg, student, tokenizer)

    callbacks = list(callbacks or [])
    if isinstance(train_ds, BalancedChainDataset):
        callbacks.append(type("BalancedEpochCallback", (_EpochCallback, TrainerCallback), {})(train_ds))
    if cfg.load_best_model_at_end:
        callbacks.append(type("LastStepEvaluation", (_LastStepEvaluation, TrainerCallback), {})())
    trainer = Trainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=make_collator(cfg, tokenizer), processing_class=tokenizer, callbacks=callbacks)
    resume = _resolve_resume(cfg)
    log.warning("training %s on %d questions / %d chains of %s (%s, %s) for %s",
                cfg.student, stats.questions, stats.chains, task, "label-only" if cfg.label_only else cfg.chains,
                cfg.batching, f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.num_train_epochs} epochs")
    resumed_at = _checkpoint_step(resume) if resume else 0
    if resume:
        log.warning("resuming from %s (step %d)", resume, resumed_at)
    result = trainer.train(resume_from_checkpoint=resume)
    train_loss = _whole_run_train_loss(result.training_loss, result.global_step, trainer.state.log_history, resumed_at)

    out = Path(cfg.output_dir)
    if trainer.is_world_process_zero():
        final = trainer.accelerator.unwrap_model(trainer.model)
        if cfg.lora:
            final = final.merge_and_unload()
        final.config.use_cache = True
        final.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        info = {
            "format_version": formats.FORMAT_VERSION,
            "kind": "label-only" if cfg.label_only else "scotd",
            "tasks": [task],
            "formats": {"input": "formats.student_input",
                        "target": "formats.direct_target" if cfg.label_only else "formats.student_target",
                        "answer_phrase": formats.ANSWER_PHRASE, "stop": list(formats.STOP_STRINGS)},
            "base_model": cfg.student,
            "corpus": {"path": os.path.basename(cfg.corpus), "sha256": sha256_of(cfg.corpus), "rows": stats.rows,
                       "questions": stats.questions, "examples": stats.chains, "dev_questions": stats.dev_questions,
                       "dropped": stats.dropped},
            "tokenizer": {"prompt_special_tokens": False, "append_eos": cfg.append_eos, "pad_from_eos": pad_from_eos},
            "training": cfg.summary(),
            "result": {"global_step": result.global_step, "train_loss": train_loss,
                       # passes over the training chains: with the same steps for every arm, a small corpus is
                       # seen many times over and a large one perhaps not once
                       "epochs": round(trainer.state.epoch or 0.0, 3),
                       "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or "") or None,
                       "best_dev_loss": trainer.state.best_metric,
                       # the dev-loss curve, so a report can flag a run whose loss diverged
                       "eval_losses": [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h],
                       "resumed_from": os.path.basename(resume or "") or None,
                       "wall_s": round(time.time() - started, 1)},
        }
        (out / SCOTD_JSON).write_text(json.dumps(info, indent=2) + "\n")
        log.warning("student saved to %s (step %d, train loss %.4f)", out, result.global_step, train_loss)
    trainer.accelerator.wait_for_everyone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line: `scotd train` and `python -m scotd_harness.train` (accelerate launch / torchrun) are the same command,
# built here from the DistillConfig field metadata, so an option is defined once. The CLI layer
# (`scotd_harness.commands.train`) only wraps it lazily; this library module never imports the CLI layer. click is
# imported only when the command is built.

#: DistillConfig fields shown as options, in this order, with a shorter flag where users expect one. The
#: remaining TrainingArguments fields keep their defaults (use the Python API for them).
OPTIONS: list[tuple[str, str | None]] = [
    ("student", None), ("corpus", None), ("output_dir", "--out"), ("task", None), ("label_only", None),
    ("chains", None), ("only_correct", None), ("max_length", None), ("append_eos", None), ("batching", None),
    ("num_train_epochs", "--epochs"), ("max_steps", None), ("learning_rate", "--lr"),
    ("per_device_train_batch_size", "--batch-size"), ("per_device_eval_batch_size", "--eval-batch-size"),
    ("gradient_accumulation_steps", "--grad-accum"), ("warmup_ratio", None), ("warmup_steps", None),
    ("weight_decay", None), ("lr_scheduler_type", None), ("precision", None), ("gradient_checkpointing", None),
    ("dev_fraction", None), ("dev_corpus", None), ("max_dev_questions", None), ("dev_questions", None),
    ("keep_best", None),
    ("eval_steps", None), ("save_steps", None), ("save_total_limit", None), ("logging_steps", None),
    ("lora", None), ("lora_r", None), ("lora_alpha", None), ("lora_dropout", None), ("lora_target_modules", None),
    ("resume_from_checkpoint", "--resume"), ("seed", None), ("dataloader_num_workers", None),
]
REQUIRED = {"corpus", "output_dir"}
EXTRA_HELP = {
    "resume_from_checkpoint": "A checkpoint directory to resume from, or `last` for the newest one under --out "
                              "(none there: start afresh).",
    "output_dir": "Where the student (and its checkpoints) are written.",
    "max_steps": "If > 0: the number of optimizer steps to run (overrides --epochs).",
    "eval_steps": "With a dev set: evaluate every this many steps (default: --save-steps).",
    "save_steps": "Save a checkpoint every this many steps.",
    "seed": "Random seed (model init of new heads, data order, the per-epoch chain draw).",
}


def _base_type(tp) -> type:
    """int/float/str/bool from a field annotation such as `int | None` or `Optional[float]`."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations of `from __future__ import annotations` modules
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    for candidate in args or (tp,):
        if candidate in (bool, int, float, str):
            return candidate
    return str


def _option(f: Field, flag: str | None):
    import click

    name = f.name
    flag = flag or "--" + name.replace("_", "-")
    kind = _base_type(f.type)
    default = f.default if f.default is not MISSING else None
    if hasattr(default, "value"):  # enums such as SchedulerType
        default = default.value
    help_text = EXTRA_HELP.get(name) or f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=bool(default), show_default=True, help=help_text)
    click_type = click.Choice(choices) if choices else kind
    return click.option(flag, name, type=click_type, default=default, required=name in REQUIRED,
                        show_default=default is not None, help=help_text)


def _options(func):
    by_name = {f.name: f for f in fields(DistillConfig)}
    for name, flag in reversed(OPTIONS):
        func = _option(by_name[name], flag)(func)
    return func


def _run(**kwargs) -> None:
    import click

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:  # also reached through `python -m scotd_harness.train`, outside the cli group's own handler
        out = train(DistillConfig(**kwargs))
    except ScotdError as e:
        raise click.ClickException(str(e)) from e
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process of a distributed run
        click.echo(f"student written to {out}")


def build_command(name: str = "train"):
    """The click command for DistillConfig: every option in OPTIONS, with the help of its field."""
    import click

    return click.command(name, help=COMMAND_HELP)(_options(_run))


COMMAND_HELP = (
    "Fine-tune a student on a rationale corpus (SCoTD), or with --label-only on the gold answers alone.\n\n"
    "\b\nExamples:\n"
    "  scotd train --student embedded --corpus corpus.jsonl --out runs/student\n"
    "  scotd train --corpus corpus.jsonl --out runs/label-only --label-only\n"
    "  accelerate launch --multi_gpu --num_processes 2 -m scotd_harness.train --corpus corpus.jsonl --out runs/s\n\n"
    "The loss is taken on the target tokens only; the student directory holds safetensors and scotd.json."
)


if __name__ == "__main__":  # `accelerate launch -m scotd_harness.train --student ... --corpus ... --out ...`
    build_command()(prog_name="python -m scotd_harness.train")
