"""`scotd export`: a student directory -> an ONNX directory the torch-free runtime can run, or nothing at all.

Two routes, one layout (`model.onnx` [+ `model.onnx.data`], tokenizer, configs, `scotd.json`):

- `dynamo-gqa` (Llama family: the embedded SmolLM2): `torch.onnx.export(dynamo=True)` with the cache passed as
  flat tensors that share ONE named dynamic dim (`past_seq`; with a free symbol per input the attention fusion
  silently matches nothing), then onnxscript's `optimize_for_ort`, which fuses each layer's attention and rotary
  embedding into one GroupQueryAttention node and the norms into SkipSimplifiedLayerNormalization. Every layer
  must fuse, or the export fails: a half-fused graph would need two incompatible batch layouts.
- `optimum` (OPT and GPT-2, the paper's students): optimum's exporter, `text-generation-with-past`, a graph that
  reads `attention_mask`. Only the families registered in `families.py` (llama, mistral, qwen2, opt, gpt2) are
  exported: each needs its cache names, tolerance and runtime layout checked, so any other `model_type` is refused
  with the supported list named rather than exported on trust.

Then parity (fp32 against PyTorch: logits within atol and identical greedy tokens, `parity.py`), then the optional
fp16 conversion / quantisation (`quantize.py`), whose accuracy change against the fp32 graph on a CSQA dev sample
goes into `scotd.json`, measured on the same data every command reads (`--data-dir` / `SCOTD_DATA_DIR`, else the
hub) and the chosen split.

Atomic: all work happens in a staging directory beside the target, named with the exporting process's pid. Only once
every check has passed is it swapped in (the old export renamed away, the new one renamed in, the old one deleted),
so a failed check leaves an existing export untouched and a new target absent. A staging directory whose process is
gone (a killed export) is removed, with a message, by the next export to the same target.

A quantised export never runs the slow graph export twice for one student: given an fp32 export directory
(`fp32_dir`, or an fp32 export passed as the student) whose `student_sha256` (a content hash of the student's config
and weights, recorded in every fp32 export's `scotd.json`) matches, it quantises that one (`derive`); otherwise it
makes the fp32 export there first and derives from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from scotd_harness.checksums import update_with_file
from scotd_harness.errors import ScotdError

from . import families, quantize
from .families import Family
from .parity import check_parity

log = logging.getLogger(__name__)

SCOTD_JSON_VERSION = 1
DTYPES = ("fp32", "fp16")
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
)


class ExportError(ScotdError):
    """The export itself failed (a route could not produce a usable graph)."""


# ------------------------------------------------------------------------------------------------ routes
def _export_dynamo_gqa(model, staging: Path, say) -> dict:
    """torch dynamo export + onnxscript ORT fusions; returns the graph facts for scotd.json."""
    import onnx_ir as ir
    import torch
    from onnxscript.rewriter.ort_fusions import optimize_for_ort
    from transformers import DynamicCache

    cfg = model.config
    n_layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class _Flat(torch.nn.Module):
        """The model with its cache as flat (key, value) tensors per layer, in and out."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, past_key_values):
            cache = DynamicCache()
            for i in range(n_layers):
                cache.update(past_key_values[2 * i], past_key_values[2 * i + 1], i)
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    batch, seq, past = 2, 3, 4
    kwargs = {
        "input_ids": torch.randint(0, cfg.vocab_size, (batch, seq)),
        "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
        "position_ids": torch.arange(past, past + seq).expand(batch, seq),
        "past_key_values": [torch.randn(batch, kv_heads, past, head_dim) for _ in range(2 * n_layers)],
    }
    dynamic = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total_seq"},
        "position_ids": {0: "batch", 1: "seq"},
        # the SAME name on every past key and value, or the attention fusion matches nothing
        "past_key_values": [{0: "batch", 2: "past_seq"} for _ in range(2 * n_layers)],
    }
    in_names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")
    ]
    out_names = ["logits"] + [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    say("exporting with the torch dynamo exporter (a few minutes on 2 cores)")
    program = torch.onnx.export(
        _Flat(model).eval(),
        (),
        kwargs=kwargs,
        dynamic_shapes=dynamic,
        input_names=in_names,
        output_names=out_names,
        dynamo=True,
        optimize=True,
        opset_version=18,
    )
    say("fusing attention for onnxruntime (onnxscript ort_fusions)")
    fused, counts = optimize_for_ort(program.model)
    gqa = sum(1 for n in fused.graph if n.op_type == "GroupQueryAttention")
    if gqa != n_layers:
        raise ExportError(
            f"the attention fusion matched {gqa} of {n_layers} layers; a partly fused graph is not usable. "
            f"Use --route optimum for this student."
        )
    ir.save(fused, str(staging / "model.onnx"), external_data="model.onnx.data")
    return {"attention": "gqa", "num_layers": n_layers, "fusions": {k: v for k, v in counts.items() if v}}


def _export_optimum(student_dir: Path, staging: Path, n_layers: int, say) -> dict:
    from optimum.exporters.onnx import main_export

    say("exporting with optimum's exporter (text-generation-with-past)")
    work = staging / "_optimum"
    main_export(
        str(student_dir), output=str(work), task="text-generation-with-past", do_validation=False, device="cpu"
    )
    for f in work.iterdir():
        if f.name.startswith("model.onnx"):
            os.replace(f, staging / f.name)
    shutil.rmtree(work)
    return {"attention": "mask", "num_layers": n_layers}


# ------------------------------------------------------------------------------------------------ accuracy
def accuracy_on_sample(student, task: str, limit: int, max_new_tokens: int = 128, batch_size: int = 8,
                       split: str = "validation", data_dir: str | os.PathLike | None = None) -> dict:
    """Greedy CoT accuracy of an OnnxStudent on the first `limit` questions of `split`; answers kept for comparison.

    The questions come from `load_examples`, like every other command's: `data_dir`, else SCOTD_DATA_DIR, else
    the hub."""
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    from .runtime import GenerationConfig

    examples = load_examples(task, split, data_dir=data_dir, limit=limit)
    if any(e.answer is None for e in examples):
        raise ScotdError(f"the {split} split of {task} has no gold answers to measure accuracy on; "
                         f"choose another split for the accuracy sample")
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    preds = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        preds += [a.answer for a in student.answer_many([(e.question, e.choices) for e in chunk], config=config)]
    correct = sum(p == e.answer for p, e in zip(preds, examples))
    return {
        "n": len(examples),
        "accuracy": correct / max(len(examples), 1),
        "invalid": sum(p == formats.INVALID for p in preds),
        "predictions": preds,
    }


# ------------------------------------------------------------------------------------------------ staging
STAGING_TAG = ".staging-"
OLD_TAG = ".old-"


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ScotdError(f"{out} exists and is not empty (pass --overwrite to replace it)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _leftovers(out: Path, tag: str):
    """(path, owner pid or None) of the directories an export of `out` leaves beside it while it runs."""
    prefix = f".{out.name}{tag}"
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        if path.name.startswith(prefix) and path.is_dir():
            pid = path.name[len(prefix):].split("-", 1)[0]
            yield path, int(pid) if pid.isdigit() else None


def clean_stale(out: str | os.PathLike, say) -> None:
    """Remove the staging directories of exports of `out` whose process is gone (killed), saying so.

    A previous export renamed away by a swap that was killed halfway is put back when `out` itself is missing."""
    out = Path(out)
    for tag in (STAGING_TAG, OLD_TAG):
        for path, pid in _leftovers(out, tag):
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue  # an export still running (or this process's own)
            owner = f"pid {pid}" if pid is not None else "an unknown process"
            if tag == OLD_TAG and not out.exists():
                os.replace(path, out)
                say(f"restored {out} from {path.name}, left by an export ({owner}) killed while swapping it")
                continue
            say(f"removing {path.name}: left by an export of {out.name} ({owner}) that is no longer running")
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(staging: Path, out: Path) -> None:
    """Put `staging` at `out`: the old export is renamed away first and deleted only once the new one is in."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(out: Path, say):
    """A staging directory beside `out`, swapped in when the block succeeds and removed when it fails (or is
    interrupted), leaving `out` as it was. Its name carries this process's pid, so a later export can tell a
    killed export's leftovers from a running one's."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out, say)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_TAG}{os.getpid()}-", dir=out.parent))
    try:
        yield staging
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def student_sha256(student_dir: str | os.PathLike) -> str:
    """Content hash of a student directory (config.json and its weight files): the identity under which an fp32
    export is reused for a quantised one. A retrained student has other weights, so it never matches."""
    student_dir = Path(student_dir)
    weights = sorted(p.name for p in student_dir.iterdir()
                     if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json"))
    h = hashlib.sha256()
    for name in ["config.json", *weights]:
        h.update(name.encode() + b"\0")
        update_with_file(h, student_dir / name)
    return h.hexdigest()


def _is_fp32_export(directory: Path) -> bool:
    meta_file = directory / "scotd.json"
    if not (directory / "model.onnx").is_file() or not meta_file.is_file():
        return False
    meta = json.loads(meta_file.read_text())
    return meta.get("kind") == "onnx-student" and meta.get("dtype") == "fp32" and not meta.get("quantization")


# ------------------------------------------------------------------------------------------------ conversion
def _convert_staging(staging: Path, meta: dict, quantization, dtype, reference, fp32_model: Path, sample, task,
                     threads, say, split: str = "validation", data_dir=None) -> None:
    """Write the quantised/fp16 form of `fp32_model` as `staging/model.onnx`; record the accuracy change of it
    against `reference` (an OnnxStudent on the fp32 graph) in `meta`."""
    from scotd_harness.datasets.base import data_dir_from_env

    from .runtime import OnnxStudent

    say(f"converting: {quantization or dtype}")
    if quantization:
        meta["quantization"] = quantize.apply(quantization, fp32_model, staging / "model.onnx")
    else:
        meta["dtype"] = "fp16"
        meta["conversion"] = quantize.convert_fp16(fp32_model, staging / "model.onnx")
    (staging / "scotd.json").write_text(json.dumps(meta, indent=2))
    converted = OnnxStudent(staging, threads=threads)
    root = data_dir_from_env(data_dir)
    source = str(root) if root else "hub"
    change = {"task": task, "split": split, "data": source, "n": 0, "skipped": True}
    if sample > 0:
        say(f"accuracy change on {sample} {task} {split} questions (fp32 graph vs converted; data: {source})")
        base = accuracy_on_sample(reference, task, sample, split=split, data_dir=data_dir)
        new = accuracy_on_sample(converted, task, sample, split=split, data_dir=data_dir)
        agree = sum(a == b for a, b in zip(base["predictions"], new["predictions"]))
        change = {
            "task": task,
            "split": split,
            "data": source,
            "n": base["n"],
            "decoding": "greedy CoT, student format, max 128 new tokens",
            "accuracy_fp32": base["accuracy"],
            "accuracy": new["accuracy"],
            "change": new["accuracy"] - base["accuracy"],
            "answers_agree": agree / max(base["n"], 1),
            "invalid_fp32": base["invalid"],
            "invalid": new["invalid"],
        }
        say(f"accuracy {base['accuracy']:.3f} -> {new['accuracy']:.3f} on n={base['n']}")
    meta["accuracy_change"] = change
    del converted, reference


def derive(
    onnx_dir: str | os.PathLike,
    out: str | os.PathLike,
    quantization: str | None = "int4",
    dtype: str = "fp32",
    accuracy_sample: int = 16,
    accuracy_task: str = "csqa",
    threads: int | None = None,
    overwrite: bool = False,
    progress=None,
    accuracy_split: str = "validation",
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Quantise (or convert to fp16) an existing fp32 export without exporting again; same checks, same layout."""
    say = progress or (lambda msg: log.warning("%s", msg))
    src, out = Path(onnx_dir), Path(out)
    if not _is_fp32_export(src):
        raise ScotdError(f"{src} is not an fp32 export; derive from the fp32 one")
    if quantization is None and dtype != "fp16":
        raise ScotdError("nothing to derive: give a quantisation or --dtype fp16")
    if src.resolve() == out.resolve():
        raise ScotdError(f"{out} is the fp32 export itself; write the converted one to another directory")
    _check_target(out, overwrite)
    from .runtime import OnnxStudent

    meta = json.loads((src / "scotd.json").read_text())
    started = time.time()
    with staged(out, say) as staging:
        # everything but the graph, which is read in place (a copy of an fp32 graph is 4 bytes a parameter)
        shutil.copytree(src, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.onnx*"))
        meta["derived_from"] = {"fp32_export": src.name, "student_sha256": meta.get("student_sha256")}
        reference = OnnxStudent(src, threads=threads)
        _convert_staging(staging, meta, quantization, dtype, reference, src / "model.onnx", accuracy_sample,
                         accuracy_task, threads, say, split=accuracy_split, data_dir=data_dir)
        del reference
        meta["size_mb"] = quantize.model_size_mb(staging / "model.onnx")
        meta["export_seconds"] = round(meta.get("export_seconds", 0) + time.time() - started, 1)
        (staging / "scotd.json").write_text(json.dumps(meta, indent=2))
    say(f"derived {out} from the fp32 export {src} ({meta['size_mb']} MB)")
    return out


# ------------------------------------------------------------------------------------------------ export
def _graph_facts(family: Family, config: dict, gen_config: dict, route_facts: dict) -> dict:
    eos = gen_config.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = gen_config.get("pad_token_id", config.get("pad_token_id"))
    return {
        **route_facts,
        "model_file": "model.onnx",
        "past_key": family.past_key,
        "past_value": family.past_value,
        "present_key": family.present_key,
        "present_value": family.present_value,
        "eos_token_ids": eos_ids,
        "pad_token_id": pad if pad is not None else (eos_ids[0] if eos_ids else 0),
        "max_positions": config.get("max_position_embeddings") or config.get("n_positions"),
        # lm-eval's hf model encodes without special tokens for causal LMs; so does training here
        "add_special_tokens": False,
    }


def export(
    student: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "fp32",
    quantization: str | None = None,
    route: str | None = None,
    atol: float | None = None,
    accuracy_sample: int = 16,
    accuracy_task: str = "csqa",
    threads: int | None = None,
    overwrite: bool = False,
    progress=None,
    accuracy_split: str = "validation",
    data_dir: str | os.PathLike | None = None,
    fp32_dir: str | os.PathLike | None = None,
) -> Path:
    """Export `student` (an HF directory or `embedded`) to `out`; returns `out`. Raises ParityError/ScotdError.

    A quantised/fp16 export with `fp32_dir` reuses the fp32 export there when it is of the same student (by
    `student_sha256`), else exports fp32 into it first (replacing a stale one only with `overwrite`); then derives.
    A `student` that is itself an fp32 export is derived from directly."""
    from scotd_harness.embedded import resolve_model

    say = progress or (lambda msg: log.warning("%s", msg))
    if dtype not in DTYPES:
        raise ScotdError(f"--dtype must be one of {', '.join(DTYPES)}")
    if quantization not in (None, *quantize.QUANTIZATIONS):
        raise ScotdError(f"--quantize must be one of {', '.join(quantize.QUANTIZATIONS)}")
    if quantization and dtype != "fp32":
        raise ScotdError("quantisation starts from fp32 weights: use --dtype fp32 with --quantize")
    student_dir = Path(resolve_model(student))
    out = Path(out)
    converting = bool(quantization) or dtype == "fp16"
    derive_args = {"quantization": quantization, "dtype": dtype, "accuracy_sample": accuracy_sample,
                   "accuracy_task": accuracy_task, "threads": threads, "overwrite": overwrite, "progress": progress,
                   "accuracy_split": accuracy_split, "data_dir": data_dir}
    if _is_fp32_export(student_dir):
        if not converting:
            raise ScotdError(f"{student_dir} is already an fp32 ONNX export; give --quantize or --dtype fp16")
        return derive(student_dir, out, **derive_args)
    if not (student_dir / "config.json").is_file():
        raise ScotdError(f"{student_dir} is not a model directory (no config.json)")
    _check_target(out, overwrite)
    config = json.loads((student_dir / "config.json").read_text())
    family = families.family_for(config.get("model_type", ""))
    route = route or family.route
    if route not in families.ROUTES:
        raise ScotdError(f"--route must be one of {', '.join(families.ROUTES)}")
    if route == "dynamo-gqa" and family.route != "dynamo-gqa":
        raise ScotdError(f"the dynamo-gqa route fuses Llama-family attention only; {family.name} uses optimum")
    if converting and fp32_dir is not None:
        fp32_dir = Path(fp32_dir)
        sha = student_sha256(student_dir)
        if _is_fp32_export(fp32_dir) and json.loads((fp32_dir / "scotd.json").read_text()).get("student_sha256") == sha:
            say(f"reusing the fp32 export in {fp32_dir} (same student, sha256 {sha[:12]}): no second graph export")
        else:
            if fp32_dir.exists() and any(fp32_dir.iterdir()) and not overwrite:
                raise ScotdError(f"{fp32_dir} holds no fp32 export of this student (sha256 {sha[:12]}); pass "
                                 f"--overwrite to export it there again, or choose another fp32 directory")
            export(student, fp32_dir, route=route, atol=atol, threads=threads, overwrite=overwrite, progress=progress)
        return derive(fp32_dir, out, **derive_args)
    gen_file = student_dir / "generation_config.json"
    gen_config = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    atol = family.atol if atol is None else atol

    started = time.time()
    with staged(out, say) as staging:
        import torch
        from transformers import AutoModelForCausalLM

        from .runtime import OnnxStudent

        if threads:
            torch.set_num_threads(threads)
        # eager attention traces into the plain MatMul/Softmax pattern the GQA fusion knows in every layer
        model = AutoModelForCausalLM.from_pretrained(
            student_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        n_layers = families.num_layers(config, family)
        if route == "dynamo-gqa":
            facts = _export_dynamo_gqa(model, staging, say)
        else:
            facts = _export_optimum(student_dir, staging, n_layers, say)
        for name in COPIED_FILES:
            if (student_dir / name).is_file():
                shutil.copy2(student_dir / name, staging / name)
        if not (staging / "tokenizer.json").is_file():
            raise ExportError(f"{student_dir} has no tokenizer.json (a fast tokenizer is needed by the runtime)")
        student_meta_file = student_dir / "scotd.json"
        student_meta = json.loads(student_meta_file.read_text()) if student_meta_file.is_file() else {}
        meta = {
            "format_version": SCOTD_JSON_VERSION,
            "kind": "onnx-student",
            "source": str(student) if str(student) == "embedded" else student_dir.name,
            "student_sha256": student_sha256(student_dir),
            "family": family.name,
            "route": route,
            "dtype": "fp32",
            "quantization": None,
            "graph": _graph_facts(family, config, gen_config, facts),
            "student": student_meta,
        }
        (staging / "scotd.json").write_text(json.dumps(meta, indent=2))

        say("checking parity against PyTorch (fp32)")
        reference = OnnxStudent(staging, threads=threads)
        report = check_parity(model, reference, atol=atol)
        meta["parity"] = {"reference": "pytorch fp32", **report.to_dict()}
        say(f"parity ok: max |logit diff| {report.max_abs_diff:.2e} (atol {atol:g}), identical greedy tokens")
        del model

        if converting:
            fp32_dir = staging / "_fp32"  # the fp32 graph, moved aside; the session above has it loaded
            fp32_dir.mkdir()
            for f in list(staging.iterdir()):
                if f.name.startswith("model.onnx"):
                    os.replace(f, fp32_dir / f.name)
            _convert_staging(staging, meta, quantization, dtype, reference, fp32_dir / "model.onnx", accuracy_sample,
                             accuracy_task, threads, say, split=accuracy_split, data_dir=data_dir)
            shutil.rmtree(fp32_dir)
        del reference
        meta["size_mb"] = quantize.model_size_mb(staging / "model.onnx")
        meta["export_seconds"] = round(time.time() - started, 1)
        (staging / "scotd.json").write_text(json.dumps(meta, indent=2))
    say(f"exported to {out} ({meta['size_mb']} MB)")
    return out
