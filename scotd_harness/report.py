"""`scotd report`: one readable page (report.md), plots and a rating sheet from pipeline run directories.

It only reads what the stages wrote (stages.json, eval/*/results.json and samples, the corpus, the ONNX
student's scotd.json); it runs no model. Given several runs that differ only in chains per question (n), it
also draws accuracy against n, the paper's main figure.
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from . import atomic
from .errors import ScotdError
from .jsonl import iter_jsonl, read_json

#: report row order and labels
MODEL_LABELS = {"teacher": "teacher (few-shot CoT)", "undistilled": "student, undistilled", "label_only":
                "student, label-only fine-tuned", "scotd": "student, SCoTD-distilled"}


def load_run(root: str | os.PathLike) -> dict:
    root = Path(root)
    if not (root / "config.json").is_file():
        raise ScotdError(f"{root} is not a pipeline run directory (no config.json)")
    state = read_json(root / "stages.json").get("stages", {}) if (root / "stages.json").is_file() else {}
    return {"root": root, "config": read_json(root / "config.json"), "stages": state}


def accuracy_rows(run: dict) -> list[dict]:
    """One row per (model, task, filter) from the evaluate stage's lm-eval results."""
    rows = []
    for model in MODEL_LABELS:
        path = run["root"] / "eval" / model / "results.json"
        if not path.is_file():
            continue
        results = read_json(path).get("results", {})
        for task, metrics in results.items():
            for key, value in metrics.items():
                metric, _, flt = key.partition(",")
                if metric != "acc" or not isinstance(value, (int, float)):
                    continue
                rows.append({
                    "model": model, "task": task, "filter": flt or "none", "acc": float(value),
                    "stderr": metrics.get(f"acc_stderr,{flt}"),
                    "invalid_rate": metrics.get(f"invalid_rate,{flt}"),
                })
    return rows


def _pct(x) -> str:
    return "" if x is None or isinstance(x, str) else f"{100 * x:.1f}"


def _accuracy_table(rows: list[dict]) -> str:
    if not rows:
        return "_No evaluation results in this run yet._\n"
    out = ["| model | task | decoding | accuracy % | ± stderr | no answer % |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {MODEL_LABELS[r['model']]} | {r['task']} | {r['filter']} | {_pct(r['acc'])} | "
                   f"{_pct(r['stderr'])} | {_pct(r['invalid_rate'])} |")
    return "\n".join(out) + "\n"


