"""Teacher sampling: the backend registry, the hf backend's shared prefill, and a resumable, loss-free corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scotd_harness import formats, seeding
from scotd_harness.corpus import read_corpus
from scotd_harness.datasets import Example
from scotd_harness.errors import ScotdError
from scotd_harness.sampling import SampleSettings, meta_path, repair_torn_tail, run_sampling
from scotd_harness.teacher import BACKENDS, Completion, TeacherBackend, get_teacher, parse_teacher

CHOICES = (("a", "red"), ("b", "blue"))


def examples(k=5):
    return [Example("csqa", f"q{i}", f"What colour is thing {i}?", CHOICES, "a" if i % 2 else "b") for i in range(k)]


class ScriptedTeacher(TeacherBackend):
    """An in-process backend double for the sampling driver: answers (a) always; can fail after some calls."""

    backend = "scripted"

    def __init__(self, fail_after_calls=None):
        super().__init__("test")
        self.calls = 0
        self.fail_after_calls = fail_after_calls
        self.asked = []
        self.chains = []  # (key, first chain index, n) per prompt asked

    def sample(self, prompts, n, temperature, max_new_tokens, stop, *, keys=None, starts=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.asked.append((len(prompts), n))
        self.chains.extend((k, s, n) for k, s in zip(keys, starts))
        return [[Completion(f" Thing {j}. So the answer is: (a)", -1.5, 3, "stop") for j in range(n)] for _ in prompts]


def settings(**kw):
    base = dict(task="csqa", split="train", teacher="scripted:test", n=3, temperature=1.0, max_new_tokens=16,
                prompt_version="v1", seed=0, limit=None)
    base.update(kw)
    return SampleSettings(**base)


def render(ex):
    return formats.student_input(ex.question, ex.choices)


def test_registry_is_lazy_and_checks_names():
    assert BACKENDS["hf"].endswith("hf:HFTeacher") and BACKENDS["openai"].endswith(":OpenAITeacher")
    assert parse_teacher("hf:/some/dir:with:colons") == ("hf", "/some/dir:with:colons")
    for bad in ("embedded", "nope:x", "hf:"):
        with pytest.raises(ScotdError):
            parse_teacher(bad)
    # choosing the openai backend imports no torch
    code = ("import sys; from scotd_harness.teacher import backend_class; backend_class('openai'); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_rows_follow_the_schema(tmp_path):
    out = tmp_path / "c.jsonl"
    summary = run_sampling(examples(2), render, ScriptedTeacher(), settings(), out, progress=False)
    assert summary.chains_written == 6
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    schema = ["task", "id", "sample_index", "question", "choices", "answer", "rationale", "prediction", "correct",
              "logprob", "num_tokens", "teacher", "prompt_version", "temperature", "raw"]
    assert all(k in lines[0] for k in schema)
    assert lines[0]["rationale"] == "Thing 0." and lines[0]["prediction"] == "a"
    assert [x["correct"] for x in lines] == [False] * 3 + [True] * 3
    assert lines[0]["teacher"] == "scripted:test" and lines[0]["seed"] == 0 and lines[0]["finish_reason"] == "stop"
    assert json.loads(meta_path(out).read_text())["settings"]["n"] == 3


def test_interrupted_run_resumes_without_duplicates_or_loss(tmp_path):
    out = tmp_path / "c.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_sampling(examples(5), render, ScriptedTeacher(fail_after_calls=2), settings(), out,
                     questions_per_call=1, progress=False)
    assert len(out.read_text().splitlines()) == 6  # two finished questions, nothing lost
    # a torn last line (a kill during a write) is cut away on resume
    with open(out, "a") as f:
        f.write('{"task": "csqa", "id": "q2", "sample_')
    teacher = ScriptedTeacher()
    summary = run_sampling(examples(5), render, teacher, settings(), out, resume=True, progress=False)
    assert summary.chains_skipped == 6 and summary.chains_written == 9
    got = [r.key for r in read_corpus(out, tolerate_torn_tail=False)]
    assert len(got) == len(set(got)) == 15
    assert set(got) == {("csqa", f"q{i}", j) for i in range(5) for j in range(3)}
    # a resume of a complete corpus asks the teacher nothing
    again = ScriptedTeacher()
    assert run_sampling(examples(5), render, again, settings(), out, resume=True, progress=False).chains_written == 0
    assert again.calls == 0


def test_partial_question_is_completed_with_its_missing_indices(tmp_path):
    out = tmp_path / "c.jsonl"
    run_sampling(examples(1), render, ScriptedTeacher(), settings(n=2), out, progress=False)
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n")  # keep sample 0 only
    teacher = ScriptedTeacher()
    run_sampling(examples(1), render, teacher, settings(n=2), out, resume=True, progress=False)
    assert teacher.asked == [(1, 1)]
    assert teacher.chains == [(seeding.question_key("csqa", "q0"), 1, 1)]  # the backend is told which chain
    assert [r.sample_index for r in read_corpus(out)] == [0, 1]


def test_resume_asks_for_each_run_of_missing_chains_by_its_first_index(tmp_path):
    """A corpus missing chains 1-2 and 4 of a question (e.g. lines lost to a kill, or removed by hand): the backend
    is asked for exactly those chains, named by their first index, so their seeds differ from the kept chains'."""
    out = tmp_path / "c.jsonl"
    run_sampling(examples(2), render, ScriptedTeacher(), settings(n=5), out, progress=False)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[i] for i in (0, 3, 5, 6, 7, 8, 9)) + "\n")  # q0 keeps chains 0 and 3 only
    teacher = ScriptedTeacher()
    summary = run_sampling(examples(2), render, teacher, settings(n=5), out, resume=True, progress=False)
    key = seeding.question_key("csqa", "q0")
    assert sorted(teacher.chains) == [(key, 1, 2), (key, 4, 1)]
    assert summary.chains_written == 3 and summary.questions == 1 and summary.questions_skipped == 1
    got = [r.key for r in read_corpus(out)]
    assert len(got) == len(set(got)) == 10


