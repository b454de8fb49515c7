"""`scotd report` with several arms: Wilson intervals, McNemar against label-only, failure flags, report.json and
the bar chart.

The first tests build a run folder whose eval/ files have the layout lm-eval writes (results.json with `acc,<filter>`
and `n-samples`; samples lines with doc, arguments, resps, filtered_resps, filter and the per-question `acc`, one
line per question and filter), with per-question outcomes chosen by the test, so every count the report derives
is known. The last test feeds the report real lm-eval output (`scotd eval` on a tiny student) to check that the
reader fits what lm-eval writes.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from click.testing import CliRunner

from scotd_harness import formats
from scotd_harness.cli import cli
from scotd_harness.report import _plot_sweep, accuracy_rows, load_run, write_report
from scotd_harness.stats import mcnemar_exact_p, wilson_interval

N = 40
LABELS = "abcde"
GOLD = [LABELS[i % 5] for i in range(N)]


def _doc(i: int) -> dict:
    choices = [[label, f"choice {label} of {i}"] for label in LABELS]
    return {"task": "csqa", "id": f"q{i}", "split": "validation", "question": f"Question {i}?", "choices": choices,
            "answer": GOLD[i]}


def _wrong(i: int) -> str:
    return LABELS[(i + 1) % 5]


def _generative_line(i: int, label: str, flt: str = "greedy") -> dict:
    doc = _doc(i)
    text = formats.student_target(f"Because of {label}.", label) if label != formats.INVALID else " I do not know."
    return {"doc_id": i, "doc": doc, "target": doc["answer"],
            "arguments": [[formats.student_input(doc["question"], [tuple(c) for c in doc["choices"]]),
                           {"until": list(formats.STOP_STRINGS), "do_sample": False, "temperature": 0.0}]],
            "resps": [[text]], "filtered_resps": [label], "filter": flt, "metrics": ["acc", "invalid_rate"],
            "doc_hash": "0", "prompt_hash": "0", "target_hash": "0",
            "acc": float(label == doc["answer"]), "invalid_rate": float(label == formats.INVALID)}


def _direct_line(i: int, label: str) -> dict:
    """A multiple-choice (log-likelihood) sample: the chosen label gets the highest log-likelihood."""
    doc = _doc(i)
    prompt = formats.student_input(doc["question"], [tuple(c) for c in doc["choices"]])
    lls = [[-1.0 if lab == label else -3.0 - k, lab == label] for k, lab in enumerate(LABELS)]
    return {"doc_id": i, "doc": doc, "target": LABELS.index(doc["answer"]),
            "arguments": [[prompt, formats.direct_target(lab)] for lab in LABELS], "resps": [[ll] for ll in lls],
            "filtered_resps": lls, "filter": "none", "metrics": ["acc", "invalid_rate"], "doc_hash": "0",
            "prompt_hash": "0", "target_hash": "0", "acc": float(label == doc["answer"]), "invalid_rate": 0.0}


def _write_eval(run, model: str, tasks: dict[str, dict[str, list[dict]]], samples: bool = True) -> None:
    """tasks: task -> filter -> sample lines; results.json aggregates them the way lm-eval does, with the task
    configs' `repeats` and sampling temperature (16 chains at 0.7 for the `_sc` tasks)."""
    folder = run / "eval" / model
    folder.mkdir(parents=True)
    results, n_samples = {}, {}
    configs = {task: {"task": task, "repeats": 16 if task.endswith("_sc") else 1,
                      "generation_kwargs": {"temperature": 0.7 if task.endswith("_sc") else 0.0}} for task in tasks}
    for task, by_filter in tasks.items():
        metrics = {"name": task, "alias": task}
        for flt, lines in by_filter.items():
            acc = sum(line["acc"] for line in lines) / len(lines)
            metrics[f"acc,{flt}"] = acc
            metrics[f"acc_stderr,{flt}"] = math.sqrt(acc * (1 - acc) / (len(lines) - 1))
            metrics[f"invalid_rate,{flt}"] = sum(line["invalid_rate"] for line in lines) / len(lines)
        results[task] = metrics
        n_samples[task] = {"original": N, "effective": len(next(iter(by_filter.values())))}
        if samples:
            text = "".join(json.dumps(line) + "\n" for lines in by_filter.values() for line in lines)
            (folder / f"samples_{task}.jsonl").write_text(text)
    (folder / "results.json").write_text(json.dumps({"results": results, "configs": configs, "n-samples": n_samples}))


