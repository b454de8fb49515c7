"""Teacher sampling throughput, baselines side by side in one run.

Part `hf`: the embedded model as teacher on CSQA train questions with the full few-shot teacher prompt, N chains
per question at temperature 1.0:

- `shared prefill`: the `hf` backend as shipped (each prompt prefilled once, its KV cache repeated to N rows);
- `per-sample prefill`: the same backend and decode loop with `shared_prefill=False`, so every chain prefills
  its own copy of the prompt (what naive per-sample generation costs);
- a check that `generate(num_return_sequences=N)` prefills N copies too (prompt tokens through the first forward).

Part `openai`: the `openai` backend against `scotd serve` on an ONNX export, compared with that server's own
ceiling: the same export's runtime called in-process (`OnnxStudent.sample_n`, what the server runs per request),
with no HTTP in between.

Part `teachers`: the three local ways to sample from one teacher model, in one run, on the same questions with the
same settings (N, temperature 1.0, max new tokens, seed, rows decoded together, threads): the `onnx:` backend on
the embedded model's fp32 export, `scotd serve` on that export with the `openai` backend as its client, and the
`hf` backend on the embedded model itself. It reports chains/s of each and the ratios `onnx:` / `hf` (the target
is >= 5x) and `onnx:` / serve + openai (>= 1x).

    python bench/sample_throughput.py --part hf                       # N=8, 32 questions
    python bench/sample_throughput.py --part openai --onnx-dir DIR    # DIR from `scotd export embedded --out DIR`
    python bench/sample_throughput.py --part teachers -n 16 --teacher-questions 16 --max-new-tokens 64

Prints a table and writes bench/results/sample_throughput.json (and .md). Figures on a shared CPU are noisy; the
load average at the start is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load_prompts(questions: int, num_exemplars: int | None) -> list[str]:
    from scotd_harness.datasets import load_examples
    from scotd_harness.prompts import PromptSet, load_prompt

    prompt = load_prompt("csqa")
    if num_exemplars:
        prompt = PromptSet(prompt.task, prompt.prompt_version, prompt.exemplars[:num_exemplars])
    return [prompt.render(ex.question, ex.choices) for ex in load_examples("csqa", "train", limit=questions)]


def measure(label: str, fn, n_prompts: int, n: int) -> dict:
    start = time.perf_counter()
    results = fn()
    seconds = time.perf_counter() - start
    chains = sum(len(r) for r in results)
    assert chains == n_prompts * n, (chains, n_prompts, n)
    tokens = sum(c.num_tokens or 0 for r in results for c in r)
    row = {"mode": label, "chains": chains, "seconds": round(seconds, 2), "chains_per_s": round(chains / seconds, 3),
           "generated_tokens": tokens, "generated_tokens_per_s": round(tokens / seconds, 2)}
    print(f"  {label:<34} {chains:>5} chains  {seconds:8.1f} s  {row['chains_per_s']:8.3f} chains/s  "
          f"{row['generated_tokens_per_s']:8.1f} tok/s", flush=True)
    return row


def part_hf(args) -> dict:
    from scotd_harness import formats
    from scotd_harness.teacher.hf import HFTeacher

    prompts = load_prompts(args.questions, args.num_exemplars)
    teacher = HFTeacher("embedded", device=args.device, seed=args.seed, max_batch_rows=args.batch_rows)
    prompt_tokens = [len(teacher.tokenizer(p)["input_ids"]) for p in prompts]
    print(f"hf: {len(prompts)} questions x N={args.n}, prompt tokens mean {sum(prompt_tokens) / len(prompts):.0f}, "
          f"max_new_tokens {args.max_new_tokens}, device {teacher.device}", flush=True)
    rows = []

    def run(shared: bool, subset: list[str]):
        teacher.shared_prefill = shared
        teacher.prefill_tokens = teacher.decode_steps = 0
        return teacher.sample(subset, args.n, 1.0, args.max_new_tokens, formats.STOP_STRINGS)

    # both modes decode the same rows per batch (--batch-rows); they differ only in how the prompts are prefilled
    naive_prompts = prompts[: args.naive_questions] if args.naive_questions else prompts
    shared = measure("shared prefill (hf backend)", lambda: run(True, prompts), len(prompts), args.n)
    shared["prefill_tokens"] = teacher.prefill_tokens
    shared["questions"] = len(prompts)
    rows.append(shared)
    naive = measure("per-sample prefill (naive)", lambda: run(False, naive_prompts), len(naive_prompts), args.n)
    naive["prefill_tokens"] = teacher.prefill_tokens
    naive["questions"] = len(naive_prompts)
    rows.append(naive)
    teacher.shared_prefill = True
    ratio = shared["chains_per_s"] / naive["chains_per_s"]
    print(f"  shared / per-sample: {ratio:.2f}x chains/s; prompt tokens prefilled {shared['prefill_tokens']} "
          f"vs {naive['prefill_tokens']}", flush=True)
    check = generate_prefill_check(teacher, prompts[0], args.n)
    print(f"  generate(num_return_sequences={args.n}) prefills {check['prefill_tokens_generate']} prompt tokens for a "
          f"{check['prompt_tokens']}-token prompt (shared prefill: {check['prompt_tokens']})", flush=True)
    return {"questions": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens,
            "num_exemplars": args.num_exemplars or "all",
            "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompts), 1),
            "device": str(teacher.device), "rows": rows, "ratio_chains_per_s": round(ratio, 2),
            "generate_check": check}


def generate_prefill_check(teacher, prompt: str, n: int) -> dict:
    """Count the prompt tokens that go through `generate`'s first forward pass with num_return_sequences=n.
    The question alone (no exemplars) keeps the check cheap; what matters is the multiple."""
    import torch

    text = prompt[prompt.rfind("Q: "):]
    enc = teacher.tokenizer(text, return_tensors="pt").to(teacher.device)
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen.append(int(ids.numel()))

    handle = teacher.lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            teacher.lm.generate(**enc, do_sample=True, num_return_sequences=n, max_new_tokens=2,
                                pad_token_id=teacher.tokenizer.pad_token_id)
    finally:
        handle.remove()
    return {"prompt_tokens": int(enc["input_ids"].shape[1]), "prefill_tokens_generate": seen[0] if seen else None}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_openai(args) -> dict:
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    from scotd_harness import formats
    from scotd_harness.teacher import Completion
    from scotd_harness.teacher.openai_backend import OpenAITeacher

    if not args.onnx_dir:  # the embedded model's fp32 export the tests use (built once per machine if missing)
        from bench_support import embedded_fp32

        args.onnx_dir = str(embedded_fp32())
    prompts = load_prompts(args.openai_questions, args.num_exemplars)
    print(f"openai: {len(prompts)} questions x N={args.n}, max_new_tokens {args.max_new_tokens}, "
          f"server threads {args.threads}", flush=True)
    rows = []
    # the server's own ceiling: its runtime in-process, one request (prompt) at a time as the server runs them
    student = OnnxStudent(args.onnx_dir, threads=args.threads)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, stop=formats.STOP_STRINGS,
                              seed=args.seed, logprobs=0)

    def direct():
        out = []
        for p in prompts:
            (group,) = student.sample_n([student.encode(p)], args.n, config)
            out.append([Completion(g.text, g.logprob, len(g.token_ids), g.finish_reason) for g in group])
        return out

    port = _free_port()
    cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "serve", args.onnx_dir, "--port",
           str(port), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        teacher = OpenAITeacher("student", api_base=url + "/v1", concurrency=args.concurrency, seed=args.seed)
        label = f"openai backend over HTTP (c={args.concurrency})"

        def http():
            return teacher.sample(prompts, args.n, 1.0, args.max_new_tokens, formats.STOP_STRINGS)

        # alternate the two (same seed, so the same chains) so that load from other processes hits both alike
        for r in range(args.repeats):
            rows.append(measure(f"server runtime in-process #{r + 1}", direct, len(prompts), args.n))
            rows.append(measure(f"{label} #{r + 1}", http, len(prompts), args.n))
            rows[-1]["retries"] = teacher.retries
        teacher.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    best_direct = max(r["chains_per_s"] for r in rows[0::2])
    best_http = max(r["chains_per_s"] for r in rows[1::2])
    ratio = best_http / best_direct
    print(f"  backend / server ceiling (best of {args.repeats} each): {ratio:.2f}x chains/s", flush=True)
    return {"questions": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens,
            "onnx_dir": Path(args.onnx_dir).name, "threads": args.threads, "concurrency": args.concurrency,
            "repeats": args.repeats, "rows": rows, "ratio_backend_over_server": round(ratio, 2)}


def _start_serve(onnx_dir, threads: int, max_batch: int, max_context: int):
    """`scotd serve` as a subprocess on a free loopback port; returns (process, base URL) once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "serve", str(onnx_dir), "--port",
           str(port), "--threads", str(threads), "--max-batch", str(max_batch), "--max-context", str(max_context),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"scotd serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("scotd serve did not become ready in 4 minutes")


