"""`scotd pipeline`: the whole method as one resumable job."""

from pathlib import Path

import click

from .. import recipes
from ..pipeline import STAGES, load_config, run_pipeline


@click.command("pipeline")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML file of settings (keys of PipelineConfig; see README). Without one: the demonstration run.")
@click.option("--preset", type=click.Choice(recipes.names()), help="A shipped config instead of --config: csqa-palm (the PaLM-540B CommonsenseQA "
                               "study: SCoTD against label-only and CoS-E, tuned, with intervals; hours on 2 cores).")
@click.option("--out", default="scotd-run", show_default=True, type=click.Path(file_okay=False),
              help="Run directory: every stage's outputs, stages.json and config.json.")
@click.option("--from", "from_stage", type=click.Choice(STAGES), help="Rerun this stage and every stage after it.")
@click.option("--until", type=click.Choice(STAGES), help="Stop after this stage.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.md and plots after every stage (see `scotd report`).")
@click.option("--restore", type=click.Path(exists=True, dir_okay=False),
              help="A records archive (records.tar.gz of a run of the same config, rewritten after every stage) to "
                   "go on from in a new --out: sampled chains, scored tuning candidates and models are not redone, "
                   "and a student whose evaluations are all recorded is retrained only if the export needs it.")
@click.option("--score-as-trained", is_flag=True,
              help="Score each student as soon as it is trained (in the train stage) instead of all of them after "
                   "training: a sitting that ends inside the train stage keeps every finished student's scores in "
                   "records.tar.gz. For runs that go on from their records elsewhere.")
def command(config_path, preset, out, from_stage, until, report, restore, score_as_trained):
    """Sample -> filter -> (tune) -> train -> evaluate -> export -> infer, in one run directory.

    \b
    With no --config it runs offline on the embedded SmolLM2-135M-Instruct (teacher and student) and the
    built-in demonstration set (24 written questions; a demonstration, not a benchmark): every stage in a few
    minutes on two CPU cores.
    With --config it runs the real thing, e.g.:
        task: csqa
        teacher: openai:meta-llama/Llama-3.1-70B
        api_base: http://127.0.0.1:8000/v1
        student: facebook/opt-1.3b
        n: 30
        temperature: 1.0
        filters: [correct]
        train: {num_train_epochs: 3, learning_rate: 2e-5}
    --preset csqa-palm runs the shipped PaLM-540B CommonsenseQA study: SCoTD, label-only and CoS-E arms on
    the same questions at 2k and all, each arm's learning rate tuned on train-holdout, transfer tasks,
    self-consistency, intervals and paired tests (about 10 hours on two CPU cores; needs SCOTD_DATA_DIR).

    A finished stage is recorded in stages.json and skipped when the command runs again, so a killed run
    resumes where it stopped; sampling, tuning, training and evaluation also resume inside their stage.
    Where the run directory is gone (scratch disk, another machine), --restore RUN/records.tar.gz puts what
    its stages found into a new one, and the run goes on from there.
    """
    if preset is not None:
        if config_path is not None:
            raise click.UsageError("give --config or --preset, not both")
        config_path = recipes.path(preset)
    # a run going on (its folder, or its records) is tied to its config already: its teacher is needed only if
    # chains are left to sample, and the sample stage says so then (a run moved to a machine without it goes on)
    cfg = load_config(config_path, check_teacher=restore is None and not (Path(out) / "config.json").is_file())
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    from ..report import write_report

    def after(run) -> None:
        """The report, rewritten after every stage: a run that takes hours shows what it has so far. A report
        that cannot be written is said and skipped here: the stage is recorded, and the run goes on."""
        try:
            write_report(run.root)
        except Exception as e:  # noqa: BLE001 - the final report below raises it
            say(f"report not updated ({type(e).__name__}: {e}); the run goes on")

    run = run_pipeline(cfg, out, from_stage=from_stage, until=until, say=say,
                       after_stage=after if report else None, restore=restore,
                       score_as_trained=score_as_trained)
    if report:
        say(f"report: {write_report(run.root)}")
    click.echo(str(run.root))
