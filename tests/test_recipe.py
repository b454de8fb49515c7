"""The arms-and-tuning pipeline (the `csqa-palm` preset's machinery) end to end on a synthetic data folder: an
imported teacher corpus, three arms at two sizes on the same questions, a learning rate tuned per arm on
train-holdout, transfer and self-consistency scores through scotd-onnx, the int4 export of the best student, the
report; and a run killed inside the tune stage resuming at the next candidate.

The student is a tiny random Llama (real training, export and lm-eval runs, in seconds): it checks the plumbing,
not accuracy. The shipped preset itself is checked by loading it (its run takes hours).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tiny_students import make_tiny_student

from scotd_harness.datasets import in_holdout
from scotd_harness.pipeline import load_config

LETTERS = "ABCDE"
OBJECTS = ["cup", "book", "lamp", "spoon", "chair", "shoe", "coat", "plate", "clock", "brush", "towel", "key"]
PLACES = ["kitchen", "library", "office", "garage", "garden", "bedroom", "school", "market", "station", "park"]


def write_data(root: Path, fixtures: Path, train: int = 70, dev: int = 8) -> Path:
    """commonsenseqa/ (official layout), distilling_step_by_step_cqa/ (PaLM release layout, one chain per train
    question, a few of them wrong), cose_v1.11/ (one explanation per question) and the fixture QuaRel files."""
    rng = random.Random(0)

    def question(i: int, split: str) -> dict:
        thing = OBJECTS[i % len(OBJECTS)]
        places = rng.sample(PLACES, 5)
        return {"answerKey": rng.choice(LETTERS), "id": f"syn-{split}-{i}",
                "question": {"question_concept": thing, "stem": f"Where would you put a {thing} number {i}?",
                             "choices": [{"label": lab, "text": t} for lab, t in zip(LETTERS, places)]}}

    csqa = root / "commonsenseqa"
    csqa.mkdir(parents=True)
    splits = {"train": [question(i, "train") for i in range(train)], "dev": [question(i, "dev") for i in range(dev)]}
    for split, rows in splits.items():
        (csqa / f"{split}_rand_split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    dss = root / "distilling_step_by_step_cqa"
    (dss / "llm").mkdir(parents=True)
    records, chains = [], []
    for i, q in enumerate(splits["train"]):
        choices = [c["text"] for c in q["question"]["choices"]]
        gold = LETTERS.index(q["answerKey"])
        said = gold if i % 10 != 3 else (gold + 1) % 5  # every tenth chain answers wrongly: `correct` drops it
        records.append({"id": q["id"], "question": q["question"]["stem"], "choices": choices, "answer": choices[gold]})
        chains.append(f"A {q['question']['question_concept']} is kept in the {choices[said]}. So the answer is "
                      f"({'abcde'[said]}) {choices[said]}.\n\nQ: the next exemplar")
    (dss / "cqa_train.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    (dss / "llm" / "train_CoT_0.json").write_text(json.dumps(chains))

    cose = root / "cose_v1.11"
    cose.mkdir()
    (cose / "cose_train_v1.11.jsonl").write_text("".join(
        json.dumps({"id": q["id"], "explanation": {"open-ended": f"people keep it in the {q['question']['choices'][0]['text']}",
                                                   "selected": ""}}) + "\n" for q in splits["train"]))
    shutil.copytree(fixtures / "data" / "quarel", root / "quarel")
    return root


def recipe(student: Path, data: Path) -> str:
    return f"""
task: csqa
corpus_source: distilling-step-by-step
data_dir: {data}
student: {student}
train_split: train-fit
filters: [correct]
arms: [label_only, scotd, cose]
train_sizes:
  - {{questions: 12}}
  - {{questions: null, train: {{num_train_epochs: 1}}}}
tune: {{learning_rate: [5.0e-5, 3.0e-3], split: train-holdout, limit: 4, epochs: {{label_only: [1, 2]}}}}
train: {{num_train_epochs: 1, per_device_train_batch_size: 4, max_length: 96, dev_fraction: 0.0, logging_steps: 1,
         disable_tqdm: true, save_steps: 2}}
