"""Export: the three families, parity recorded, atomic failure, quantisation with its accuracy change."""

from __future__ import annotations

import json
import shutil

import pytest

from scotd_harness.errors import ScotdError
from scotd_harness.export.exporter import export
from scotd_harness.export.parity import ParityError
from scotd_harness.export.runtime import GenerationConfig, OnnxStudent
from tiny_students import make_tiny_student

QUIET = {"threads": 2, "progress": lambda msg: None}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, embedded_model_dir):
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_student(f, root / f, embedded_model_dir) for f in ("opt", "gpt2", "llama")}


@pytest.mark.parametrize("family,attention", [("opt", "mask"), ("gpt2", "mask"), ("llama", "gqa")])
def test_export_families(tiny_dirs, tmp_path, family, attention):
    out = export(tiny_dirs[family], tmp_path / "onnx", **QUIET)
    meta = json.loads((out / "scotd.json").read_text())
    assert meta["family"] == family and meta["graph"]["attention"] == attention
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"]
    assert all(p["same_tokens"] for p in meta["parity"]["prompts"])
    for name in ("model.onnx", "tokenizer.json", "config.json", "generation_config.json"):
        assert (out / name).is_file()
    gens = OnnxStudent(out, threads=2).generate(["Q: a?\nA:"], GenerationConfig(max_new_tokens=4, stop=()))
    assert len(gens) == 1 and gens[0].prompt_tokens > 0
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_failed_parity_leaves_nothing(tiny_dirs, tmp_path):
    out = tmp_path / "onnx"
    with pytest.raises(ParityError, match="max \\|logit diff\\|"):
        export(tiny_dirs["gpt2"], out, atol=1e-12, **QUIET)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_target_and_unknown_family(tiny_dirs, tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "keep.txt").write_text("x")
    with pytest.raises(ScotdError, match="not empty"):
        export(tiny_dirs["opt"], tmp_path / "onnx", **QUIET)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dirs["opt"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "bert"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScotdError, match="not a supported student family"):
        export(bad, tmp_path / "o2", **QUIET)
    with pytest.raises(ScotdError, match="Llama-family"):
        export(tiny_dirs["opt"], tmp_path / "o3", route="dynamo-gqa", **QUIET)


def test_embedded_fp32_parity(onnx_student_dir):
    meta = json.loads((onnx_student_dir / "scotd.json").read_text())
    assert meta["route"] == "dynamo-gqa" and meta["graph"]["attention"] == "gqa"
    assert meta["graph"]["fusions"]["gqa"] == meta["graph"]["num_layers"] == 30
    assert meta["parity"]["passed"], meta["parity"]


def test_embedded_int4(onnx_student_int4_dir):
    meta = json.loads((onnx_student_int4_dir / "scotd.json").read_text())
    q = meta["quantization"]
    assert q["method"] == "MatMulNBits" and q["block_size"] == 32 and q["bits"] == 4
    assert q["float_matmuls_left"] == 0  # lm_head included
    # the shipped recipe: zero points, lm_head + 30 value + 30 down projections at 8 bits, the rest 4-bit
    assert q["recipe"] == "int4" and not q["symmetric"] and q["matmuls_8bit"] == 61 and q["lm_head_bits"] == 8
    change = meta["accuracy_change"]
    assert change["n"] == 4 and "change" in change and change["task"] == "csqa"
    assert meta["size_mb"] < 200


def test_int4_options_change_the_graph(tiny_dirs, tmp_path):
    """Asymmetric blocks carry zero points; `embedding=False` leaves the token table a float Gather."""
    import onnx

    from scotd_harness.export.quantize import Int4Options, quantize_int4

    fp32 = export(tiny_dirs["llama"], tmp_path / "fp32", **QUIET)
    default = quantize_int4(fp32 / "model.onnx", tmp_path / "sym.onnx", Int4Options())
    asym = quantize_int4(fp32 / "model.onnx", tmp_path / "asym.onnx",
                         Int4Options(symmetric=False, accuracy_level=0, embedding=False))
    assert default["symmetric"] and default["quantized_embeddings"] == 1
    assert not asym["symmetric"] and asym["quantized_embeddings"] == 0 and asym["accuracy_level"] == 0
    assert asym["quantized_matmuls"] == default["quantized_matmuls"] > 0
    nodes = onnx.load(str(tmp_path / "asym.onnx"), load_external_data=False).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert all(len(n.input) >= 4 and n.input[3] for n in nbits)  # zero points present
    assert any(n.op_type == "Gather" for n in nodes) and not any(n.op_type == "GatherBlockQuantized" for n in nodes)


