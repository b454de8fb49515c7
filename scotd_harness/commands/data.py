"""`scotd data show TASK`: examples as the student and the teacher see them."""

import click

from .. import formats
from ..datasets import load_examples
from . import data_dir_option


@click.group("data")
def command() -> None:
    """Look at the datasets (official files under --data-dir / $SCOTD_DATA_DIR, else the hub)."""


@command.command("show")
@click.argument("task")
@click.option("--split", default="validation", show_default=True,
              help="train, validation, test, or train-fit / train-holdout (a fixed tenth of train).")
@click.option("-n", "--num", default=3, show_default=True, help="How many examples to print.")
@click.option("--teacher/--no-teacher", default=True, show_default=True,
              help="Also print the teacher's few-shot prompt for the first example.")
@data_dir_option
def show(task: str, split: str, num: int, teacher: bool, data_dir: str | None) -> None:
    """Print NUM examples of TASK in the student format with their gold target, then the teacher's prompt."""
    examples = load_examples(task, split, data_dir=data_dir, limit=num)
    for ex in examples:
        click.secho(f"--- {ex.task} {split} {ex.id} (gold: {ex.answer})", fg="cyan")
        click.echo(formats.student_input(ex.question, ex.choices), nl=False)
        if ex.answer:
            click.secho(formats.direct_target(ex.answer), fg="green")
        else:
            click.echo()
    if teacher and examples:
        from ..prompts import load_prompt

        prompt = load_prompt(task)
        click.secho(f"--- teacher prompt ({prompt.prompt_version}, {len(prompt.exemplars)} exemplars)", fg="cyan")
        click.echo(prompt.render(examples[0].question, examples[0].choices))
