"""`scotd pipeline` end to end (reduced size) on the embedded model, its config validation and resumption, and
`scotd report` on the finished run."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from scotd_harness.cli import cli
from scotd_harness.errors import ScotdError
from scotd_harness.pipeline import DEMO, STAGES, PipelineConfig, load_config

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
    assert list(state) == list(STAGES)

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
