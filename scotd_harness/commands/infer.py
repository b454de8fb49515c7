"""`scotd infer DIR`: answer questions with an exported ONNX student (no torch needed)."""

import json

import click

from ..errors import ScotdError


def _parse_choices(raw: str) -> list[tuple[str, str]]:
    from scotd_harness import formats

    texts = [c.strip() for c in raw.split("|")]
    if len(texts) < 2 or any(not t for t in texts):
        raise click.BadParameter("give at least two non-empty choices separated by '|'", param_hint="--choices")
    return [(formats.label_for_index(i), t) for i, t in enumerate(texts)]


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["question"], row["choices"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ScotdError(f"{path}:{n}: expected a JSON object with question and choices ({e})") from None
            rows.append(row)
    return rows


@click.command("infer")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--task", default="csqa", show_default=True, help="Task whose answer format is used.")
@click.option("--question", default=None, help="One question.")
@click.option("--choices", default=None, help="Its choices, separated by '|' (labelled a, b, ... in order).")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL of {question, choices: [text, ...] or [[label, text], ...], id?, answer?}.")
@click.option("-n", "--num-chains", default=1, show_default=True, type=int,
              help="Chains per question; above 1, self-consistency votes over sampled chains (shared prefill).")
@click.option("--temperature", type=float, default=None, help="Default: 0 (greedy) for one chain, 0.7 for more.")
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
def command(directory, task, question, choices, input_file, num_chains, temperature, max_new_tokens, seed,
            batch_size, device, threads):
    """Answer with the student in DIR: prints one JSON line per question (rationale, answer, votes)."""
    from scotd_harness import formats
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    if (question is None) == (input_file is None):
        raise click.UsageError("give either --question with --choices, or --input FILE")
    if question is not None and not choices:
        raise click.UsageError("--question needs --choices")
    if temperature is None:
        temperature = 0.0 if num_chains == 1 else 0.7
    if num_chains > 1 and temperature == 0:
        raise click.BadParameter("more than one chain needs --temperature > 0", param_hint="--temperature")
    if question is not None:
        rows = [{"question": question, "choices": _parse_choices(choices)}]
    else:
        rows = _read_jsonl(input_file)
        for row in rows:
            raw = row["choices"]
            row["choices"] = ([(formats.label_for_index(i), c) for i, c in enumerate(raw)]
                              if all(isinstance(c, str) for c in raw)
                              else [(formats.normalize_label(lab), text) for lab, text in raw])
    student = OnnxStudent(directory, device=device, threads=threads)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
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
                out["correct"] = ans.answer == formats.normalize_label(row["answer"])
            click.echo(json.dumps(out, ensure_ascii=False))
