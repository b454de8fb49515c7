"""What int4 costs in accuracy, and what each quantiser setting buys back, side by side in one run.

Every variant is quantised from the same fp32 export and decodes the same CSQA dev questions greedily in the student
format (the `scotd_csqa` task's prompt, max 128 new tokens) with this project's runtime. Reported per variant:
accuracy, the change against fp32, the share of answers identical to fp32's, unparsable outputs, model size, and
decode speed (64 new tokens, end-of-sequence blocked, batch 1 and 8, the first 8 dev prompts, after a warm-up).

Variant names: `{sym|asym}-a{0|4}-{emb|noemb}[-head8][-qkm|-vdown]`, i.e. symmetric or asymmetric 4-bit blocks of
32, fp32 (0) or int8 (4) activations in the MatMulNBits dot product, token embedding quantised (GatherBlockQuantized)
or kept fp32, with `-head8` the lm_head at 8 bits instead of 4, with `-qkm` the value and down projections that
llama.cpp's Q4_K_M mix favours at 8 bits (about half the layers), with `-vdown` those of every layer.

    SCOTD_DATA_DIR=DATA python bench/int4_accuracy.py --fp32 DIR [--limit N] [--variants sym-a4-emb,asym-a4-emb]

DIR is an fp32 export (`scotd export STUDENT --out DIR`); state which student it is: int4 error depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VARIANTS = "sym-a4-emb,asym-a4-emb,sym-a0-emb,asym-a4-noemb,asym-a0-noemb"
SPEED_TOKENS = 64


def parse_variant(name: str):
    from scotd_harness.export.quantize import Int4Options

    sensitive = {"": "none", "qkm": "q4_k_m", "vdown": "v-down"}
    try:
        sym, acc, emb, *extra = name.split("-")
        head = "head8" in extra
        rest = [x for x in extra if x != "head8"]
        if (sym not in ("sym", "asym") or acc not in ("a0", "a4") or emb not in ("emb", "noemb") or len(rest) > 1
                or (rest and rest[0] not in sensitive) or len(extra) != head + len(rest)):
            raise ValueError
    except ValueError:
        raise SystemExit(f"bad variant {name!r}: expected {{sym|asym}}-a{{0|4}}-{{emb|noemb}}[-head8][-qkm|-vdown]"
                         ) from None
    return Int4Options(symmetric=sym == "sym", accuracy_level=int(acc[1]), embedding=emb == "emb",
                       lm_head_bits=8 if head else 4, sensitive=sensitive[rest[0] if rest else ""])


def build_variant(fp32: Path, out: Path, name: str) -> dict:
    """A runnable export directory: fp32's files, its graph replaced by the int4 one."""
    from scotd_harness.export import quantize

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in fp32.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    started = time.time()
    record = quantize.quantize_int4(fp32 / "model.onnx", out / "model.onnx", parse_variant(name))
    meta = json.loads((out / "scotd.json").read_text())
    meta["quantization"] = record
    (out / "scotd.json").write_text(json.dumps(meta, indent=2))
    return {"quantize_s": round(time.time() - started, 1), "size_mb": quantize.model_size_mb(out / "model.onnx"),
            "quantization": record}


def decode_speed(student, prompts: list[str]) -> dict:
    from scotd_harness.export.runtime import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=SPEED_TOKENS, ignore_eos=True, stop=())
    out = {}
    for batch in (1, 8):
        rows = prompts[:batch]
        student.generate(rows, cfg)  # warm-up
        t0 = time.perf_counter()
        student.generate(rows, cfg)
        out[f"b{batch}_tok_s"] = round(SPEED_TOKENS * batch / (time.perf_counter() - t0), 1)
    return out


def reference_chains(fp32: Path, threads: int, n: int) -> list[tuple[list[int], int]]:
    """fp32's own greedy chains on the first n dev questions, as (prompt + chain ids, prompt length)."""
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    student = OnnxStudent(fp32, threads=threads)
    prompts = [formats.student_input(e.question, e.choices) for e in load_examples("csqa", "validation", limit=n)]
    gens = []
    for i in range(0, len(prompts), 8):
        gens += student.generate(prompts[i : i + 8], GenerationConfig(max_new_tokens=128))
    rows = []
    for prompt, gen in zip(prompts, gens):
        ids = student.encode(prompt)
        rows.append((ids + list(gen.token_ids), len(ids)))
    return rows