#: per-question correctness chosen for each arm (question index -> right?)
LABEL_ONLY_RIGHT = set(range(12))
SCOTD_RIGHT = set(range(4, 30))


def _answers(right: set[int]) -> list[str]:
    return [GOLD[i] if i in right else _wrong(i) for i in range(N)]


@pytest.fixture
def arms_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": "csqa", "teacher": "openai:x", "student": "facebook/opt-1.3b",
                                                 "n": 1, "temperature": 1.0, "filters": ["correct"]}))
    (run / "stages.json").write_text(json.dumps({"stages": {"evaluate": {"seconds": 1.0, "finished": "now"}}}))
    undistilled = [formats.INVALID] * (N - 3) + [GOLD[N - 3], GOLD[N - 2], _wrong(N - 1)]
    _write_eval(run, "undistilled", {"scotd_csqa": {"greedy": [_generative_line(i, a) for i, a in enumerate(undistilled)]}})
    _write_eval(run, "label_only", {"scotd_csqa_direct": {
        "none": [_direct_line(i, a) for i, a in enumerate(_answers(LABEL_ONLY_RIGHT))]}})
    sc_n = _answers(set(range(34)))
    sc_8 = _answers(set(range(2, 33)))
    _write_eval(run, "scotd", {
        "scotd_csqa": {"greedy": [_generative_line(i, a) for i, a in enumerate(_answers(SCOTD_RIGHT))]},
        "scotd_csqa_sc": {"maj@N": [_generative_line(i, a, "maj@N") for i, a in enumerate(sc_n)],
                          "maj@8": [_generative_line(i, a, "maj@8") for i, a in enumerate(sc_8)]}})
    # the CoS-E arm collapsed to (d); the label-only student's dev loss diverged
    _write_eval(run, "cose", {"scotd_csqa": {"greedy": [_generative_line(i, "d") for i in range(N)]}})
    (run / "students" / "label_only").mkdir(parents=True)
    (run / "students" / "label_only" / "scotd.json").write_text(json.dumps({"result": {"eval_losses": [2.0, 1.0, 1.7]}}))
    # a healthy arm whose dev losses come as the Trainer's log history ([step, loss] pairs work too)
    (run / "students" / "scotd").mkdir(parents=True)
    (run / "students" / "scotd" / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"loss": 2.5, "step": 10}, {"eval_loss": 1.2, "step": 10}, {"eval_loss": 0.9, "step": 20},
        {"eval_loss": 1.0, "step": 30}]}))
    return run


def _row(rows, model, task, flt):
    (row,) = [r for r in rows if (r["model"], r["task"], r["filter"]) == (model, task, flt)]
    return row


def _exact_two_sided(b: int, c: int) -> float:
    return min(1.0, 2 * sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))


def test_rows_carry_intervals_paired_tests_and_flags(arms_run):
    rows = accuracy_rows(load_run(arms_run))
    assert [r["model"] for r in rows] == ["undistilled", "label_only", "cose", "scotd", "scotd", "scotd"]

    scotd = _row(rows, "scotd", "scotd_csqa", "greedy")
    assert (scotd["n"], scotd["correct"]) == (N, len(SCOTD_RIGHT))
    assert (scotd["ci_low"], scotd["ci_high"]) == wilson_interval(len(SCOTD_RIGHT), N)
    assert scotd["ci_low"] < scotd["acc"] < scotd["ci_high"]
    vs = scotd["vs_label_only"]
    only_scotd, only_label = len(SCOTD_RIGHT - LABEL_ONLY_RIGHT), len(LABEL_ONLY_RIGHT - SCOTD_RIGHT)
    assert (vs["n"], vs["arm_only"], vs["label_only_only"]) == (N, only_scotd, only_label) == (N, 18, 4)
    assert vs["p_value"] == pytest.approx(_exact_two_sided(18, 4)) and vs["p_value"] < 0.01
    assert vs["difference"] == pytest.approx((len(SCOTD_RIGHT) - len(LABEL_ONLY_RIGHT)) / N)
    assert vs["against"] == "label_only scotd_csqa_direct none" and not scotd["failed"]
    assert scotd["eval_losses"] == [1.2, 0.9, 1.0]

    # the two self-consistency filters of one samples file are told apart
    maj_n, maj_8 = _row(rows, "scotd", "scotd_csqa_sc", "maj@N"), _row(rows, "scotd", "scotd_csqa_sc", "maj@8")
    assert (maj_n["correct"], maj_8["correct"]) == (34, 31)
    assert maj_n["sampling"] == {"chains": 16, "temperature": 0.7} and scotd["sampling"] is None
    assert maj_n["vs_label_only"]["arm_only"] == 34 - 12 and maj_8["vs_label_only"]["label_only_only"] == 2

    # the label-only student's answer comes from its log-likelihoods; its dev loss diverged
    label_only = _row(rows, "label_only", "scotd_csqa_direct", "none")
    assert label_only["correct"] == len(LABEL_ONLY_RIGHT) and label_only["vs_label_only"] is None
    assert label_only["failed"] and label_only["flags"] == ["diverged: last dev loss 1.7 > 1.5x the best 1"]

    cose = _row(rows, "cose", "scotd_csqa", "greedy")
    assert cose["failed"] and (cose["most_common"], cose["most_common_share"]) == ("d", 1.0)
    assert cose["flags"] == [f"collapsed: answers d on 100% of {N} questions"]
    assert cose["vs_label_only"]["n"] == N  # a failed arm is still compared, and flagged beside its p-value

    undistilled = _row(rows, "undistilled", "scotd_csqa", "greedy")
    # the collapse shows in its row, but only a training run is flagged as failed
    assert undistilled["most_common"] == formats.INVALID and undistilled["flags"] and not undistilled["failed"]
    assert undistilled["vs_label_only"] is None and undistilled["correct"] == 2


