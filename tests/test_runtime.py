"""The torch-free runtime on the embedded fp32 export: batching, greedy/sampled decoding, stops, self-consistency."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scotd_harness import formats
from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

PROMPTS = [
    formats.student_input("Where would you put a plate after washing it?",
                          [("a", "cupboard"), ("b", "restaurant"), ("c", "dishwasher")]),
    "Q: What is two plus two?\nA:",
    formats.student_input("The man was cold, so he put on a what?", [("a", "coat"), ("b", "hat"), ("c", "fan")]),
]


@pytest.fixture(scope="module")
def student(onnx_student_dir):
    return OnnxStudent(onnx_student_dir, threads=2)


def test_runtime_imports_no_torch(onnx_student_dir):
    """Run a generation, and one through the scheduler, in a fresh interpreter where torch and transformers
    cannot be imported."""
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
from scotd_harness.export.runtime import OnnxStudent, GenerationConfig
s = OnnxStudent({str(onnx_student_dir)!r}, threads=2)
a = s.answer("Where do you keep milk?", [("a", "fridge"), ("b", "oven")],
             config=GenerationConfig(max_new_tokens=8))
from scotd_harness.export.scheduler import Scheduler
with Scheduler(s, max_batch=2) as scheduler:
    assert scheduler.submit([s.encode("Q: milk? A:")], GenerationConfig(max_new_tokens=4)).wait(60)[0][0]
assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print(a.answer)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_batch_equals_single(student):
    config = GenerationConfig(max_new_tokens=12, stop=(), ignore_eos=True)
    batch = student.generate(PROMPTS, config)
    for prompt, got in zip(PROMPTS, batch):
        (alone,) = student.generate([prompt], config)
        assert got.token_ids == alone.token_ids
        assert len(got.token_ids) == 12 and got.finish_reason == "length"


def test_stop_strings_cut_text(student):
    (gen,) = student.generate([PROMPTS[1]], GenerationConfig(max_new_tokens=40, stop=(" ",), ignore_eos=True))
    assert " " not in gen.text and gen.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(student):
    config = GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=50, top_p=0.95, seed=7, stop=())
    a = student.generate(PROMPTS[:2], config)
    b = student.generate(PROMPTS[:2], config)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_temperature_one_samples_and_seeded_chains_reproduce(student):
    """At temperature 1.0 the n chains of one prompt differ from each other and from greedy decoding (an
    argmax-only decoder fails this). With a seed, chain j has its own stream: a rerun gives the same chains, chain
    0 is what `generate` gives, the prompts batched beside it change nothing, chains asked for in parts
    (`first_chain`) are the same chains, and another seed changes them."""
    sampled = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=3, stop=(), ignore_eos=True)
    (greedy,) = student.generate([PROMPTS[0]], GenerationConfig(max_new_tokens=10, stop=(), ignore_eos=True))
    (chains,) = student.sample_n([PROMPTS[0]], 4, sampled)
    ids = [g.token_ids for g in chains]
    assert len({tuple(x) for x in ids}) == 4 and any(x != greedy.token_ids for x in ids)
    (again,) = student.sample_n([PROMPTS[0]], 4, sampled)
    assert [g.token_ids for g in again] == ids
    (first,) = student.generate([PROMPTS[0]], sampled)
    assert first.token_ids == ids[0]
    beside, _ = student.sample_n([PROMPTS[0], PROMPTS[1]], 4, sampled)
    assert [g.token_ids for g in beside] == ids
    (tail,) = student.sample_n([PROMPTS[0]], 2, sampled, first_chain=2)  # chains asked for in parts
    assert [g.token_ids for g in tail] == ids[2:]
    (other,) = student.sample_n([PROMPTS[0]], 4, GenerationConfig(**{**sampled.__dict__, "seed": 4}))
    assert [g.token_ids for g in other] != ids


def test_shared_prefill_matches_separate_runs(student):
    """Greedy chains from one shared prefill equal the single greedy run (the repeated cache is right)."""
    config = GenerationConfig(max_new_tokens=10, stop=(), ignore_eos=True)
    groups = student.sample_n(PROMPTS[:2], 3, config)
    for prompt, group in zip(PROMPTS[:2], groups):
        (alone,) = student.generate([prompt], config)
        assert [g.token_ids for g in group] == [alone.token_ids] * 3


def test_logprobs_agree_with_loglikelihood(student):
    """Log-probs are the model's own distribution (not renormalised when end-of-sequence is blocked)."""
    config = GenerationConfig(max_new_tokens=6, stop=(), ignore_eos=True, logprobs=2)
    (gen,) = student.generate([PROMPTS[0]], config)
    assert len(gen.logprobs) == len(gen.tokens) == len(gen.token_ids) == 6
    assert all(len(t) == 2 for t in gen.top_logprobs)
    ll, _ = student.loglikelihood(student.encode(PROMPTS[0]), gen.token_ids)
    assert ll == pytest.approx(sum(gen.logprobs), abs=1e-3)