def test_refuses_clobber_and_mismatched_resume(tmp_path):
    out = tmp_path / "c.jsonl"
    run_sampling(examples(1), render, ScriptedTeacher(), settings(), out, progress=False)
    with pytest.raises(ScotdError, match="--resume"):
        run_sampling(examples(1), render, ScriptedTeacher(), settings(), out, progress=False)
    with pytest.raises(ScotdError) as e:
        run_sampling(examples(1), render, ScriptedTeacher(), settings(temperature=0.7, n=5), out, resume=True,
                     progress=False)
    assert "temperature" in str(e.value) and "n:" in str(e.value) and "seed" not in str(e.value)
    meta_path(out).unlink()
    with pytest.raises(ScotdError, match="settings file"):
        run_sampling(examples(1), render, ScriptedTeacher(), settings(), out, resume=True, progress=False)


def test_repair_torn_tail(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}\n{"c"')
    assert repair_torn_tail(p) == 4 and p.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert repair_torn_tail(p) == 0
    p.write_text('{"only": "torn')
    repair_torn_tail(p)
    assert p.read_text() == ""


@pytest.fixture(scope="module")
def hf_teacher(embedded_model_dir):
    return get_teacher("hf:embedded", seed=0)


PROMPTS = [
    "Q: What is 2+2?\nAnswer Choices:\n(a) 3\n(b) 4\nA: 2+2 is 4. So the answer is: (b)\n\n"
    + formats.student_input("What colour is the sky?", [("a", "blue"), ("b", "green")]),
    formats.student_input("Where do you put grapes before checking out?", [("a", "mouth"), ("b", "grocery cart")]),
]


def test_hf_shared_prefill_matches_per_sample_and_prefills_once(hf_teacher):
    t = hf_teacher
    t.shared_prefill, t.prefill_tokens = True, 0
    shared = t.sample(PROMPTS, 3, 0.0, 24, formats.STOP_STRINGS)
    shared_prefill = t.prefill_tokens
    t.shared_prefill, t.prefill_tokens = False, 0
    try:
        naive = t.sample(PROMPTS, 3, 0.0, 24, formats.STOP_STRINGS)
    finally:
        t.shared_prefill = True
    assert t.prefill_tokens == 3 * shared_prefill  # the naive baseline runs each prompt once per sample
    assert [[c.text for c in r] for r in shared] == [[c.text for c in r] for r in naive]
    for rs, rn in zip(shared, naive):
        for a, b in zip(rs, rn):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-3) and a.num_tokens == b.num_tokens
    first = shared[0][0]
    assert first.finish_reason == "stop" and "\n\n" not in first.text and first.num_tokens > 0