eval_backend: onnx
eval_limit: 4
eval_batch_size: 4
eval_max_new_tokens: 12
max_new_tokens: 12
transfer_tasks: ["quarel:train"]
self_consistency: true
sc_samples: 8
export_quantize: int4
export_accuracy_sample: 2
infer_questions: 2
"""


#: the pipeline, SIGKILLed when the second training of the run begins (the callback is the only change)
KILL_AT_SECOND_TRAINING = """
import os, signal, sys
from transformers import TrainerCallback
import scotd_harness.train as training

class Kill(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        os.kill(os.getpid(), signal.SIGKILL)

real, calls = training.train, []
def train(cfg, callbacks=None):
    calls.append(cfg.output_dir)
    return real(cfg, callbacks=(callbacks or []) + ([Kill()] if len(calls) == 2 else []))
training.train = train
from scotd_harness.cli import cli
cli(sys.argv[1:])
"""


def _run(args, env, script: Path | None = None):
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "scotd_harness.cli"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_the_shipped_preset_loads_and_names_its_students():
    from scotd_harness.arms import students
    from scotd_harness.pipeline import stages_of
    from scotd_harness.recipes import names, path

    assert "csqa-palm" in names()
    cfg = load_config(path("csqa-palm"))
    assert stages_of(cfg) == ("sample", "filter", "tune", "train", "evaluate", "export", "infer")
    assert [s.name for s in students(cfg)] == ["label_only_2k", "scotd_2k", "cose_2k", "label_only", "scotd", "cose"]
    assert cfg.tune.split == "train-holdout" and cfg.train_split == "train-fit" and cfg.eval_split == "validation"
    assert cfg.tune.learning_rate == [5e-5, 1e-4, 2e-4] and cfg.tune.epochs == {"label_only": [2, 6]}
    assert cfg.train["num_train_epochs"] == 2 and cfg.train_sizes[1].train == {"num_train_epochs": 1}


def test_dev_slice_settings_that_contradict_each_other_are_refused_before_anything_runs():
    """A run's train: and a size's train: are each valid, merged they choose the dev slice twice: refused at the
    config, naming the size, not at the train stage hours later."""
    from scotd_harness.errors import ScotdError
    from scotd_harness.pipeline import PipelineConfig

    with pytest.raises(ScotdError, match=r"train \(with train_sizes 2000\): give dev_questions \(48\) or "
                                         r"dev_fraction \(0.05\), not both"):
        PipelineConfig.from_dict({"train": {"dev_fraction": 0.05},
                                  "train_sizes": [{"questions": 2000, "train": {"dev_questions": 48}}]})
    with pytest.raises(ScotdError, match="give dev_questions 48 alone"):
        PipelineConfig.from_dict({"train": {"dev_questions": 64, "max_dev_questions": 48}})
    assert PipelineConfig.from_dict({"train": {"dev_questions": 48}}).train == {"dev_questions": 48}


def test_tuning_on_the_test_split_or_on_trained_questions_is_refused(tmp_path):
    from scotd_harness.errors import ScotdError
    from scotd_harness.pipeline import PipelineConfig

    with pytest.raises(ScotdError, match="needs train_split: train-fit"):
        PipelineConfig.from_dict({"tune": {"learning_rate": [1e-4]}})
    with pytest.raises(ScotdError, match="evaluation split"):
        PipelineConfig.from_dict({"tune": {"learning_rate": [1e-4], "split": "validation"}})
    with pytest.raises(ScotdError, match="remove learning_rate"):
        PipelineConfig.from_dict({"train_split": "train-fit", "tune": {"learning_rate": [1e-4]},
                                  "train": {"learning_rate": 1e-3}})
    with pytest.raises(ScotdError, match="cose arm explains CSQA"):
        PipelineConfig.from_dict({"task": "quarel", "arms": ["scotd", "cose"]})
    with pytest.raises(ScotdError, match="tune.split train overlaps train_split train-fit"):
        PipelineConfig.from_dict({"train_split": "train-fit", "tune": {"learning_rate": [1e-4], "split": "train"}})
    with pytest.raises(ScotdError, match="needs a distilled arm"):
        PipelineConfig.from_dict({"arms": ["label_only"]})
    with pytest.raises(ScotdError, match="each task once, and not the run's own task"):
        PipelineConfig.from_dict({"transfer_tasks": ["quarel", "quarel:train"]})
    with pytest.raises(ScotdError, match=r"unknown key 'tune.lr' \(known keys: learning_rate, questions"):
        PipelineConfig.from_dict({"train_split": "train-fit", "tune": {"learning_rate": [1e-4], "lr": 1}})
    tuned = {"train_split": "train-fit", "arms": ["scotd", "label_only"]}
    with pytest.raises(ScotdError, match="tune.epochs names arms this run does not train: cose"):
        PipelineConfig.from_dict({**tuned, "tune": {"learning_rate": [1e-4], "epochs": {"cose": [4]}}})
    with pytest.raises(ScotdError, match="unknown arm 'lable_only'"):
        PipelineConfig.from_dict({**tuned, "tune": {"learning_rate": [1e-4], "epochs": {"lable_only": [4]}}})
    with pytest.raises(ScotdError, match="distinct whole numbers of at least 1"):
        PipelineConfig.from_dict({**tuned, "tune": {"learning_rate": [1e-4], "epochs": {"label_only": [0, 4]}}})
    PipelineConfig.from_dict({**tuned, "train": {"max_steps": -1},  # -1: train in epochs
                              "tune": {"learning_rate": [1e-4], "epochs": {"label_only": [4]}}})
    with pytest.raises(ScotdError, match="remove max_steps"):
        PipelineConfig.from_dict({**tuned, "train": {"max_steps": 50},
                                  "tune": {"learning_rate": [1e-4], "epochs": {"label_only": [4]}}})
    from scotd_harness.pipeline import run_pipeline

    with pytest.raises(ScotdError, match="--until sample comes before --from train"):
        run_pipeline(PipelineConfig(), tmp_path / "run", from_stage="train", until="sample")
    assert not (tmp_path / "run").exists()


def test_a_run_saved_before_a_nested_setting_existed_opens_and_a_changed_grid_is_refused(tmp_path):
    """tune.epochs came after runs were started: a saved config without it means the default (no epochs grid)."""
    from scotd_harness.errors import ScotdError
    from scotd_harness.pipeline import PipelineConfig, Run

    settings = {"train_split": "train-fit", "tune": {"learning_rate": [1e-4, 2e-4]}}
    Run(tmp_path, PipelineConfig.from_dict(settings)).open()
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["tune"]["epochs"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    Run(tmp_path, PipelineConfig.from_dict(settings)).open()
    with pytest.raises(ScotdError, match=r"other settings \(tune differ\)"):
        Run(tmp_path, PipelineConfig.from_dict({**settings, "tune": {"learning_rate": [1e-4, 2e-4],
                                                                      "epochs": {"scotd": [4]}}})).open()


def test_a_tuned_epochs_count_scales_to_every_size():
    """The README's rule: label-only tuned to 6 epochs at 2k (base 2) trains for 3 at full size (base 1)."""
    from scotd_harness.arms import students
    from scotd_harness.pipeline import PipelineConfig
    from scotd_harness.recipes import path
    from scotd_harness.student_stages import tuned_epochs

    cfg = load_config(path("csqa-palm"))
    by_name = {s.name: s for s in students(cfg)}
    assert tuned_epochs(cfg, by_name["label_only"], 6) == 3 and tuned_epochs(cfg, by_name["label_only_2k"], 6) == 6
    assert tuned_epochs(cfg, by_name["label_only"], 2) is None and tuned_epochs(cfg, by_name["scotd"], None) is None
    steps = PipelineConfig.from_dict({**cfg.model_dump(), "train": {**cfg.train, "max_steps": 100},
                                      "tune": {**cfg.tune.model_dump(), "epochs": {}}})
    assert tuned_epochs(steps, by_name["label_only"], 6) is None  # trained in steps: nothing to scale


def test_the_candidate_chosen_is_the_best_held_out_score_and_never_a_failed_one():
    from scotd_harness.pipeline import choose_candidate

    def cand(rate, acc, share, epochs=2, dev_losses=None):
        return {"learning_rate": rate, "accuracy": acc, "most_common_share": share, "epochs": epochs,
                "dev_losses": dev_losses}

    def rate(cands):
        return choose_candidate(cands)["learning_rate"]

    assert rate([cand(5e-5, 0.30, 0.3), cand(1e-4, 0.35, 0.3), cand(2e-4, 0.33, 0.2)]) == 1e-4
    # 2e-4 answers (d) to 90% of the questions and scores best on a holdout where (d) is common: not chosen
    assert rate([cand(5e-5, 0.30, 0.3), cand(2e-4, 0.40, 0.9)]) == 5e-5
    assert rate([cand(5e-5, 0.20, 0.8), cand(2e-4, 0.25, 0.9)]) == 2e-4  # all collapsed
    assert rate([cand(1e-4, 0.30, 0.3), cand(5e-5, 0.30, 0.3)]) == 5e-5  # tie: smaller
    # an epochs candidate wins on its score, loses a tie to fewer epochs, and never wins collapsed
    assert choose_candidate([cand(1e-4, 0.30, 0.3), cand(1e-4, 0.34, 0.3, epochs=6)])["epochs"] == 6
    assert choose_candidate([cand(1e-4, 0.30, 0.3, epochs=6), cand(1e-4, 0.30, 0.3)])["epochs"] == 2
    assert choose_candidate([cand(1e-4, 0.30, 0.3), cand(1e-4, 0.34, 0.7, epochs=6)])["epochs"] == 2
    # a diverged dev loss (the report's rule: last > 1.5x best) fails a candidate as a collapse does
    overfit = [0.18, 0.19, 0.28]
    assert choose_candidate([cand(1e-4, 0.30, 0.3), cand(1e-4, 0.34, 0.3, epochs=6, dev_losses=overfit)])["epochs"] == 2
    assert choose_candidate([cand(1e-4, 0.30, 0.3), cand(1e-4, 0.34, 0.3, epochs=6, dev_losses=overfit[:2])])["epochs"] == 6
    # every one failed: the best score among them (a collapse and a divergence count alike)
    assert choose_candidate([cand(1e-4, 0.15, 0.99), cand(1e-4, 0.18, 0.4, epochs=6, dev_losses=overfit)])["epochs"] == 6
    assert rate([cand(5e-5, 0.30, 0.3, dev_losses=[1.0, float("nan")]), cand(2e-4, 0.25, 0.3)]) == 2e-4


def test_preset_corpus_on_the_real_files(tmp_path, data_dir):
    """The csqa-palm preset's import and filter stages on the real data: the README's question count, every
    question with a PaLM chain that answers correctly and a CoS-E explanation, none from train-holdout."""
    env = {**os.environ, "SCOTD_DATA_DIR": str(data_dir)}
    run = tmp_path / "run"
    done = _run(["pipeline", "--preset", "csqa-palm", "--out", str(run), "--until", "filter"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "stages.json").read_text())["stages"]
    assert state["sample"]["chains"] == 9741 and state["filter"]["questions_kept"] == 6658
    corpora = state["filter"]["corpora"]
    assert corpora["chains"]["questions"] == corpora["cose"]["questions"] == 6658
    assert corpora["chains_2k"]["questions"] == corpora["cose_2k"]["questions"] == 2000
    ids = {json.loads(line)["id"] for line in (run / "corpus.filtered.jsonl").read_text().splitlines()}
    assert not any(in_holdout(i) for i in ids)


def test_a_corpus_file_gives_the_first_n_chains_of_each_question(tmp_path, fixtures_dir):
    """corpus_source: FILE (the chains-per-question curve takes n = 1, 4, 16 from one sample of 16): the first n
    chains by index, with their seeds' identity (sample_index) unchanged, restricted to the training split."""
    from scotd_harness.corpus import CorpusRow, read_corpus, write_corpus
    from scotd_harness.pipeline import PipelineConfig, run_pipeline

    data = write_data(tmp_path / "data", fixtures_dir)
    rows = [CorpusRow(task="csqa", id=qid, sample_index=j, question="Q?", choices=[["a", "x"], ["b", "y"]],
                      answer="a", rationale=f"chain {j} of {qid}", prediction="a", correct=True, teacher="onnx:t",
                      prompt_version="v1")
            for qid in ("syn-train-0", "syn-train-1", "syn-dev-0") for j in (3, 0, 2, 1)]
    corpus = tmp_path / "sampled.jsonl"
    write_corpus(rows, corpus)
    cfg = PipelineConfig.from_dict({"corpus_source": str(corpus), "n": 2, "filters": ["all"], "data_dir": str(data),
                                    "arms": ["scotd"]})
    run = run_pipeline(cfg, tmp_path / "run", until="filter", say=lambda msg: None)
    kept = list(read_corpus(run.filtered))
    assert sorted((r.id, r.sample_index) for r in kept) == [(q, j) for q in ("syn-train-0", "syn-train-1") for j in (0, 1)]
    assert {r.rationale for r in kept} >= {"chain 0 of syn-train-0", "chain 1 of syn-train-1"}
    with pytest.raises(Exception, match="neither"):
        PipelineConfig.from_dict({"corpus_source": str(tmp_path / "missing.jsonl")})


@pytest.mark.slow
def test_the_sample_stage_leaves_out_the_questions_of_exclude_questions(tmp_path, fixtures_dir):
    """A teacher samples only questions it never trained on: exclude_questions names its training corpus."""
    from scotd_harness.corpus import CorpusRow, read_corpus, write_corpus
    from scotd_harness.datasets import load_examples
    from scotd_harness.pipeline import PipelineConfig, run_pipeline

    first = [ex.id for ex in load_examples("demo", "train")][:3]
    seen = tmp_path / "teacher_corpus.jsonl"
    write_corpus([CorpusRow(task="demo", id=qid, sample_index=0, question="Q?", choices=[["a", "x"]], answer="a",
                            rationale="r", prediction="a", correct=True, teacher="t", prompt_version="v")
                  for qid in first[:2]], seen)
    cfg = PipelineConfig.from_dict({"task": "demo", "n": 1, "train_limit": 2, "max_new_tokens": 4,
                                    "exclude_questions": str(seen), "filters": ["all"]})
    run = run_pipeline(cfg, tmp_path / "run", until="sample", say=lambda msg: None)
    sampled = [r.id for r in read_corpus(run.corpus)]
    assert len(sampled) == 2 and first[2] in sampled and not set(sampled) & set(first[:2])


@pytest.mark.slow
def test_arms_tuned_evaluated_exported_and_resumed(tmp_path, fixtures_dir, embedded_model_dir):
    from scotd_harness.arms import subsample

    data = write_data(tmp_path / "data", fixtures_dir)
    student = make_tiny_student("llama", tmp_path / "tiny-llama", embedded_model_dir)
    config = tmp_path / "recipe.yaml"
    config.write_text(recipe(student, data))
    run = tmp_path / "run"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "SCOTD_DATA_DIR": str(data)}
    args = ["pipeline", "--config", str(config), "--out", str(run)]

    # import + filter: every arm's corpus on the same answer-filtered train-fit questions, the 12 among all of them
    first = _run([*args, "--until", "filter"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    corpora = {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
               for p in [run / "corpus.filtered.jsonl", *sorted((run / "corpora").glob("*.jsonl"))]}
    assert set(corpora) == {"corpus.filtered", "chains_12", "cose", "cose_12"}
    full = {r["id"] for r in corpora["corpus.filtered"]}
    assert full == {r["id"] for r in corpora["cose"]}
    assert all(r["correct"] and not in_holdout(r["id"]) for r in corpora["corpus.filtered"])
    assert len(full) == sum(1 for i in range(70) if i % 10 != 3 and not in_holdout(f"syn-train-{i}"))
    small = {r["id"] for r in corpora["chains_12"]}
    assert small == {r["id"] for r in corpora["cose_12"]} == subsample(full, 12, 0) and len(small) == 12
    assert all(r["teacher"].startswith("human:cose") for r in corpora["cose_12"])

    # killed as the second tuning candidate starts training; the rerun keeps the first candidate's score
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT_SECOND_TRAINING)
    killed = _run([*args, "--until", "tune"], env, script)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    scores = json.loads((run / "tune" / "scores.json").read_text())
    assert list(scores) == ["label_only_12 lr5e-05"]  # (a rate's name keeps its "-")
    with tarfile.open(run / "records.tar.gz") as tar:  # packed as the candidate was scored, inside the stage
        assert json.load(tar.extractfile("tune/scores.json")) == scores

    rest = _run(args, env)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "label_only_12 lr5e-05: trained already" not in rest.stderr  # scored already: not even reopened
    assert "tune label_only_12 at learning rate 5e-05\n" not in rest.stderr
    state = json.loads((run / "stages.json").read_text())["stages"]
    assert list(state) == ["sample", "filter", "tune", "train", "evaluate", "export", "infer"]
    tune = state["tune"]
    assert tune["grid"] == [5e-5, 3e-3] and set(tune["chosen"]) == {"label_only", "scotd", "cose"}
    # label-only also trained for 2 epochs (the tuning size's own 1 is a rate candidate) at its best rate
    assert len(tune["scores"]) == 7 and all(s["n"] == 4 for s in tune["scores"].values())
    twice = [s for s in tune["scores"].values() if s["epochs"] == 2]
    assert len(twice) == 1 and twice[0]["arm"] == "label_only"
    assert tune["chosen_epochs"]["scotd"] == tune["chosen_epochs"]["cose"] == 1
    for arm, rate in tune["chosen"].items():
        # the tuned student is the 12-question student; the full-corpus one trained at the same rate, for its own
        # epoch (1) times chosen / tuning-size epochs
        epochs = tune["chosen_epochs"][arm]
        for name in (f"{arm}_12", arm):
            meta = json.loads((run / "students" / name / "scotd.json").read_text())
            assert meta["training"]["learning_rate"] == rate and meta["training"]["num_train_epochs"] == epochs
        folders = {p.name for p in (run / "tune" / f"{arm}_12").iterdir()}
        chosen = f"lr{rate:g}" + ("-ep2" if epochs == 2 else "")
        assert chosen not in folders  # moved into students/
        assert not [f for f in folders if list((run / "tune" / f"{arm}_12" / f).glob("*.safetensors"))]
    assert json.loads((run / "students" / "scotd" / "scotd.json").read_text())["training"]["num_train_epochs"] == 1

    for name in ("undistilled", "label_only_12", "scotd_12", "cose_12", "label_only", "scotd", "cose"):
        results = json.loads((run / "eval" / name / "results.json").read_text())
        assert results["scotd"]["model_type"] == "scotd-onnx"
        direct = "_direct" if name.startswith("label_only") else ""
        assert set(results["results"]) == {f"scotd_csqa{direct}"} and results["scotd"]["split"] == "validation"
        transfer = json.loads((run / "eval" / name / "train-split" / "results.json").read_text())
        assert set(transfer["results"]) == {f"scotd_quarel{direct}"} and transfer["scotd"]["split"] == "train"
    best = state["export"]["student"]
    assert best in ("scotd_12", "cose_12", "scotd", "cose")
    sc = json.loads((run / "eval" / best / "sc" / "results.json").read_text())
    assert sc["scotd"]["sc_samples"] == 8 and "scotd_csqa_sc" in sc["results"]
    assert json.loads((run / "onnx" / "scotd.json").read_text())["quantization"]["bits"] == 4

    report = (run / "report.md").read_text()
    assert "## Learning rate, tuned per arm" in report and "## Students" in report
    assert "chains imported from `distilling-step-by-step`" in report and "| scotd_quarel (train) |" in report
    rows = json.loads((run / "report.json").read_text())["arms"]
    assert {(r["model"], r["task"]) for r in rows} >= {("scotd", "scotd_csqa"), ("cose_12", "scotd_quarel"),
                                                        (best, "scotd_csqa_sc")}
    paired = next(r for r in rows if r["model"] == "scotd_12" and r["task"] == "scotd_csqa")
    assert paired["vs_label_only"]["against"].startswith("label_only_12 scotd_csqa_direct")

    again = _run(args, env)
    assert again.returncode == 0 and again.stderr.count("done already, skipped") == 7

    # the run directory gone (scratch disk, another machine): its records go on in a new one. No candidate is
    # tuned and no model scored again; the one student trained is the exported one, whose weights the export needs
    moved = tmp_path / "moved"
    restored = _run([*args[:-1], str(moved), "--restore", str(run / "records.tar.gz")], env)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "at learning rate" not in restored.stderr  # (no candidate trained)
    assert restored.stderr.count("evaluated already") == 7 * 2 + 1 and "exporting to fp32" not in restored.stderr
    assert {p.parent.name for p in (moved / "students").glob("*/*.safetensors")} == {best}
    assert json.loads((moved / "stages.json").read_text())["stages"]["export"]["student"] == best
    assert json.loads((moved / "onnx" / "scotd.json").read_text())["quantization"]["bits"] == 4

    def table(root: Path) -> set:
        return {(r["model"], r["task"], r["filter"], r["acc"], r["n"]) for r in json.loads((root / "report.json").read_text())["arms"]}

    assert table(moved) == table(run)

    # a job that needs another student of the restored run (bench/chains_curve.py's teacher) trains it at its
    # arm's tuned rate
    spec = importlib.util.spec_from_file_location("chains_curve", Path(__file__).parents[1] / "bench" / "chains_curve.py")
    chains_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chains_curve)
    other = next(name for name in ("scotd_12", "cose_12") if name != best)
    teacher = chains_curve.trained_student(moved, other)
    assert list(teacher.glob("*.safetensors"))
    meta = json.loads((teacher / "scotd.json").read_text())
    assert meta["training"]["learning_rate"] == tune["chosen"][other.removesuffix("_12")]

    # --from evaluate in the restored run: its scores go, so every student is trained where it has none
    rescored = _run([*args[:-1], str(moved), "--from", "evaluate", "--until", "evaluate"], env)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert len(list((moved / "students").glob("*/*.safetensors"))) == 6
    assert table(moved) == table(run)  # (the same students again: training on the CPU is deterministic here)

    # an evaluate stage killed after its models were scored resumes without scoring any again
    from scotd_harness.pipeline import Run

    Run(run, load_config(config)).forget("evaluate")
    redo = _run([*args, "--until", "evaluate"], env)
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert redo.stderr.count("evaluated already") == 7 * 2 + 1 and "exporting" not in redo.stderr

    # --from train: the tuned students went with students/, so each arm retrains at its chosen rate; with
    # --score-as-trained each is scored in the train stage as soon as it is trained (eval/ went with --from train)
    retrain = _run([*args, "--from", "train", "--until", "train", "--score-as-trained"], env)
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    for arm, rate in tune["chosen"].items():
        meta = json.loads((run / "students" / f"{arm}_12" / "scotd.json").read_text())
        assert meta["training"]["learning_rate"] == rate
    assert "evaluate" not in json.loads((run / "stages.json").read_text())["stages"]
    scored = {p.parent.name for p in (run / "eval").glob("*/results.json")}
    assert scored == {"label_only_12", "scotd_12", "cose_12", "label_only", "scotd", "cose"}
    # each right after its own training: the first student's scores come before the second student's training
    log = retrain.stderr
    assert log.index("label_only_12:\n") < log.index("  scotd_12: ")
