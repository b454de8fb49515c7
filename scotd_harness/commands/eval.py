"""`scotd eval MODEL --tasks ...`: the scotd_* lm-eval tasks through `lm_eval.simple_evaluate`."""

from __future__ import annotations

import click

from . import data_dir_option


def _batch_size(ctx, param, value: str) -> int | str:
    if value == "auto" or value.startswith("auto:"):
        return value
    try:
        size = int(value)
    except ValueError:
        raise click.BadParameter("an integer, 'auto' or 'auto:N'") from None
    if size < 1:
        raise click.BadParameter("must be at least 1")
    return size


@click.command("eval")
@click.argument("model")
@click.option("--tasks", required=True,
              help="Comma-separated task names or patterns: scotd_csqa, scotd_*, the tags scotd and scotd_challenge, "
                   "or any lm-eval task.")
@click.option("--model-type", type=click.Choice(["hf", "scotd-onnx"]), default="hf", show_default=True,
              help="hf: a transformers model directory or hub id; scotd-onnx: a directory from `scotd export`.")
@click.option("--limit", type=click.IntRange(1), help="Only the first LIMIT questions of each task (for quick checks).")
@click.option("--batch-size", default="8", show_default=True, callback=_batch_size,
              help="Requests per model call: an integer, or auto (hf).")
@click.option("--output", "output_dir", type=click.Path(file_okay=False),
              help="Folder for results.json and results.md (default: runs/eval/<model>-<time>). A killed "
                   "scotd-onnx evaluation rerun with the same --output decodes only the chains it had not finished.")
@click.option("--device", help="Torch device for hf (default: cuda if available, else cpu).")
@click.option("--split", help="Dataset split instead of validation, e.g. train-holdout where the official dev file "
                              "is not available (QuaRel, CSQA 2.0 offline).")
@click.option("--sc-samples", type=click.IntRange(8), help="Chains per question for the *_sc tasks (default 16).")
@click.option("--max-gen-toks", type=click.IntRange(1),
              help="Cap on generated tokens per chain (the tasks allow 128); for quick checks.")
@click.option("--log-samples", is_flag=True, help="Also write every prompt, output and parsed answer (samples_*.jsonl).")
@click.option("--seed", default=1234, show_default=True,
              help="Seed for sampling (the *_sc tasks); scotd-onnx derives each chain's seed from it, the question "
                   "and the chain index.")
@data_dir_option
def command(model, tasks, model_type, limit, batch_size, output_dir, device, split, sc_samples, max_gen_toks,
            log_samples, seed, data_dir):
    """Evaluate MODEL (a model directory, a hub id, or `embedded`) on the scotd_* tasks; print the table and write
    results.json and results.md.

    \b
    Examples:
        scotd eval embedded --tasks scotd_csqa_fewshot --limit 50
        scotd eval student/ --tasks scotd,scotd_challenge
        scotd eval student-onnx/ --model-type scotd-onnx --tasks scotd_csqa,scotd_csqa_sc --sc-samples 8

    The same tasks run in the stock harness: lm_eval --model scotd-hf --model_args pretrained=student/ --tasks
    'scotd_*' (stock --model hf too, but it adds the BOS of a tokenizer that has one, which a student never saw)
    """
    from ..evaluate import evaluate

    result = evaluate(model, tasks, model_type=model_type, limit=limit, batch_size=batch_size, output_dir=output_dir,
                      device=device, split=split, data_dir=data_dir, sc_samples=sc_samples,
                      max_gen_toks=max_gen_toks, log_samples=log_samples, seed=seed)
    click.echo(result.table)
    click.echo(f"results: {result.json_path}", err=True)
