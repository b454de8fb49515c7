"""Weight quantisation of an exported graph: 4-bit MatMulNBits (the fast one) and dynamic int8 (the simple one).

int4: onnxruntime's `MatMulNBitsQuantizer`, block 32, symmetric, accuracy level 4 (int8 activations on CPU), every
MatMul with a constant weight, the lm_head included. A tied lm_head often reaches its MatMul through a Transpose of
the embedding table; the quantiser only takes constant weights, so the graph is first saved at onnxruntime's basic
optimisation level, which folds that Transpose into a constant.
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

QUANTIZATIONS = ("int4", "int8")
INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4


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
    """

    symmetric: bool = True
    accuracy_level: int = INT4_ACCURACY_LEVEL
    embedding: bool = True
    lm_head_bits: int = 4

    def __post_init__(self):
        if self.lm_head_bits not in (4, 8):
            raise ValueError(f"lm_head_bits must be 4 or 8, not {self.lm_head_bits}")


def quantize_int4(src: Path, dst: Path, options: Int4Options = Int4Options()) -> dict:
    """4-bit MatMulNBits, block 32, lm_head included. Returns a description for scotd.json."""
    import onnx

    op_types = ("MatMul", "Gather") if options.embedding else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1)) if options.embedding else (("MatMul", 0),)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_constants(src, folded)
        model = onnx.load(str(folded))
        unfused = _unfuse_transposed_matmuls(model)
        head = _lm_head_matmul(model) if options.lm_head_bits != 4 else None
        qmodel = _nbits(model, 4, options, op_types, axes, exclude=[head] if head else [])
        if head:  # the second pass finds only the lm_head left as a float MatMul with a constant weight
            qmodel = _nbits(qmodel, options.lm_head_bits, options, ("MatMul",), (("MatMul", 0),), include=[head])
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
    }


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
    if kind == "int4":
        return quantize_int4(src, dst)
    if kind == "int8":
        return quantize_int8(src, dst)
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {kind!r}")


def model_size_mb(path: Path) -> float:
    files = [path, path.with_name(path.name + ".data")]
    return round(sum(os.path.getsize(f) for f in files if f.exists()) / 2**20, 1)
