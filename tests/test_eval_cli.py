"""`scotd eval`: a thin command over lm_eval.simple_evaluate that writes results.json (atomically) and results.md."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scotd_harness.cli import cli
from scotd_harness.errors import ScotdError
from scotd_harness.evaluate import resolve_task_names, split_task_list


class _FakeTaskManager:
    all_tasks = ["scotd", "scotd_csqa", "scotd_csqa_sc", "scotd_quarel", "commonsense_qa"]

    def match_tasks(self, patterns):
        import fnmatch

        return sorted({n for p in patterns for n in fnmatch.filter(self.all_tasks, p)})


def test_task_names_and_patterns_resolve_in_order():
    tm = _FakeTaskManager()
    assert split_task_list("scotd_csqa, scotd_q*,") == ["scotd_csqa", "scotd_q*"]
    assert resolve_task_names(tm, ["scotd_csqa_sc", "scotd_csqa*"]) == ["scotd_csqa_sc", "scotd_csqa"]
    with pytest.raises(ScotdError, match="unknown task.*scotd_csqaa.*scotd_csqa_sc"):
        resolve_task_names(tm, ["scotd_csqaa"])


def test_too_few_self_consistency_samples_is_refused_before_any_work():
    result = CliRunner().invoke(cli, ["eval", "embedded", "--tasks", "scotd_csqa_sc", "--sc-samples", "4"])
    assert result.exit_code == 2 and "--sc-samples" in result.output


@pytest.mark.slow
def test_scotd_eval_writes_json_and_table(data_dir, embedded_model_dir, tmp_path):
    """The embedded model on one CSQA dev question: self-consistency with N set to 8, and the direct answer."""
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cli,
        ["eval", "embedded", "--tasks", "scotd_csqa_sc,scotd_csqa_direct", "--limit", "1", "--sc-samples", "8",
         "--max-gen-toks", "16", "--device", "cpu", "--data-dir", str(data_dir), "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "scotd_csqa_sc" in result.output and "maj@8" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["scotd"]["sc_samples"] == 8 and results["scotd"]["tasks"] == ["scotd_csqa_sc", "scotd_csqa_direct"]
    assert results["configs"]["scotd_csqa_sc"]["repeats"] == 8
    for key in ("acc,maj@N", "acc,maj@8", "invalid_rate,maj@N"):
        assert 0.0 <= results["results"]["scotd_csqa_sc"][key] <= 1.0
    assert results["results"]["scotd_csqa_direct"]["invalid_rate,none"] == 0.0
    assert "scotd_csqa_direct" in (out / "results.md").read_text()


@pytest.mark.slow
def test_a_killed_onnx_evaluation_resumes_where_it_stopped(data_dir, onnx_student_dir, tmp_path):
    """`scotd eval --model-type scotd-onnx` is killed (SIGKILL) after some self-consistency chains are decoded;
    the same command rerun into the same --output finishes, and its chains are those of an uninterrupted run
    (each chain's seed comes from the run seed, the question and the chain index, so resumed ones match too);
    another --seed gives other chains."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from scotd_harness.evaluate import GENERATION_CACHE

    def command(out, seed=1234):
        return [sys.executable, "-m", "scotd_harness.cli", "eval", str(onnx_student_dir), "--model-type", "scotd-onnx",
                "--tasks", "scotd_csqa_sc", "--limit", "4", "--sc-samples", "8", "--max-gen-toks", "24",
                "--batch-size", "8", "--log-samples", "--data-dir", str(data_dir), "--output", str(out),
                "--seed", str(seed)]

    def chains(out):
        rows = [json.loads(line) for line in next(out.glob("samples_*.jsonl")).read_text().splitlines()]
        return {r["doc_id"]: r["resps"] for r in rows}

    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    resumed, cache = tmp_path / "resumed", tmp_path / "resumed" / GENERATION_CACHE
    proc = subprocess.Popen(command(resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if cache.is_file() and len(cache.read_bytes().splitlines()) >= 8:  # the first question's chains are in
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "results.json").exists(), "the run finished before it could be killed"
    done_before = len(cache.read_bytes().splitlines())
    assert 8 <= done_before < 32

    subprocess.run(command(resumed), env=env, check=True, capture_output=True)
    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    assert not cache.exists()  # the results hold every chain now
    assert chains(resumed) == chains(tmp_path / "whole")
    texts = [t for doc in chains(resumed).values() for resp in doc for t in resp]
    assert len(texts) == 32 and len(set(texts)) > 8  # real chains, differing within a question
    subprocess.run(command(tmp_path / "reseeded", seed=99), env=env, check=True, capture_output=True)
    assert chains(tmp_path / "reseeded") != chains(resumed)  # --seed reaches the model