def fidelity(path: Path, threads: int, chains, ref_logits=None) -> tuple[dict, list]:
    """Teacher-forced on fp32's chains: how often the next-token argmax matches fp32's, and the mean KL(fp32 || q).

    Accuracy alone misleads on a student whose letter choice is a near-tie (a small shift flips every answer to
    another letter); this measures how far the quantised model's distributions move, token by token.
    """
    import numpy as np

    from scotd_harness.export.runtime import OnnxStudent

    student = OnnxStudent(path, threads=threads)
    logits = []
    for ids, start in chains:
        full = student.forward_logits([ids])[0]
        logits.append(np.asarray(full[start - 1 : len(ids) - 1], np.float64))
    if ref_logits is None:
        return {"top1_agree": 1.0, "mean_kl": 0.0, "tokens": sum(len(x) for x in logits)}, logits
    agree = total = 0
    kl_sum = 0.0
    for ref, new in zip(ref_logits, logits):
        lp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
        lq = new - np.logaddexp.reduce(new, axis=-1, keepdims=True)
        kl_sum += float((np.exp(lp) * (lp - lq)).sum())
        agree += int((ref.argmax(-1) == new.argmax(-1)).sum())
        total += len(ref)
    return {"top1_agree": agree / max(total, 1), "mean_kl": kl_sum / max(total, 1), "tokens": total}, logits


def measure(path: Path, limit: int | None, threads: int, prompts: list[str]) -> dict:
    from scotd_harness.export.exporter import accuracy_on_sample
    from scotd_harness.export.runtime import OnnxStudent

    student = OnnxStudent(path, threads=threads)
    speed = decode_speed(student, prompts)
    t0 = time.time()
    acc = accuracy_on_sample(student, "csqa", limit)
    acc["eval_s"] = round(time.time() - t0, 1)
    return {**acc, **speed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fp32", required=True, type=Path, help="An fp32 export directory (the reference).")
    p.add_argument("--student-name", default=None, help="How the report names the student (default: from scotd.json).")
    p.add_argument("--limit", type=int, default=None, help="First N CSQA dev questions (default: all 1221).")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"Comma-separated (default: {DEFAULT_VARIANTS}).")
    p.add_argument("--work-dir", type=Path, default=Path("runs/int4_variants"), help="Where the variants are built.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fidelity-questions", type=int, default=48,
                   help="Dev questions whose fp32 chains score the token-level fidelity (0: skip).")
    p.add_argument("--base", type=Path, default=None,
                   help="fp32 export of the student before fine-tuning: its fidelity row shows how large the\n"
                        "fine-tuning change is, the scale against which int4's change is read.")
    p.add_argument("--out", type=Path, default=HERE / "results" / "int4_accuracy", help="Report path without suffix.")
    a = p.parse_args(argv)
    if not (a.fp32 / "scotd.json").is_file():
        raise SystemExit(f"{a.fp32}: not an export directory (no scotd.json)")
    meta = json.loads((a.fp32 / "scotd.json").read_text())
    if meta.get("quantization") or meta.get("dtype", "fp32") != "fp32":
        raise SystemExit(f"{a.fp32}: --fp32 must be an fp32 export, not a quantised one")
    student_name = a.student_name or meta.get("student", {}).get("source") or str(a.fp32)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)

    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    prompts = [formats.student_input(e.question, e.choices) for e in load_examples("csqa", "validation", limit=8)]
    rows = {}
    chains = reference_chains(a.fp32, a.threads, a.fidelity_questions) if a.fidelity_questions else []
    print(f"fp32 reference: {a.fp32}", flush=True)
    fid, ref_logits = fidelity(a.fp32, a.threads, chains)
    rows["fp32"] = {"size_mb": _size(a.fp32), **measure(a.fp32, a.limit, a.threads, prompts), "fidelity": fid}
    _print_row("fp32", rows["fp32"], rows["fp32"])
    paths = [(name, a.work_dir / name) for name in variants]
    if a.base:
        paths.insert(0, ("base (not fine-tuned) fp32", a.base))
    for name, path in paths:
        built = build_variant(a.fp32, path, name) if path.parent == a.work_dir else {"size_mb": _size(path)}
        rows[name] = {**built, **measure(path, a.limit, a.threads, prompts)}
        rows[name]["fidelity"] = fidelity(path, a.threads, chains, ref_logits)[0]
        _print_row(name, rows[name], rows["fp32"])
    base = rows["fp32"]
    gold = [e.answer for e in load_examples("csqa", "validation", limit=a.limit)]
    for rec in rows.values():
        rec["change_points"] = round(100 * (rec["accuracy"] - base["accuracy"]), 2)
        rec["change_se_points"] = round(100 * paired_se(rec["predictions"], base["predictions"], gold), 2)
        rec["answers_agree"] = sum(x == y for x, y in zip(rec["predictions"], base["predictions"])) / max(rec["n"], 1)
    write_report(a, student_name, rows)


