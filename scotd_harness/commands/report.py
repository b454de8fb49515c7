"""`scotd report RUN_DIR`: report.md, plots and a rating sheet from a pipeline run."""

import click

from ..report import write_report


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sweep", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Other run directories of the same task with other chains per question (n): plots accuracy "
                   "against n. Repeatable.")
def command(run_dir, sweep):
    """Write RUN_DIR/report.md with the accuracy table (teacher, undistilled, label-only, SCoTD), accuracy.png,
    corpus statistics, the ONNX student's parity and speed, and rating_sheet.csv/.html: teacher and student
    rationales side by side for a human rating study. Reads files only; runs no model."""
    click.echo(str(write_report(run_dir, sweep=list(sweep))))