def part_teachers(args) -> dict:
    """onnx: vs hf vs scotd serve + openai: one teacher model, the same questions, N, tokens, seed, rows, threads."""
    from bench_support import describe, embedded_fp32

    from scotd_harness import formats
    from scotd_harness.teacher.onnx_backend import OnnxTeacher
    from scotd_harness.teacher.openai_backend import OpenAITeacher

    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else embedded_fp32()
    threads = args.threads_teachers or os.cpu_count() or 1
    prompts = load_prompts(args.teacher_questions, args.num_exemplars)
    keys = [f"q{i}" for i in range(len(prompts))]
    n, tokens, rows_cap = args.n, args.max_new_tokens, args.batch_rows
    stop = formats.STOP_STRINGS

    def load() -> list[float]:
        return [round(x, 2) for x in os.getloadavg()]

    print(f"teachers: {len(prompts)} questions x N={n}, max_new_tokens {tokens}, temperature 1.0, seed {args.seed}, "
          f"{rows_cap} rows decoded together, {threads} threads; export {describe(onnx_dir)}", flush=True)
    rows = []
    # 1. onnx: in-process on the torch-free runtime
    teacher = OnnxTeacher(str(onnx_dir), threads=threads, max_batch_rows=rows_cap, seed=args.seed)
    longest = max(len(teacher.student.encode(p)) for p in prompts)
    prompt_tokens = sum(len(teacher.student.encode(p)) for p in prompts)
    teacher.sample(prompts[:1], 1, 1.0, 2, stop, keys=["warm-up"])  # first-run allocations, not counted
    teacher.prefill_tokens = teacher.decode_steps = 0
    started_load = load()
    row = measure("onnx: backend (in-process runtime)",
                  lambda: teacher.sample(prompts, n, 1.0, tokens, stop, keys=keys), len(prompts), n)
    row.update(backend="onnx", prefill_tokens=teacher.prefill_tokens, decode_steps=teacher.decode_steps,
               load_average_before=started_load)
    rows.append(row)
    teacher.close()
    # 2. scotd serve on the same export, the openai backend as its client: enough requests in flight to fill the
    # server's batch (a request holds its n chains' rows), its KV buffers sized to the longest prompt + tokens
    concurrency = min(len(prompts), max(1, rows_cap // n) + 1)
    proc, url = _start_serve(onnx_dir, threads, rows_cap, longest + tokens + 8)
    try:
        client = OpenAITeacher("student", api_base=url + "/v1", concurrency=concurrency, seed=args.seed)
        client.sample(prompts[:1], 1, 1.0, 2, stop, keys=["warm-up"])
        started_load = load()
        row = measure(f"scotd serve + openai backend (c={concurrency})",
                      lambda: client.sample(prompts, n, 1.0, tokens, stop, keys=keys), len(prompts), n)
        row.update(backend="serve+openai", retries=client.retries, load_average_before=started_load)
        rows.append(row)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # 3. hf: the same model as transformers weights (the export's source), shared prefill, the same rows
    import torch

    from scotd_harness.teacher.hf import HFTeacher

    torch.set_num_threads(threads)
    hf_prompts = prompts[: args.hf_questions] if args.hf_questions else prompts
    hf = HFTeacher("embedded", device="cpu", seed=args.seed, max_batch_rows=rows_cap)
    hf.sample(prompts[:1], 1, 1.0, 2, stop, keys=["warm-up"])
    hf.prefill_tokens = hf.decode_steps = 0
    started_load = load()
    row = measure("hf backend (shared prefill)",
                  lambda: hf.sample(hf_prompts, n, 1.0, tokens, stop, keys=keys[: len(hf_prompts)]),
                  len(hf_prompts), n)
    row.update(backend="hf", questions=len(hf_prompts), prefill_tokens=hf.prefill_tokens,
               decode_steps=hf.decode_steps, load_average_before=started_load)
    rows.append(row)
    rate = {r["backend"]: r["chains_per_s"] for r in rows}
    over_hf = rate["onnx"] / rate["hf"]
    over_serve = rate["onnx"] / rate["serve+openai"]
    print(f"  onnx: / hf: {over_hf:.2f}x chains/s (target >= 5x: {'met' if over_hf >= 5 else 'NOT met'}); "
          f"onnx: / serve + openai: {over_serve:.2f}x (target >= 1x: {'met' if over_serve >= 1 else 'NOT met'})",
          flush=True)
    return {"questions": len(prompts), "n": n, "max_new_tokens": tokens, "temperature": 1.0, "seed": args.seed,
            "num_exemplars": args.num_exemplars or "all", "prompt_tokens_mean": round(prompt_tokens / len(prompts), 1),
            "rows_decoded_together": rows_cap, "threads": threads, "export": describe(onnx_dir),
            "hf_model": "embedded (the export's source, float32)", "rows": rows,
            "ratio_onnx_over_hf": round(over_hf, 2), "ratio_onnx_over_serve_openai": round(over_serve, 2),
            "targets": {"onnx_over_hf": 5.0, "onnx_over_serve_openai": 1.0}}


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# Teacher sampling throughput", "", (f"Machine: {result['machine']}; load average at start "
             f"{result['load_average']}."), ""]
    for part in ("hf", "openai", "teachers"):
        if part not in result:
            continue
        r = result[part]
        lines += [f"## {part}", "",
                  "| mode | questions | chains | seconds | chains/s | generated tok/s | prompt tokens prefilled |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in r["rows"]:
            lines.append(f"| {row['mode']} | {row.get('questions', r['questions'])} | {row['chains']} | "
                         f"{row['seconds']} | {row['chains_per_s']} | "
                         f"{row['generated_tokens_per_s']} | {row.get('prefill_tokens', '')} |")
        settings = {k: v for k, v in r.items() if k not in ("rows",)}
        lines += ["", "Settings and ratios: `" + json.dumps(settings) + "`", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["hf", "openai", "teachers", "all"], default="all")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--openai-questions", type=int, default=8)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--num-exemplars", type=int, default=None, help="first K exemplars only (default: all)")
    ap.add_argument("--batch-rows", type=int, default=64)
    ap.add_argument("--naive-questions", type=int, default=None,
                    help="run the per-sample baseline on the first K questions only (it costs N times the prefill); "
                         "chains/s stay comparable")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx-dir", default=None)
    ap.add_argument("--threads", type=int, default=1, help="server / runtime threads")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="openai part: alternating runs of each mode")
    ap.add_argument("--teacher-questions", type=int, default=16, help="teachers part: questions")
    ap.add_argument("--hf-questions", type=int, default=None,
                    help="teachers part: the hf backend on the first K questions only (it is the slow one); "
                         "default: all of them")
    ap.add_argument("--threads-teachers", type=int, default=None,
                    help="teachers part: threads of every backend (onnxruntime intra-op, torch); default: all CPUs")
    ap.add_argument("--out", type=Path, default=RESULTS / "sample_throughput.json")
    args = ap.parse_args()
    from bench_support import public_argv

    result = {"command": ["python", "bench/sample_throughput.py", *public_argv(sys.argv[1:])],
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                         f"{os.environ.get('OMP_NUM_THREADS', 'default')}",
              "load_average": [round(x, 2) for x in os.getloadavg()], "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                                time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.is_file():  # keep the other part's figures when one part is rerun
        previous = json.loads(args.out.read_text())
        result.update({k: previous[k] for k in ("hf", "openai", "teachers") if k in previous})
    if args.part in ("hf", "all"):
        result["hf"] = part_hf(args)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.part in ("openai", "all"):
        result["openai"] = part_openai(args)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.part in ("teachers", "all"):
        result["teachers"] = part_teachers(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
