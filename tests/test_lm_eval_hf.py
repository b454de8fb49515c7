"""`scotd-hf`: lm-eval's `hf` model whose sampled chains are seeded by (seed, question, chain index), on the real
embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

from test_lm_eval_onnx import GRASS, GREEDY, SAMPLED, SKY, _requests  # the same requests as the scotd-onnx tests


def test_sampled_chains_depend_on_the_question_not_on_the_request_order(embedded_model_dir):
    """A question's chains are the same asked alone or after other requests, differ from each other, change with
    the seed; greedy requests decode as the stock `hf` model decodes them."""
    from lm_eval.models.huggingface import HFLM

    from scotd_harness.lm_eval_hf import ScotdHFLM

    lm = ScotdHFLM(pretrained=str(embedded_model_dir), device="cpu", batch_size=4, seed=7)
    alone = lm.generate_until(_requests((GRASS, SAMPLED, 3)), disable_tqdm=True)
    mixed = lm.generate_until(_requests((SKY, SAMPLED, 2), (SKY, GREEDY, 1), (GRASS, SAMPLED, 3)), disable_tqdm=True)
    assert mixed[-3:] == alone and len(set(alone)) == 3, alone
    reseeded = lm.generate_until(_requests((GRASS, {**SAMPLED, "seed": 8}, 3)), disable_tqdm=True)
    assert reseeded != alone and lm.generate_until(_requests((GRASS, SAMPLED, 3)), disable_tqdm=True) == alone
    stock = HFLM(pretrained=str(embedded_model_dir), device="cpu", batch_size=4)
    assert mixed[2] == stock.generate_until(_requests((SKY, GREEDY, 1)), disable_tqdm=True)[0]


def test_stock_lm_eval_finds_scotd_hf():
    """After install the stock registry has `scotd-hf` with no flag (the .pth hook), as it has `scotd-onnx`."""
    code = ("import json; from lm_eval.api.registry import get_model;"
            "print(json.dumps(get_model('scotd-hf').__name__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == "ScotdHFLM"


def test_sampled_contexts_are_read_as_hf_reads_them(embedded_model_dir):
    """A context longer than the model's window leaves room for the output: `hf` keeps its last max_length -
    max_gen_toks tokens, and so does the seeded sampler (one prefill of exactly those tokens), not the whole."""
    from scotd_harness.lm_eval_hf import ScotdHFLM

    lm = ScotdHFLM(pretrained=str(embedded_model_dir), device="cpu", batch_size=4, seed=7, max_length=40)
    long_context = "Q: " + "Which of these is green? " * 12 + GRASS.removeprefix("Q: ")
    assert len(lm.tok_encode(long_context)) > 40
    chains = lm.generate_until(_requests((long_context, SAMPLED, 2)), disable_tqdm=True)
    assert len(chains) == 2 and lm._sampler.prefill_tokens == 40 - SAMPLED["max_gen_toks"]


def test_a_student_is_read_without_the_bos_it_was_trained_without(embedded_model_dir, tmp_path):
    """Training tokenises the prompt with no special tokens; `hf` would prepend the BOS of a tokenizer that adds
    one (the Llama families do). `scotd-hf` reads a student's prompt as training wrote it, unless told otherwise,
    and any other model (a base model, a teacher: pretrained with its BOS) as `hf` does."""
    from lm_eval.models.huggingface import HFLM
    from tiny_students import make_tiny_student
    from transformers import AutoTokenizer

    from scotd_harness.lm_eval_hf import ScotdHFLM

    model = make_tiny_student("llama", tmp_path / "model", embedded_model_dir)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))  # Llama's default
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = GRASS
    trained = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as train.py encodes the prompt
    assert tokenizer(prompt)["input_ids"] == [1, *trained]  # this tokenizer adds a BOS by default

    def read(lm) -> list[int]:
        ids, _ = lm.tok_batch_encode([prompt])
        return ids[0].tolist()

    assert read(HFLM(pretrained=str(model), device="cpu")) == [1, *trained]
    assert read(ScotdHFLM(pretrained=str(model), device="cpu")) == [1, *trained]  # not a student: hf's rule
    (model / "scotd.json").write_text(json.dumps({"kind": "scotd"}))  # what `scotd train` leaves beside a student
    assert read(ScotdHFLM(pretrained=str(model), device="cpu")) == trained
    assert ScotdHFLM(pretrained=str(model), device="cpu").tok_encode(prompt) == trained  # log-likelihoods too
    assert read(ScotdHFLM(pretrained=str(model), device="cpu", add_bos_token=True)) == [1, *trained]