def _plot_accuracy(rows: list[dict], path: Path) -> bool:
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['task'].removeprefix('scotd_')}\n{r['filter']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 4))
    ax.bar(range(len(rows)), [100 * r["acc"] for r in rows], color="#4C72B0")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy by model and decoding")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_sweep(runs: list[dict], path: Path) -> list[tuple[int, float]] | None:
    """Accuracy of the distilled student (greedy) against chains per question, over runs that swept n."""
    points = []
    for run in runs:
        greedy = [r for r in accuracy_rows(run) if r["model"] == "scotd" and r["filter"] != "none"
                  and not r["task"].endswith("_sc")]
        if greedy:
            points.append((int(run["config"]["n"]), greedy[0]["acc"]))
    if len({n for n, _ in points}) < 2:
        return None
    points.sort()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([n for n, _ in points], [100 * a for _, a in points], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("chains per question (n)")
    ax.set_ylabel("student accuracy (%)")
    ax.set_title("SCoTD: accuracy against sampled chains")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points


def _samples(run: dict, model: str) -> dict[str, dict]:
    """id -> {rationale, answer} from an lm-eval samples file of the model's main (greedy CoT) task."""
    from . import formats

    folder = run["root"] / "eval" / model
    out = {}
    for path in sorted(folder.glob("samples_*.jsonl")) if folder.is_dir() else []:
        if path.stem.endswith(("_sc", "_direct")):
            continue
        for _, rec in iter_jsonl(path):
            doc = rec.get("doc", {})
            resps = rec.get("resps") or [[""]]
            text = resps[0][0] if resps and resps[0] else ""
            choices = [tuple(c) for c in doc.get("choices", [])]
            out[str(doc.get("id"))] = {"rationale": formats.clean_rationale(text),
                                      "answer": formats.extract_answer(text, choices or None), "doc": doc}
    return out


def rating_sheet(run: dict) -> list[dict]:
    """Teacher and distilled-student rationales for the same evaluation questions, with empty rating columns."""
    teacher, student = _samples(run, "teacher"), _samples(run, "scotd")
    rows = []
    for qid, s in student.items():
        doc = s["doc"]
        t = teacher.get(qid, {"rationale": "", "answer": ""})
        rows.append({
            "id": qid,
            "question": doc.get("question", ""),
            "choices": " ".join(f"({lab}) {txt}" for lab, txt in doc.get("choices", [])),
            "gold": doc.get("answer", ""),
            "teacher_rationale": t["rationale"], "teacher_answer": t["answer"],
            "student_rationale": s["rationale"], "student_answer": s["answer"],
            "teacher_rating_1to5": "", "student_rating_1to5": "", "notes": "",
        })
    return rows


def _sheet_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return (
        "<!doctype html><meta charset='utf-8'><title>Rationale rating sheet</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:4px;vertical-align:top;max-width:28em}</style>"
        "<p>Rate each rationale 1 (wrong or unhelpful) to 5 (correct, relevant, complete) for how well it supports "
        "the answer, as in the SCoTD human study.</p>"
        f"<table><tr>{head}</tr>{body}</table>\n"
    )


def _onnx_lines(meta: dict) -> list[str]:
    quant = meta.get("quantization") or {}
    what = f"{quant.get('bits')}-bit {quant.get('method')}" if quant else meta.get("dtype", "?")
    lines = [f"Export: route `{meta.get('route')}`, {what}, {meta.get('size_mb')} MB, "
             f"{meta.get('export_seconds')} s."]
    prompts = (meta.get("parity") or {}).get("prompts") or []
    if prompts:
        worst = max(p.get("max_abs_diff") or 0.0 for p in prompts)
        same = sum(bool(p.get("same_tokens")) for p in prompts)
        lines.append(f"fp32 parity against PyTorch: largest logit difference {worst:.2e} "
                     f"(atol {meta['parity'].get('atol')}), identical greedy tokens on {same} of {len(prompts)} prompts.")
    change = meta.get("accuracy_change")
    if change:
        lines.append(f"Quantisation: accuracy {_pct(change.get('accuracy_fp32'))}% (fp32) -> "
                     f"{_pct(change.get('accuracy'))}% on {change.get('n')} {change.get('task')} "
                     f"{change.get('split')} questions; answers agree on {_pct(change.get('answers_agree'))}%.")
    return lines


#: The first lines of a demo run's report: what it shows, what it does not, and where the real thing is.
DEMO_PREFACE = """> **Demonstration set, not a benchmark.** This run shows every stage of SCoTD working, offline, in minutes:
> a teacher samples chains of thought, they are filtered, a student is fine-tuned on them, evaluated with the lm-eval
> tasks, exported to ONNX and run without torch. Teacher and student are the same 135M model, the 24 questions were
> written for this project, and the paper's few-shot setting keeps every chain (`filters: [all]`), because a teacher
> this small answers them near chance.
>
> **What it shows:** the student learns to write a rationale before its answer (see "Deployed student" below).
> **What it does not show:** that rationales make the student more accurate. Its accuracy here says nothing about
> the method; that needs a large teacher on a real task: `scotd pipeline --config run.yaml` with a config like the
> README's (e.g. `task: csqa`, an `openai:` teacher at `api_base`, `n: 30`), or, from the PaLM-540B CommonsenseQA
> chains, `scotd corpus import distilling-step-by-step --out corpus.jsonl` then `scotd train` and `scotd eval`
> (`bench/distill_csqa.py` runs that study).
"""


def write_report(root: str | os.PathLike, sweep: list[str | os.PathLike] = ()) -> Path:
    """Write report.md, accuracy.png (and accuracy_vs_n.png for a sweep), rating_sheet.{csv,html} into `root`."""
    run = load_run(root)
    out = run["root"]
    cfg = run["config"]
    parts = [f"# SCoTD run report\n\nRun directory `{out.name}`: task **{cfg['task']}**, teacher `{cfg['teacher']}`, "
             f"student `{cfg['student']}`, {cfg['n']} chains per question at temperature {cfg['temperature']}, "
             f"filters {', '.join(cfg['filters'])}.\n"]
    if cfg["task"] == "demo":
        parts.append(DEMO_PREFACE)

    parts.append("## Stages\n\n| stage | seconds | finished |\n|---|---:|---|\n" + "".join(
        f"| {name} | {s.get('seconds', '')} | {s.get('finished', '')} |\n" for name, s in run["stages"].items()))

    rows = accuracy_rows(run)
    parts.append("## Accuracy\n\n" + _accuracy_table(rows))
    if _plot_accuracy(rows, out / "accuracy.png"):
        parts.append("![accuracy](accuracy.png)\n")

    runs = [run] + [load_run(r) for r in sweep]
    points = _plot_sweep(runs, out / "accuracy_vs_n.png")
    if points:
        parts.append("## Accuracy against chains per question\n\n| n | accuracy % |\n|---:|---:|\n"
                     + "".join(f"| {n} | {_pct(a)} |\n" for n, a in points) + "\n![sweep](accuracy_vs_n.png)\n")

    corpus = out / "corpus.jsonl"
    if corpus.is_file():
        from .corpus import corpus_stats, format_stats, read_corpus

        parts.append("## Teacher corpus\n\n```\n" + format_stats(corpus_stats(read_corpus(corpus))) + "\n```\n")
        filtered = run["stages"].get("filter")
        if filtered:
            parts.append(f"After filtering: {filtered['chains_kept']} of {filtered['chains_in']} chains, "
                         f"{filtered['questions_kept']} questions.\n")

    infer = run["stages"].get("infer")
    onnx_meta = out / "onnx" / "scotd.json"
    if infer or onnx_meta.is_file():
        lines = ["## Deployed student (ONNX)\n"]
        if onnx_meta.is_file():
            lines.extend(_onnx_lines(read_json(onnx_meta)))
        if infer:
            written = (f", a rationale written for {infer['with_rationale']} of them" if "with_rationale" in infer
                       else "")
            lines.append(f"Inference stage: {infer['questions']} questions in {infer['seconds']} s, "
                         f"{infer['tokens_per_second']} generated tokens/s, {infer['correct']} correct{written}.")
        parts.append("\n\n".join(lines) + "\n")

    sheet = rating_sheet(run)
    if sheet:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(sheet[0]))
        writer.writeheader()
        writer.writerows(sheet)
        atomic.write_text(out / "rating_sheet.csv", buf.getvalue())
        atomic.write_text(out / "rating_sheet.html", _sheet_html(sheet))
        parts.append(f"## Human rating sheet\n\n`rating_sheet.csv` / `rating_sheet.html`: {len(sheet)} questions with "
                     f"the teacher's and the distilled student's rationales side by side.\n")

    path = out / "report.md"
    atomic.write_text(path, "\n".join(parts))
    return path
