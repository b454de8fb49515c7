"""One module per `scotd` command; each defines `command`, a click command or group (see cli.COMMANDS)."""

import click

from ..datasets import task_names

#: Shared option: where the official data files live.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    envvar="SCOTD_DATA_DIR",
    help="Folder with the official dataset files (layout of the official releases). Default: $SCOTD_DATA_DIR, "
    "else the Hugging Face hub.",
)
task_option = click.option("--task", type=click.Choice(task_names()), required=True, help="Dataset task name.")
