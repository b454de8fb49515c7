"""The stock `lm_eval` CLI against a running `scotd serve`: lm-eval's own `local-completions` model scores the
log-likelihood task (`scotd_csqa_direct`, through `echo` + `logprobs` on token-id prompts) and the generative one
(`scotd_csqa`) with the same results, question by question, as `--model scotd-onnx` on the same export; and
`local-chat-completions --apply_chat_template` runs a generative task through `/v1/chat/completions`.

Real CSQA dev questions from SCOTD_DATA_DIR (the first 50 of each task; the untrained embedded model mostly ends
its zero-shot CoT answer at once, so four few-shot questions, on which it writes, are compared too), the cached
int4 export (fast on 2 cores), and `max_gen_toks=32` on both sides (`--gen_kwargs`) to keep the generative tasks
to seconds: both models get the same override, so the comparison is unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import start_server, stop_server

pytestmark = pytest.mark.slow

LIMIT = 50
#: doc ids per task (lm-eval's --samples): 50 for the direct and zero-shot tasks, 4 for the long few-shot prompts
SAMPLES = {"scotd_csqa_direct": list(range(LIMIT)), "scotd_csqa": list(range(LIMIT)), "scotd_csqa_fewshot": [0, 1, 2, 3]}
GEN_KWARGS = "max_gen_toks=32"


def acc(task_results: dict) -> float:
    """The task's accuracy, whatever its filter is called (`acc,none`, `acc,greedy`)."""
    (value,) = [v for k, v in task_results.items() if k.startswith("acc,") and "stderr" not in k]
    return value


@pytest.fixture(scope="module")
def int4_server(onnx_student_int4_dir, data_dir):
    proc, url = start_server(onnx_student_int4_dir)
    try:
        yield url
    finally:
        stop_server(proc)


def run_lm_eval(out: Path, *args: str) -> tuple[dict, dict[str, list[dict]]]:
    """Run the lm_eval console script; returns (results by task, samples by task sorted by doc_id)."""
    lm_eval = shutil.which("lm_eval")
    assert lm_eval, "the lm_eval console script is not installed"
    cmd = [lm_eval, *args, "--gen_kwargs", GEN_KWARGS, "--log_samples", "--output_path", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in f.read_text().splitlines()), key=lambda s: s["doc_id"])
    return results, samples


def test_local_completions_matches_scotd_onnx(tmp_path, int4_server, onnx_student_int4_dir):
    common = ["--tasks", ",".join(SAMPLES), "--samples", json.dumps(SAMPLES), "--batch_size", "1"]
    served, served_samples = run_lm_eval(
        tmp_path / "served", "--model", "local-completions", "--model_args",
        f"base_url={int4_server}/v1/completions,tokenizer={onnx_student_int4_dir},tokenizer_backend=huggingface,"
        "model=student,max_length=2048,num_concurrent=1", *common)
    local, local_samples = run_lm_eval(
        tmp_path / "local", "--model", "scotd-onnx", "--model_args", f"pretrained={onnx_student_int4_dir},threads=2",
        "--device", "cpu", *common)
    for task, docs in SAMPLES.items():
        assert len(served_samples[task]) == len(local_samples[task]) == len(docs)
        assert acc(served[task]) == acc(local[task]), (task, served[task], local[task])
    for a, b in zip(served_samples["scotd_csqa_direct"], local_samples["scotd_csqa_direct"], strict=True):
        assert a["doc_id"] == b["doc_id"] and a["acc"] == b["acc"]
        served_ll = [float(r[0][0]) for r in a["resps"]]
        local_ll = [float(r[0][0]) for r in b["resps"]]
        assert served_ll == pytest.approx(local_ll, abs=1e-3)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]  # is_greedy
    written = 0
    for task in ("scotd_csqa", "scotd_csqa_fewshot"):
        for a, b in zip(served_samples[task], local_samples[task], strict=True):
            assert a["doc_id"] == b["doc_id"] and a["resps"] == b["resps"] and a["acc"] == b["acc"], (task, a, b)
            written += len(a["resps"][0][0]) > 20
    assert written >= 2, "too few non-trivial generations to compare"


def test_local_chat_completions_runs_a_generative_task(tmp_path, int4_server, onnx_student_int4_dir):
    """lm-eval renders nothing itself here (no tokenizer): it sends the messages and the server applies the
    export's chat template; each answer equals the runtime's own greedy completion of the prompt transformers'
    `apply_chat_template` renders from the same messages."""
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent
    from transformers import AutoTokenizer

    results, samples = run_lm_eval(
        tmp_path / "chat", "--model", "local-chat-completions", "--model_args",
        f"base_url={int4_server}/v1/chat/completions,model=student", "--apply_chat_template",
        "--tasks", "scotd_csqa", "--limit", "3")
    assert 0 <= acc(results["scotd_csqa"]) <= 1
    tokenizer = AutoTokenizer.from_pretrained(onnx_student_int4_dir)
    student = OnnxStudent(onnx_student_int4_dir, threads=2)
    written = 0
    for sample in samples["scotd_csqa"]:
        chat, gen_kwargs = sample["arguments"]["gen_args_0"]["arg_0"], sample["arguments"]["gen_args_0"]["arg_1"]
        messages = json.loads(chat[0] if isinstance(chat, list) else chat)  # lm-eval logs the messages as JSON
        assert messages[-1]["role"] == "user"
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        config = GenerationConfig(max_new_tokens=32, temperature=0, stop=tuple(gen_kwargs["until"]))
        (expected,) = student.generate([rendered], config)
        assert sample["resps"][0][0] == expected.text
        written += bool(expected.text.strip())
    assert written, "the chat template made the model write nothing: nothing was compared"