def test_a_two_choice_task_is_flagged_as_collapsed_only_past_three_quarters(arms_run):
    """On QuaRel (two choices) a working student's top answer covers over half the questions; that is no collapse.
    One answer to every question is."""
    _write_eval(arms_run, "scotd/train-split", {"scotd_quarel": {
        "greedy": [_generative_line(i, "b" if i < 24 else "a") for i in range(N)]}})
    _write_eval(arms_run, "cose/train-split", {"scotd_quarel": {"greedy": [_generative_line(i, "a") for i in range(N)]}})
    rows = accuracy_rows(load_run(arms_run))
    scotd = _row(rows, "scotd", "scotd_quarel", "greedy")
    assert scotd["most_common_share"] == pytest.approx(0.6) and not scotd["failed"] and scotd["flags"] == []
    assert _row(rows, "cose", "scotd_quarel", "greedy")["flags"] == ["collapsed: answers a on 100% of 40 questions"]
    assert _row(rows, "cose", "scotd_csqa", "greedy")["failed"]  # (d) on all of a five-choice task, as before


def test_with_eight_chains_the_vote_is_one_row(arms_run):
    """With 8 chains (the pipeline's sc_samples) maj@8 votes over all of them, the same answers as maj@N: the report
    shows that vote once, not as two identical rows."""
    results = arms_run / "eval" / "scotd" / "results.json"
    data = json.loads(results.read_text())
    data["configs"]["scotd_csqa_sc"]["repeats"] = 8
    results.write_text(json.dumps(data))
    votes = [r for r in accuracy_rows(load_run(arms_run)) if r["task"] == "scotd_csqa_sc"]
    assert [(r["filter"], r["sampling"]["chains"]) for r in votes] == [("maj@N", 8)]


def test_an_arm_pairs_with_the_label_only_arm_of_its_size(arms_run):
    """`scotd_2k` is tested against `label_only_2k`, not against the full-corpus `label_only`."""
    shutil.copytree(arms_run / "eval" / "scotd", arms_run / "eval" / "scotd_2k")
    _write_eval(arms_run, "label_only_2k", {"scotd_csqa_direct": {"none": [_direct_line(i, GOLD[i]) for i in range(N)]}})
    (arms_run / "students" / "label_only_2k").mkdir()
    (arms_run / "students" / "label_only_2k" / "scotd.json").write_text(json.dumps(
        {"result": {"dev_loss_history": [[100, 0.4], [200, 0.3], [300, 0.5]]}}))  # [step, loss] pairs
    rows = accuracy_rows(load_run(arms_run))
    assert [r["model"] for r in rows][-4:] == ["label_only_2k", "scotd_2k", "scotd_2k", "scotd_2k"]
    vs = _row(rows, "scotd_2k", "scotd_csqa", "greedy")["vs_label_only"]
    assert vs["against"] == "label_only_2k scotd_csqa_direct none"
    assert (vs["arm_only"], vs["label_only_only"]) == (0, N - len(SCOTD_RIGHT))
    label_only_2k = _row(rows, "label_only_2k", "scotd_csqa_direct", "none")
    assert label_only_2k["vs_label_only"] is None and label_only_2k["eval_losses"] == [0.4, 0.3, 0.5]
    assert label_only_2k["flags"] == ["diverged: last dev loss 0.5 > 1.5x the best 0.3"]
    assert _row(rows, "scotd", "scotd_csqa", "greedy")["vs_label_only"]["against"].startswith("label_only scotd_csqa")


