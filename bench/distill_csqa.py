"""SCoTD on CommonsenseQA with the embedded student: undistilled vs label-only vs distilled on PaLM-540B chains.

Stages, each marked done in the run folder so a rerun skips it (training resumes from its last checkpoint):

1. ``import``: the distilling step-by-step PaLM-540B CoT chains for CSQA train (one per question), joined to the
   official train split for gold labels, answer-filtered (``correct``), then subsampled to ``--train-questions``
   questions (seeded) -> ``corpus.jsonl``.
2. ``train-label-only``: the student fine-tuned on the same questions with the gold answer sentence as target.
3. ``train-scotd``: the student fine-tuned on the chains (rationale + "So the answer is: (x)").
4. ``eval-{undistilled,label-only,scotd}``: the ``scotd_csqa`` lm-eval task (greedy CoT in the student format) on
   CSQA dev, the first ``--eval-limit`` questions or all 1221.

The report (markdown + JSON) is rewritten after every stage, so a partial run still has its figures, each labelled
with the number of dev questions it covers. Usage::

    SCOTD_DATA_DIR=DATA python bench/distill_csqa.py --run-dir runs/distill_csqa --train-questions 1000
    # after a kill, the same command resumes

Validation during training uses a held-out slice of the corpus questions (``--dev-fraction``), never CSQA dev.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER = {"undistilled": 20.5, "label-only": 63.0, "scotd": 68.2}  # OPT-1.3B, CSQA dev, SCoTD paper table
log = logging.getLogger("distill_csqa")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/distill_csqa", help="Folder for corpus, students, checkpoints, marks.")
    p.add_argument("--student", default="embedded", help="Student model (default: the embedded SmolLM2-135M).")
    p.add_argument("--train-questions", type=int, default=None,
                   help="Subsample this many answer-filtered train questions (default: all, about 7.4k).")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1,
                   help="If > 0, optimizer steps per training (overrides --epochs).")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--batching", default="packed", choices=["length", "packed", "padded"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="Training precision (scotd train --precision); auto: bf16 where the device computes it\n"
                        "natively (a recent GPU, or a CPU with AVX512-BF16/AMX), else fp32.")
    p.add_argument("--dev-fraction", type=float, default=0.05, help="Corpus questions held out for the dev loss.")
    p.add_argument("--max-dev-questions", type=int, default=48)
    p.add_argument("--eval-steps", type=int, default=50, help="Dev loss every this many steps; the best is kept.")
    p.add_argument("--eval-limit", type=int, default=None, help="Evaluate on the first N CSQA dev questions.")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--eval-backend", default="hf", choices=["hf", "onnx"],
                   help="hf: lm-eval's `hf` model (PyTorch). onnx: export each student to fp32 ONNX first (the\n"
                        "export checks logits and identical greedy tokens against PyTorch) and evaluate it with\n"
                        "`scotd-onnx`, about 3x faster on CPU at the same greedy outputs.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages",
                   default="import,train-label-only,train-scotd,eval-scotd,eval-label-only,eval-undistilled",
                   help="Comma-separated stages to run, in this order.")
    p.add_argument("--tag", default=None, help="Name of the report files (default: distill_csqa).")
    return p.parse_args(argv)


class Run:
    def __init__(self, args):
        self.args = args
        self.dir = Path(args.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = args.tag or "distill_csqa"
        self.state_path = self.dir / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"stages": {}}
        self.state.setdefault("invocations", []).append(
            {"command": "python bench/distill_csqa.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.save()

    def save(self):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_path)

    def done(self, stage: str) -> dict | None:
        return self.state["stages"].get(stage)

    def mark(self, stage: str, record: dict):
        self.state["stages"][stage] = record
        self.save()
        write_report(self)


# --- stages ------------------------------------------------------------------------------------------------------


def stage_import(run: Run) -> dict:
    from scotd_harness.corpus import corpus_stats, write_corpus
    from scotd_harness.corpus_filters import apply_filters
    from scotd_harness.corpus_import import import_distilling_step_by_step
    from scotd_harness.datasets import load_examples

    official = load_examples("csqa", "train")
    rows, report = import_distilling_step_by_step(None, "train", examples=official)
    imported = len(rows)
    rows = apply_filters(rows, ["correct"])
    kept = len(rows)
    if run.args.train_questions is not None and run.args.train_questions < len(rows):
        rng = random.Random(run.args.seed)
        chosen = set(rng.sample(range(len(rows)), run.args.train_questions))
        rows = [r for i, r in enumerate(rows) if i in chosen]
    write_corpus(rows, run.dir / "corpus.jsonl")
    return {"imported_chains": imported, "answer_filtered": kept, "used_questions": len(rows),
            "import_report": report.lines(), "corpus": "corpus.jsonl",
            "stats": {k: v for k, v in corpus_stats(rows).items() if isinstance(v, (int, float, str))}}


def stage_train(run: Run, name: str, label_only: bool) -> dict:
    from scotd_harness.train import SCOTD_JSON, DistillConfig, train

    a = run.args
    out = run.dir / name
    cfg = DistillConfig(
        student=a.student, corpus=str(run.dir / "corpus.jsonl"), output_dir=str(out), task="csqa",
        label_only=label_only, chains="balanced", max_length=a.max_length, batching=a.batching, precision=a.precision,
        num_train_epochs=a.epochs, max_steps=a.max_steps, learning_rate=a.lr, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum, warmup_ratio=a.warmup_ratio,
        dev_fraction=a.dev_fraction, max_dev_questions=a.max_dev_questions, eval_steps=a.eval_steps,
        save_total_limit=2, seed=a.seed, logging_steps=5, resume_from_checkpoint="last",
        disable_tqdm=True, dataloader_pin_memory=False,
    )
    started = time.time()
    train(cfg)
    info = json.loads((out / SCOTD_JSON).read_text())
    history = []
    state_file = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if state_file:
        history = json.loads(state_file[-1].read_text()).get("log_history", [])
    steps = info["result"]["global_step"]
    wall = time.time() - started
    return {"student": name, "wall_s": round(wall, 1), "global_step": steps,
            "s_per_step": round(wall / max(steps, 1), 2), "train_loss": info["result"]["train_loss"],
            "best_dev_loss": info["result"]["best_dev_loss"], "best_checkpoint": info["result"]["best_checkpoint"],
            "corpus": info["corpus"], "dev_loss_history": [(h["step"], h["eval_loss"]) for h in history
                                                           if "eval_loss" in h]}


def stage_eval(run: Run, name: str) -> dict:
    """`scotd eval` (scotd_harness.evaluate) on the scotd_csqa task: the YAML the stock lm_eval CLI runs."""
    from scotd_harness.evaluate import evaluate

    a = run.args
    model = a.student if name == "undistilled" else str(run.dir / name)
    out = run.dir / eval_key(name, a.eval_limit)
    started = time.time()
    model_type, export_s = "hf", None
    if a.eval_backend == "onnx":
        from scotd_harness.export.exporter import export

        onnx_dir = run.dir / f"{name}-onnx-fp32"
        if not (onnx_dir / "scotd.json").is_file():  # an export is atomic: scotd.json means it passed parity
            export(model, onnx_dir, dtype="fp32", overwrite=True, progress=lambda msg: log.info("export: %s", msg))
        model, model_type, export_s = str(onnx_dir), "scotd-onnx", round(time.time() - started, 1)
    output = evaluate(model, "scotd_csqa", model_type=model_type, limit=a.eval_limit, batch_size=a.eval_batch_size,
                      output_dir=out, log_samples=True, seed=a.seed)
    res = output.results["results"]["scotd_csqa"]
    acc = next(v for k, v in res.items() if k.startswith("acc,"))
    invalid = next((v for k, v in res.items() if k.startswith("invalid_rate,")), None)
    samples_file = out / "samples_scotd_csqa.jsonl"
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()] if samples_file.is_file() else []
    examples = [{"id": s["doc"].get("id"), "gold": s["doc"].get("answer"),
                 "output": (s["resps"][0][0] if s.get("resps") else None)} for s in samples[:5]]
    return {"model": name, "acc": acc, "invalid_rate": invalid, "n": len(samples) or a.eval_limit,
            "eval_limit": a.eval_limit, "backend": model_type, "export_wall_s": export_s,
            "wall_s": round(time.time() - started, 1), "examples": examples}


def named_choice(samples_file: Path) -> dict | None:
    """How often the rationale names exactly one choice's text, and how often that choice is the gold one.

    A diagnostic for small students: the rationale may argue for the right choice and then write the wrong letter
    (binding a choice to its letter is the hard part for them); accuracy on the letter alone hides that.
    """
    if not samples_file.is_file():
        return None
    named = gold = 0
    rows = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    letters = {}
    for s in rows:
        letter = str(s["filtered_resps"][0]) if s.get("filtered_resps") else "?"
        letters[letter] = letters.get(letter, 0) + 1
        text = (s["resps"][0][0] if s.get("resps") else "").split("So the answer is")[0].lower()
        found = [label for label, choice in s["doc"]["choices"] if choice.lower() in text]
        if len(found) == 1:
            named += 1
            gold += found[0] == s["doc"]["answer"]
    top = max(letters, key=letters.get) if letters else None
    return {"n": len(rows), "names_one_choice": named, "that_choice_is_gold": gold, "most_common_answer": top,
            "most_common_answer_share": letters.get(top, 0) / max(len(rows), 1)}


def eval_key(name: str, limit: int | None) -> str:
    return f"eval-{name}" + (f"@{limit}" if limit else "")


# --- report ------------------------------------------------------------------------------------------------------


def write_report(run: Run):
    RESULTS.mkdir(parents=True, exist_ok=True)
    st = run.state["stages"]
    rows = []
    for name in ("undistilled", "label-only", "scotd"):
        for key, rec in sorted(st.items()):
            if key.split("@")[0] == f"eval-{name}":
                rows.append((name, rec))
    lines = [f"# SCoTD on CommonsenseQA: {run.args.student} student, PaLM-540B chains", ""]
    imp = st.get("import")
    if imp:
        lines += [f"Corpus: distilling step-by-step PaLM-540B CoT for CSQA train, {imp['imported_chains']} chains, "
                  f"{imp['answer_filtered']} answer-filtered (correct), **{imp['used_questions']} questions used** "
                  f"(one chain each; seeded subsample).", ""]
    lines += ["| student | CSQA dev questions | acc | no parsable answer | most common answer | rationale names one "
              "choice: gold | lm-eval model | eval wall s | paper (OPT-1.3B) |", "|" + " --- |" * 9]
    for name, rec in rows:
        inv = f"{rec['invalid_rate']:.1%}" if rec.get("invalid_rate") is not None else "?"
        key = eval_key(name, rec.get("eval_limit"))
        named = named_choice(run.dir / key / "samples_scotd_csqa.jsonl") or rec.get("named_choice")
        if named:
            rec["named_choice"] = named
        named_cell = (f"{named['that_choice_is_gold'] / named['names_one_choice']:.1%} of {named['names_one_choice']}"
                      if named and named["names_one_choice"] else "-")
        top_cell = f"({named['most_common_answer']}) {named['most_common_answer_share']:.0%}" if named else "?"
        lines.append(f"| {name} | {rec['n']}{'' if rec.get('eval_limit') is None else ' (first N)'} | "
                     f"{rec['acc']:.1%} | {inv} | {top_cell} | {named_cell} | {rec.get('backend', 'hf')} | {rec['wall_s']:.0f} | "
                     f"{PAPER[name]} |")
    lines += ["", "`most common answer`: the letter the student gives most often, with its share (a student that gives "
              "one letter to every question has learnt the format, not the task). `rationale names one choice: gold`: "
              "among outputs whose text before \"So the answer is\" contains exactly one choice's wording, the share "
              "where that choice is the gold one (chance: about 20%). `eval wall s` includes the ONNX export "
              "(about 150 s) when the lm-eval model is scotd-onnx."]
    lines += ["", "| training | steps | wall s/step | CPU s/step | train loss | best dev loss | wall s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in ("train-label-only", "train-scotd"):
        rec = st.get(key)
        if rec:
            best = f"{rec['best_dev_loss']:.4f}" if rec.get("best_dev_loss") is not None else "-"
            lines.append(f"| {key[6:]} | {rec['global_step']} | {rec['s_per_step']} | "
                         f"{rec.get('cpu_s_per_step', '?')} | {rec['train_loss']:.4f} | {best} | {rec['wall_s']:.0f} |")
    pending = [s for s in run.args.stages.split(",")
               if s and s not in st and eval_key(s[5:], run.args.eval_limit) not in st]
    lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads "
              f"{_threads()}; device {_device()}.", "",
              "Commands:", ""] + [f"    {inv['command']}   # {inv['started']}" for inv in run.state["invocations"]]
    total = sum(rec.get("wall_s", 0) for rec in st.values() if isinstance(rec, dict))
    cpu = sum(rec.get("cpu_s", 0) for rec in st.values() if isinstance(rec, dict))
    lines += ["", f"Total wall time of the finished stages: {total / 60:.1f} min; process CPU time {cpu / 60:.1f} min "
              f"(where recorded; the machine may have been shared, see the CPU column)."]
    if pending:
        lines += ["", f"Not finished yet: {', '.join(pending)} (rerun the same command to resume)."]
    (RESULTS / f"{run.tag}.md").write_text("\n".join(lines) + "\n")
    public = {"settings": {k: v for k, v in vars(run.args).items() if k != "run_dir"}, "stages": st,
              "invocations": run.state["invocations"], "paper_opt_1.3b": PAPER, "pending": pending}
    (RESULTS / f"{run.tag}.json").write_text(json.dumps(public, indent=2) + "\n")


def _threads():
    import torch

    return torch.get_num_threads()


def _device():
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    run = Run(args)
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        key = eval_key(stage[5:], args.eval_limit) if stage.startswith("eval-") else stage
        if run.done(key):
            log.info("stage %s: done already, skipped", key)
            continue
        log.info("stage %s: starting", key)
        t0, cpu0 = time.time(), time.process_time()
        if stage == "import":
            rec = stage_import(run)
        elif stage == "train-label-only":
            rec = stage_train(run, "label-only", label_only=True)
        elif stage == "train-scotd":
            rec = stage_train(run, "scotd", label_only=False)
        elif stage in ("eval-undistilled", "eval-label-only", "eval-scotd"):
            rec = stage_eval(run, stage[5:])
        else:
            raise SystemExit(f"unknown stage {stage}")
        rec.setdefault("wall_s", round(time.time() - t0, 1))
        # CPU seconds of this process (all its threads): on a shared machine, wall time says little; CPU time
        # divided by the thread count estimates the wall time on idle cores.
        rec["cpu_s"] = round(time.process_time() - cpu0, 1)
        if rec.get("global_step"):
            rec["cpu_s_per_step"] = round(rec["cpu_s"] / rec["global_step"], 2)
        run.mark(key, rec)
        log.info("stage %s: done in %.0f s: %s", key, time.time() - t0,
                 {k: v for k, v in rec.items() if k not in ("examples", "import_report", "dev_loss_history", "stats")})
    write_report(run)


if __name__ == "__main__":
    main()
