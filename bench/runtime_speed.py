"""Edge runtime speed, side by side in one run: PyTorch eager, optimum's ORTModelForCausalLM, this runtime (fp32 and
quantised), at batch 1 and 8; self-consistency N=8 with a shared prefill against N separate runs; peak memory.

Method (as in the project's speed anchors): the same input ids for every backend (CSQA dev questions in the student
format, no BOS; batch 1 = the first question, batch 8 = the first eight, left- or right-padded as each backend
needs), 64 new tokens, greedy, end-of-sequence blocked, intra-op threads 2, inter-op 1. Every measurement runs in
a fresh process: load, one warm-up, then the timed call; peak memory is that process's peak RSS. Prefill is timed
as its own forward pass; decode tok/s = 63 steps x batch / (generate time - prefill time). Rounds alternate the
backends; the median is reported, with ratios to PyTorch eager fp32 batch 1 of the same run. "same tokens" compares
the 64 greedy ids at batch 1 with PyTorch's.

The runtime rows of that table decode plain greedy (`prompt_lookup=0`), like for like with PyTorch and optimum;
prompt lookup has its own section.

Prompt lookup (`--only prompt-lookup` runs this section alone): speculative decoding with no draft model (the next
k tokens proposed from an n-gram match in the prompt and the text so far, verified in one forward pass) against
plain greedy, on the same real inference: CSQA dev questions one at a time (batch 1), up to 128 new tokens, the
student's stop strings and end-of-sequence as `scotd infer` decodes. The prompt is the student format for a
distilled student; an undistilled model (the embedded one) answers that with a stop string at once, so it gets the
teacher's few-shot CoT prompt instead (the `scotd_csqa_fewshot` task), after which it writes a rationale
(`--lookup-format`). Per export and k: decode tok/s (the time after the prefill, timed inside the same generate
loop) and end-to-end tok/s, each with its speedup over plain greedy (`prompt_lookup=0`); whether every prompt's tokens are identical to
plain greedy's (they must be); and the acceptance rate (accepted / drafted tokens, from
`Generation.drafted/accepted`). Each round is one fresh process per export, in which each prompt runs under every
setting in a rotating order, so load from other processes hits them alike. Written to
`<out>_prompt_lookup.{json,md}`, apart from the table above, so either part can be rerun alone.

    python bench/runtime_speed.py --fp32 DIR --quantized DIR [--rounds 3] [--out bench/results/runtime_speed]
    python bench/runtime_speed.py --only prompt-lookup [--fp32 DIR --quantized DIR] [--lookup-k 2,4,8]

The ONNX directories come from `scotd export embedded --out DIR [--quantize int4]`; without --fp32 and --quantized,
the embedded fp32 and int4 exports the tests use are reused (built if missing, bench/bench_support.py). optimum's
export is made (once, into --optimum-dir) from the same student.
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

import bench_support

NEW_TOKENS = 64
THREADS = 2
#: prompt lookup at batch 1 must be at least this much faster than plain greedy (issue 20)
LOOKUP_TARGET = 1.3


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
def _prompts(n: int, form: str = "student") -> list[str]:
    """The first n CSQA dev questions in the student format, or (`fewshot`) in the teacher's few-shot CoT prompt
    that the `scotd_csqa_fewshot` task gives an undistilled model."""
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    examples = load_examples("csqa", "validation", limit=n)
    if form == "fewshot":
        from scotd_harness.prompts import load_prompt

        prompt = load_prompt("csqa")
        return [prompt.render(e.question, e.choices) for e in examples]
    return [formats.student_input(e.question, e.choices) for e in examples]


def _lookup_format(export: str, requested: str) -> str:
    """`auto`: the student format for a distilled student (its scotd.json has a `student` section: it was trained
    to write a rationale there), else the few-shot prompt: an undistilled model (the embedded one) answers the bare
    student format with a stop string at once, 0 tokens, leaving nothing to speculate on."""
    if requested != "auto":
        return requested
    meta = json.loads((Path(export) / "scotd.json").read_text())
    return "student" if meta.get("student") else "fewshot"


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
    greedy = GenerationConfig(max_new_tokens=NEW_TOKENS, stop=(), ignore_eos=True, prompt_lookup=0)
    if mode == "greedy":
        student.generate(prompts, greedy)
        t = time.perf_counter()
        student.generate(prompts, GenerationConfig(max_new_tokens=1, stop=(), ignore_eos=True, prompt_lookup=0))
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


def _timed_generate(student, prompt: str, config) -> tuple[object, float, float]:
    """`OnnxStudent.generate` for one prompt, with the prefill and the decode timed apart: the same loop
    (`decode_to_end`: admit the sequence into a batch, which prefills it and takes its first token, then step to
    the end), timed between its two halves, so decode speed needs no second prefill run to subtract."""
    from scotd_harness.export.runtime import DecodeBatch, Sequence, lookahead

    seq = Sequence(student, student.encode(prompt), config, chain=0)
    t = time.perf_counter()
    batch = DecodeBatch(student, capacity=1, context=len(seq.prompt) + config.max_new_tokens + lookahead(config))
    batch.admit([[seq]])
    t_prefill = time.perf_counter()
    while batch.seqs:
        batch.step()
    t_end = time.perf_counter()
    return seq.generation(), t_prefill - t, t_end - t_prefill


def _prompt_lookup(student, n: int, new_tokens: int, ks: list[int], form: str) -> dict:
    """Batch 1 on the first n CSQA dev questions, real inference settings (stop strings, end-of-sequence), under
    plain greedy (k = 0) and prompt lookup with each k. Per setting and prompt: prefill and decode seconds, token
    ids, drafted and accepted. Decode is what prompt lookup changes; with a few-shot prompt of 800 tokens the
    prefill (the same under every setting) is most of a short answer's time."""
    from scotd_harness.export.runtime import GenerationConfig

    prompts = _prompts(n, form)
    settings = [0, *ks]
    configs = {k: GenerationConfig(max_new_tokens=new_tokens, prompt_lookup=k) for k in settings}
    for config in configs.values():  # warm-up: every path once (the verify pass has its own shapes)
        student.generate(prompts[:1], config)
    runs = {str(k): {"prefill_s": [], "decode_s": [], "tokens": [], "drafted": [], "accepted": []} for k in settings}
    for i, prompt in enumerate(prompts):
        for k in settings[i % len(settings):] + settings[:i % len(settings)]:
            gen, prefill_s, decode_s = _timed_generate(student, prompt, configs[k])
            run = runs[str(k)]
            run["prefill_s"].append(prefill_s)
            run["decode_s"].append(decode_s)
            run["tokens"].append(gen.token_ids)
            run["drafted"].append(gen.drafted)
            run["accepted"].append(gen.accepted)
    return {"format": form, "prompt_tokens": [len(student.encode(p)) for p in prompts], "runs": runs}


