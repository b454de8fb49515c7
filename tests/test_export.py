"""Export: the three families, parity recorded, atomic failure and overwrite, stale staging cleaned, quantisation
with its accuracy change on the data asked for, an fp32 export reused, an unsupported family refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from scotd_harness.export.exporter import derive, export, student_sha256
from scotd_harness.export.parity import ParityError
from scotd_harness.export.runtime import GenerationConfig, OnnxStudent
from tiny_students import make_tiny_student

from scotd_harness.cli import cli
from scotd_harness.errors import ScotdError

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


# --- atomic export -----------------------------------------------------------------------------------------------


def _staging_dirs(parent: Path, name: str) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(f".{name}.staging-"))


def test_export_is_swapped_in_only_after_its_checks(tiny_dirs, tmp_path):
    """A killed export's staging dir is removed by the next export (a running one's is kept); a failed check leaves
    no new directory, and on --overwrite the old export untouched; a passing one replaces it, nothing left beside."""
    out = tmp_path / "onnx"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    killed = subprocess.Popen([sys.executable, "-m", "scotd_harness.cli", "export", str(tiny_dirs["gpt2"]), "--out",
                               str(out), "--threads", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _staging_dirs(tmp_path, "onnx") and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL
    (left,) = _staging_dirs(tmp_path, "onnx")
    assert not out.exists() and left.name.startswith(f".onnx.staging-{killed.pid}-")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / f".onnx.staging-{sleeper.pid}-running"
        live.mkdir()
        said = []
        with pytest.raises(ParityError, match="max \\|logit diff\\|"):  # a failed check leaves no directory
            export(tiny_dirs["gpt2"], out, atol=1e-12, threads=2, progress=said.append)
        assert any(f"removing {left.name}: left by an export of onnx (pid {killed.pid}) that is no longer running"
                   in m for m in said), said
        assert not out.exists() and _staging_dirs(tmp_path, "onnx") == [live]  # a running export's is kept
    finally:
        sleeper.kill()
        sleeper.wait()
    live.rmdir()
    assert list(tmp_path.iterdir()) == []
    export(tiny_dirs["gpt2"], out, **QUIET)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir() if p.is_file()}
    assert json.loads((out / "scotd.json").read_text())["family"] == "gpt2"

    with pytest.raises(ParityError):
        export(tiny_dirs["gpt2"], out, atol=1e-12, overwrite=True, **QUIET)
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]

    derive(out, tmp_path / "q", "int8", accuracy_sample=0, **QUIET)
    derive(out, tmp_path / "q", "int4-uniform", accuracy_sample=0, overwrite=True, **QUIET)
    assert json.loads((tmp_path / "q" / "scotd.json").read_text())["quantization"]["recipe"] == "int4-uniform"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "q"]  # no staging or old directory left
    with pytest.raises(ScotdError, match="not empty"):
        derive(out, tmp_path / "q", "int8", accuracy_sample=0, **QUIET)


def _csqa_data_dir(root: Path, dev: int, train: int) -> Path:
    """A data directory in the official CSQA layout holding `dev` and `train` questions of its own."""
    folder = root / "commonsenseqa"
    folder.mkdir(parents=True)
    for name, count in (("dev_rand_split.jsonl", dev), ("train_rand_split.jsonl", train)):
        rows = [{"answerKey": "A", "id": f"{name[:3]}-{i}", "question": {
            "stem": f"Where would you keep item number {i}?",
            "choices": [{"label": label, "text": text} for label, text in zip("ABCDE", ["box", "sea", "sky", "sun", "air"])],
        }} for i in range(count)]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_quantised_export_reuses_the_fp32_export_and_reads_the_given_data(tiny_dirs, tmp_path):
    """The graph export runs once for a student (identified by its content hash); the accuracy sample comes from
    the data directory and split given (3 dev and 2 train questions there, thousands in the official files)."""
    data = _csqa_data_dir(tmp_path / "data", dev=3, train=2)
    fp32, said = tmp_path / "fp32", []
    first = export(tiny_dirs["gpt2"], tmp_path / "int8", quantization="int8", fp32_dir=fp32, accuracy_sample=16,
                   data_dir=data, threads=2, progress=said.append)
    assert sum("exporting with" in m for m in said) == 1
    fp32_meta = json.loads((fp32 / "scotd.json").read_text())
    assert fp32_meta["student_sha256"] == student_sha256(tiny_dirs["gpt2"]) and fp32_meta["quantization"] is None
    meta = json.loads((first / "scotd.json").read_text())
    assert meta["quantization"]["method"] and meta["derived_from"]["student_sha256"] == fp32_meta["student_sha256"]
    assert (meta["accuracy_change"]["n"], meta["accuracy_change"]["split"]) == (3, "validation")
    assert meta["accuracy_change"]["data"] == str(data)

    said.clear()
    second = export(tiny_dirs["gpt2"], tmp_path / "int4", quantization="int4-uniform", fp32_dir=fp32,
                    accuracy_sample=16, accuracy_split="train", data_dir=data, threads=2, progress=said.append)
    assert not any("exporting with" in m for m in said) and any("reusing the fp32 export" in m for m in said), said
    change = json.loads((second / "scotd.json").read_text())["accuracy_change"]
    assert (change["n"], change["split"]) == (2, "train")
    with pytest.raises(ScotdError, match="no fp32 export of this student"):  # another student: no silent reuse
        export(tiny_dirs["opt"], tmp_path / "other", quantization="int8", fp32_dir=fp32, **QUIET)
    assert not (tmp_path / "other").exists()


def test_unsupported_family_is_a_clean_cli_error(tiny_dirs, tmp_path):
    bad = tmp_path / "bert-student"
    shutil.copytree(tiny_dirs["opt"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "bert"
    (bad / "config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(cli, ["export", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "model_type 'bert' is not a supported student family; supported: gpt2, llama, mistral, opt, qwen2" in (
        result.output)
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-student"]
