"""Weight quantisation of an exported graph: 4-bit MatMulNBits (the fast one) and dynamic int8 (the simple one).

int4: onnxruntime's `MatMulNBitsQuantizer`, block 32 with zero points, accuracy level 4 (int8 activations on CPU),
every MatMul with a constant weight, the lm_head included; the `int4` recipe keeps the most sensitive ones at 8 bits
(`INT4_RECIPES`). A tied lm_head often reaches its MatMul through a Transpose of the embedding table; the quantiser
only takes constant weights, so the graph is first saved at onnxruntime's basic optimisation level, which folds that
Transpose into a constant.
int8: `quantize_dynamic`, per-channel int8 weights, int8 activations quantised at run time.
fp16: `onnxruntime.transformers.float16` (weights, activations and cache in half precision; for GPUs).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4
SENSITIVE_RULES = ("none", "q4_k_m", "v-down")


def _fold_constants(src: Path, dst: Path) -> None:
    """Save `src` after onnxruntime's basic (provider-independent) optimisations: constant folding included."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _save(model, path: Path) -> None:
    import onnx

    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
    )


def _unfuse_transposed_matmuls(model) -> int:
    """FusedMatMul(A, W, transB=1) with a constant W -> MatMul(A, W^T): the quantiser takes plain MatMuls only.

    onnxscript's ORT rules fold a tied lm_head's Transpose into a FusedMatMul over the embedding table; without this
    the lm_head (the largest MatMul of a small model) would stay in fp32. The embedding keeps its own table.
    """
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "FusedMatMul" or node.domain != "com.microsoft" or node.input[1] not in inits:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0:
            continue
        if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2:
            continue
        name = node.input[1] + "_transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            model.graph.initializer.append(inits[name])
        matmul = onnx.helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name + "_unfused")
        model.graph.node.remove(node)
        model.graph.node.insert(i, matmul)
        changed += 1
    return changed


@dataclass(frozen=True)
class Int4Options:
    """The int4 knobs that trade accuracy against speed (bench/int4_accuracy.py measures each on a real student).

    symmetric: a scale per block (zero point 8) or a scale and a 4-bit zero point per block; asymmetric follows
    skewed blocks better (and GGUF Q4_1 weights, which carry a minimum per block of 32).
    accuracy_level: 4 quantises activations to int8 per block for an int8 dot product (fastest on CPU);
    0 keeps fp32 activations.
    embedding: also store the token embedding table (tied to the lm_head) as 4-bit GatherBlockQuantized.

    lm_head_bits: 4, or 8 to keep the lm_head (the output projection over the vocabulary) at 8 bits, as llama.cpp's
    Q4 mixes keep their output tensor at 6 bits: the answer letter of a small student is a near-tie among a few
    logits there, which 4-bit rounding flips most easily.
    sensitive: which other MatMuls go to 8 bits. "none"; "q4_k_m": llama.cpp's Q4_K_M rule, the attention value
    projection and the MLP down projection of the first and last eighth of the layers and of every third layer
    between (about half of them); "v-down": those two in every layer. llama.cpp keeps them at 6 bits because they
    carry the largest quantisation error into the residual stream; MatMulNBits has 4 and 8.
    """

    symmetric: bool = True
    accuracy_level: int = INT4_ACCURACY_LEVEL
    embedding: bool = True
    lm_head_bits: int = 4
    sensitive: str = "none"

    def __post_init__(self):
        if self.lm_head_bits not in (4, 8):
            raise ValueError(f"lm_head_bits must be 4 or 8, not {self.lm_head_bits}")
        if self.sensitive not in SENSITIVE_RULES:
            raise ValueError(f"sensitive must be one of {SENSITIVE_RULES}, not {self.sensitive!r}")


#: What `--quantize` ships, measured on the distilled CSQA student over the full dev set
#: (bench/results/int4_accuracy.md): `int4` keeps the lm_head and each layer's value and down projections at 8 bits
#: (KL to fp32 0.020, accuracy +1.0 points, 128 MB); `int4-uniform` stores every weight at 4 bits (KL 0.047,
#: -0.7 points, 100 MB). Both take zero points: symmetric blocks lost 2.6 points on the same student.
INT4_RECIPES = {
    "int4": Int4Options(symmetric=False, lm_head_bits=8, sensitive="v-down"),
    "int4-uniform": Int4Options(symmetric=False),
}
QUANTIZATIONS = (*INT4_RECIPES, "int8")