def test_int4_with_an_8_bit_lm_head(tiny_dirs, tmp_path):
    """`lm_head_bits=8`: the vocabulary projection alone becomes an 8-bit MatMulNBits, every other one stays 4-bit,
    and the graph runs in onnxruntime closer to fp32 at the logits than the all-4-bit graph."""
    import numpy as np
    import onnx
    from onnx import helper

    from scotd_harness.export.quantize import Int4Options, quantize_int4
    from scotd_harness.export.runtime import OnnxStudent

    fp32 = export(tiny_dirs["llama"], tmp_path / "fp32", **QUIET)
    vocab = json.loads((fp32 / "config.json").read_text())["vocab_size"]
    variants = {}
    for name, options in (("q4", Int4Options()), ("head8", Int4Options(lm_head_bits=8))):
        out = tmp_path / name
        shutil.copytree(fp32, out, ignore=shutil.ignore_patterns("model.onnx*"))
        record = quantize_int4(fp32 / "model.onnx", out / "model.onnx", options)
        assert record["float_matmuls_left"] == 0 and record["lm_head_bits"] == options.lm_head_bits
        variants[name] = out
    nodes = onnx.load(str(variants["head8"] / "model.onnx"), load_external_data=False).graph.node
    bits = {}
    for n in nodes:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            bits[attrs["N"]] = bits.get(attrs["N"], set()) | {attrs["bits"]}
    assert bits.pop(vocab) == {8}
    assert bits and all(b == {4} for b in bits.values())
    ids = [OnnxStudent(fp32).encode("Q: Where do you keep milk cold?\nAnswer Choices:\n(a) fridge\n(b) oven\nA:")]
    ref = OnnxStudent(fp32).forward_logits(ids)[0]
    err = {k: float(np.abs(OnnxStudent(v).forward_logits(ids)[0] - ref).mean()) for k, v in variants.items()}
    assert 0 < err["head8"] < err["q4"], err


def test_int4_sensitive_layers_at_8_bits(tiny_dirs, tmp_path):
    """`sensitive="v-down"`: each layer's value projection (the MatMul feeding GroupQueryAttention's value input)
    and down projection (the MatMul over the MLP's width) become 8-bit, found by graph structure; `q4_k_m` picks a
    subset of them by llama.cpp's layer rule; everything else stays 4-bit and the logits move closer to fp32."""
    import numpy as np
    import onnx
    from onnx import helper

    from scotd_harness.export.quantize import Int4Options, quantize_int4
    from scotd_harness.export.runtime import OnnxStudent

    with pytest.raises(ValueError, match="sensitive"):
        Int4Options(sensitive="all")
    fp32 = export(tiny_dirs["llama"], tmp_path / "fp32", **QUIET)
    cfg = json.loads((fp32 / "config.json").read_text())
    kv_width = cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"]
    variants, records = {}, {}
    for name in ("none", "q4_k_m", "v-down"):
        out = tmp_path / name
        shutil.copytree(fp32, out, ignore=shutil.ignore_patterns("model.onnx*"))
        records[name] = quantize_int4(fp32 / "model.onnx", out / "model.onnx", Int4Options(sensitive=name))
        variants[name] = out
    layers = cfg["num_hidden_layers"]
    assert records["none"]["matmuls_8bit"] == 0 and records["v-down"]["matmuls_8bit"] == 2 * layers
    assert 0 < records["q4_k_m"]["matmuls_8bit"] <= 2 * layers
    assert all(r["float_matmuls_left"] == 0 for r in records.values())
    graph = onnx.load(str(variants["v-down"] / "model.onnx"), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    eight = []
    for n in graph.node:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs["bits"] == 8:
                eight.append((attrs["K"], attrs["N"]))
    assert sorted(eight) == sorted([(cfg["hidden_size"], kv_width)] * layers
                                   + [(cfg["intermediate_size"], cfg["hidden_size"])] * layers)
    values = [producer[g.input[2]] for g in graph.node if g.op_type == "GroupQueryAttention"]
    assert len(values) == layers
    assert all({a.name: helper.get_attribute_value(a) for a in v.attribute}["bits"] == 8 for v in values)
    ids = [OnnxStudent(fp32).encode("Q: Where do you keep milk cold?\nAnswer Choices:\n(a) fridge\n(b) oven\nA:")]
    ref = OnnxStudent(fp32).forward_logits(ids)[0]
    err = {k: float(np.abs(OnnxStudent(v).forward_logits(ids)[0] - ref).mean()) for k, v in variants.items()}
    assert 0 < err["v-down"] < err["none"], err
