"""`scotd pipeline` end to end (reduced size) on the embedded model, its config validation and resumption (between
stages, and inside training from a Trainer checkpoint after a SIGKILL), and `scotd report` on the finished run."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tiny_students import make_tiny_student

from scotd_harness.cli import cli
from scotd_harness.errors import ScotdError
from scotd_harness.pipeline import DEMO, PipelineConfig, Run, load_config

#: the demonstration run, cut down: every stage runs for real, on 4 questions and 2 chains each
REDUCED = """\
task: demo
teacher: hf:embedded
student: embedded
train_limit: 4
eval_limit: 4
n: 2
temperature: 1.0
max_new_tokens: 24
filters: [all]
train: {max_steps: 2, per_device_train_batch_size: 4, max_length: 160, save_strategy: "no", dev_fraction: 0.0}
label_only_baseline: true
evaluate_teacher: true
eval_batch_size: 4
eval_max_new_tokens: 32
export_quantize: int4
export_accuracy_sample: 2
infer_questions: 2
"""


def _scotd(*args, cwd, timeout=1500):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "scotd_harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: demo\nnn: 3\n")
    with pytest.raises(ScotdError, match="unknown key 'nn'"):
        load_config(bad)
    bad.write_text("task: demo\nn: three\n")
    with pytest.raises(ScotdError, match="key 'n' must be int"):
        load_config(bad)
    bad.write_text("task: demo\ntrain: {learning_rat: 0.1}\n")
    with pytest.raises(ScotdError, match="train.learning_rat"):
        load_config(bad)
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ScotdError, match="bad.yaml:.*not valid YAML"):
        load_config(bad)
    bad.write_text("task: gsm8k\n")
    with pytest.raises(ScotdError, match="unknown task 'gsm8k'"):
        load_config(bad)
    assert load_config(None) is DEMO and PipelineConfig().n == 30 and PipelineConfig().temperature == 1.0


@pytest.mark.parametrize("text, message", [
    ("task: demo\nn: 2.5\n", "bad.yaml:2: key 'n' must be int, got 2.5"),  # strict: no silent truncation
    ("task: demo\nn: '3'\n", "bad.yaml:2: key 'n' must be int, got '3'"),
    ("seed: 1\ntrain_limit: yes\n", "bad.yaml:2: key 'train_limit' must be int or null, got True"),
    ("filters: [all, 3]\n", "bad.yaml:1: key 'filters.1' must be str, got 3"),
    ("n: 0\n", "bad.yaml:1: key 'n': input should be greater than or equal to 1"),
    ("task: demo\ntrain:\n  num_train_epochs: 1\n  learning_rat: 0.1\n",
     "bad.yaml:4: key 'train.learning_rat' is not an option of scotd train"),
    ("train: {resume_from_checkpoint: last}\n", "key 'train.resume_from_checkpoint' is set by the pipeline itself"),
    ("teacher: embedded\n", "bad.yaml:1: key 'teacher': must be BACKEND:MODEL"),
    ("export_quantize: int3\n", "bad.yaml:1: key 'export_quantize': must be one of int4, int4-uniform, int8 or null"),
    ("- task: demo\n", "bad.yaml: expected a mapping of settings at the top level"),
])
def test_config_is_validated_strictly_with_file_line_and_key(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ScotdError) as e:
        load_config(bad)
    assert message in str(e.value)


def test_config_accepts_an_int_for_a_float_and_round_trips(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("task: demo\ntemperature: 1\nexport_quantize: null\ntrain: {learning_rate: 1.0e-4}\n")
    cfg = load_config(good)
    assert cfg.temperature == 1.0 and cfg.export_quantize is None and cfg.train == {"learning_rate": 1e-4}
    assert PipelineConfig.from_dict(cfg.model_dump()) == cfg


def test_a_run_config_loads_back_with_exponent_floats(tmp_path):
    """Python writes 5e-05 into a run's config.json and users write 1e-4; PyYAML (YAML 1.1) reads both as strings,
    so a run's own recorded config was refused by --config ('must be float, got 5e-05')."""
    cfg = PipelineConfig.from_dict({"task": "csqa", "train_split": "train-fit", "train": {"weight_decay": 5e-05},
                                    "tune": {"learning_rate": [5e-05, 2e-4]}})
    recorded = tmp_path / "config.json"
    recorded.write_text(json.dumps(cfg.model_dump(), indent=2))
    assert "5e-05" in recorded.read_text()
    assert load_config(recorded) == cfg
    written = tmp_path / "by-hand.yaml"
    written.write_text("task: demo\ntrain: {learning_rate: 1e-4, weight_decay: 1E-2, warmup_ratio: .5}\n"
                       "seed: 7\nteacher: hf:embedded\n")
    loaded = load_config(written)
    assert loaded.train == {"learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.5} and loaded.seed == 7


def test_cli_reports_a_bad_config_cleanly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("export_quantize: int3\n")
    result = CliRunner().invoke(cli, ["pipeline", "--config", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "export_quantize" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_reduced_pipeline_runs_every_stage_and_resumes(tmp_path, embedded_model_dir):
    config = tmp_path / "reduced.yaml"
    config.write_text(REDUCED)
    run = tmp_path / "run"

    first = _scotd("pipeline", "--config", str(config), "--out", str(run), "--until", "filter", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "corpus.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {(r["id"], r["sample_index"]) for r in rows} == {
        (f"demo-train-{i}", j) for i in range(1, 5) for j in range(2)}
    assert (run / "corpus.filtered.jsonl").read_text().count("\n") == 8  # filter `all` keeps every chain

    rest = _scotd("pipeline", "--config", str(config), "--out", str(run), cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "sample: done already, skipped" in rest.stderr and "filter: done already, skipped" in rest.stderr
    state = json.loads((run / "stages.json").read_text())["stages"]
    assert list(state) == ["sample", "filter", "train", "evaluate", "export", "infer"]  # no grid: no tune

    for name in ("scotd", "label_only"):
        student = run / "students" / name
        assert (student / "model.safetensors").is_file() and (student / "scotd.json").is_file()
    for name in ("teacher", "undistilled", "label_only", "scotd"):
        results = json.loads((run / "eval" / name / "results.json").read_text())["results"]
        (task, metrics), = results.items()
        assert task.startswith("scotd_demo") and 0.0 <= metrics[next(k for k in metrics if k.startswith("acc,"))] <= 1.0
    onnx_meta = json.loads((run / "onnx" / "scotd.json").read_text())
    assert list((run / "onnx").glob("*.onnx")) and onnx_meta["quantization"]["bits"] == 4
    assert onnx_meta["parity"]["prompts"] and all(p["same_tokens"] for p in onnx_meta["parity"]["prompts"])
    answers = [json.loads(line) for line in (run / "infer.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(a["answer"] in "abcde" or a["answer"] == "[invalid]" for a in answers)

    report = (run / "report.md").read_text()
    assert "Demonstration set, not a benchmark" in report and "student, SCoTD-distilled" in report
    assert "**What it does not show:**" in report and "scotd pipeline --config run.yaml" in report
    assert "a rationale written for" in report
    assert (run / "accuracy.png").stat().st_size > 1000
    sheet = (run / "rating_sheet.csv").read_text().splitlines()
    assert sheet[0].startswith("id,question,choices,gold,teacher_rationale") and len(sheet) == 1 + 4

    again = _scotd("pipeline", "--config", str(config), "--out", str(run), "--from", "infer", "--no-report", cwd=tmp_path)
    assert again.returncode == 0 and "export: done already, skipped" in again.stderr
    assert "[6/6] infer: finished" in again.stderr

    other = tmp_path / "other.yaml"
    other.write_text(REDUCED.replace("n: 2", "n: 3"))
    refused = _scotd("pipeline", "--config", str(other), "--out", str(run), cwd=tmp_path)
    assert refused.returncode == 1 and "other settings (n differ)" in refused.stderr


#: the pipeline, with a SIGKILL at the first Trainer checkpoint of the train stage (the callback is the only change)
KILL_AT_FIRST_CHECKPOINT = """
import os, signal, sys
from transformers import TrainerCallback
import scotd_harness.train as training

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        os.kill(os.getpid(), signal.SIGKILL)

real = training.train
training.train = lambda cfg, callbacks=None: real(cfg, callbacks=[Kill()])
from scotd_harness.cli import cli
cli(sys.argv[1:])
"""


def test_train_stage_resumes_from_its_checkpoint_after_a_sigkill(tmp_path, fixtures_dir, embedded_model_dir):
    """Sample and filter are done (recorded through the run's own API, with the fixture corpus); the pipeline is
    SIGKILLed right after training saved checkpoint-2; the rerun skips the finished stages, says it resumes, and
    the student's scotd.json shows training continued from checkpoint-2 to step 4. Checkpoints are removed once the
    student is saved."""
    student = make_tiny_student("llama", tmp_path / "tiny-llama", embedded_model_dir)
    config = tmp_path / "run.yaml"
    config.write_text(f"task: csqa\nteacher: hf:embedded\nstudent: {student}\nfilters: [all]\nlabel_only_baseline: false\n"
                      "train: {max_steps: 4, save_steps: 2, per_device_train_batch_size: 2, max_length: 160, "
                      "logging_steps: 1, disable_tqdm: true}\n")
    run = Run(tmp_path / "run", load_config(config))
    run.open()
    for path in (run.corpus, run.filtered):
        shutil.copy(fixtures_dir / "tiny_csqa_corpus.jsonl", path)
    run.record("sample", {"chains": 12}, 1.0)
    run.record("filter", {"chains_kept": 12}, 1.0)
    before = {"stages": run.state(), "corpus": run.corpus.read_bytes(), "filtered": run.filtered.read_bytes()}
    args = ["pipeline", "--config", str(config), "--out", str(run.root), "--until", "train"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}

    script = tmp_path / "kill.py"
    script.write_text(KILL_AT_FIRST_CHECKPOINT)
    killed = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    scotd = run.students / "scotd"
    assert (scotd / "checkpoint-2" / "trainer_state.json").is_file() and not (scotd / "scotd.json").exists()
    assert "train" not in run.state()

    resumed = subprocess.run([sys.executable, "-m", "scotd_harness.cli", *args], env=env, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[1/6] sample: done already, skipped" in resumed.stderr
    assert "[2/6] filter: done already, skipped" in resumed.stderr
    assert "scotd: resuming from checkpoint-2" in resumed.stderr and "resuming from" in resumed.stderr
    info = json.loads((scotd / "scotd.json").read_text())
    assert info["result"]["resumed_from"] == "checkpoint-2" and info["result"]["global_step"] == 4
    assert (scotd / "model.safetensors").is_file() and not list(scotd.glob("checkpoint-*"))
    state = run.state()
    assert list(state) == ["sample", "filter", "train"]
    assert {k: state[k] for k in ("sample", "filter")} == before["stages"]
    assert run.corpus.read_bytes() == before["corpus"] and run.filtered.read_bytes() == before["filtered"]
