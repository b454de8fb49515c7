"""The `onnx:` teacher: an export of `scotd export` sampled in-process on the torch-free runtime.

Everything runs the real runtime on the embedded model's cached fp32 export (`onnx_student_dir`), with the
one-exemplar CSQA teacher prompt, a few questions, small n and few tokens, so the file costs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from scotd_harness import formats, seeding
from scotd_harness.corpus import read_corpus
from scotd_harness.datasets import load_examples
from scotd_harness.errors import ScotdError
from scotd_harness.prompts import PromptSet, load_prompt
from scotd_harness.sampling import SampleSettings, run_sampling
from scotd_harness.teacher import get_teacher

TOKENS = 12


def _prompt() -> PromptSet:
    full = load_prompt("csqa")
    return PromptSet(full.task, full.prompt_version, full.exemplars[:1])


@pytest.fixture(scope="module")
def questions(data_dir):
    return load_examples("csqa", "train", data_dir=data_dir, limit=3)


@pytest.fixture(scope="module")
def prompts(questions):
    prompt = _prompt()
    return [prompt.render(ex.question, ex.choices) for ex in questions]


@pytest.fixture(scope="module")
def keys(questions):
    return [seeding.question_key(ex.task, ex.id) for ex in questions]


@pytest.fixture(scope="module")
def teacher(onnx_student_dir):
    t = get_teacher(f"onnx:{onnx_student_dir}", seed=0, threads=2)
    yield t
    t.close()


def _texts(groups) -> list[list[str]]:
    return [[c.text for c in g] for g in groups]


def test_chains_are_distinct_and_each_keeps_its_seed(teacher, prompts, keys):
    """At temperature 1 a question's chains differ. Each chain keeps its own seed: the same chains come back asked
    at once or in pieces (as split requests and resumed runs ask), beside another question or alone, in a batch
    that holds every chain or in one of 3 rows that must take turns (and split a question's 4 chains 3 + 1);
    another run seed gives other chains."""
    stop = formats.STOP_STRINGS
    prompts, keys = prompts[:2], keys[:2]
    steps = teacher.decode_steps
    once = teacher.sample(prompts, 4, 1.0, TOKENS, stop, keys=keys)
    steps = teacher.decode_steps - steps
    assert [len(g) for g in once] == [4, 4]
    for group in once:
        spoken = [c.text for c in group if c.text.strip()]
        assert len(spoken) >= 3 and len(set(spoken)) == len(spoken), _texts(once)
    first = teacher.sample(prompts, 2, 1.0, TOKENS, stop, keys=keys)
    wide = teacher.max_batch_rows
    try:
        teacher.max_batch_rows = 3
        narrow_steps = teacher.decode_steps
        rest = teacher.sample(prompts, 2, 1.0, TOKENS, stop, keys=keys, starts=[2, 2])
        assert teacher.decode_steps - narrow_steps > steps  # one question at a time: it did take turns
        alone = teacher.sample(prompts[1:], 4, 1.0, TOKENS, stop, keys=keys[1:])
    finally:
        teacher.max_batch_rows = wide
    assert [a + b for a, b in zip(first, rest)] == once  # texts, token counts and log-probs alike
    assert _texts(alone) == _texts(once[1:])
    try:
        teacher.seed = 1
        assert _texts(teacher.sample(prompts[:1], 4, 1.0, TOKENS, stop, keys=keys[:1])) != _texts(once[:1])
    finally:
        teacher.seed = 0


def test_a_mask_graph_export_is_a_teacher_too(tmp_path_factory, embedded_model_dir):
    """optimum's exports (OPT, GPT-2: attention mask, growing cache) sample the same way: in a batch of 3 rows that
    questions take turns in (rows joining and leaving the growing cache) a chain is the one a wide batch gives."""
    from scotd_harness.export.exporter import export
    from tiny_students import make_tiny_student

    root = tmp_path_factory.mktemp("tiny-opt-teacher")
    onnx = export(make_tiny_student("opt", root / "opt", embedded_model_dir), root / "onnx", threads=2,
                  progress=lambda msg: None)
    prompts = ["Q: a?\nA:", "Q: what is the longest question here, really?\nA:", "Q: b c\nA:"]
    wide = get_teacher(f"onnx:{onnx}", seed=0, threads=2)
    narrow = get_teacher(f"onnx:{onnx}", seed=0, threads=2, max_batch_rows=3)
    assert wide.student.kind == "mask"
    once = wide.sample(prompts, 4, 1.0, 10, formats.STOP_STRINGS)
    assert [len({c.text for c in g}) for g in once] == [4, 4, 4]
    turns = narrow.sample(prompts, 4, 1.0, 10, formats.STOP_STRINGS)
    assert _texts(turns) == _texts(once)  # log-probs alike up to the rounding of other batch shapes
    assert [c.logprob for g in turns for c in g] == pytest.approx([c.logprob for g in once for c in g], abs=1e-3)
    assert narrow.decode_steps > wide.decode_steps


def test_logprobs_are_the_models_own_and_add_up(teacher, prompts, keys):
    """Each chain's token log-probs sum to its `logprob`, one per kept token, and are what the model gives those
    tokens after the prompt (scored again in one forward pass), whatever the sampling temperature."""
    groups = teacher.sample(prompts[2:], 4, 0.7, TOKENS, formats.STOP_STRINGS, keys=keys[2:])
    student = teacher.student
    checked = 0
    for prompt, group in zip(prompts[2:], groups):
        for c in group:
            assert c.token_logprobs is not None and len(c.token_logprobs) == c.num_tokens <= TOKENS
            assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-9)
            assert all(lp <= 0 for lp in c.token_logprobs)
            assert c.finish_reason in ("stop", "length")
            continuation = student.encode(c.text)
            if c.text and len(continuation) == c.num_tokens:  # the text re-encodes to as many tokens
                scored, _ = student.loglikelihood(student.encode(prompt), continuation)
                assert scored == pytest.approx(c.logprob, abs=2e-3)
                checked += 1
    assert checked >= 2


def test_pipeline_accepts_an_onnx_teacher_and_names_a_bad_directory(onnx_student_dir, tmp_path):
    from scotd_harness.pipeline import PipelineConfig, evaluated_models, load_config, run_pipeline

    good = tmp_path / "good.yaml"
    good.write_text(f"task: demo\nteacher: onnx:{onnx_student_dir}\nn: 3\ntrain_limit: 1\nmax_new_tokens: 8\n")
    cfg = load_config(good)
    assert cfg.teacher == f"onnx:{onnx_student_dir}"
    # the pipeline's sample stage hands the run seed to the backend: one row per chain, with teacher log-probs
    run = run_pipeline(cfg, tmp_path / "run", until="sample", say=lambda msg: None)
    rows = list(read_corpus(run.corpus))
    assert len(rows) == 3 and {r.sample_index for r in rows} == {0, 1, 2}
    assert all(r.teacher == cfg.teacher and len(r.extra["token_logprobs"]) == r.num_tokens for r in rows)
    # the evaluate stage scores the teacher with its few-shot prompt through lm-eval's scotd-onnx model
    assert evaluated_models(run)["teacher"] == (str(onnx_student_dir), {None: ["scotd_demo_fewshot"]}, "scotd-onnx")

    not_export = tmp_path / "plain"
    not_export.mkdir()
    for model, problem in ((tmp_path / "missing", "not found"), (not_export, "not an export of `scotd export`"),
                           ("embedded", "scotd export embedded --out DIR")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"task: demo\nn: 2\nteacher: onnx:{model}\n")
        with pytest.raises(ScotdError) as e:
            load_config(bad)
        message = str(e.value)
        assert message.startswith(f"{bad}:3: key 'teacher': ") and problem in message and "\n" not in message
        with pytest.raises(ScotdError, match=re.escape(problem)):
            get_teacher(f"onnx:{model}")
    with pytest.raises(ScotdError, match="key 'teacher': unknown backend 'onyx'"):
        PipelineConfig.from_dict({"teacher": "onyx:x"})


def test_scotd_sample_refuses_a_bad_directory_in_one_line(tmp_path, data_dir):
    out = tmp_path / "c.jsonl"
    env = {**os.environ, "SCOTD_DATA_DIR": str(data_dir)}
    res = subprocess.run([sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "sample", "--task",
                          "csqa", "--teacher", f"onnx:{tmp_path}", "--limit", "1", "--out", str(out)],
                         check=False, env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"Error: teacher onnx:{tmp_path}: {tmp_path} is not an export of `scotd export` " \
                                 "(no scotd.json)"
    assert not out.exists()


def test_the_onnx_teacher_imports_no_torch(onnx_student_dir):
    code = (f"import sys; from scotd_harness.teacher import get_teacher; get_teacher({f'onnx:{onnx_student_dir}'!r}); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert res.stdout.strip() == "False False", res.stderr[-2000:]


N, LIMIT = 3, 6
CLI_ARGS = ["--task", "csqa", "--split", "train", "-n", str(N), "--limit", str(LIMIT), "--max-new-tokens",
            str(TOKENS), "--num-exemplars", "1", "--questions-per-call", "1", "--threads", "2", "--seed", "3",
            "--no-progress"]


@pytest.mark.slow
def test_scotd_sample_killed_mid_run_resumes_to_the_uninterrupted_corpus(tmp_path, data_dir, onnx_student_dir):
    """`scotd sample --teacher onnx:DIR` SIGKILLed after a few chains and resumed writes every (id, chain) once,
    and the chains are those of one uninterrupted run with the same seed: none repeated, none lost."""
    teacher_spec = f"onnx:{onnx_student_dir}"
    out = tmp_path / "corpus.jsonl"
    cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "sample", *CLI_ARGS,
           "--teacher", teacher_spec, "--out", str(out)]
    env = {**os.environ, "SCOTD_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_bytes().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail(f"sampler ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("no chains written in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [r.key for r in read_corpus(out)]
    assert 4 <= len(before) < N * LIMIT
    res = subprocess.run([*cmd, "--resume"], check=False, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = list(read_corpus(out, tolerate_torn_tail=False))
    keys = [r.key for r in resumed]
    assert len(keys) == len(set(keys)) == N * LIMIT and set(before) <= set(keys)

    # the same run in one go (in-process, same settings and seed) samples the same chains
    prompt = _prompt()
    settings = SampleSettings(task="csqa", split="train", teacher=teacher_spec, n=N, temperature=1.0,
                              max_new_tokens=TOKENS, prompt_version=prompt.prompt_version, seed=3, limit=LIMIT,
                              num_exemplars=1)
    assert json.loads(out.with_name(out.name + ".meta.json").read_text())["settings"] == settings.to_dict()
    whole = tmp_path / "whole.jsonl"
    backend = get_teacher(teacher_spec, seed=3, threads=2)
    try:
        run_sampling(load_examples("csqa", "train", data_dir=data_dir, limit=LIMIT),
                     lambda ex: prompt.render(ex.question, ex.choices), backend, settings, whole, progress=False)
    finally:
        backend.close()
    expected = {r.key: r.raw for r in read_corpus(whole)}
    assert {r.key: r.raw for r in resumed} == expected
    for q in {r.id for r in resumed}:
        spoken = [r.raw for r in resumed if r.id == q and r.raw.strip()]
        assert len(set(spoken)) == len(spoken)  # no chain repeated within a question
