"""`scotd corpus filter | import | stats`: choose chains, bring in public corpora, summarise a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import data_dir_option


@click.group("corpus")
def command() -> None:
    """Filter, import and summarise rationale corpora (JSONL, one chain per line)."""


def _refuse_clobber(out: str, force: bool) -> None:
    from ..errors import ScotdError

    path = Path(out)
    if path.is_file() and path.stat().st_size > 0 and not force:
        raise ScotdError(f"{out} exists; pass --force to replace it")


@command.command("filter")
@click.argument("corpus", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Filtered corpus to write (required unless --list).")
@click.option("-f", "--filter", "filters", multiple=True, metavar="NAME[:OPTS]",
              help="A filter, repeatable, applied in order: correct, all, random-k:k=5, likelihood-k:k=5, "
                   "diversity-k:k=5[,embedder=tfidf], open-ended[:fraction=0.5]. Default: correct. diversity-k's "
                   "default embedder needs the 'diversity' extra: pip install 'scotd-harness[diversity]'.")
@click.option("--list", "list_only", is_flag=True, help="List the filters and their options, then exit.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def filter_cmd(corpus, out, filters, list_only, force):
    """Keep the chains of CORPUS that pass the filters and write them to OUT (`--list` needs neither).

    \b
    Examples (the paper's settings):
        scotd corpus filter corpus.jsonl --out supervised.jsonl -f correct
        scotd corpus filter corpus.jsonl --out fewshot.jsonl -f all
        scotd corpus filter corpus.jsonl --out top5.jsonl -f correct -f likelihood-k:k=5
    """
    from ..corpus import corpus_stats, read_corpus, write_corpus
    from ..corpus_filters import FILTERS, apply_filters

    if list_only:
        for name, cls in FILTERS.items():
            click.echo(f"{name}: options {', '.join(cls.params) or '(none)'}")
        return
    if corpus is None or out is None:
        raise click.UsageError("give CORPUS and --out OUT (or --list to see the filters)")
    _refuse_clobber(out, force)
    rows = list(read_corpus(corpus))
    kept = apply_filters(rows, filters or ("correct",))
    write_corpus(kept, out)
    stats = corpus_stats(kept)
    click.echo(f"kept {len(kept)} of {len(rows)} chains ({stats['questions']} questions) -> {out}")


@command.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["scotd-release", "distilling-step-by-step", "cose"]))
@click.argument("source", required=False, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Corpus file to write.")
@click.option("--task", default="csqa", show_default=True, help="scotd-release: the task the file samples.")
@click.option("--split", default="train", show_default=True,
              help="train; distilling-step-by-step also test (= CSQA dev); cose also validation (= CSQA dev).")
@click.option("--teacher", "teacher_name", default="scotd-release", show_default=True,
              help="scotd-release: teacher name recorded in the rows.")
@click.option("--same-questions", "same_questions", type=click.Path(exists=True, dir_okay=False),
              help="cose: keep only the questions of this corpus (e.g. the answer-filtered PaLM chains), so both arms "
                   "train on the same questions.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@data_dir_option
def import_cmd(fmt, source, out, task, split, teacher_name, same_questions, force, data_dir):
    """Import a public rationale corpus SOURCE of FORMAT into OUT.

    \b
    scotd-release: a SCoTD release file (csqa_30x.json style), joined to TASK/SPLIT by index when the official
        files are at hand (--data-dir / $SCOTD_DATA_DIR).
    distilling-step-by-step: the folder with cqa_*.json and llm/ (default: under $SCOTD_DATA_DIR).
    cose: CoS-E v1.11 human explanations (a cose_*_v1.11.jsonl file or its folder; default: cose_v1.11/ under
        --data-dir / $SCOTD_DATA_DIR), one row per CSQA question (teacher human:cose-v1.11), joined by id to the
        official CSQA split for the question and the gold label. Rows left out are counted in the output.
    """
    from ..corpus import read_corpus, write_corpus
    from ..corpus_import import (
        COSE_SPLITS,
        DSS_SPLITS,
        find_cose_file,
        import_cose,
        import_distilling_step_by_step,
        import_scotd_release,
    )
    from ..datasets import load_examples
    from ..datasets.base import data_dir_from_env
    from ..errors import ScotdError

    _refuse_clobber(out, force)
    if same_questions and fmt != "cose":
        raise ScotdError("--same-questions applies to cose only")
    root = data_dir_from_env(data_dir)
    if fmt == "distilling-step-by-step":
        official = None
        if root is not None:
            official = load_examples("csqa", DSS_SPLITS.get(split, split), data_dir=root)
        rows, report = import_distilling_step_by_step(source or root, split, examples=official)
    elif fmt == "cose":
        if split not in COSE_SPLITS:
            raise ScotdError(f"cose --split must be train or validation, got {split!r}")
        cose_file = find_cose_file(source or root, split)  # named before the CSQA questions load (maybe the hub)
        official = load_examples("csqa", COSE_SPLITS[split], data_dir=root)
        only_ids = {row.id for row in read_corpus(same_questions)} if same_questions else None
        rows, report = import_cose(cose_file, split, examples=official, only_ids=only_ids)
    else:
        if source is None:
            raise ScotdError("scotd-release needs the release file as SOURCE")
        examples = load_examples(task, split, data_dir=root) if root is not None else None
        if examples is None:
            click.echo("no data directory: ids are <task>-<split>-<index> and gold comes from the release's score",
                       err=True)
        rows, report = import_scotd_release(source, task, split, examples=examples, teacher=teacher_name)
    write_corpus(rows, out)
    for line in report.lines():
        click.echo(line)
    click.echo(f"wrote {len(rows)} chains -> {out}")


@command.command("stats")
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats_cmd(corpus, as_json):
    """Chains per question, teacher accuracy, unparsed share, length distribution and duplicate share."""
    from ..corpus import corpus_stats, format_stats, read_corpus

    stats = corpus_stats(read_corpus(corpus))
    click.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))