def test_self_consistency_votes(student):
    config = GenerationConfig(max_new_tokens=48, temperature=0.8, seed=0)
    ans = student.answer("Where would you put a plate after washing it?",
                         [("a", "cupboard"), ("b", "restaurant"), ("c", "dishwasher")], n=4, config=config)
    assert len(ans.chains) == 4
    assert sum(ans.votes.values()) <= 4
    assert ans.answer == formats.INVALID or ans.answer in "abc"
    greedy = student.answer("Where would you put a plate after washing it?", [("a", "cupboard"), ("b", "bin")])
    assert greedy.votes == {} and isinstance(greedy.rationale, str)


def test_config_validation():
    with pytest.raises(ValueError):
        GenerationConfig(temperature=-1)
    with pytest.raises(ValueError):
        GenerationConfig(max_new_tokens=0)


def test_int4_runs(onnx_student_int4_dir):
    s = OnnxStudent(onnx_student_int4_dir, threads=2)
    gens = s.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=8, stop=(), ignore_eos=True))
    assert all(len(g.token_ids) == 8 for g in gens)
    meta = json.loads((onnx_student_int4_dir / "scotd.json").read_text())
    assert meta["quantization"]["bits"] == 4
    assert np.isfinite(meta["accuracy_change"]["change"])


def test_infer_command(onnx_student_dir, tmp_path):
    from click.testing import CliRunner

    from scotd_harness.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["infer", str(onnx_student_dir), "--task", "csqa", "--question",
                                 "Where would you put a plate after washing it?", "--choices",
                                 "cupboard|restaurant|dishwasher", "--max-new-tokens", "16", "--threads", "2"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert set(row) >= {"answer", "rationale", "question"}
    rows = tmp_path / "in.jsonl"
    rows.write_text(
        json.dumps({"id": "x1", "question": "A fox is a kind of?", "choices": ["animal", "rock"], "answer": "a"}) + "\n"
        + json.dumps({"id": "x2", "question": "Ice is?", "choices": [["a", "cold"], ["b", "hot"]]}) + "\n"
    )
    result = runner.invoke(cli, ["infer", str(onnx_student_dir), "--input", str(rows), "-n", "2", "--seed", "0",
                                 "--max-new-tokens", "16", "--threads", "2"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [o["id"] for o in out] == ["x1", "x2"] and "votes" in out[0] and "correct" in out[0]
    bad = runner.invoke(cli, ["infer", str(onnx_student_dir), "--question", "q", "--choices", "only"])
    assert bad.exit_code != 0 and "two" in bad.output


def test_infer_and_scotd_onnx_pass_prompt_lookup_through(onnx_student_int4_dir):
    """`scotd infer --prompt-lookup K` and `scotd-onnx`'s `prompt_lookup` model arg reach the decode loop: on the
    int4 export (off by default there), asking for it drafts tokens; 0 keeps it off."""
    from click.testing import CliRunner

    from scotd_harness.cli import cli
    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    args = ["infer", str(onnx_student_int4_dir), "--question", "What do you use to cut paper, scissors or a spoon?",
            "--choices", "scissors|spoon", "--max-new-tokens", "24", "--threads", "2"]
    for flag in (["--prompt-lookup", "0"], ["--prompt-lookup", "4"]):
        result = CliRunner().invoke(cli, args + flag)
        assert result.exit_code == 0, result.output
    assert "--prompt-lookup" in CliRunner().invoke(cli, ["infer", "--help"]).output

    lm = ScotdOnnxLM(str(onnx_student_int4_dir), threads=2, prompt_lookup=4)
    config = lm._config(PROMPTS[1], {"until": ["\n\n"], "max_gen_toks": 32})
    assert config.prompt_lookup == 4 and config.temperature == 0
    (gen,) = lm.student.generate([PROMPTS[1]], config)
    assert gen.drafted > 0
    assert ScotdOnnxLM(str(onnx_student_int4_dir), threads=2)._config(PROMPTS[1], {}).prompt_lookup is None
