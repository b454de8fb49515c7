"""Tiny random-weight OPT, GPT-2 (the paper's families) and Llama students, built offline from a config.

They reuse the embedded model's tokenizer (vocabulary 49152), so the text side is real while the weights are
random: export, parity and runtime batching are checked on the architecture, not on answer quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_student(family: str, out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

    torch.manual_seed(0)
    vocab, eos = 49152, 2
    if family == "opt":
        config = OPTConfig(
            vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
            max_position_embeddings=512, word_embed_proj_dim=64, bos_token_id=1, eos_token_id=eos, pad_token_id=eos,
        )
    elif family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=eos,
            pad_token_id=eos,
        )
    elif family == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=eos, pad_token_id=eos,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(family)
    model = AutoModelForCausalLM.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    return out
