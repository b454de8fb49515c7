"""The stock `lm_eval` CLI with `--model scotd-onnx`: same greedy outputs as `--model hf` on real CSQA dev questions,
and the same log-likelihoods on the direct (multiple-choice) task."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LIMIT = 2
#: shorter generations keep the hf side quick; both backends get the same override
GEN_KWARGS = "max_gen_toks=48"


def _run_lm_eval(tmp: Path, name: str, model: str, model_args: str, tasks: str) -> dict[str, list[dict]]:
    lm_eval = shutil.which("lm_eval")
    assert lm_eval, "the lm_eval console script is not installed"
    out = tmp / name
    cmd = [lm_eval, "--model", model, "--model_args", model_args, "--tasks", tasks, "--limit", str(LIMIT),
           "--batch_size", "1", "--device", "cpu", "--gen_kwargs", GEN_KWARGS, "--log_samples", "--output_path", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    samples: dict[str, list[dict]] = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in f.read_text().splitlines()), key=lambda s: s["doc_id"])
    return samples


@pytest.mark.slow
def test_scotd_onnx_matches_hf(tmp_path, onnx_student_dir, embedded_model_dir, data_dir):
    # the untrained embedded model often ends its zero-shot answer at once; the few-shot prompt makes it write
    tasks = "scotd_csqa,scotd_csqa_fewshot,scotd_csqa_direct"
    cache = tmp_path / "generations.jsonl"  # the stock CLI keeps finished generations with cache=FILE
    onnx = _run_lm_eval(tmp_path, "onnx", "scotd-onnx", f"pretrained={onnx_student_dir},threads=2,cache={cache}", tasks)
    hf = _run_lm_eval(tmp_path, "hf", "hf", f"pretrained={embedded_model_dir},dtype=float32", tasks)
    assert set(onnx) == set(hf) == {"scotd_csqa", "scotd_csqa_fewshot", "scotd_csqa_direct"}
    written = 0
    for task in ("scotd_csqa", "scotd_csqa_fewshot"):
        for a, b in zip(onnx[task], hf[task], strict=True):
            assert a["doc_id"] == b["doc_id"]
            assert a["resps"] == b["resps"], f"{task} doc {a['doc_id']}: onnx {a['resps']!r} vs hf {b['resps']!r}"
            assert a["filtered_resps"] == b["filtered_resps"]
            written += len(a["resps"][0][0]) > 20
    assert written >= 2, "too few non-trivial generations to compare"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["text"] for r in rows if "text" in r} == {
        s["resps"][0][0] for task in ("scotd_csqa", "scotd_csqa_fewshot") for s in onnx[task]}
    scored = sorted(r["loglikelihood"][0] for r in rows if "loglikelihood" in r)
    assert scored == pytest.approx(sorted(float(r[0][0]) for s in onnx["scotd_csqa_direct"] for r in s["resps"]))
    for a, b in zip(onnx["scotd_csqa_direct"], hf["scotd_csqa_direct"], strict=True):
        ll_a = [float(r[0][0]) for r in a["resps"]]
        ll_b = [float(r[0][0]) for r in b["resps"]]
        assert ll_a == pytest.approx(ll_b, abs=2e-3)
        assert a["acc"] == b["acc"]


def test_sampled_repeats_split_over_batches_never_repeat_a_chain(onnx_student_dir):
    """Self-consistency asks for `repeats` chains of one prompt; with more repeats than the batch size they are
    sampled in parts, and each part must continue the chain numbering rather than restart it (same seed)."""
    from lm_eval.api.instance import Instance

    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    lm = ScotdOnnxLM(str(onnx_student_dir), threads=2, batch_size=2, seed=7)
    context = "Q: Name a colour of the sky.\nAnswer Choices:\n(a) blue\n(b) loud\nA:"
    kwargs = {"do_sample": True, "temperature": 1.0, "max_gen_toks": 12, "until": ["\n\n"]}
    requests = [Instance("generate_until", {}, (context, kwargs), idx=i) for i in range(6)]
    texts = lm.generate_until(requests, disable_tqdm=True)
    assert len(texts) == 6 and len(set(texts)) == 6, texts


SKY = "Q: Name a colour of the sky.\nAnswer Choices:\n(a) blue\n(b) loud\nA:"
GRASS = "Q: Name a colour of grass.\nAnswer Choices:\n(a) green\n(b) heavy\nA:"
SAMPLED = {"do_sample": True, "temperature": 1.0, "max_gen_toks": 10, "until": ["\n\n"]}
GREEDY = {"do_sample": False, "max_gen_toks": 10, "until": ["\n\n"]}


def _requests(*items: tuple[str, dict, int]):
    from lm_eval.api.instance import Instance

    reqs = []
    for context, kwargs, repeats in items:
        reqs += [Instance("generate_until", {}, (context, kwargs), idx=len(reqs)) for _ in range(repeats)]
    return reqs


def test_sampled_chains_depend_on_the_question_not_on_the_request_order(onnx_student_dir):
    """A question's chains come from (seed, question, chain index): asked alone, after another question, or by a
    model with another seed, they are the same, the same, and different."""
    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    def grass_chains(seed: int, *before: tuple[str, dict, int]) -> list[str]:
        lm = ScotdOnnxLM(str(onnx_student_dir), threads=2, batch_size=4, seed=seed)
        texts = lm.generate_until(_requests(*before, (GRASS, SAMPLED, 3)), disable_tqdm=True)
        return texts[-3:]

    alone = grass_chains(7)
    assert grass_chains(7, (SKY, SAMPLED, 2), (SKY, GREEDY, 1)) == alone
    assert grass_chains(8) != alone


def test_a_killed_generation_job_resumes_from_its_cache(tmp_path, onnx_student_dir):
    """The first process finishes part of the job and dies mid-write; the rerun answers those requests from the
    cache, decodes only the rest (the file gains exactly those lines), and returns what one uninterrupted run
    returns. Other decoding settings are never answered from entries made under different ones."""
    import json

    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    cache = tmp_path / "gen.jsonl"
    whole = [(SKY, SAMPLED, 3), (SKY, GREEDY, 2), (GRASS, GREEDY, 1), (GRASS, SAMPLED, 3)]  # a duplicate too
    expected = ScotdOnnxLM(str(onnx_student_dir), threads=2, batch_size=2).generate_until(
        _requests(*whole), disable_tqdm=True)

    ScotdOnnxLM(str(onnx_student_dir), threads=2, batch_size=2, cache=str(cache)).generate_until(
        _requests(*whole[:2]), disable_tqdm=True)
    lines = cache.read_text().splitlines()
    assert len(lines) == 4  # 3 sampled chains + 1 greedy text (its duplicate decoded once)
    with cache.open("a") as f:  # the kill came in the middle of the next line
        f.write('{"key": "0123", "te')

    lm = ScotdOnnxLM(str(onnx_student_dir), threads=2, batch_size=2, cache=str(cache))
    assert lm.generate_until(_requests(*whole), disable_tqdm=True) == expected
    rows = [json.loads(line) for line in cache.read_text().splitlines()]  # the torn line is gone: all parse
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8

    other = dict(GREEDY, max_gen_toks=4)
    lm.generate_until(_requests((SKY, other, 1)), disable_tqdm=True)
    assert len(cache.read_text().splitlines()) == 9


def test_log_likelihoods_are_kept_and_answered_from_the_cache(tmp_path, onnx_student_dir):
    """The direct tasks score choices by log-likelihood; a rerun over the same cache returns the same values
    without scoring them again (the file gains nothing), and a new request is scored and added."""
    from lm_eval.api.instance import Instance

    from scotd_harness.export.lm_eval_model import ScotdOnnxLM

    cache = tmp_path / "ll.jsonl"
    reqs = [Instance("loglikelihood", {}, (SKY, f" ({c})"), idx=i) for i, c in enumerate("ab")]
    first = ScotdOnnxLM(str(onnx_student_dir), threads=2, cache=str(cache)).loglikelihood(reqs, disable_tqdm=True)
    assert len(cache.read_text().splitlines()) == 2 and first[0][0] != first[1][0]
    lm = ScotdOnnxLM(str(onnx_student_dir), threads=2, cache=str(cache))
    assert lm.loglikelihood(reqs, disable_tqdm=True) == [(float(v), bool(g)) for v, g in first]
    assert len(cache.read_text().splitlines()) == 2
    lm.loglikelihood([Instance("loglikelihood", {}, (GRASS, " (a)"), idx=0)], disable_tqdm=True)
    assert len(cache.read_text().splitlines()) == 3
