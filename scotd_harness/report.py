"""`scotd report`: one readable page (report.md), plots and a rating sheet from pipeline run directories.

It only reads what the stages wrote (stages.json, eval/*/results.json and samples, the corpus, the ONNX
student's scotd.json); it runs no model. Every evaluated arm (eval/<arm>/) is one group of rows, side by side: each
accuracy with its Wilson interval, each distilled arm against its label-only arm with McNemar's exact test on the
same questions, and the failure flags of `stats.check_run`, so a broken baseline is never tabled as a result.
Given several runs that differ only in chains per question (n), it also draws accuracy against n, the paper's main
figure.
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from . import atomic
from .datasets import choices_of
from .errors import ScotdError
from .eval_samples import read_outcomes
from .evaluate import MIN_SC_SAMPLES
from .jsonl import iter_jsonl, read_json
from .stats import check_run, collapse_share, diverged, mcnemar, wilson_interval

#: report row order and labels; other arms the evaluate stage writes (eval/<name>/, e.g. a 2k-question run) follow
#: in name order, labelled by their folder name
MODEL_LABELS = {"teacher": "teacher (few-shot CoT)", "undistilled": "student, undistilled", "label_only":
                "student, label-only fine-tuned", "cose": "student, CoS-E human explanations",
                "scotd": "student, SCoTD-distilled"}
#: models that are not a distilled arm: no paired test against label-only
BASELINES = ("teacher", "undistilled", "label_only")
#: the self-consistency tasks' second filter (tasks/_scotd_sc.yaml): a vote over the first MIN_SC_SAMPLES chains
FIRST_K_VOTE = f"maj@{MIN_SC_SAMPLES}"
#: rows no training of this run produced: never flagged as failed runs
UNTRAINED = ("teacher", "undistilled")
#: task-name suffixes of the variants of one task (`scotd_csqa_direct` pairs with `scotd_csqa` questions)
TASK_VARIANTS = ("_direct", "_sc", "_fewshot")
CONFIDENCE = 0.95


def load_run(root: str | os.PathLike) -> dict:
    root = Path(root)
    if not (root / "config.json").is_file():
        raise ScotdError(f"{root} is not a pipeline run directory (no config.json)")
    state = read_json(root / "stages.json").get("stages", {}) if (root / "stages.json").is_file() else {}
    return {"root": root, "config": read_json(root / "config.json"), "stages": state}


def evaluated_models(run: dict) -> list[str]:
    """The eval/<model>/ folders holding results, known models first in report order, then the others by name."""
    folder = run["root"] / "eval"
    found = {p.parent.name for p in folder.glob("*/results.json")} if folder.is_dir() else set()
    return [m for m in MODEL_LABELS if m in found] + sorted(found - set(MODEL_LABELS))


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, f"student, {model}")


def base_task(task: str) -> str:
    for suffix in TASK_VARIANTS:
        if task.endswith(suffix):
            return task.removesuffix(suffix)
    return task


def _loss_values(history) -> list[float] | None:
    """Dev losses as floats, from a list of losses or of [step, loss] pairs (as bench/distill_csqa.py records)."""
    if not isinstance(history, list) or not history:
        return None
    return [float(h[-1]) if isinstance(h, (list, tuple)) else float(h) for h in history]


def eval_losses(run: dict, model: str) -> list[float] | None:
    """The dev losses of a trained arm, in training order: `result.eval_losses` (or `dev_loss_history`) in its
    scotd.json where training recorded them, else the Trainer's `log_history` (trainer_state.json); None for a
    model trained without a dev slice, or not trained in this run."""
    student = run["root"] / "students" / model
    meta = student / "scotd.json"
    if meta.is_file():
        result = read_json(meta).get("result") or {}
        losses = _loss_values(result.get("eval_losses")) or _loss_values(result.get("dev_loss_history"))
        if losses:
            return losses
    state = student / "trainer_state.json"
    if state.is_file():
        return _loss_values([h["eval_loss"] for h in read_json(state).get("log_history", []) if "eval_loss" in h])
    return None


def accuracy_rows(run: dict) -> list[dict]:
    """One row per (model, task, filter) from the evaluate stage's lm-eval results, with the statistics the logged
    samples allow: n, a Wilson interval, the most common answer and the failure flags, and for a distilled arm
    McNemar's test against the label-only student on the same questions."""
    rows = []
    outcomes_by_model = {}
    for model in evaluated_models(run):
        outcomes_by_model[model] = outcomes = {}
        losses = eval_losses(run, model)
        for results, folder_outcomes in _result_folders(run["root"] / "eval" / model):
            outcomes.update(folder_outcomes)
            rows.extend(_rows_of(run, model, results, folder_outcomes, losses))
    for row in rows:
        row["vs_label_only"] = _paired_with_label_only(row, rows, outcomes_by_model)
        row["vs_cose"] = _paired_with_cose(row, rows, outcomes_by_model)
    return rows


