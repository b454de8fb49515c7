"""`scotd sample`: N chain-of-thought rationales per question from a teacher, into a resumable corpus."""

from __future__ import annotations

import click

from . import data_dir_option, task_option


def generation_options(f):
    """Sampling options shared by the commands that generate (-n, temperature, max new tokens, seed)."""
    f = click.option("--seed", default=0, show_default=True, help="Sampling seed (recorded in every row).")(f)
    f = click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1),
                     help="Longest chain, in teacher tokens.")(f)
    f = click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0.0),
                     help="Sampling temperature (the paper uses 1.0; 0 is greedy).")(f)
    f = click.option("-n", "--num-samples", "n", default=30, show_default=True, type=click.IntRange(1),
                     help="Chains per question (the paper samples 30).")(f)
    return f


@click.command("sample")
@task_option
@click.option("--split", default="train", show_default=True, help="Dataset split to sample on.")
@click.option("--teacher", required=True, metavar="BACKEND:MODEL",
              help="hf:embedded, hf:<model dir or hub id>, onnx:<export dir of scotd export> (the fast local "
                   "teacher, torch-free), or openai:<model served at --api-base>.")
@generation_options
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Corpus file (JSONL) to append to.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings.")
@click.option("--limit", type=click.IntRange(1), help="Only the first LIMIT questions of the split.")
@click.option("--num-exemplars", type=click.IntRange(1),
              help="Use only the first K few-shot exemplars (default: all; recorded in the settings).")
@click.option("--questions-per-call", type=click.IntRange(1),
              help="Questions handed to the teacher per call; their chains are written when it returns. "
                   "Default: 8 for hf, 2 x --concurrency for openai (keeps every connection busy), "
                   "max(16, 4 x --batch-rows // n) for onnx (keeps the batch full; the batch drains at each call's "
                   "end).")
@click.option("--api-base", envvar="OPENAI_BASE_URL",
              help="openai backend: endpoint base URL, e.g. http://host:8000/v1.")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="openai backend: API key (default $OPENAI_API_KEY).")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1),
              help="openai backend: requests in flight.")
@click.option("--max-retries", default=6, show_default=True, type=click.IntRange(0),
              help="openai backend: retries per request on 429/5xx/time-outs, with exponential backoff.")
@click.option("--max-n-per-request", type=click.IntRange(1),
              help="openai backend: most chains asked for in one request; larger -n is split, each request with "
                   "its own seed (default: scotd serve's cap, 32). Endpoints that ignore n are detected anyway.")
@click.option("--device", help="hf backend: torch device (default cuda if available, else cpu); onnx backend: "
                               "cpu (default), cuda or cuda:N (needs onnxruntime-gpu).")
@click.option("--batch-rows", default=64, show_default=True, type=click.IntRange(1),
              help="hf and onnx backends: sample rows decoded together (questions per batch = rows // n).")
@click.option("--threads", type=click.IntRange(1),
              help="onnx backend: onnxruntime intra-op threads (default: one per physical core).")
@click.option("--token-logprobs/--no-token-logprobs", default=True, show_default=True,
              help="Keep each chain's per-token teacher log-probabilities (where the backend gives them) besides "
                   "their sum.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@data_dir_option
def command(task, split, teacher, n, temperature, max_new_tokens, seed, out, resume, limit, num_exemplars,
            questions_per_call, api_base, api_key, concurrency, max_retries, max_n_per_request, device, batch_rows,
            threads, token_logprobs, progress, data_dir):
    """Sample N chains per question of TASK/SPLIT from a teacher into OUT (one JSON line per chain).

    \b
    Example:
        scotd sample --task csqa --split train --teacher hf:embedded -n 30 --temperature 1.0 --out corpus.jsonl
        scotd sample ... --teacher onnx:teacher-onnx/ -n 16 --out corpus.jsonl   # an export of `scotd export`
        scotd sample ... --teacher openai:my-model --api-base http://127.0.0.1:8000/v1 --out corpus.jsonl --resume
    """
    from ..datasets import load_examples
    from ..prompts import PromptSet, load_prompt
    from ..sampling import SampleSettings, check_output, run_sampling
    from ..teacher import get_teacher, parse_teacher

    backend_name, _ = parse_teacher(teacher)
    prompt = load_prompt(task)
    if num_exemplars is not None:
        prompt = PromptSet(prompt.task, prompt.prompt_version, prompt.exemplars[:num_exemplars])
    examples = load_examples(task, split, data_dir=data_dir, limit=limit)
    settings = SampleSettings(task=task, split=split, teacher=teacher, n=n, temperature=temperature,
                              max_new_tokens=max_new_tokens, prompt_version=prompt.prompt_version, seed=seed,
                              limit=limit, num_exemplars=num_exemplars)
    check_output(out, settings, resume)  # refuse a clobber or a mismatched resume before the (slow) teacher load
    if backend_name == "hf":
        kwargs = {"device": device, "max_batch_rows": batch_rows, "seed": seed}
    elif backend_name == "onnx":
        kwargs = {"device": device, "threads": threads, "max_batch_rows": batch_rows, "seed": seed}
    else:
        kwargs = {"api_base": api_base, "api_key": api_key, "concurrency": concurrency, "max_retries": max_retries,
                  "seed": seed}
        if max_n_per_request is not None:
            kwargs["max_n_per_request"] = max_n_per_request
    backend = get_teacher(teacher, **kwargs)
    if questions_per_call is None:
        questions_per_call = {"hf": 8, "openai": 2 * concurrency}.get(backend_name) or backend.questions_per_call(n)
    try:
        summary = run_sampling(examples, lambda ex: prompt.render(ex.question, ex.choices), backend, settings, out,
                               resume=resume, questions_per_call=questions_per_call, progress=progress,
                               token_logprobs=token_logprobs)
    finally:
        backend.close()
    click.echo(summary.line())
