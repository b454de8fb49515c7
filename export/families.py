"""Per-family facts for export and runtime: one small frozen dataclass per supported student family.

Registered by the Hugging Face `model_type` in the student's `config.json`; the exporter reads the route and the
tolerance, the runtime reads the attention kind (how a batch is laid out and how the KV cache is kept). No
`if model_type == ...` chains anywhere else. This module imports only the standard library.

These five model types are what `scotd export` supports, not every architecture optimum knows: a family is added
here once its cache names, parity tolerance and runtime layout have been checked (tests/test_export.py exports a tiny
one of each), and any other model type is refused up front with this list named.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How the exported graph attends, which decides the runtime's batch layout and cache handling.
#:  - "mask": an unfused graph reading `attention_mask` (optimum's exporter): left-padded batches, the cache grows
#:    by concatenation each step.
#:  - "gqa": a graph whose attention is fused into com.microsoft GroupQueryAttention, which ignores
#:    `attention_mask` and takes per-row sequence lengths (derived in-graph from `position_ids`): rows are laid out
#:    from position 0 (right-padded), and the cache is one preallocated buffer per layer that the op writes in place.
ATTENTION_KINDS = ("mask", "gqa")
ROUTES = ("dynamo-gqa", "optimum")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    #: the export route used by default for this family
    route: str
    #: largest |logit difference| accepted between PyTorch and the fp32 graph on the parity prompts
    atol: float
    #: names of the graph's per-layer cache inputs/outputs ({i} = layer index)
    past_key: str = "past_key_values.{i}.key"
    past_value: str = "past_key_values.{i}.value"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"
    #: config.json keys for the layer count (first one present wins)
    layer_keys: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers")

    def attention_kind(self, route: str) -> str:
        return "gqa" if route == "dynamo-gqa" else "mask"


LLAMA = Family(name="llama", model_types=("llama", "mistral", "qwen2"), route="dynamo-gqa", atol=2e-3)
OPT = Family(name="opt", model_types=("opt",), route="optimum", atol=1e-3)
GPT2 = Family(name="gpt2", model_types=("gpt2",), route="optimum", atol=1e-3)

FAMILIES: dict[str, Family] = {t: f for f in (LLAMA, OPT, GPT2) for t in f.model_types}


def family_for(model_type: str) -> Family:
    """The family of a `config.json` model_type; unknown types are refused with the supported ones named."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        from scotd_harness.errors import ScotdError

        raise ScotdError(
            f"model_type {model_type!r} is not a supported student family; supported: {', '.join(sorted(FAMILIES))} "
            f"(see export/README.md)"
        ) from None


def num_layers(config: dict, family: Family) -> int:
    for key in family.layer_keys:
        if key in config:
            return int(config[key])
    raise KeyError(f"config.json names no layer count ({', '.join(family.layer_keys)})")