def _result_folders(folder: Path):
    """(results, outcomes) of a model's evaluations: eval/<model>/ and its subfolders (eval/<model>/sc/: the
    self-consistency score the pipeline adds for its best student)."""
    for path in [folder / "results.json", *sorted(folder.glob("*/results.json"))]:
        if path.is_file():
            yield read_json(path), read_outcomes(path.parent)


def _rows_of(run: dict, model: str, results: dict, outcomes: dict, losses) -> list[dict]:
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, flt = key.partition(",")
            if metric != "acc" or not isinstance(value, (int, float)):
                continue
            flt = flt or "none"
            sampling = _sampling(results, task)
            if flt == FIRST_K_VOTE and sampling and sampling["chains"] == MIN_SC_SAMPLES:
                continue  # with 8 chains, the vote over the first 8 is the vote over all: one row, not two copies
            row = {
                "model": model, "label": model_label(model), "task": task, "filter": flt, "acc": float(value),
                "stderr": metrics.get(f"acc_stderr,{flt}"), "invalid_rate": metrics.get(f"invalid_rate,{flt}"),
                "sampling": sampling, "split": (results.get("scotd") or {}).get("split"),
            }
            row.update(_interval_and_check(outcomes.get((task, flt)), float(value),
                                           (results.get("n-samples") or {}).get(task, {}).get("effective"), losses,
                                           choices_of(task)))
            if model in UNTRAINED:  # a collapsed answer share describes them; "failed" is for training runs
                row["failed"] = False
            rows.append(row)
    return rows


def _sampling(results: dict, task: str) -> dict | None:
    """Chains per question and temperature of a sampled (self-consistency) task, from lm-eval's task config."""
    config = (results.get("configs") or {}).get(task) or {}
    repeats = config.get("repeats") or 1
    if repeats <= 1:
        return None
    return {"chains": repeats, "temperature": (config.get("generation_kwargs") or {}).get("temperature")}


def _decoding(row: dict) -> str:
    """`maj@8 (16 chains, T=0.7)`: a vote names how its chains were sampled."""
    s = row["sampling"]
    return f"{row['filter']} ({s['chains']} chains, T={s['temperature']})" if s else row["filter"]


def _interval_and_check(outcomes: dict | None, acc: float, n_results: int | None, losses,
                        choices: int | None = None) -> dict:
    """n, correct and the Wilson interval (from the samples when logged, else from lm-eval's sample count), and the
    failure check (the answer share needs the samples; the dev losses need training to have recorded them)."""
    if outcomes:
        n, correct = len(outcomes), sum(o.correct for o in outcomes.values())
    elif n_results:
        n, correct = int(n_results), round(acc * int(n_results))
    else:
        n = correct = None
    low, high = wilson_interval(correct, n, CONFIDENCE) if n else (None, None)
    check = check_run([o.prediction for o in outcomes.values()] if outcomes else [], losses, choices=choices)
    return {"n": n, "correct": correct, "ci_low": low, "ci_high": high,
            "most_common": check.most_common, "most_common_share": check.most_common_share if outcomes else None,
            "eval_losses": losses, "flags": check.flags, "failed": check.failed}


def label_only_for(model: str, models) -> str | None:
    """The label-only arm a distilled arm is paired with: `label_only<suffix>` for an arm named `<x><suffix>` (the
    2k-question `scotd_2k` with `label_only_2k`), the longest such suffix winning; else plain `label_only`."""
    matches = [m for m in models if m.startswith("label_only_") and model.endswith(m.removeprefix("label_only"))]
    if matches:
        return max(matches, key=len)
    return "label_only" if "label_only" in models else None


def _paired_with_label_only(row: dict, rows: list[dict], outcomes_by_model: dict) -> dict | None:
    """McNemar's exact test of a distilled arm's row against its label-only arm's row of the same task (any
    variant), on the questions both answered; None for baselines, without a label-only arm or logged samples."""
    if row["model"] in BASELINES or row["model"].startswith("label_only"):
        return None
    baseline = label_only_for(row["model"], outcomes_by_model)
    others = [r for r in rows if r["model"] == baseline and base_task(r["task"]) == base_task(row["task"])]
    others.sort(key=lambda r: not r["task"].endswith("_direct"))  # its own decoding (direct) first, stable otherwise
    if not others:
        return None
    paired = _paired(row, others[0], outcomes_by_model)
    return paired and {"against": paired["against"], "n": paired["n"], "arm_only": paired["only_a"],
                       "label_only_only": paired["only_b"], "difference": paired["difference"],
                       "p_value": paired["p_value"]}


def _paired_with_cose(row: dict, rows: list[dict], outcomes_by_model: dict) -> dict | None:
    """McNemar's exact test of a SCoTD student's greedy row against the CoS-E student of its size (`scotd_2k` with
    `cose_2k`) on the same task, filter and questions: whether the teacher's chains teach more than human
    explanations, asked directly rather than through a label-only baseline that may have failed."""
    if not row["model"].startswith("scotd") or row["sampling"]:
        return None
    cose = "cose" + row["model"].removeprefix("scotd")
    other = next((r for r in rows if r["model"] == cose and (r["task"], r["filter"]) == (row["task"], row["filter"])),
                 None)
    return _paired(row, other, outcomes_by_model) if other else None


