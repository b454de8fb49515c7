"""Edge runtime speed, side by side in one run: PyTorch eager, optimum's ORTModelForCausalLM, this runtime (fp32 and
quantised), at batch 1 and 8; self-consistency N=8 with a shared prefill against N separate runs; peak memory.

Method (as in the project's speed anchors): the same input ids for every backend (CSQA dev questions in the student
format, no BOS; batch 1 = the first question, batch 8 = the first eight, left- or right-padded as each backend
needs), 64 new tokens, greedy, end-of-sequence blocked, intra-op threads 2, inter-op 1. Every measurement runs in
a fresh process: load, one warm-up, then the timed call; peak memory is that process's peak RSS. Prefill is timed
as its own forward pass; decode tok/s = 63 steps x batch / (generate time - prefill time). Rounds alternate the
backends; the median is reported, with ratios to PyTorch eager fp32 batch 1 of the same run. "same tokens" compares
the 64 greedy ids at batch 1 with PyTorch's.

    python bench/runtime_speed.py --fp32 DIR --quantized DIR [--rounds 3] [--out bench/results/runtime_speed]

The ONNX directories come from `scotd export embedded --out DIR [--quantize int4]`; optimum's export is made (once,
into --optimum-dir) from the same student.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW_TOKENS = 64
THREADS = 2


def _int4_mix(q: dict) -> str:
    """What tells int4 exports apart (zero points, 8-bit layers): each is its own row."""
    if q.get("bits") != 4 or q.get("symmetric") is None:
        return ""
    parts = ["sym" if q["symmetric"] else "asym"]
    if q.get("matmuls_8bit"):
        parts.append(f"{q['matmuls_8bit']} MatMuls 8-bit")
    elif q.get("lm_head_bits") == 8:
        parts.append("lm_head 8-bit")
    return f" ({', '.join(parts)})"


# ------------------------------------------------------------------------------------------------ worker side
def _prompts(n: int) -> list[str]:
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    return [formats.student_input(e.question, e.choices) for e in load_examples("csqa", "validation", limit=n)]


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _torch_like(kind: str, path: str, batch: int) -> dict:
    """PyTorch eager or optimum ORTModelForCausalLM: both driven by transformers' generate."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if kind == "torch":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    else:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        model = ORTModelForCausalLM.from_pretrained(path, session_options=so, use_io_binding=False)
    enc = tok(_prompts(batch), return_tensors="pt", padding=True, add_special_tokens=False)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos  # a trained student's generation config lists its end ids

    def prefill():
        with torch.no_grad():
            if kind == "torch":
                model(**enc, use_cache=True)
            else:
                model.generate(**enc, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=eos)

    def generate():
        with torch.no_grad():
            return model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                  pad_token_id=eos)

    generate()
    t = time.perf_counter()
    prefill()
    t_prefill = time.perf_counter() - t
    t = time.perf_counter()
    out = generate()
    t_total = time.perf_counter() - t
    return {"prefill_s": t_prefill, "total_s": t_total,
            "tokens": out[0, enc["input_ids"].shape[1]:].tolist() if batch == 1 else None}


def _runtime(path: str, batch: int, mode: str) -> dict:
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    student = OnnxStudent(path, threads=THREADS)
    prompts = _prompts(batch)
    greedy = GenerationConfig(max_new_tokens=NEW_TOKENS, stop=(), ignore_eos=True)
    if mode == "greedy":
        student.generate(prompts, greedy)
        t = time.perf_counter()
        student.generate(prompts, GenerationConfig(max_new_tokens=1, stop=(), ignore_eos=True))
        t_prefill = time.perf_counter() - t
        t = time.perf_counter()
        gens = student.generate(prompts, greedy)
        t_total = time.perf_counter() - t
        return {"prefill_s": t_prefill, "total_s": t_total, "tokens": gens[0].token_ids if batch == 1 else None}
    if mode == "accuracy":
        return _accuracy(student, int(os.environ.get("SCOTD_BENCH_ACC_N", "100")))
    # self-consistency: N=8 sampled chains of one question, shared prefill vs N separate runs
    sampled = GenerationConfig(max_new_tokens=NEW_TOKENS, stop=(), ignore_eos=True, temperature=0.7, seed=0)
    student.sample_n(prompts[:1], 8, sampled)
    t = time.perf_counter()
    student.sample_n(prompts[:1], 8, sampled)
    t_shared = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(8):
        student.generate(prompts[:1], GenerationConfig(**{**sampled.__dict__, "seed": k}))
    t_separate = time.perf_counter() - t
    return {"shared_s": t_shared, "separate_s": t_separate}


