"""`scotd train`: fine-tune a student on a rationale corpus, or the label-only baseline.

The options are generated from the `DistillConfig` field metadata (help, choices, defaults), so an option is
defined once, in `scotd_harness/train.py`. `DistillConfig` is imported only when the command runs or shows its help.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing

import click

#: DistillConfig fields shown as options, in this order, with a shorter flag where users expect one. The
#: remaining TrainingArguments fields keep their defaults (use the Python API for them).
OPTIONS: list[tuple[str, str | None]] = [
    ("student", None), ("corpus", None), ("output_dir", "--out"), ("task", None), ("label_only", None),
    ("chains", None), ("only_correct", None), ("max_length", None), ("append_eos", None), ("batching", None),
    ("num_train_epochs", "--epochs"), ("max_steps", None), ("learning_rate", "--lr"),
    ("per_device_train_batch_size", "--batch-size"), ("per_device_eval_batch_size", "--eval-batch-size"),
    ("gradient_accumulation_steps", "--grad-accum"), ("warmup_ratio", None), ("warmup_steps", None),
    ("weight_decay", None), ("lr_scheduler_type", None), ("precision", None), ("gradient_checkpointing", None),
    ("dev_fraction", None), ("dev_corpus", None), ("max_dev_questions", None), ("keep_best", None),
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


def _option(f: dataclasses.Field, flag: str | None):
    name = f.name
    flag = flag or "--" + name.replace("_", "-")
    kind = _base_type(f.type)
    default = f.default if f.default is not dataclasses.MISSING else None
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
    from ..train import DistillConfig

    by_name = {f.name: f for f in dataclasses.fields(DistillConfig)}
    for name, flag in reversed(OPTIONS):
        func = _option(by_name[name], flag)(func)
    return func


def _run(**kwargs) -> None:
    from ..errors import ScotdError
    from ..train import DistillConfig, train

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:  # also reached through `python -m scotd_harness.train`, outside the cli group's own handler
        out = train(DistillConfig(**kwargs))
    except ScotdError as e:
        raise click.ClickException(str(e)) from e
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process of a distributed run
        click.echo(f"student written to {out}")


class _LazyCommand(click.Command):
    """Builds its options from DistillConfig (importing transformers) only when parsed or asked for help."""

    def __init__(self):
        super().__init__("train", callback=None, help=__doc__.split("\n\n")[0].split(": ", 1)[1])
        self._built = False

    def _build(self):
        if not self._built:
            built = click.command("train")(_options(_run))
            self.params, self.callback, self._built = built.params, built.callback, True

    def get_params(self, ctx):
        self._build()
        return super().get_params(ctx)

    def make_context(self, info_name, args, parent=None, **extra):
        self._build()
        return super().make_context(info_name, args, parent=parent, **extra)


command = _LazyCommand()
command.help = (
    "Fine-tune a student on a rationale corpus (SCoTD), or with --label-only on the gold answers alone.\n\n"
    "\b\nExamples:\n"
    "  scotd train --student embedded --corpus corpus.jsonl --out runs/student\n"
    "  scotd train --corpus corpus.jsonl --out runs/label-only --label-only\n"
    "  accelerate launch --multi_gpu --num_processes 2 -m scotd_harness.train --corpus corpus.jsonl --out runs/s\n\n"
    "The loss is taken on the target tokens only; the student directory holds safetensors and scotd.json."
)
