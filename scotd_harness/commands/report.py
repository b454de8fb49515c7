"""`scotd report RUN_DIR`: report.md, plots and a rating sheet from a pipeline run."""

import click

from ..report import write_report


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sweep", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Other run directories of the same task with other chains per question (n) or filters: "
                   "accuracy against n with a line per filter (accuracy_vs_n.png), and a table of the runs that "
                   "select chains (random-k, likelihood-k, diversity-k, open-ended). Repeatable.")
def command(run_dir, sweep):
    """Write RUN_DIR/report.md with the accuracy table, accuracy.png, corpus statistics, the ONNX student's parity
    and speed, and rating_sheet.csv/.html: teacher and student rationales side by side for a human rating study.

    \b
    The table has every evaluated arm (eval/<arm>/: teacher, undistilled, label-only, CoS-E, SCoTD, and any other,
    e.g. a 2k-question run) side by side: each accuracy with its 95% Wilson interval, each distilled arm against
    the label-only student with McNemar's exact test on the same questions (from lm-eval's logged samples), and a
    FAILED flag for a run whose most common answer covers more than 50% of the questions or whose last dev loss is
    above 1.5x its best. accuracy.png draws the bars with their intervals; report.json holds every row.
    Reads files only; runs no model."""
    click.echo(str(write_report(run_dir, sweep=list(sweep))))