def _accuracy(student, n: int) -> dict:
    """CSQA dev accuracy of one export: greedy CoT in the student format (max 128 tokens) and direct answer by
    log-likelihood of " So the answer is: (x)" (the scotd_csqa_direct task), on the first n questions."""
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    from scotd_harness.export.runtime import GenerationConfig

    examples = load_examples("csqa", "validation", limit=n)
    cot = []
    for i in range(0, n, 8):
        chunk = examples[i:i + 8]
        cot += [a.answer for a in student.answer_many([(e.question, e.choices) for e in chunk],
                                                      config=GenerationConfig(max_new_tokens=128))]
    direct = []
    for e in examples:
        ctx = student.encode(formats.student_input(e.question, e.choices))
        scores = [student.loglikelihood(ctx, student.encode(formats.direct_target(label))[0:])[0]
                  for label, _ in e.choices]
        direct.append(e.choices[max(range(len(scores)), key=scores.__getitem__)][0])
    gold = [e.answer for e in examples]
    return {"n": n,
            "cot_acc": sum(p == g for p, g in zip(cot, gold)) / n,
            "cot_invalid": sum(p == formats.INVALID for p in cot) / n,
            "direct_acc": sum(p == g for p, g in zip(direct, gold)) / n,
            "cot": cot, "direct": direct}


def worker(spec: dict) -> None:
    kind, path, batch = spec["kind"], spec["path"], spec["batch"]
    if kind in ("torch", "optimum"):
        result = _torch_like(kind, path, batch)
    else:
        result = _runtime(path, batch, spec.get("mode", "greedy"))
    result["peak_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------------------ driver side
def _spawn(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {spec} failed: {proc.stderr[-3000:]}")


def _ensure_optimum(student: str, out: Path) -> Path:
    if not (out / "model.onnx").is_file():
        from optimum.exporters.onnx import main_export

        main_export(student, output=str(out), task="text-generation-with-past", do_validation=False)
    return out


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.glob("model.onnx*")) / 2**20, 1) if path.is_dir() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--student", default="embedded")
    ap.add_argument("--fp32", required=False, help="fp32 export directory (scotd export)")
    ap.add_argument("--quantized", action="append", default=[], help="quantised export directory (repeatable)")
    ap.add_argument("--optimum-dir", default=None,
                    help="where optimum's own export is kept (made if missing; default: in the user cache)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--skip-optimum", action="store_true")
    ap.add_argument("--accuracy", type=int, default=100, help="CSQA dev questions for the accuracy check (0: skip)")
    ap.add_argument("--out", default="bench/results/runtime_speed")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    from scotd_harness.embedded import resolve_model

    student = resolve_model(args.student)
    backends = [("PyTorch eager", "torch", student, "fp32")]
    if not args.skip_optimum:
        from scotd_harness.datasets.base import cache_dir

        opt_dir = Path(args.optimum_dir or cache_dir() / "bench" / "optimum-export" / Path(student).name)
        backends.append(("optimum ORTModelForCausalLM", "optimum", str(_ensure_optimum(student, opt_dir)), "fp32"))
    for path in [args.fp32, *args.quantized]:
        if path:
            meta = json.loads((Path(path) / "scotd.json").read_text())
            q = meta.get("quantization")
            weights = f"{q['method']} int{q['bits']}{_int4_mix(q)}" if q else meta.get("dtype", "fp32")
            backends.append((f"scotd runtime ({meta['graph']['attention']})", "runtime", path, weights))
    batches = [int(b) for b in args.batches.split(",")]
    raw: dict = {}
    # order: every backend at batch 1, then self-consistency, then larger batches, then accuracy; the tables are
    # rewritten after every measurement, so an interrupted run still leaves what it measured
    steps = [(b, "greedy") for b in batches[:1]] + [(1, "sc")] + [(b, "greedy") for b in batches[1:]]
    for r in range(args.rounds):
        for batch, mode in steps:
            for name, kind, path, weights in backends:
                if mode == "sc" and kind != "runtime":
                    continue
                res = _spawn({"kind": kind, "path": path, "batch": batch, "mode": mode})
                key = f"{name}|{weights}|{'sc' if mode == 'sc' else batch}"
                raw.setdefault(key, []).append(res)
                print(f"round {r + 1} {name} {weights} {mode} batch {batch}: done", file=sys.stderr)
                _write(args, backends, batches, raw)
    if args.accuracy:
        os.environ["SCOTD_BENCH_ACC_N"] = str(args.accuracy)
        for name, kind, path, weights in backends:
            if kind == "runtime":
                raw[f"{name}|{weights}|accuracy"] = [_spawn({"kind": kind, "path": path, "batch": 1, "mode": "accuracy"})]
                _write(args, backends, batches, raw)
    print(_write(args, backends, batches, raw))