def quantize_int4(src: Path, dst: Path, options: Int4Options | None = None) -> dict:
    """4-bit MatMulNBits, block 32, lm_head included (default: the `int4` recipe). Returns a description for
    scotd.json."""
    import onnx

    options = options or INT4_RECIPES["int4"]

    op_types = ("MatMul", "Gather") if options.embedding else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1)) if options.embedding else (("MatMul", 0),)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_constants(src, folded)
        model = onnx.load(str(folded))
        unfused = _unfuse_transposed_matmuls(model)
        eight = [_lm_head_matmul(model)] if options.lm_head_bits == 8 else []
        eight += _sensitive_matmuls(model, options.sensitive)
        qmodel = _nbits(model, 4, options, op_types, axes, exclude=eight)
        if eight:  # the second pass finds only these left as float MatMuls with a constant weight
            qmodel = _nbits(qmodel, 8, options, ("MatMul",), (("MatMul", 0),), include=eight)
        matmuls = sum(1 for n in qmodel.graph.node if n.op_type == "MatMul")
        nbits = sum(1 for n in qmodel.graph.node if n.op_type == "MatMulNBits")
        gathers = sum(1 for n in qmodel.graph.node if n.op_type == "GatherBlockQuantized")
        _save(qmodel, dst)
    log.info("int4: %d MatMulNBits, %d float MatMul left", nbits, matmuls)
    return {
        "method": "MatMulNBits",
        "bits": 4,
        "block_size": INT4_BLOCK_SIZE,
        "symmetric": options.symmetric,
        "accuracy_level": options.accuracy_level,
        "quantized_matmuls": nbits,
        "float_matmuls_left": matmuls + sum(1 for n in qmodel.graph.node if n.op_type == "FusedMatMul"),
        "quantized_embeddings": gathers,
        "lm_head_unfused": unfused,
        "lm_head_bits": options.lm_head_bits,
        "sensitive_8bit": options.sensitive,
        "matmuls_8bit": len(eight),
    }


def _sensitive_matmuls(model, rule: str) -> list[str]:
    """Names of the MatMuls `rule` keeps at 8 bits, found by the graph's structure, not by node names (an export
    renames them): a layer's value projection feeds input 2 of its GroupQueryAttention, its down projection is the
    MatMul whose weight has the MLP's width as input dimension. Graphs without fused attention (OPT, GPT-2) get the
    down projections only."""
    if rule == "none":
        return []
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                and len(inits[n.input[1]].dims) == 2]
    head = _lm_head_matmul(model)
    body = [n for n in weighted if n.name != head]
    if not body:
        return []
    width = max(inits[n.input[1]].dims[0] for n in body)
    downs = [n.name for n in body if inits[n.input[1]].dims[0] == width]
    names = {n.name for n in body}
    values = [producer[g.input[2]].name for g in model.graph.node if g.op_type == "GroupQueryAttention"
              and g.input[2] in producer and producer[g.input[2]].name in names]
    chosen = []
    for group in (values, downs):  # each in layer order: the graph is topologically sorted
        n = len(group)
        for i, name in enumerate(group):  # llama.cpp's use_more_bits(i_layer, n_layers)
            if rule == "v-down" or i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2:
                chosen.append(name)
    return chosen


def _nbits(model, bits: int, options: Int4Options, op_types, axes, exclude=(), include=None):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=INT4_BLOCK_SIZE,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=list(exclude),
        nodes_to_include=include,
        op_types_to_quantize=op_types,
        quant_axes=axes,
    )
    qlog = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = qlog.level
    qlog.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quant.process()
    finally:
        qlog.setLevel(level)
    return quant.model.model


def _lm_head_matmul(model) -> str:
    """The name of the lm_head: the MatMul with a constant weight of the most output columns (the vocabulary)."""
    inits = {t.name: t for t in model.graph.initializer}
    best, cols = None, 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            if len(dims) == 2 and dims[1] > cols:
                best, cols = node.name, dims[1]
    if best is None:
        raise ValueError("no MatMul with a constant weight found: cannot tell the lm_head")
    if not best:
        raise ValueError("the lm_head MatMul has no node name: the quantiser cannot single it out")
    return best


def quantize_int8(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for stale in (dst, dst.with_name(dst.name + ".data")):
        stale.unlink(missing_ok=True)
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
        use_external_data_format=True,
    )
    return {"method": "dynamic", "bits": 8, "per_channel": True, "op_types": ["MatMul"]}


def convert_fp16(src: Path, dst: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    _save(model, dst)
    return {"dtype": "fp16"}


def apply(kind: str, src: Path, dst: Path) -> dict:
    if kind in INT4_RECIPES:
        return {"recipe": kind, **quantize_int4(src, dst, INT4_RECIPES[kind])}
    if kind == "int8":
        return quantize_int8(src, dst)
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {kind!r}")


def model_size_mb(path: Path) -> float:
    files = [path, path.with_name(path.name + ".data")]
    return round(sum(os.path.getsize(f) for f in files if f.exists()) / 2**20, 1)
