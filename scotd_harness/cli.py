"""The `scotd` command line: one click group whose commands are imported only when run.

Each command lives in `scotd_harness/commands/<name>.py` as a thin shell over a library function, so
`scotd --help` stays fast (no torch import) and a command's heavy imports cost only that command.
Library code raises `ScotdError`; this boundary turns it into a clean message and exit status 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import click

from . import __version__
from .errors import ScotdError

#: command name -> (module under scotd_harness.commands, one-line help shown by `scotd --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data", "Look at the datasets as the student and the teacher see them."),
    "model": ("model", "Prepare the embedded default model (SmolLM2-135M-Instruct)."),
    "sample": ("sample", "Sample chain-of-thought rationales from a teacher into a corpus."),
    "corpus": ("corpus", "Filter, import and summarise rationale corpora."),
    "train": ("train", "Fine-tune a student on a rationale corpus (or labels only)."),
    "eval": ("eval", "Evaluate a model on the scotd_* lm-eval tasks."),
    "export": ("export", "Export a student to ONNX, quantise it and check parity."),
    "infer": ("infer", "Answer questions with an exported ONNX student."),
    "serve": ("serve", "Serve an ONNX student over an OpenAI-compatible HTTP API."),
    "pipeline": ("pipeline", "Run sample -> filter -> train -> evaluate -> export -> infer as one job."),
    "report": ("report", "Write report.md, plots and a rating sheet for a pipeline run."),
}


class LazyGroup(click.Group):
    """Lists commands from COMMANDS and imports a command's module only when it is invoked or asked for help."""

    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module = importlib.import_module(f"scotd_harness.commands.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(f"scotd_harness.commands.{COMMANDS[name][0]}") is not None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ScotdError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scotd")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Symbolic Chain-of-Thought Distillation: sample many rationales from a teacher, train a small student on
    them, evaluate it with lm-eval and run it anywhere with onnxruntime.

    \b
    First run (offline, embedded model, a few minutes on a laptop CPU):
        scotd pipeline
    Step by step:
        scotd data show csqa
        scotd sample --task csqa --split train --teacher hf:embedded -n 30 --out corpus.jsonl
        scotd train --student embedded --corpus corpus.jsonl --out student/
        scotd eval student/ --tasks scotd_csqa
        scotd export student/ --out student-onnx/ --quantize int4
        scotd infer student-onnx/ --task csqa --question "..." --choices "a|b|c|d|e"

    Every model argument accepts `embedded`, the bundled SmolLM2-135M-Instruct. Data comes from the official
    files under SCOTD_DATA_DIR (or --data-dir) when set, else from the Hugging Face hub.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":  # `python -m scotd_harness.cli`, the same CLI as the `scotd` script
    cli()
