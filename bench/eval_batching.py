"""Greedy scoring through `lm_eval --model scotd-onnx`: one request at a time against batches of similar length.

Why: the evaluate stage of a study scores every student greedily on CSQA dev, OpenBookQA and QuaRel (about 2.5k
chains a student); on 2 cores that was the longest part of a study after training. Batch-1 decoding reads every
weight once per token; a batch of 16 reads them once for 16 tokens. This measures what that buys on the adapter
lm-eval calls, and whether the batched outputs are the same text as one-at-a-time decoding (left padding and a
different matmul shape may flip a near-tie argmax: the count says how often).

Method: the first N CSQA dev questions in the student format (or the teacher's few-shot prompt for an undistilled
export, which writes nothing after the bare student format), greedy, up to 128 new tokens, the student's stop
strings; the same `ScotdOnnxLM.generate_until` call with batch_size 1 (each request decodes alone, with
prompt-lookup drafting, as every greedy request did before batching took effect) and batch_size B. One process,
rounds in ABBA order so drift on a shared machine hits both alike; the median request/s of each is reported.

    python bench/eval_batching.py [--export DIR] [--prompts 48] [--batch 16] [--rounds 2] [--out bench/results/eval_batching]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_support import describe, embedded_fp32, public_argv


def _contexts(export: Path, n: int) -> tuple[list[str], str]:
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    examples = load_examples("csqa", "validation", limit=n)
    distilled = "student" in json.loads((export / "scotd.json").read_text())
    if distilled:
        return [formats.student_input(e.question, e.choices) for e in examples], "student"
    from scotd_harness.prompts import load_prompt

    prompt = load_prompt("csqa")
    return [prompt.render(e.question, e.choices) for e in examples], "fewshot"


def _run(lm, contexts: list[str]) -> tuple[float, list[str]]:
    from lm_eval.api.instance import Instance

    from scotd_harness import formats

    kwargs = {"until": list(formats.STOP_STRINGS), "max_gen_toks": 128, "do_sample": False}
    requests = [Instance("generate_until", {}, (c, kwargs), idx=i) for i, c in enumerate(contexts)]
    start = time.perf_counter()
    texts = lm.generate_until(requests, disable_tqdm=True)
    return len(requests) / (time.perf_counter() - start), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, help="an fp32 or quantised export (default: the embedded fp32 one)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/eval_batching")
    args = ap.parse_args()

    from scotd_harness import formats
    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    export = args.export or embedded_fp32()
    contexts, form = _contexts(export, args.prompts)
    lms = {1: ScotdOnnxLM(str(export), threads=args.threads, batch_size=1),
           args.batch: ScotdOnnxLM(str(export), threads=args.threads, batch_size=args.batch)}
    _run(lms[1], contexts[:2])  # warm-up
    speeds: dict[int, list[float]] = {1: [], args.batch: []}
    texts: dict[int, list[str]] = {}
    for _ in range(args.rounds):
        for b in (1, args.batch, args.batch, 1):
            rate, out = _run(lms[b], contexts)
            speeds[b].append(rate)
            texts[b] = out
            print(f"batch {b}: {rate:.2f} requests/s", flush=True)

    one, many = texts[1], texts[args.batch]
    from scotd_harness.datasets import load_examples

    choices = [e.choices for e in load_examples("csqa", "validation", limit=args.prompts)]
    same_text = sum(a == b for a, b in zip(one, many))
    same_answer = sum(formats.extract_answer(a, c) == formats.extract_answer(b, c)
                      for a, b, c in zip(one, many, choices))
    med = {b: statistics.median(v) for b, v in speeds.items()}
    result = {
        "export": describe(export), "prompt": form, "prompts": len(contexts), "batch": args.batch,
        "threads": args.threads, "rounds": args.rounds, "requests_per_s": {str(b): v for b, v in speeds.items()},
        "median_requests_per_s": {str(b): v for b, v in med.items()}, "speedup": med[args.batch] / med[1],
        "same_text": same_text, "same_answer": same_answer, "load_average": list(os.getloadavg()),
        "argv": public_argv(sys.argv),
    }
    lines = [
        "# Greedy scoring through scotd-onnx: batch 1 against batched", "",
        (f"`{' '.join(['python', *result['argv']])}`; export {result['export']['name']} ({result['export']['weights']}), "
        f"{form} prompt, {len(contexts)} CSQA dev questions, up to 128 new tokens, {args.threads} threads, "
        f"{args.rounds} ABBA rounds, load average at write {[round(x, 2) for x in result['load_average']]}."), "",
        "| batch | requests/s (median) | speedup |", "| --- | --- | --- |",
        f"| 1 (each request alone, prompt lookup) | {med[1]:.2f} | 1.0x |",
        f"| {args.batch} | {med[args.batch]:.2f} | {result['speedup']:.2f}x |", "",
        f"- same text as batch 1: {same_text}/{len(contexts)}; same parsed answer: {same_answer}/{len(contexts)}",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
