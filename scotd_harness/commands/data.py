"""`scotd data show TASK`: examples as the student and the teacher see them. `scotd data fetch DIR`: the files."""

import shlex
from pathlib import Path

import click

from .. import data_fetch, formats
from ..datasets import load_examples
from ..errors import ScotdError
from . import data_dir_option


@click.group("data")
def command() -> None:
    """Look at the datasets (official files under --data-dir / $SCOTD_DATA_DIR, else the hub), or fetch them."""


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


@command.command("fetch")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--task", "tasks", multiple=True, type=click.Choice(sorted(data_fetch.GROUPS)),
              help="Fetch only this task's files (repeatable). Default: every official file. `cose` and "
                   "`distilling-step-by-step` are the CSQA explanation corpora.")
@click.option("--split", "splits", multiple=True, type=click.Choice(data_fetch.SPLITS),
              help="Fetch only the files of this split (repeatable), e.g. --split validation for the dev files.")
@click.option("--mirror", envvar=data_fetch.MIRROR_ENV, metavar="URL",
              help=f"Fetch every file from URL/<path in the data folder> instead of its public release location "
                   f"(e.g. URL/commonsenseqa/dev_rand_split.jsonl). Default: ${data_fetch.MIRROR_ENV}.")
@click.option("--replace", is_flag=True,
              help="Replace present files whose sha256 is not the official one (default: leave them, and fail).")
def fetch(directory: str, tasks: tuple[str, ...], splits: tuple[str, ...], mirror: str | None, replace: bool) -> None:
    """Download the official dataset files into DIRECTORY, in the layout the loaders read.

    Each file comes from its public release location (the CommonsenseQA S3 files, the OpenBookQA and QuaRel
    release zips, the IMDb contrast set, CSQA 2.0, CoS-E and the distilling step-by-step chains from their
    GitHub repositories at pinned commits) and is moved into place only once its sha256 equals the pinned one.
    Files already present with the right hash are skipped; an interrupted download resumes on the next run.
    The zips stay in the folder, beside the files extracted from them. QuaRel comes from its official release
    zip (1941 train questions). A file that cannot be had is reported and the others are still fetched (exit
    status 1). At the end it prints the SCOTD_DATA_DIR line to use.
    """
    summary = data_fetch.fetch(directory, tasks, splits, mirror=mirror, replace=replace, say=click.echo)
    problems = []
    if summary.failed:
        problems.append(f"{len(summary.failed)} file(s) could not be fetched (see above): {', '.join(summary.failed)}")
    if summary.mismatched:
        problems.append(
            f"{len(summary.mismatched)} present file(s) differ from the official ones and were left untouched: "
            f"{', '.join(summary.mismatched)} (move them away, or rerun with --replace)"
        )
    if problems:
        raise ScotdError("; ".join(problems))
    root = Path(directory).expanduser().resolve()
    click.echo(f"{len(summary.fetched)} file(s) fetched, {len(summary.present)} already present. Use them with:")
    click.echo(f"SCOTD_DATA_DIR={shlex.quote(str(root))}")
