"""`scotd train`: fine-tune a student on a rationale corpus, or the label-only baseline.

The command itself is built in `scotd_harness/train.py` (`build_command`) from the `DistillConfig` field metadata,
so that `python -m scotd_harness.train` (the entry point for accelerate launch / torchrun) is the same command
without the library importing this CLI layer. Here it is only wrapped lazily: transformers is imported when the
command runs or shows its help, not when `scotd --help` lists it.
"""

from __future__ import annotations

import click


class _LazyCommand(click.Command):
    """Takes its options from `scotd_harness.train.build_command()` only when parsed or asked for help."""

    def __init__(self):
        super().__init__("train", callback=None, help="Fine-tune a student on a rationale corpus (SCoTD), or the "
                         "label-only baseline.")
        self._built = False

    def _build(self):
        if not self._built:
            from ..train import build_command

            built = build_command(self.name)
            self.params, self.callback, self.help, self._built = built.params, built.callback, built.help, True

    def get_params(self, ctx):
        self._build()
        return super().get_params(ctx)

    def make_context(self, info_name, args, parent=None, **extra):
        self._build()
        return super().make_context(info_name, args, parent=parent, **extra)


command = _LazyCommand()