def test_report_files(arms_run):
    res = CliRunner().invoke(cli, ["report", str(arms_run)])
    assert res.exit_code == 0, res.output
    report = (arms_run / "report.md").read_text()
    low, high = wilson_interval(len(SCOTD_RIGHT), N)
    p = _exact_two_sided(18, 4)
    assert (f"| student, SCoTD-distilled | scotd_csqa | greedy | {N} | {100 * len(SCOTD_RIGHT) / N:.1f} | "
            f"{100 * low:.1f}-{100 * high:.1f} | 0.0 |") in report
    assert f"| +{100 * 14 / N:.1f} | {p:.2g} |  |" in report
    assert "| student, CoS-E human explanations | scotd_csqa | greedy |" in report
    assert "**FAILED**: collapsed: answers d on 100% of 40 questions" in report
    assert "**Failed runs** (not evidence about the method)" in report and "Wilson score interval" in report
    assert "| scotd_csqa_sc | maj@8 (16 chains, T=0.7) | 40 |" in report
    assert "scores by vote only the SCoTD student with the best greedy accuracy" in report
    # the teacher's chains against the human explanations: cose answered d everywhere, right on every fifth question
    cose_right = {i for i in range(N) if GOLD[i] == "d"}
    only_scotd, only_cose = len(SCOTD_RIGHT - cose_right), len(cose_right - SCOTD_RIGHT)
    assert (f"| scotd against cose | scotd_csqa | {N} | {only_scotd} | {only_cose} | "
            f"{100 * (only_scotd - only_cose) / N:+.1f} | {_exact_two_sided(only_scotd, only_cose):.1e} |") in report  # (p < 0.001)
    assert report.count(" against cose |") == 1  # greedy only: the vote rows are not paired

    data = json.loads((arms_run / "report.json").read_text())
    assert data["interval"] == "wilson" and data["paired_test"] == "mcnemar-exact" and data["confidence"] == 0.95
    assert [(a["model"], a["task"], a["filter"]) for a in data["arms"]] == [
        (r["model"], r["task"], r["filter"]) for r in accuracy_rows(load_run(arms_run))]
    png = (arms_run / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_the_vote_note_comes_only_with_a_vote_row(arms_run):
    shutil.rmtree(arms_run / "eval" / "scotd")
    _write_eval(arms_run, "scotd", {"scotd_csqa": {"greedy": [_generative_line(i, a) for i, a in
                                                              enumerate(_answers(SCOTD_RIGHT))]}})
    res = CliRunner().invoke(cli, ["report", str(arms_run)])
    assert res.exit_code == 0, res.output
    report = (arms_run / "report.md").read_text()
    assert "| student, SCoTD-distilled | scotd_csqa | greedy |" in report and "maj@" not in report
    assert "scores by vote only" not in report


def test_the_training_corpora_table(arms_run):
    from scotd_harness.corpus import CorpusRow, write_corpus

    def corpus(rationales: list[str]) -> list[CorpusRow]:
        return [CorpusRow(task="csqa", id=f"q{i}", sample_index=0, question=f"Question {i}?",
                          choices=_doc(i)["choices"], answer=GOLD[i], rationale=r, prediction=GOLD[i], correct=True,
                          logprob=None, num_tokens=None, teacher="t", prompt_version="v", temperature=None)
                for i, r in enumerate(rationales)]

    # chains: 3 of 4 name their gold answer's text, one names another choice too (median 5 words); cose: 1 of 4 (2)
    chains = [f"it is {_doc(0)['choices'][0][1]} here", f"so {_doc(1)['choices'][1][1]}, not {_doc(1)['choices'][0][1]}",
              f"clearly {_doc(2)['choices'][2][1]}", "no idea"]
    write_corpus(corpus(chains), arms_run / "corpus.filtered.jsonl")
    (arms_run / "corpora").mkdir()
    write_corpus(corpus([_doc(0)["choices"][0][1], "a website", "words", "x y"]), arms_run / "corpora" / "cose.jsonl")
    res = CliRunner().invoke(cli, ["report", str(arms_run)])
    assert res.exit_code == 0, res.output
    report = (arms_run / "report.md").read_text()
    assert "| chains | 4 | 4 | 5 | 75.0 | 25.0 |" in report
    assert "| cose | 4 | 4 | 2 | 25.0 | 0.0 |" in report
    data = json.loads((arms_run / "report.json").read_text())
    assert [c["corpus"] for c in data["training_corpora"]] == ["chains", "cose"]


def test_without_samples_the_interval_comes_from_lm_evals_count(arms_run):
    shutil.rmtree(arms_run / "eval")
    _write_eval(arms_run, "scotd", {"scotd_csqa": {"greedy": [_generative_line(i, a) for i, a in
                                                              enumerate(_answers(SCOTD_RIGHT))]}}, samples=False)
    (row,) = accuracy_rows(load_run(arms_run))
    assert (row["n"], row["correct"]) == (N, len(SCOTD_RIGHT)) and row["ci_low"] is not None
    assert row["most_common_share"] is None and row["vs_label_only"] is None and not row["failed"]
    write_report(arms_run)
    assert f"| {N} | {100 * len(SCOTD_RIGHT) / N:.1f} |" in (arms_run / "report.md").read_text()


def test_a_broken_samples_line_is_named(arms_run):
    path = arms_run / "eval" / "scotd" / "samples_scotd_csqa.jsonl"
    lines = path.read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["acc"]
    lines[2] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(cli, ["report", str(arms_run)])
    assert res.exit_code == 1 and f"{path}:3: field 'acc'" in res.output and "Traceback" not in res.output
    assert not (arms_run / "report.md").exists()


@pytest.mark.slow
def test_reads_what_lm_eval_writes(tmp_path, embedded_model_dir):
    """Real lm-eval output: a tiny random student on 5 questions of the built-in demo set, greedy CoT and direct in
    one evaluation (one model load), its folder used as two arms. The report's counts equal the per-question
    results of lm-eval's own samples files, and the generative and the log-likelihood task key the same questions,
    so a CoT arm pairs with a direct label-only arm."""
    from tiny_students import make_tiny_student

    from scotd_harness.eval_samples import read_outcomes
    from scotd_harness.evaluate import evaluate

    student = make_tiny_student("llama", tmp_path / "tiny", embedded_model_dir)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "demo", "teacher": "hf:embedded", "student": "embedded",
                                                 "n": 1, "temperature": 1.0, "filters": ["all"]}))
    evaluate(str(student), ["scotd_demo", "scotd_demo_direct"], limit=5, batch_size=5,
             output_dir=run / "eval" / "label_only", split="validation", log_samples=True, max_gen_toks=8)
    shutil.copytree(run / "eval" / "label_only", run / "eval" / "scotd")

    outcomes = read_outcomes(run / "eval" / "scotd")
    assert set(outcomes) == {("scotd_demo", "greedy"), ("scotd_demo_direct", "none")}
    assert set(outcomes["scotd_demo", "greedy"]) == set(outcomes["scotd_demo_direct", "none"])
    rows = {(r["model"], r["task"]): r for r in accuracy_rows(load_run(run))}
    for task in ("scotd_demo", "scotd_demo_direct"):
        logged = [json.loads(line) for line in (run / "eval" / "scotd" / f"samples_{task}.jsonl").read_text().splitlines()]
        row = rows["scotd", task]
        assert row["n"] == len(logged) == 5 and row["correct"] == sum(line["acc"] for line in logged)
        assert row["acc"] == pytest.approx(row["correct"] / 5)
        assert row["most_common"] in (*"abcde", formats.INVALID)
    # the direct task's answer is its likeliest choice, read from the logged log-likelihoods
    direct = [json.loads(line) for line in (run / "eval" / "scotd" / "samples_scotd_demo_direct.jsonl").open()]
    assert [o.prediction for o in outcomes["scotd_demo_direct", "none"].values()] == [
        line["doc"]["choices"][max(range(5), key=lambda i: line["filtered_resps"][i][0])][0] for line in direct]
    vs = rows["scotd", "scotd_demo"]["vs_label_only"]
    assert vs["n"] == 5 and vs["against"] == "label_only scotd_demo_direct none"  # label-only's own decoding
    assert write_report(run).is_file() and (run / "report.json").is_file()