def _write(args, backends, batches, raw) -> str:
    rows = []
    ref = raw.get("PyTorch eager|fp32|1")
    ref_tokens = ref[0]["tokens"] if ref else None
    for name, kind, path, weights in backends:
        row = {"backend": name, "weights": weights, "mb": _size_mb(Path(path)) or None}
        for batch in batches:
            runs = raw.get(f"{name}|{weights}|{batch}")
            if not runs:
                continue
            tps = statistics.median(
                (NEW_TOKENS - 1) * batch / max(r["total_s"] - r["prefill_s"], 1e-9) for r in runs
            )
            row[f"b{batch}_tok_s"] = round(tps, 1)
            row[f"b{batch}_prefill_ms"] = round(1000 * statistics.median(r["prefill_s"] for r in runs), 1)
            row[f"b{batch}_peak_mb"] = round(max(r["peak_mb"] for r in runs), 1)
        if raw.get(f"{name}|{weights}|1") and ref_tokens is not None:
            row["same_tokens"] = raw[f"{name}|{weights}|1"][0]["tokens"] == ref_tokens
        sc = raw.get(f"{name}|{weights}|sc")
        if sc:
            row["sc8_shared_s"] = round(statistics.median(r["shared_s"] for r in sc), 2)
            row["sc8_separate_s"] = round(statistics.median(r["separate_s"] for r in sc), 2)
            row["sc8_speedup"] = round(row["sc8_separate_s"] / row["sc8_shared_s"], 2)
        acc = raw.get(f"{name}|{weights}|accuracy")
        if acc:
            row["csqa_dev_n"] = acc[0]["n"]
            row["cot_acc"] = round(acc[0]["cot_acc"], 4)
            row["cot_invalid"] = round(acc[0]["cot_invalid"], 4)
            row["direct_acc"] = round(acc[0]["direct_acc"], 4)
        rows.append(row)
    base = rows[0].get("b1_tok_s")
    for row in rows:
        for batch in batches:
            if base and f"b{batch}_tok_s" in row:
                row[f"b{batch}_vs_eager_b1"] = round(row[f"b{batch}_tok_s"] / base, 2)
    result = {
        "load_average_at_write": os.getloadavg(),
        "method": {"new_tokens": NEW_TOKENS, "threads": THREADS, "rounds": args.rounds,
                   "prompts": "CSQA dev, student format", "greedy": True, "eos_blocked": True,
                   "student": args.student},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "rows": rows,
        "raw": raw,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = _markdown(rows, batches)
    out.with_suffix(".md").write_text(md)
    return md


def _markdown(rows: list[dict], batches: list[int]) -> str:
    head = ["backend", "weights", "MB"]
    for b in batches:
        head += [f"batch {b} tok/s", "vs eager b1", f"prefill ms (b{b})", f"peak MB (b{b})"]
    head += ["same tokens", "SC N=8 shared / separate s", "SC speedup", "CSQA dev CoT acc (invalid)", "direct acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["backend"], r["weights"], str(r["mb"] or "")]
        for b in batches:
            if f"b{b}_tok_s" in r:
                cells += [str(r[f"b{b}_tok_s"]), f"{r.get(f'b{b}_vs_eager_b1', '?')}x", str(r[f"b{b}_prefill_ms"]),
                          str(r[f"b{b}_peak_mb"])]
            else:
                cells += ["not measured", "", "", ""]
        cells.append("reference" if r is rows[0] else {True: "yes", False: "no"}.get(r.get("same_tokens"), ""))
        cells.append(f"{r['sc8_shared_s']} / {r['sc8_separate_s']}" if "sc8_shared_s" in r else "")
        cells.append(f"{r['sc8_speedup']}x" if "sc8_speedup" in r else "")
        cells.append(f"{r['cot_acc']:.3f} ({r['cot_invalid']:.2f})" if "cot_acc" in r else "")
        cells.append(f"{r['direct_acc']:.3f} (n={r['csqa_dev_n']})" if "direct_acc" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
