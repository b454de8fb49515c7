"""Training step time on a CPU: fp32 against bf16 autocast, side by side in one process, on the real training path.

Batches are built as `scotd train` builds them (`train.build_questions` on imported PaLM-540B CSQA chains, the
packed collator, loss on target tokens only), and each step is what the Trainer does: forward, backward, AdamW.
The learning rate is 0, so the weights never move and every round sees the same model: the losses of the two
precisions on the same batch are directly comparable. Rounds alternate fp32 and bf16; medians are reported.

    SCOTD_DATA_DIR=DATA python bench/train_precision.py [--student embedded] [--batch-size 8] [--rounds 4]

Prints a table and writes bench/results/train_precision.{json,md}. bf16 autocast pays off only on a CPU that
multiplies bf16 in hardware (AVX512-BF16 or AMX; `scotd_harness.train.cpu_has_native_bf16`), which is where
`scotd train --precision auto` picks it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def batches(tokenizer, n_batches: int, batch_size: int, max_length: int) -> list[dict]:
    from scotd_harness.corpus_filters import apply_filters
    from scotd_harness.corpus_import import import_distilling_step_by_step
    from scotd_harness.datasets import load_examples
    from scotd_harness.train import CorpusStats, DistillConfig, PackCollator, build_questions

    rows, _ = import_distilling_step_by_step(None, "train", examples=load_examples("csqa", "train"))
    rows = apply_filters(rows, ["correct"])[: n_batches * batch_size]
    cfg = DistillConfig(output_dir="/tmp/unused", corpus="unused", max_length=max_length, use_cpu=True,
                        precision="fp32", report_to="none")
    questions = build_questions(rows, tokenizer, cfg, CorpusStats())
    collate = PackCollator()
    examples = [q.example(0) for q in questions]
    return [collate(examples[i:i + batch_size]) for i in range(0, len(examples) - batch_size + 1, batch_size)]


def main(argv=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scotd_harness.embedded import resolve_model
    from scotd_harness.train import cpu_has_native_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="embedded")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--rounds", type=int, default=4, help="Alternating rounds; each times every batch once.")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(RESULTS / "train_precision"))
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    path = resolve_model(a.student)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    data = batches(tokenizer, a.batches, a.batch_size, a.max_length)
    tokens = statistics.mean(int(b["input_ids"].numel()) for b in data)

    def step(batch, bf16: bool) -> float:
        inputs = {k: v for k, v in batch.items() if k != "use_cache"}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for name in times:  # warm-up: oneDNN picks its kernels on the first call of each shape and dtype
        step(data[0], name == "bf16")
    for r in range(a.rounds):
        for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            for i, batch in enumerate(data):
                t0 = time.perf_counter()
                loss = step(batch, name == "bf16")
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    losses[name].append(loss)
        print(f"round {r + 1}/{a.rounds}: fp32 {statistics.median(times['fp32']):.2f} s/step, "
              f"bf16 {statistics.median(times['bf16']):.2f} s/step", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    diffs = [abs(x - y) for x, y in zip(losses["fp32"], losses["bf16"])]
    result = {
        "student": a.student, "batch_size": a.batch_size, "tokens_per_batch_mean": round(tokens, 1),
        "batches": len(data), "rounds": a.rounds, "threads": a.threads,
        "cpu_native_bf16": cpu_has_native_bf16(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "s_per_step": {k: round(v, 3) for k, v in med.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in med.items()},
        "speedup_bf16_over_fp32": round(med["fp32"] / med["bf16"], 2),
        "loss_fp32": [round(x, 4) for x in losses["fp32"]], "loss_bf16": [round(x, 4) for x in losses["bf16"]],
        "max_abs_loss_diff": round(max(diffs), 4),
    }
    md = ["# Training step time on a CPU: fp32 vs bf16 autocast", "",
          f"Student {a.student}, packed batches of {a.batch_size} PaLM-540B CSQA chains "
          f"({tokens:.0f} tokens on average), forward + backward + AdamW, {a.threads} threads, median of "
          f"{a.rounds} alternating rounds over {len(data)} batches. CPU with native bf16: "
          f"{result['cpu_native_bf16']}; load average at start {result['load_average_start'][0]:.2f}.", "",
          "| precision | s/step | tokens/s | speed-up | loss on the same batches |", "| --- | --- | --- | --- | --- |"]
    for k in ("fp32", "bf16"):
        md.append(f"| {k} | {med[k]:.2f} | {tokens / med[k]:.0f} | {med['fp32'] / med[k]:.2f}x | "
                  f"{', '.join(f'{x:.4f}' for x in losses[k])} |")
    md += ["", f"Largest loss difference between the two on the same batch: {result['max_abs_loss_diff']}."]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