def test_hf_logprob_is_the_models_own(hf_teacher):
    """The summed log-probability equals a teacher-forced recomputation of the kept tokens."""
    import torch

    t = hf_teacher
    (c,) = t.sample(PROMPTS[:1], 1, 1.0, 10, formats.STOP_STRINGS)[0]
    prompt_ids = t.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    gen_ids = t.tokenizer(c.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if gen_ids.shape[1] != c.num_tokens:
        pytest.skip("re-tokenised text differs from the sampled tokens")
    ids = torch.cat([prompt_ids, gen_ids], 1)
    with torch.inference_mode():
        logp = torch.log_softmax(t.lm(ids).logits[0, :-1].float(), -1)
    target = ids[0, 1:]
    lp = logp[torch.arange(len(target)), target][-gen_ids.shape[1]:].sum().item()
    assert c.logprob == pytest.approx(lp, abs=1e-2)


def test_hf_temperature_one_samples_and_each_chain_keeps_its_seed(hf_teacher):
    """At temperature 1.0 the chains of one prompt differ from each other and from greedy decoding (an argmax-only
    decoder fails this). Chain i of a question is seeded by (run seed, question, i): asked for again in pieces, as
    a resumed run does, or beside another prompt in the batch, it is the same chain; another run seed changes it."""
    t = hf_teacher
    prompt = PROMPTS[1]
    (greedy,) = t.sample([prompt], 1, 0.0, 12, ())[0]
    (chains,) = t.sample([prompt], 4, 1.0, 12, (), keys=["q"], starts=[0])
    texts = [c.text for c in chains]
    assert len(set(texts)) > 1 and any(x != greedy.text for x in texts)
    (tail,) = t.sample([prompt], 2, 1.0, 12, (), keys=["q"], starts=[2])
    assert [c.text for c in tail] == texts[2:]
    _, beside = t.sample([PROMPTS[0], prompt], 4, 1.0, 12, (), keys=["other", "q"])
    assert [c.text for c in beside] == texts
    t.seed = 1
    try:
        (reseeded,) = t.sample([prompt], 4, 1.0, 12, (), keys=["q"])
    finally:
        t.seed = 0
    assert [c.text for c in reseeded] != texts


def _cli_env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


SAMPLE_ARGS = ["--task", "csqa", "--split", "train", "--teacher", "hf:embedded", "-n", "2", "--limit", "5",
               "--max-new-tokens", "16", "--num-exemplars", "1", "--questions-per-call", "1", "--no-progress"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, data_dir, embedded_model_dir):
    out = tmp_path / "corpus.jsonl"
    cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "sample", *SAMPLE_ARGS, "--out", str(out)]
    env = _cli_env()
    env["SCOTD_DATA_DIR"] = str(data_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_bytes().splitlines()) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"sampler ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no chains written in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [r.key for r in read_corpus(out)]
    assert 3 <= len(before) < 10
    # a different setting is refused and names the key
    res = subprocess.run([*cmd[:-2], "--out", str(out), "--resume", "--temperature", "0.5"], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "temperature" in res.stderr
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    after = [r.key for r in read_corpus(out, tolerate_torn_tail=False)]
    assert len(after) == len(set(after)) == 10
    assert set(before) <= set(after)
    assert {k[2] for k in after} == {0, 1} and len({k[1] for k in after}) == 5
    rows = list(read_corpus(out))
    assert all(r.teacher == "hf:embedded" and r.logprob is not None and r.num_tokens <= 16 for r in rows)
    assert all(len(r.extra["token_logprobs"]) == r.num_tokens for r in rows)