def _accuracy(student, n: int) -> dict:
    """CSQA dev accuracy of one export: greedy CoT in the student format (max 128 tokens) and direct answer by
    log-likelihood of " So the answer is: (x)" (the scotd_csqa_direct task), on the first n questions."""
    from scotd_harness.export.runtime import GenerationConfig

    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

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
    if spec.get("mode") == "prompt-lookup":
        from scotd_harness.export.runtime import OnnxStudent

        result = _prompt_lookup(OnnxStudent(path, threads=THREADS), batch, spec["new_tokens"], spec["ks"],
                                spec["format"])
    elif kind in ("torch", "optimum"):
        result = _torch_like(kind, path, batch)
    else:
        result = _runtime(path, batch, spec.get("mode", "greedy"))
    result["peak_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------------------ driver side
def _spawn(spec: dict, timeout: float = 1800) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
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
    ap.add_argument("--only", choices=["prompt-lookup"], default=None, help="run only this section")
    ap.add_argument("--student", default="embedded")
    ap.add_argument("--fp32", required=False, help="fp32 export directory (scotd export)")
    ap.add_argument("--quantized", action="append", default=[], help="quantised export directory (repeatable)")
    ap.add_argument("--optimum-dir", default=None,
                    help="where optimum's own export is kept (made if missing; default: in the user cache)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--skip-optimum", action="store_true")
    ap.add_argument("--accuracy", type=int, default=100, help="CSQA dev questions for the accuracy check (0: skip)")
    ap.add_argument("--lookup-prompts", type=int, default=24, help="prompt lookup: CSQA dev questions (0: skip)")
    ap.add_argument("--lookup-k", default="2,4,8", help="prompt lookup: tokens proposed per step, comma-separated")
    ap.add_argument("--lookup-tokens", type=int, default=128,
                    help="prompt lookup: new tokens at most (real inference stops earlier, at a stop string or eos)")
    ap.add_argument("--lookup-rounds", type=int, default=1, help="prompt lookup: fresh processes per export")
    ap.add_argument("--lookup-format", choices=["auto", "student", "fewshot"], default="auto",
                    help="prompt lookup: the prompt; auto = the student format for a distilled student, else the "
                         "teacher's few-shot CoT prompt (an undistilled model writes nothing after the bare format)")
    ap.add_argument("--out", default="bench/results/runtime_speed")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    if not args.fp32 and not args.quantized:
        args.fp32, args.quantized = str(bench_support.embedded_fp32()), [str(bench_support.embedded_int4())]
    runtimes = []
    for path in [args.fp32, *args.quantized]:
        if path:
            meta = json.loads((Path(path) / "scotd.json").read_text())
            q = meta.get("quantization")
            weights = f"{q['method']} int{q['bits']}{_int4_mix(q)}" if q else meta.get("dtype", "fp32")
            runtimes.append((f"scotd runtime ({meta['graph']['attention']})", "runtime", path, weights))
    if args.only != "prompt-lookup":
        _main_table(args, runtimes)
    if args.lookup_prompts:
        raw: dict = {}
        spec = {"batch": args.lookup_prompts, "mode": "prompt-lookup", "new_tokens": args.lookup_tokens,
                "ks": [int(k) for k in args.lookup_k.split(",")]}
        for r in range(args.lookup_rounds):
            for name, kind, path, weights in runtimes:
                form = _lookup_format(path, args.lookup_format)
                res = _spawn({**spec, "kind": kind, "path": path, "format": form}, timeout=4 * 3600)
                raw.setdefault(f"{name}|{weights}", []).append(res)
                print(f"round {r + 1} prompt lookup {name} {weights}: done", file=sys.stderr)
                md = _write_lookup(args, runtimes, raw)
        print(md)


def _main_table(args, runtimes) -> None:
    """The side-by-side table: PyTorch eager, optimum, this runtime; batch 1 and 8; self-consistency; accuracy."""
    from scotd_harness.embedded import resolve_model

    student = resolve_model(args.student)
    backends = [("PyTorch eager", "torch", student, "fp32")]
    if not args.skip_optimum:
        from scotd_harness.datasets.base import cache_dir

        opt_dir = Path(args.optimum_dir or cache_dir() / "bench" / "optimum-export" / Path(student).name)
        backends.append(("optimum ORTModelForCausalLM", "optimum", str(_ensure_optimum(student, opt_dir)), "fp32"))
    backends += runtimes
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


def _lookup_rows(raw: dict, runtimes) -> list[dict]:
    """One row per export and setting (k = 0 is plain greedy); times are the median over rounds of the summed
    per-prompt seconds, tokens those of the first round (identical across rounds when decoding is deterministic)."""
    rows = []
    for name, _, _, weights in runtimes:
        rounds = raw.get(f"{name}|{weights}")
        if not rounds:
            continue
        plain = rounds[0]["runs"]["0"]
        n_prompts = len(plain["tokens"])
        base = base_decode = None
        for k, first in rounds[0]["runs"].items():
            tokens = sum(len(t) for t in first["tokens"])
            decode_tokens = sum(max(len(t) - 1, 0) for t in first["tokens"])
            decode_s = statistics.median(sum(r["runs"][k]["decode_s"]) for r in rounds)
            prefill = statistics.median(sum(r["runs"][k]["prefill_s"]) for r in rounds)
            seconds = prefill + decode_s
            tok_s = tokens / seconds
            decode_tok_s = decode_tokens / decode_s
            if not tokens:
                raise SystemExit(f"{name} {weights}: no tokens generated in the {rounds[0]['format']} format (the "
                                 "model stops at once); use --lookup-format fewshot or a distilled student")
            identical = all(r["runs"][k]["tokens"] == r["runs"]["0"]["tokens"] == plain["tokens"] for r in rounds)
            drafted = sum(sum(r["runs"][k]["drafted"]) for r in rounds)
            accepted = sum(sum(r["runs"][k]["accepted"]) for r in rounds)
            if k == "0":
                base, base_decode = tok_s, decode_tok_s
            rows.append({
                "backend": name, "weights": weights, "k": int(k), "prompts": n_prompts, "rounds": len(rounds),
                "format": rounds[0]["format"],
                "prompt_tokens_mean": round(statistics.fmean(rounds[0]["prompt_tokens"]), 1),
                "generated_tokens": tokens, "mean_tokens": round(tokens / n_prompts, 1),
                "seconds": round(seconds, 2), "prefill_s": round(prefill, 2), "decode_s": round(decode_s, 2),
                "tok_s": round(tok_s, 2), "speedup": round(tok_s / base, 2),
                "decode_tok_s": round(decode_tok_s, 2), "decode_speedup": round(decode_tok_s / base_decode, 2),
                "identical_tokens": identical, "drafted": drafted, "accepted": accepted,
                "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
                "prompts_drafted": sum(d > 0 for d in rounds[0]["runs"][k]["drafted"]),
            })
    return rows


def _write_lookup(args, runtimes, raw) -> str:
    rows = _lookup_rows(raw, runtimes)
    verdicts = []
    for name, _, _, weights in runtimes:
        mine = [r for r in rows if r["weights"] == weights and r["backend"] == name and r["k"]]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["decode_speedup"])
        ok = best["decode_speedup"] >= LOOKUP_TARGET and all(r["identical_tokens"] for r in mine)
        rate = "n/a" if best["acceptance_rate"] is None else f"{best['acceptance_rate']:.0%}"
        text = (f"{weights}: best k = {best['k']}, {best['decode_speedup']}x plain greedy's decode tok/s "
                f"({best['speedup']}x end to end, prefill included), acceptance {rate} of {best['drafted']} drafted "
                f"tokens; target >= {LOOKUP_TARGET}x: {'pass' if ok else 'FAIL'}")
        if not all(r["identical_tokens"] for r in mine):
            text += "; tokens NOT identical to plain greedy for k = " + ", ".join(
                str(r["k"]) for r in mine if not r["identical_tokens"])
        elif best["decode_speedup"] < LOOKUP_TARGET:
            text += (f" (measures lower: {best['accepted']} of {best['drafted']} proposed tokens accepted, over "
                     f"{best['mean_tokens']} tokens per answer on average)")
        verdicts.append({"weights": weights, "best_k": best["k"], "decode_speedup": best["decode_speedup"],
                         "speedup": best["speedup"], "passed": ok,
                         "text": text})
    result = {
        "load_average_at_write": os.getloadavg(),
        "command": ["python", "bench/runtime_speed.py", *bench_support.public_argv(sys.argv[1:])],
        "method": {"batch": 1, "max_new_tokens": args.lookup_tokens, "stop": "student stop strings and eos",
                   "greedy": True, "threads": THREADS, "rounds": args.lookup_rounds,
                   "prompts": f"CSQA dev, {args.lookup_format} format", "ks": args.lookup_k,
                   "target": LOOKUP_TARGET},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "rows": rows,
        "verdicts": verdicts,
        "raw": raw,
    }
    out = Path(f"{args.out}_prompt_lookup")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    head = ["backend", "weights", "prompt", "prompt lookup k", "prompts", "tokens (mean)", "decode tok/s",
            "speedup", "end-to-end tok/s", "speedup (end to end)", "identical tokens", "drafted", "accepted",
            "acceptance rate"]
    lines = ["# Prompt-lookup decoding at batch 1", "",
             (f"CSQA dev questions, one at a time, up to {args.lookup_tokens} new tokens, stop strings and "
              f"end-of-sequence as in real inference; prompt: `student` = the student format (a distilled student), "
              f"`fewshot` = the teacher's few-shot CoT prompt (scotd_csqa_fewshot; an undistilled model writes "
              f"nothing after the bare student format); {THREADS} threads; load average at write "
              f"{[round(x, 2) for x in result['load_average_at_write']]}; "
              f"`{' '.join(result['command'])}`. k = 0 is plain greedy. Decode tok/s = tokens after each answer's "
              "first / time after its prefill (the prefill pass gives the first token), timed inside one generate "
              "call; end to end counts every token over prefill + decode."), "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        rate = "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.1%}"
        lines.append("| " + " | ".join([
            r["backend"], r["weights"], f"{r['format']} ({r['prompt_tokens_mean']:g} tokens)",
            "plain" if r["k"] == 0 else str(r["k"]), str(r["prompts"]),
            f"{r['generated_tokens']} ({r['mean_tokens']})", str(r["decode_tok_s"]), f"{r['decode_speedup']}x",
            str(r["tok_s"]), f"{r['speedup']}x",
            "reference" if r["k"] == 0 else ("yes" if r["identical_tokens"] else "NO"),
            str(r["drafted"]), str(r["accepted"]), rate]) + " |")
    lines += [""] + [f"- {v['text']}" for v in verdicts]
    md = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(md)
    return md


if __name__ == "__main__":
    main()