def _paired(row: dict, other: dict, outcomes_by_model: dict) -> dict | None:
    """McNemar's exact test of two rows on the questions both answered (None without logged samples)."""
    mine = outcomes_by_model[row["model"]].get((row["task"], row["filter"]))
    theirs = outcomes_by_model[other["model"]].get((other["task"], other["filter"]))
    return _paired_outcomes(mine, theirs, f"{other['model']} {other['task']} {other['filter']}")


def _paired_outcomes(mine: dict | None, theirs: dict | None, against: str) -> dict | None:
    """McNemar's exact test of two students' outcomes ({question: Outcome}) on the questions both answered."""
    common = [q for q in mine if q in theirs] if mine and theirs else []
    if not common:
        return None
    paired = mcnemar([mine[q].correct for q in common], [theirs[q].correct for q in common])
    return {"against": against, "n": paired.n, "both": paired.both, "only_a": paired.only_a,
            "only_b": paired.only_b, "difference": paired.difference, "p_value": paired.p_value}


def _vs_cose_section(rows: list[dict]) -> str:
    lines = ["## The teacher's chains against human explanations\n",
             ("| student | task | n | SCoTD right, CoS-E wrong | CoS-E right, SCoTD wrong | difference (pts) | "
              "McNemar p |"), "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = r["vs_cose"]
        lines.append(f"| {r['model']} against {vs['against'].split()[0]} | {r['task']} | {vs['n']} | {vs['only_a']} | "
                     f"{vs['only_b']} | {100 * vs['difference']:+.1f} | {_p(vs['p_value'])} |")
    return "\n".join(lines) + ("\n\nEach SCoTD student against the CoS-E student trained on the same questions, on "
                               "the questions both answered (McNemar's exact test, two-sided).\n")


def _pct(x) -> str:
    return "" if x is None or isinstance(x, str) else f"{100 * x:.1f}"


def _p(x: float) -> str:
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


def _accuracy_table(rows: list[dict]) -> str:
    if not rows:
        return "_No evaluation results in this run yet._\n"
    out = [("| model | task | decoding | n | accuracy % | 95% CI | no answer % | top answer % | vs label-only "
           "(pts) | McNemar p | flag |"), "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ci = f"{_pct(r['ci_low'])}-{_pct(r['ci_high'])}" if r["ci_low"] is not None else ""
        top = f"{_pct(r['most_common_share'])} ({r['most_common']})" if r["most_common_share"] is not None else ""
        vs = r["vs_label_only"]
        delta, p = (f"{100 * vs['difference']:+.1f}", _p(vs["p_value"])) if vs else ("", "")
        flag = "**FAILED**: " + "; ".join(r["flags"]) if r["failed"] else ""
        task = r["task"] + (f" ({r['split']})" if r.get("split") not in (None, "validation") else "")
        out.append(f"| {r['label']} | {task} | {_decoding(r)} | {r['n'] or ''} | {_pct(r['acc'])} | {ci} | "
                   f"{_pct(r['invalid_rate'])} | {top} | {delta} | {p} | {flag} |")
    return "\n".join(out) + "\n"


STATS_NOTE = (
    "95% CI: Wilson score interval. vs label-only: the arm's accuracy minus the label-only student's on the "
    "questions both answered, with McNemar's exact test (two-sided binomial on the questions exactly one of them "
    "gets right). FAILED: the most common answer covers more than 50% of the questions (75% where there are two "
    "choices, since any answerer's top choice covers half of those; a collapsed run), or the "
    "last dev loss is above 1.5x the best (a diverged run); such a row measures a broken run, not the method.\n")

#: said under the table when it has a vote row: the pipeline picks that student by its greedy score on this split
SC_NOTE = (
    "Majority-vote rows (maj@N): the pipeline scores by vote only the SCoTD student with the best greedy accuracy "
    "on the run's own task, picked on the split shown. Compare its vote with its own greedy row; beside another "
    "arm, its lead carries that pick.\n")


def _plot_accuracy(rows: list[dict], path: Path) -> bool:
    """Bars with their Wilson intervals, one panel per task (the run's own task, then each transfer task) so the
    arms stand side by side where they are compared; each bar labelled with its accuracy and, for a distilled arm,
    its McNemar p against label-only; failed runs hatched in grey."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[dict]] = {}
    for r in rows:
        panels.setdefault(base_task(r["task"]).removeprefix("scotd_"), []).append(r)
    widths = [max(2.0, 0.9 * len(p)) for p in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1, 4.2), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (task, panel) in zip(axes[0], panels.items()):
        accs = [100 * r["acc"] for r in panel]
        err = [[a - 100 * r["ci_low"] if r["ci_low"] is not None else 0 for a, r in zip(accs, panel)],
               [100 * r["ci_high"] - a if r["ci_high"] is not None else 0 for a, r in zip(accs, panel)]]
        bars = ax.bar(range(len(panel)), accs, yerr=err, capsize=3, ecolor="black",
                      color=["#BBBBBB" if r["failed"] else "#4C72B0" for r in panel])
        for bar, r, top in zip(bars, panel, err[1]):
            if r["failed"]:
                bar.set_hatch("//")
            vs = r["vs_label_only"]
            note = f"{100 * r['acc']:.1f}" + (f"\np={_p(vs['p_value'])}" if vs else "")
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + top + 1, note, ha="center", va="bottom",
                    fontsize=6.5)
        split = next((r["split"] for r in panel if r.get("split")), None)
        ax.set_title(task + (f" ({split})" if split else ""), fontsize=9)
        ax.set_xticks(range(len(panel)), [f"{r['model']}\n{r['filter']}" for r in panel], fontsize=6.5,
                      rotation=90)
    axes[0][0].set_ylabel("accuracy (%), 95% Wilson interval")
    axes[0][0].set_ylim(0, 110)  # room for the labels above a bar near 100 %
    axes[0][0].set_yticks(range(0, 101, 20))
    fig.suptitle("Accuracy by task, model and decoding" +
                 (" (hatched: failed run)" if any(r["failed"] for r in rows) else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


#: filters that keep chains by a rule of their own: a sweep run using one is a selection arm, not a curve point
CURVE_FILTERS = ("correct", "all")


def sweep_rows(runs: list[dict]) -> list[dict]:
    """One row per run of a sweep (runs that differ in chains per question and in filters): its distilled
    student's greedy accuracy with the Wilson interval, and what its corpus held after filtering. A run whose
    filters are all `correct`/`all` is a point of the curve (a line per filter); any other is a selection arm.
    Each row is compared on the same questions with its reference (`_sweep_reference`), in `vs`, and with every
    row it is paired with (`_sweep_pairings`, the reference first), in `paired`."""
    rows, outcomes = [], []
    for run in runs:
        task = f"scotd_{run['config']['task']}"
        greedy = [r for r in accuracy_rows(run) if r["model"] == "scotd" and r["task"] == task
                  and r.get("split") in (None, run["config"].get("eval_split", "validation"))]
        if not greedy:
            continue
        filters = run["config"]["filters"]
        names = [f.split(":")[0] for f in filters]
        rows.append({"run": run["root"].name, "n": int(run["config"]["n"]), "filters": ", ".join(filters),
                     "filter_names": names,
                     "curve": all(name in CURVE_FILTERS for name in names),
                     "random_selection": {n for n in names if n not in CURVE_FILTERS} == {"random-k"},
                     "base": [f for f, name in zip(filters, names) if name in CURVE_FILTERS],
                     "k": _selected_k(filters),
                     **_corpus_kept(run), **_training_length(run), "acc": greedy[0]["acc"],
                     "ci_low": greedy[0]["ci_low"], "ci_high": greedy[0]["ci_high"],
                     "questions_evaluated": greedy[0]["n"]})
        merged: dict = {}  # (the folders accuracy_rows read, in its order)
        for _, folder_outcomes in _result_folders(run["root"] / "eval" / "scotd"):
            merged.update(folder_outcomes)
        outcomes.append(merged.get((task, greedy[0]["filter"])))
    for i, row in enumerate(rows):
        ref = _sweep_reference(i, rows)
        pairs = [(j, asks, _paired_outcomes(outcomes[i], outcomes[j], rows[j]["run"]))
                 for j, asks in _sweep_pairings(i, rows)]
        row["vs"] = next((paired for j, _, paired in pairs if j == ref), None)
        row["paired"] = [{**paired, "asks": asks} for _, asks, paired in pairs if paired]
    return rows


def _sweep_reference(i: int, rows: list[dict]) -> int | None:
    """The row a sweep row answers against: a curve point, the point of its filter with the fewest chains (do more
    chains per question help?); a selection arm, the arm that selects at random from as many chains per question
    (does the rule beat chance?). None for the reference itself, or where there is none."""
    row = rows[i]
    if row["curve"]:
        same = [j for j, r in enumerate(rows) if r["curve"] and r["filters"] == row["filters"]]
        ref = min(same, key=lambda j: rows[j]["n"])
    else:  # random selection after the same answer filter, from as many chains, keeping as many where one does
        same = [j for j, r in enumerate(rows)
                if r["random_selection"] and r["n"] == row["n"] and r["base"] == row["base"]]
        ref = next((j for j in same if rows[j]["k"] == row["k"]), same[0] if same else None)
    return None if ref == i else ref


def _sweep_pairings(i: int, rows: list[dict]) -> list[tuple[int, str]]:
    """Every row a sweep row is paired with, and what each pairing asks: its reference (`_sweep_reference`); for a
    curve point also the point before it on its line (where the curve flattens shows up here, not against the
    first point), and for a point of the few-shot setting (`all`, whatever its options) each supervised point
    (`correct`) with as many chains (what the wrong chains cost)."""
    row, out = rows[i], []
    ref = _sweep_reference(i, rows)
    if ref is not None:
        out.append((ref, "more chains per question, against the fewest" if row["curve"]
                    else "selection, against selecting at random"))
    if row["curve"]:
        line = [j for j, r in enumerate(rows) if r["curve"] and r["filters"] == row["filters"] and r["n"] < row["n"]]
        previous = max(line, key=lambda j: rows[j]["n"], default=None)
        if previous is not None and previous != ref:
            out.append((previous, "more chains per question, against the point before"))
        if row["filter_names"] == ["all"]:
            supervised = [j for j, r in enumerate(rows) if r["curve"] and r["filter_names"] == ["correct"]
                          and r["n"] == row["n"]]
            out.extend((j, "every chain (few-shot), against the correct ones (supervised)") for j in supervised)
    return out


def _selected_k(filters: list[str]) -> int | None:
    """Chains per question the last k-selection of a run keeps (None without one)."""
    from .corpus_filters import get_filter

    ks = [getattr(get_filter(spec), "k", None) for spec in filters]
    return next((k for k in reversed(ks) if k is not None), None)


def _training_length(run: dict) -> dict:
    """The distilled student's steps, the step of the checkpoint kept and its passes over the chains (from its
    scotd.json; `epochs` only where training recorded it)."""
    meta = run["root"] / "students" / "scotd" / "scotd.json"
    if not meta.is_file():
        return {}
    result = read_json(meta).get("result") or {}
    best = str(result.get("best_checkpoint") or "").removeprefix("checkpoint-")
    return {"steps": result.get("global_step"), "best_step": int(best) if best.isdigit() else None,
            "epochs": result.get("epochs")}


def _corpus_kept(run: dict) -> dict:
    """Chains and questions the filters kept, and distinct chains per question (after whitespace and case)."""
    path = run["root"] / "corpus.filtered.jsonl"
    if not path.is_file():
        return {}
    by_question: dict[str, set[str]] = {}
    chains = 0
    for _, rec in iter_jsonl(path):
        chains += 1
        by_question.setdefault(str(rec.get("id")), set()).add(" ".join(str(rec.get("rationale", "")).lower().split()))
    questions = len(by_question)
    return {"chains_kept": chains, "questions_kept": questions,
            "distinct_per_question": sum(map(len, by_question.values())) / questions if questions else None}


def training_corpora(run: dict) -> list[dict]:
    """What each corpus of a run with several arms or sizes holds (`chains` is corpus.filtered.jsonl, the others
    corpora/<stem>.jsonl): its size, rationale length and how often a rationale names the gold answer or another
    choice, which tells a rationale that leads to its answer from one the student cannot follow to a letter."""
    from .corpus import corpus_stats, read_corpus

    root = run["root"]
    if not (root / "corpora").is_dir():
        return []
    files = [("chains", root / "corpus.filtered.jsonl"),
             *((p.stem, p) for p in sorted((root / "corpora").glob("*.jsonl")))]
    out = []
    for stem, path in files:
        if not path.is_file():
            continue
        stats = corpus_stats(read_corpus(path))
        out.append({"corpus": stem, "questions": stats["questions"], "targets": stats["chains"],
                    "words_median": stats["rationale_words"]["p50"], "names_gold_answer": stats["names_gold_answer"],
                    "names_another_choice": stats["names_another_choice"]})
    return out


def _training_corpora_section(corpora: list[dict]) -> str:
    lines = ["## Training corpora\n",
             ("| corpus | questions | targets | rationale words (median) | names the gold answer % | "
              "names another choice % |"), "|---|---:|---:|---:|---:|---:|"]
    for c in corpora:
        lines.append(f"| {c['corpus']} | {c['questions']} | {c['targets']} | {c['words_median'] or ''} | "
                     f"{_pct(c['names_gold_answer'])} | {_pct(c['names_another_choice'])} |")
    return "\n".join(lines) + (
        "\n\nA student trains on the corpus of its arm and size (`scotd_2k` on `chains_2k`, `cose` on `cose`); "
        "label-only students read the chains corpus of their size for its questions and gold answers alone. A "
        "rationale names a choice when the choice's text appears in it as whole words (a plural too), in any case.\n")


def _sweep_section(rows: list[dict], path: Path, references: dict[str, float] | None = None) -> str:
    """Accuracy against chains per question, a line per filter (the plot, with the selection arms as points and
    `references`, {label: accuracy}, e.g. the teacher's, as level lines), then the selection arms' table."""
    curve = sorted((r for r in rows if r["curve"]), key=lambda r: (r["filters"], r["n"]))
    chosen = [r for r in rows if not r["curve"]]
    parts = ["## Accuracy against chains per question\n"]
    header = ("| run | n | filters | chains kept | questions | distinct chains / question | epochs | kept step | "
              "accuracy % | 95% CI | against | difference (pts) | McNemar p |\n"
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n")

    def line(r: dict) -> str:
        distinct, vs, epochs = r.get("distinct_per_question"), r.get("vs"), r.get("epochs")
        paired = f"{vs['against']} | {100 * vs['difference']:+.1f} | {_p(vs['p_value'])}" if vs else " | | "
        kept = f"{r['best_step']} of {r['steps']}" if r.get("best_step") is not None else r.get("steps", "")
        return (f"| {r['run']} | {r['n']} | {r['filters']} | {r.get('chains_kept', '')} | "
                f"{r.get('questions_kept', '')} | {'' if distinct is None else f'{distinct:.2f}'} | "
                f"{'' if epochs is None else f'{epochs:.1f}'} | {kept} | "
                f"{_pct(r['acc'])} | {_pct(r['ci_low'])}-{_pct(r['ci_high'])} | {paired} |\n")

    parts.append(header + "".join(map(line, curve)))
    if len({r["n"] for r in curve}) >= 2 and _plot_sweep(curve, chosen, path, references or {}):
        parts.append(f"\n![sweep]({path.name})\n")
        if references:
            parts.append("Grey level lines in the plot: " + "; ".join(
                f"{label} {_pct(acc)}%" for label, acc in references.items()) + ".\n")
    if chosen:
        parts.append("\n### Selecting chains\n\n" + header + "".join(map(line, chosen)))
    parts.append("\nEach run against, on the same questions (McNemar's exact test, two-sided): a point of the curve, "
                 "the point of its filter with the fewest chains per question; a selection, the one that selects "
                 "at random. `epochs`: passes over the chains the student trained on; `kept step`: the checkpoint "
                 "of lowest dev loss, of all the steps trained.\n")
    pairs = [(r, p) for r in curve + chosen for p in r.get("paired", [])]
    if pairs:
        parts.append("### Paired comparisons\n\n| run | against | asks | questions | both right | only run | "
                     "only against | difference (pts) | McNemar p |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n" +
                     "".join(f"| {r['run']} | {p['against']} | {p['asks']} | {p['n']} | {p['both']} | "
                             f"{p['only_a']} | {p['only_b']} | {100 * p['difference']:+.1f} | {_p(p['p_value'])} |\n"
                             for r, p in pairs) +
                     "\nOn the questions both answered: `only run` is how many the run gets right and the other "
                     "does not, and McNemar's exact test asks whether those two counts differ by more than chance.\n")
    return "\n".join(parts)


def _plot_sweep(curve: list[dict], chosen: list[dict], path: Path, references: dict[str, float]) -> list[str]:
    """Accuracy (with its interval) against n on a log axis, one line per filter setting; each selection arm a
    point of its own beside its n (set apart a little so the intervals do not hide each other), each reference a
    grey level line. Returns the legend's labels: what the plot shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for filters in sorted({r["filters"] for r in curve}):
        pts = [r for r in curve if r["filters"] == filters]
        ns, accs = [r["n"] for r in pts], [100 * r["acc"] for r in pts]
        err = [[a - 100 * r["ci_low"] if r["ci_low"] is not None else 0 for a, r in zip(accs, pts)],
               [100 * r["ci_high"] - a if r["ci_high"] is not None else 0 for a, r in zip(accs, pts)]]
        ax.errorbar(ns, accs, yerr=err, marker="o", capsize=3, label=filters)
    beside: dict[int, int] = {}  # selection arms drawn so far at each n
    for i, r in enumerate(chosen):
        acc, place = 100 * r["acc"], beside.setdefault(r["n"], 0) + 1
        beside[r["n"]] = place
        err = [[acc - 100 * r["ci_low"] if r["ci_low"] is not None else 0],
               [100 * r["ci_high"] - acc if r["ci_high"] is not None else 0]]
        ax.errorbar([r["n"] * 1.06 ** place], [acc], yerr=err, marker="sDv^<>p*h"[i % 9], linestyle="none",
                    capsize=3, label=r["run"])
    for i, (label, acc) in enumerate(references.items()):
        ax.axhline(100 * acc, linestyle=("--", ":", "-.")[i % 3], linewidth=1, color=("0.35", "0.0")[i // 3 % 2],
                   label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["n"] for r in curve}), [str(n) for n in sorted({r["n"] for r in curve})])
    ax.set_xlabel("chains per question (n)")
    ax.set_ylabel("student accuracy (%), 95% CI")
    ax.set_title("SCoTD: accuracy against sampled chains")
    if chosen or references:  # (more entries than fit beside the points: the legend goes to the right)
        fig.set_size_inches(8.0, 3.8)
        ax.legend(title="filter / run", fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(title="filter")
    labels = ax.get_legend_handles_labels()[1]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return labels


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


def student_rows(run: dict) -> list[dict]:
    """What each trained student saw: questions, examples, learning rate, epochs, optimizer steps, wall time."""
    rows = []
    for meta_path in sorted((run["root"] / "students").glob("*/scotd.json")):
        meta = read_json(meta_path)
        corpus, training, result = meta.get("corpus") or {}, meta.get("training") or {}, meta.get("result") or {}
        rows.append({"student": meta_path.parent.name, "target": meta.get("kind"),
                     "questions": corpus.get("questions"), "examples": corpus.get("examples"),
                     "learning_rate": training.get("learning_rate"), "epochs": _epochs_trained(training, result),
                     "steps": result.get("global_step"), "train_loss": result.get("train_loss"),
                     "best_dev_loss": result.get("best_dev_loss"), "wall_s": result.get("wall_s")})
    return rows


def _epochs_trained(training: dict, result: dict):
    """Passes over the chains: as training recorded them, else the setting, which max_steps overrides (an
    older student trained to a step count leaves it unknown)."""
    if result.get("epochs") is not None:
        return result["epochs"]
    return None if (training.get("max_steps") or 0) > 0 else training.get("num_train_epochs")


def _students_table(rows: list[dict]) -> str:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    out = ["## Students\n", ("| student | target | questions | examples | learning rate | epochs | steps | train loss | "
                             "best dev loss | wall s |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {r['student']} | {r['target'] or ''} | {num(r['questions'], 'd')} | {num(r['examples'], 'd')} | "
            f"{num(r['learning_rate'], 'g')} | {num(r['epochs'], '.3g')} | {num(r['steps'], 'd')} | "
            f"{num(r['train_loss'], '.4f')} | {num(r['best_dev_loss'], '.4f')} | {num(r['wall_s'], '.0f')} |"
            for r in rows]
    return "\n".join(out) + "\n"


def _tune_so_far(run: dict) -> dict | None:
    """A tune stage still running: the candidates scored so far (tune/scores.json), nothing chosen yet."""
    scores, tune = run["root"] / "tune" / "scores.json", run["config"].get("tune")
    if not tune or not scores.is_file():
        return None
    size = tune.get("questions")
    if size is None:  # the tune stage's default: the first training size
        size = (run["config"].get("train_sizes") or [{}])[0].get("questions")
    return {"grid": tune["learning_rate"], "epochs_grid": tune.get("epochs") or {}, "questions": size,
            "split": tune["split"], "limit": tune.get("limit"), "chosen": {}, "scores": read_json(scores),
            "in_progress": True}


def _tune_table(tune: dict, task: str | None = None) -> str:
    """The tuning grid: every candidate's held-out score, and the rate (and epochs) each arm went on with."""
    size = "all" if tune.get("questions") is None else tune["questions"]
    epochs_grid = tune.get("epochs_grid") or {}
    also = "".join(f" {arm} was then tuned over {', '.join(format(e, 'g') for e in grid)} epochs at its best rate."
                   for arm, grid in epochs_grid.items())
    out = [f"## Learning rate, tuned per arm\n\nEach arm trained on {size} questions once per rate of the grid "
           f"{', '.join(format(r, 'g') for r in tune['grid'])}, scored on {tune.get('limit') or 'all'} "
           f"`{tune['split']}` questions (never the evaluation split).{also} The best candidate per arm (a failed "
           f"one, with one answer to more than half of the questions (three quarters with two choices) or a diverged dev "
           f"loss, only when all are) "
           f"trained it at every size."
           + (" **In progress**: the candidates scored so far.\n" if tune.get("in_progress") else "\n"),
           ("| arm | learning rate | epochs | held-out accuracy % | n | top answer % | dev loss first → last | failed "
            "| minutes | chosen |"),
           "|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
    chosen_epochs = tune.get("chosen_epochs") or {}
    records = list(tune["scores"].values())
    for rec in sorted(records, key=lambda r: (r["arm"], r["learning_rate"], r.get("epochs") or 0)):
        arm = rec["arm"]
        chosen = tune["chosen"].get(arm) == rec["learning_rate"]
        if chosen and arm in chosen_epochs:  # a record without epochs (scored by an older version) is the base one
            same_rate = [r.get("epochs") for r in records if r["arm"] == arm and r["learning_rate"] == rec["learning_rate"]]
            chosen = (rec.get("epochs") == chosen_epochs[arm]
                      or (rec.get("epochs") is None and chosen_epochs[arm] not in same_rate))
        epochs = format(rec["epochs"], "g") if rec.get("epochs") is not None else ""
        losses = [x for x in rec.get("dev_losses") or () if x is not None]
        loss_span = f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""
        share = rec.get("most_common_share")
        minutes = f"{rec['seconds'] / 60:.0f}" if rec.get("seconds") is not None else ""
        failed = ["collapsed"] if share is not None and share > collapse_share(choices_of(task or "")) else []
        failed += ["diverged"] if diverged(losses) else []
        out.append(f"| {arm} | {rec['learning_rate']:g} | {epochs} | {_pct(rec['accuracy'])} | {rec.get('n') or ''} | "
                   f"{_pct(share)} | {loss_span} | {', '.join(failed)} | {minutes} | {'**yes**' if chosen else ''} |")
    return "\n".join(out) + "\n"


def _onnx_lines(meta: dict) -> list[str]:
    quant = meta.get("quantization") or {}
    what = f"{quant.get('bits')}-bit {quant.get('method')}" if quant else meta.get("dtype", "?")
    lines = [(f"Export: route `{meta.get('route')}`, {what}, {meta.get('size_mb')} MB, "
             f"{meta.get('export_seconds')} s.")]
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
> the method; that needs a large teacher on a real task: `scotd pipeline --preset csqa-palm` distils the released
> PaLM-540B CommonsenseQA chains against label-only and human-explanation baselines (hours on two CPU cores; see
> the README), and `scotd pipeline --config run.yaml` runs your own teacher (e.g. `task: csqa`, an `openai:`
> teacher at `api_base`, `n: 30`).
"""


def write_report(root: str | os.PathLike, sweep: list[str | os.PathLike] = (),
                 references: dict[str, float] | None = None) -> Path:
    """Write report.md, report.json (every row with its interval, paired test and flags), accuracy.png (and
    accuracy_vs_n.png for a sweep, `references` drawn as level lines), rating_sheet.{csv,html} into `root`."""
    run = load_run(root)
    out = run["root"]
    cfg = run["config"]
    if cfg.get("corpus_source", "sample") == "sample":
        source = (f"teacher `{cfg['teacher']}`, {cfg['n']} chains per question at temperature "
                  f"{cfg['temperature']}")
    elif cfg["corpus_source"] == "distilling-step-by-step":
        source = "chains imported from `distilling-step-by-step` (one per question)"
    else:
        source = f"chains from `{Path(cfg['corpus_source']).name}` (the first {cfg['n']} of each question)"
    parts = [(f"# SCoTD run report\n\nRun directory `{out.name}`: task **{cfg['task']}**, {source}, "
              f"student `{cfg['student']}`, filters {', '.join(cfg['filters'])}.\n")]
    if cfg["task"] == "demo":
        parts.append(DEMO_PREFACE)

    # a resumed stage records only the sitting that finished it (its earlier sittings end in a kill, unrecorded)
    parts.append("## Stages\n\n| stage | seconds (the sitting that finished it) | finished |\n|---|---:|---|\n" +
                 "".join(f"| {name} | {s.get('seconds', '')} | {s.get('finished', '')} |\n"
                         for name, s in run["stages"].items()))

    rows = accuracy_rows(run)
    voted = any(r["sampling"] for r in rows)
    parts.append("## Accuracy\n\n" + _accuracy_table(rows) + ("\n" + STATS_NOTE if rows else "")
                 + ("\n" + SC_NOTE if voted else ""))
    failed = [r for r in rows if r["failed"]]
    if failed:
        parts.append("**Failed runs** (not evidence about the method): " + "; ".join(
            f"{r['label']} on {r['task']} {r['filter']}: {', '.join(r['flags'])}" for r in failed) + ".\n")
    if _plot_accuracy(rows, out / "accuracy.png"):
        parts.append("![accuracy](accuracy.png)\n")
    against_cose = [r for r in rows if r["vs_cose"]]
    if against_cose:
        parts.append(_vs_cose_section(against_cose))

    students = student_rows(run)
    if students:
        parts.append(_students_table(students))
    tune = run["stages"].get("tune") or _tune_so_far(run)
    if tune:
        parts.append(_tune_table(tune, run["config"].get("task")))

    swept = sweep_rows([run] + [load_run(r) for r in sweep]) if sweep else []
    if swept:
        parts.append(_sweep_section(swept, out / "accuracy_vs_n.png", references))

    corpus = out / "corpus.jsonl"
    if corpus.is_file():
        from .corpus import corpus_stats, format_stats, read_corpus

        parts.append("## Teacher corpus\n\n```\n" + format_stats(corpus_stats(read_corpus(corpus))) + "\n```\n")
        filtered = run["stages"].get("filter")
        if filtered and {"chains_kept", "chains_in", "questions_kept"} <= set(filtered):
            parts.append(f"After filtering: {filtered['chains_kept']} of {filtered['chains_in']} chains, "
                         f"{filtered['questions_kept']} questions.\n")

    corpora = training_corpora(run)
    if corpora:
        parts.append(_training_corpora_section(corpora))

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

    atomic.write_json(out / "report.json", {
        "run": out.name, "config": cfg, "stages": run["stages"], "confidence": CONFIDENCE,
        "interval": "wilson", "paired_test": "mcnemar-exact", "arms": rows, "sweep": swept, "sweep_references": references or {},
        "tune": tune, "training_corpora": corpora})  # (while the stage runs too: every candidate scored so far, so a lost run keeps its record)
    path = out / "report.md"
    atomic.write_text(path, "\n".join(parts))
    return path