def _sweep_run(root, name: str, n: int, filters: list[str], right: set[int], chains: list[tuple[int, str]]):
    """A run of a chains-per-question sweep: config, the distilled student's greedy eval, its filtered corpus
    (question index, rationale) lines."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "csqa", "teacher": "onnx:t", "student": "embedded", "n": n,
                                                 "temperature": 1.0, "filters": filters,
                                                 "corpus_source": "/data/corpus.jsonl"}))
    (run / "stages.json").write_text(json.dumps({"stages": {}}))
    _write_eval(run, "scotd", {"scotd_csqa": {"greedy": [_generative_line(i, a) for i, a in enumerate(_answers(right))]}})
    (run / "corpus.filtered.jsonl").write_text("".join(
        json.dumps({"id": f"t{q}", "rationale": text}) + "\n" for q, text in chains))
    return run


def test_sweep_draws_a_line_per_filter_and_tables_the_selection_arms(tmp_path):
    """`scotd report RUN --sweep ...` over runs differing in n and filters: the curve rows (correct, all) with
    intervals and corpus statistics, the selection arm in a table of its own, the plot, report.json."""
    runs = {
        "n1-correct": (1, ["correct"], set(range(10)), [(0, "a b"), (1, "c d")]),
        "n4-correct": (4, ["correct"], set(range(16)), [(0, "a b"), (0, "A  b"), (0, "x y"), (1, "c d")]),
        "n16-correct": (16, ["correct"], set(range(5, 20)), [(0, "a b"), (1, "c d")]),
        "n1-all": (1, ["all"], set(range(8)), [(0, "a b"), (1, "c d"), (2, "e f")]),
        "n4-all": (4, ["all"], set(range(12)), [(0, "a b"), (0, "q r"), (1, "c d"), (2, "e f")]),
        "n4-all-nonempty": (4, ["all:drop_empty=true"], set(range(10)), [(0, "a b")]),  # a line of its own
        "n4-all-random-k": (4, ["all", "random-k:k=2"], set(range(2)), [(0, "a b")]),  # not from correct chains
        "n4-random-k3": (4, ["correct", "random-k:k=3"], set(range(1)), [(0, "a b")]),  # keeps 3, not 2
        "n4-random-k": (4, ["correct", "random-k:k=2"], set(range(14)), [(0, "a b"), (0, "x y")]),
        "n4-likelihood-k": (4, ["correct", "likelihood-k:k=2"], set(range(4, 20)), [(0, "a b"), (1, "c d")]),
        "n1-diversity-k": (1, ["correct", "diversity-k:k=1"], set(range(3)), [(0, "a b")]),
    }
    dirs = [_sweep_run(tmp_path, name, *spec) for name, spec in runs.items()]
    student = tmp_path / "n4-correct" / "students" / "scotd"  # what `scotd train` recorded of its length
    student.mkdir(parents=True)
    (student / "scotd.json").write_text(json.dumps({"result": {"global_step": 500, "best_checkpoint": "checkpoint-300",
                                                               "epochs": 12.46}}))
    res = CliRunner().invoke(cli, ["report", str(dirs[0]), *[arg for d in dirs[1:] for arg in ("--sweep", str(d))]])
    assert res.exit_code == 0, res.output
    report = (dirs[0] / "report.md").read_text()
    sweep = json.loads((dirs[0] / "report.json").read_text())["sweep"]
    by_run = {r["run"]: r for r in sweep}
    assert set(by_run) == set(runs)
    assert [r["curve"] for r in sweep].count(False) == 5 and not by_run["n4-random-k"]["curve"]
    four = by_run["n4-correct"]
    assert four["acc"] == 16 / N and (four["ci_low"], four["ci_high"]) == wilson_interval(16, N)
    # 4 chains over 2 questions; question t0 has 2 distinct chains once case and spacing are set aside
    assert (four["chains_kept"], four["questions_kept"], four["distinct_per_question"]) == (4, 2, 1.5)
    curve, selection = report.split("### Selecting chains")
    assert "| n4-all | 4 | all |" in curve and "| n4-random-k |" in selection and "random-k" not in curve
    assert "| 1.50 | 12.5 | 300 of 500 | 40.0 |" in curve and (four["epochs"], four["best_step"]) == (12.46, 300)
    # more chains against fewer of the same filter, a selection against random selection, on the same questions
    assert by_run["n1-correct"]["vs"] is None and by_run["n4-random-k"]["vs"] is None
    assert by_run["n1-diversity-k"]["vs"] is None  # no random selection from 1 chain per question to beat
    more = by_run["n4-correct"]["vs"]
    assert (more["against"], more["only_a"], more["only_b"], more["n"]) == ("n1-correct", 6, 0, N)
    assert more["p_value"] == mcnemar_exact_p(6, 0)
    chosen = by_run["n4-likelihood-k"]["vs"]  # the random arm that also keeps 2 correct chains of 4
    assert (chosen["against"], chosen["only_a"], chosen["only_b"]) == ("n4-random-k", 6, 4)
    assert f"| n4-random-k | {100 * 2 / N:+.1f} | {chosen['p_value']:.2g} |" in selection
    assert "| n1-all | +10.0 |" in curve
    # every pairing and what it asks: the point before on the line (n16 against n4, not only against n1), the
    # few-shot point against the supervised one with as many chains, and a selection against random
    pairs = [(r["run"], p["against"]) for r in sweep for p in r["paired"]]
    assert sorted(pairs) == sorted([
        ("n4-correct", "n1-correct"), ("n16-correct", "n1-correct"), ("n16-correct", "n4-correct"),
        ("n4-all", "n1-all"), ("n4-all", "n4-correct"), ("n1-all", "n1-correct"), ("n4-all-nonempty", "n4-correct"),
        ("n4-likelihood-k", "n4-random-k")])  # (each once; random arms and n1-diversity-k: no random to beat)
    paired = {(r["run"], p["against"]): p for r in sweep for p in r["paired"]}
    assert all(r["vs"] is None or r["vs"] == {k: v for k, v in r["paired"][0].items() if k != "asks"} for r in sweep)
    flat = paired["n16-correct", "n4-correct"]  # right on 5-19 against 0-15
    assert (flat["n"], flat["both"], flat["only_a"], flat["only_b"]) == (N, 11, 4, 5)
    assert flat["p_value"] == mcnemar_exact_p(4, 5) and "point before" in flat["asks"]
    wrong = paired["n4-all", "n4-correct"]  # right on 0-11 against 0-15
    assert (wrong["both"], wrong["only_a"], wrong["only_b"]) == (12, 0, 4) and "supervised" in wrong["asks"]
    assert "supervised" in paired["n4-all-nonempty", "n4-correct"]["asks"]  # few-shot with options is few-shot
    table = report.split("### Paired comparisons")[1]
    assert f"| n16-correct | n4-correct | {flat['asks']} | {N} | 11 | 4 | 5 | -2.5 | " in table
    assert (dirs[0] / "accuracy_vs_n.png").stat().st_size > 1000
    assert "Grey level lines" not in report
    # the plot shows each selection arm as a point, and the level lines a caller gives (bench/chains_curve.py
    # gives the teacher's accuracy)
    curve = [r for r in sweep if r["curve"]]
    chosen = [r for r in sweep if not r["curve"]]
    drawn = _plot_sweep(curve, chosen, tmp_path / "plot.png", {"teacher, few-shot": 0.37})
    assert set(drawn) == {r["filters"] for r in curve} | {r["run"] for r in chosen} | {"teacher, few-shot"}
    write_report(dirs[0], sweep=dirs[1:], references={"teacher, few-shot": 0.37})
    assert "Grey level lines in the plot: teacher, few-shot 37.0%." in (dirs[0] / "report.md").read_text()
    assert json.loads((dirs[0] / "report.json").read_text())["sweep_references"] == {"teacher, few-shot": 0.37}


def test_report_shows_the_tuning_candidates_scored_so_far(tmp_path):
    """`scotd report` on a run whose tune stage is still running: the candidates in tune/scores.json, the grid and
    the size from the config, and no rate marked chosen yet; once the stage is done, the one chosen candidate of
    an arm tuned in epochs too is marked, not the other one at the same rate."""
    run = tmp_path / "run"
    (run / "tune").mkdir(parents=True)
    tune = {"learning_rate": [5e-5, 1e-4], "questions": None, "split": "train-holdout", "limit": 300,
            "epochs": {"label_only": [2, 6]}}
    (run / "config.json").write_text(json.dumps({
        "task": "csqa", "teacher": "hf:embedded", "student": "embedded", "n": 1, "temperature": 1.0,
        "filters": ["correct"], "corpus_source": "distilling-step-by-step", "train_sizes": [{"questions": 2000}],
        "tune": tune}))
    (run / "stages.json").write_text(json.dumps({"stages": {"filter": {"seconds": 1.0, "finished": "now"}}}))
    scores = {"label_only_2k lr5e-05": {"arm": "label_only", "learning_rate": 5e-5, "accuracy": 0.31, "n": 300,
                                        "most_common_share": 0.22},  # recorded before candidates had epochs
              "label_only_2k lr5e-05 ep6": {"arm": "label_only", "learning_rate": 5e-5, "epochs": 6, "accuracy": 0.35,
                                            "n": 300, "most_common_share": 0.25, "dev_losses": [0.2, 0.18, 0.19],
                                            "seconds": 3060.0},
              "label_only_2k lr0.0001": {"arm": "label_only", "learning_rate": 1e-4, "accuracy": 0.16, "n": 300,
                                         "most_common_share": 0.99, "dev_losses": [0.19, 0.17, 0.28]}}
    (run / "tune" / "scores.json").write_text(json.dumps(scores))
    report = write_report(run).read_text()
    table = report.split("## Learning rate, tuned per arm")[1]
    assert "trained on 2000 questions" in table and "**In progress**" in table
    assert "label_only was then tuned over 2, 6 epochs at its best rate" in table
    assert "| label_only | 5e-05 |  | 31.0 | 300 | 22.0 |  |  |  |  |" in table and "**yes**" not in table
    # the flags of choose_candidate's rule, with the dev loss that raised one
    assert "| label_only | 0.0001 |  | 16.0 | 300 | 99.0 | 0.190 → 0.280 | collapsed, diverged |  |  |" in table
    # report.json keeps every candidate's record while the stage runs (what a committed report must carry)
    assert json.loads((run / "report.json").read_text())["tune"]["scores"] == scores

    def finished(chosen_epochs):
        (run / "stages.json").write_text(json.dumps({"stages": {
            "filter": {"seconds": 1.0, "finished": "now"},
            "tune": {"seconds": 9.0, "finished": "now", "grid": tune["learning_rate"], "epochs_grid": tune["epochs"],
                     "questions": 2000, "split": "train-holdout", "limit": 300, "chosen": {"label_only": 5e-5},
                     "chosen_epochs": {"label_only": chosen_epochs}, "scores": scores}}}))
        return write_report(run).read_text().split("## Learning rate, tuned per arm")[1]

    # the record without epochs is the base (2-epoch) candidate: chosen when 2 epochs won
    table = finished(2)
    assert "| label_only | 5e-05 |  | 31.0 | 300 | 22.0 |  |  |  | **yes** |" in table
    # the minutes a candidate took (training and scoring), where it recorded them
    assert "| label_only | 5e-05 | 6 | 35.0 | 300 | 25.0 | 0.200 → 0.190 |  | 51 |  |" in table and "In progress" not in table
    scores["label_only_2k lr5e-05"]["epochs"] = 2
    table = finished(6)
    assert "| label_only | 5e-05 | 2 | 31.0 | 300 | 22.0 |  |  |  |  |" in table
    assert "| label_only | 5e-05 | 6 | 35.0 | 300 | 25.0 | 0.200 → 0.190 |  | 51 | **yes** |" in table

def test_students_table_gives_the_passes_trained_not_a_setting_max_steps_overrode(tmp_path):
    """`num_train_epochs` is 3 by default and means nothing under max_steps: the table shows the epochs training
    recorded, the setting where no step count overrode it, and nothing where neither is known."""
    from scotd_harness.report import student_rows

    metas = {"counted": ({"max_steps": 500, "num_train_epochs": 3.0}, {"global_step": 500, "epochs": 12.46}),
             "older": ({"max_steps": 500, "num_train_epochs": 3.0}, {"global_step": 500}),
             "by_epochs": ({"max_steps": -1, "num_train_epochs": 2.0}, {"global_step": 80})}
    for name, (training, result) in metas.items():
        (tmp_path / "students" / name).mkdir(parents=True)
        (tmp_path / "students" / name / "scotd.json").write_text(json.dumps({"training": training, "result": result}))
    rows = {r["student"]: r["epochs"] for r in student_rows({"root": tmp_path})}
    assert rows == {"counted": 12.46, "older": None, "by_epochs": 2.0}