def paired_se(preds: list[str], base: list[str], gold: list[str]) -> float:
    """Standard error of the accuracy change against fp32 on the same questions (a paired difference): most answers
    do not move, so a change is only read against the questions whose correctness did."""
    import math

    diffs = [(p == g) - (b == g) for p, b, g in zip(preds, base, gold)]
    n = len(diffs)
    if n < 2:
        return float("nan")
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def _size(path: Path) -> float:
    from scotd_harness.export.quantize import model_size_mb

    return model_size_mb(path / "model.onnx")


def _print_row(name, rec, base):
    print(f"{name:16s} acc {rec['accuracy']:.4f} ({100 * (rec['accuracy'] - base['accuracy']):+.1f} pts) "
          f"invalid {rec['invalid']} b1 {rec['b1_tok_s']} tok/s b8 {rec['b8_tok_s']} tok/s "
          f"{rec['size_mb']} MB eval {rec['eval_s']} s fidelity {rec.get('fidelity')}", flush=True)


def write_report(a, student_name: str, rows: dict) -> None:
    base = rows["fp32"]
    lines = [f"# int4 accuracy and speed: {student_name}", "",
             f"CSQA dev, first {base['n']} questions, greedy CoT in the student format (max 128 new tokens), this "
             f"project's runtime on CPU, {a.threads} threads. Speed: {SPEED_TOKENS} new tokens, end-of-sequence "
             "blocked, the first 8 dev prompts, one warm-up.", "",
             "| variant | acc | change (points) ± SE | answers = fp32 | no answer | next token = fp32 | "
             "KL(fp32 \\|\\| q) | size MB | b1 tok/s | b8 tok/s |", "|" + " --- |" * 10]
    for name, rec in rows.items():
        fid = rec.get("fidelity") or {}
        lines.append(f"| {name} | {rec['accuracy']:.1%} | {rec['change_points']:+.1f} ± {rec['change_se_points']:.1f} | "
                     f"{rec['answers_agree']:.1%} | "
                     f"{rec['invalid']} | {fid.get('top1_agree', float('nan')):.1%} | {fid.get('mean_kl', float('nan')):.4f} | "
                     f"{rec['size_mb']} | {rec['b1_tok_s']} | {rec['b8_tok_s']} |")
    lines += ["", "Variants: `{sym|asym}` 4-bit blocks of 32 with or without a zero point; `a0` fp32 / `a4` int8 "
              "activations in MatMulNBits; `emb` / `noemb` token embedding quantised or fp32; `head8`: the lm_head "
              "at 8 bits (int4 otherwise); `vdown` / `qkm`: each layer's attention value and MLP down projections at "
              "8 bits in every layer / in llama.cpp's Q4_K_M choice of layers. SE: the paired standard error of the "
              "change (same questions as fp32). `next token = fp32` and `KL`: teacher-forced on fp32's own greedy chains for the first "
              f"{a.fidelity_questions} dev questions, the share of positions where the argmax matches fp32's and the "
              "mean KL(fp32 || variant) in nats.", "", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, load average at the end "
              f"{[round(x, 1) for x in os.getloadavg()]} (speed columns are only comparable within one run; "
              "accuracy and fidelity do not depend on load).", "",
              "Command:", "", "    python bench/int4_accuracy.py " + " ".join(sys.argv[1:])]
    public = {"student": student_name, "limit": a.limit, "threads": a.threads,
              "rows": {k: {kk: vv for kk, vv in v.items() if kk != "predictions"} for k, v in rows.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".md", "\n".join(lines) + "\n"), (".json", json.dumps(public, indent=2) + "\n")):
        tmp = a.out.with_name(a.out.name + suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, a.out.with_name(a.out.name + suffix))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
