"""`scotd infer DIR`: answer questions with an exported ONNX student (no torch needed).

Every question is checked before the model loads, so bad input costs no session start and prints one line
(`Error: ...`, exit 1: `ScotdError`, which the CLI turns into a message) naming the option, or the file, line and
field.
"""

import json

import click

from ..errors import DataFormatError, ScotdError


def _parse_choices(raw: str) -> list[tuple[str, str]]:
    from scotd_harness import formats

    try:
        return formats.normalize_choices(raw.split("|"))
    except ValueError as e:
        hint = f"give at least two and at most {len(formats.LABELS)} non-empty choices, separated by '|'"
        raise ScotdError(f"--choices: {e} ({hint})") from None


def _check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("expected a non-empty string")
    return question


def _read_input(path: str) -> list[dict]:
    """The --input rows, each checked (question, choices, optional answer) with errors naming file, line, field."""
    from scotd_harness import formats
    from scotd_harness.jsonl import iter_jsonl

    rows = []
    for lineno, rec in iter_jsonl(path):
        row = dict(rec)
        for name, check in (("question", _check_question), ("choices", formats.normalize_choices)):
            if name not in rec:
                raise DataFormatError(path, lineno, name, "missing")
            try:
                row[name] = check(rec[name])
            except ValueError as e:
                raise DataFormatError(path, lineno, name, str(e)) from None
        if rec.get("answer") is not None:
            try:
                row["answer"] = formats.normalize_label(rec["answer"])
            except ValueError as e:
                raise DataFormatError(path, lineno, "answer", str(e)) from None
        rows.append(row)
    if not rows:
        raise ScotdError(f"{path}: no questions (expected JSON lines with question and choices)")
    return rows


@click.command("infer")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--task", default="csqa", show_default=True, help="Task whose answer format is used.")
@click.option("--question", default=None, help="One question.")
@click.option("--choices", default=None, help="Its choices, separated by '|' (labelled a, b, ... in order).")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL of {question, choices: [text, ...] or [[label, text], ...], id?, answer?}.")
@click.option("-n", "--num-chains", default=1, show_default=True, type=click.IntRange(min=1),
              help="Chains per question; above 1, self-consistency votes over sampled chains (shared prefill).")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Default: 0 (greedy) for one chain, 0.7 for more.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads (default: all cores).")
@click.option("--prompt-lookup", type=click.IntRange(min=0), default=None,
              help="Draft tokens per step for prompt-lookup decoding of a greedy chain that decodes alone (0: "
                   "off). Default: 4 on float exports, where the tokens are plain greedy's; off on quantised "
                   "ones, where a near-tie may go the other way.")
def command(directory, task, question, choices, input_file, num_chains, temperature, max_new_tokens, seed,
            batch_size, device, threads, prompt_lookup):
    """Answer with the student in DIR: prints one JSON line per question (rationale, answer, votes)."""
    if (question is None) == (input_file is None):
        raise click.UsageError("give either --question with --choices, or --input FILE")
    if question is not None and choices is None:
        raise click.UsageError("--question needs --choices")
    if temperature is None:
        temperature = 0.0 if num_chains == 1 else 0.7
    if num_chains > 1 and temperature == 0:
        raise click.BadParameter("more than one chain needs --temperature > 0", param_hint="--temperature")
    if question is not None:
        if not question.strip():
            raise ScotdError("--question: the question is empty")
        rows = [{"question": question, "choices": _parse_choices(choices)}]
    else:
        rows = _read_input(input_file)
    _answer(rows, directory, task, num_chains, temperature, max_new_tokens, seed, batch_size, device, threads,
            prompt_lookup)


def _answer(rows, directory, task, num_chains, temperature, max_new_tokens, seed, batch_size, device, threads,
            prompt_lookup=None):
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    try:
        student = OnnxStudent(directory, device=device, threads=threads)
    except FileNotFoundError as e:  # no scotd.json: a user's wrong path, not a bug
        raise ScotdError(str(e)) from None
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              prompt_lookup=prompt_lookup)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        answers = student.answer_many([(r["question"], r["choices"]) for r in chunk], n=num_chains, config=config)
        for row, ans in zip(chunk, answers):
            out = {"task": task, "question": row["question"], "answer": ans.answer, "rationale": ans.rationale}
            if "id" in row:
                out["id"] = row["id"]
            if num_chains > 1:
                out["votes"] = ans.votes
            if row.get("answer") is not None:
                out["correct"] = ans.answer == row["answer"]
            click.echo(json.dumps(out, ensure_ascii=False))
