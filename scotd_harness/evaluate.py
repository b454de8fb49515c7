"""`scotd eval`: lm-eval's `simple_evaluate` on the scotd_* tasks, written as results JSON and a markdown table.

The tasks are the same YAMLs the stock `lm_eval` CLI runs (`tasks/`), so `scotd eval student/ --tasks scotd_csqa`
and `lm_eval --model hf --model_args pretrained=student/ --tasks scotd_csqa` give the same numbers. What this
wrapper adds: `embedded` as a model name, `--split` / `--data-dir` / `--sc-samples` as plain options, and an
output folder with `results.json` (written atomically) and `results.md`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__, atomic
from .errors import ScotdError

log = logging.getLogger(__name__)

MODEL_TYPES = ("hf", "scotd-onnx")
#: the lm-eval model each runs as (`scotd-hf`: `hf` whose sampled chains are seeded per question and chain)
LM_EVAL_MODELS = {"hf": "scotd-hf", "scotd-onnx": "scotd-onnx"}
#: (in the output folder) the scotd-onnx generations finished so far; removed once results.json is written
GENERATION_CACHE = "generations.partial.jsonl"
#: Self-consistency tasks report maj@8 (a vote over the first 8 chains), so they need at least 8; with exactly 8
#: that vote is maj@N's, and the report shows one row.
MIN_SC_SAMPLES = 8


@dataclass
class EvalOutput:
    results: dict
    table: str
    output_dir: Path

    @property
    def json_path(self) -> Path:
        return self.output_dir / "results.json"

    @property
    def table_path(self) -> Path:
        return self.output_dir / "results.md"


def default_output_dir(model: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(model).rstrip("/")).name or "model")
    return Path("runs") / "eval" / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def split_task_list(tasks: str | list[str]) -> list[str]:
    items = tasks.split(",") if isinstance(tasks, str) else [t for item in tasks for t in item.split(",")]
    return [t.strip() for t in items if t.strip()]


def resolve_task_names(task_manager, tasks: list[str]) -> list[str]:
    """Names and glob patterns (`scotd_*`) -> known task/tag/group names; an unknown one is an error."""
    missing = [t for t in tasks if not task_manager.match_tasks([t])]
    if missing:
        known = sorted(n for n in task_manager.all_tasks if n.startswith("scotd"))
        raise ScotdError(f"unknown task(s): {', '.join(missing)}; scotd tasks: {', '.join(known)}")
    names: list[str] = []
    for t in tasks:
        for name in task_manager.match_tasks([t]):
            if name not in names:
                names.append(name)
    return names


def _check_model(pretrained: str, model_type: str) -> None:
    """A wrong model path fails here with its name, not deep inside transformers or onnxruntime."""
    path = Path(pretrained).expanduser()
    needs = "scotd.json" if model_type == "scotd-onnx" else "config.json"
    if path.is_dir():
        if not (path / needs).is_file():
            what = "an export of `scotd export`" if model_type == "scotd-onnx" else "a transformers model directory"
            raise ScotdError(f"{pretrained} is not {what} (no {needs})")
    elif model_type == "scotd-onnx" or path.exists() or pretrained.startswith((".", "/", "~")):
        raise ScotdError(f"model {pretrained} not found: give a model directory"
                         + ("" if model_type == "scotd-onnx" else ", a hub id or `embedded`"))


def evaluate(
    model: str,
    tasks: str | list[str],
    *,
    model_type: str = "hf",
    limit: int | None = None,
    batch_size: int | str = 8,
    output_dir: str | os.PathLike | None = None,
    device: str | None = None,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    sc_samples: int | None = None,
    max_gen_toks: int | None = None,
    log_samples: bool = False,
    seed: int = 1234,
) -> EvalOutput:
    """Evaluate MODEL (a model directory, a hub id for `hf`, or `embedded`) on lm-eval tasks; write and return
    the results. `split` and `data_dir` reach the scotd tasks' data loader as lm-eval metadata; `sc_samples`
    sets `repeats` of the self-consistency tasks; `max_gen_toks` caps generated tokens (128 in the tasks)."""
    if model_type not in MODEL_TYPES:
        raise ScotdError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if sc_samples is not None and sc_samples < MIN_SC_SAMPLES:
        raise ScotdError(f"--sc-samples must be at least {MIN_SC_SAMPLES} (the maj@8 filter votes over 8 chains)")
    task_list = split_task_list(tasks)
    if not task_list:
        raise ScotdError("no tasks given")

    from . import lm_eval_hook
    from .embedded import resolve_model

    pretrained = resolve_model(model)
    _check_model(pretrained, model_type)
    lm_eval_hook.install()  # the scotd tasks and scotd-onnx even where the .pth file is not processed
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    from .tasks.utils import DATA_DIR_KEY, SPLIT_KEY

    metadata = {}
    if split:
        metadata[SPLIT_KEY] = split
    if data_dir is not None:
        metadata[DATA_DIR_KEY] = str(Path(data_dir).expanduser().resolve())
    task_manager = TaskManager(metadata=metadata)
    names = resolve_task_names(task_manager, task_list)
    selected: list = names
    if sc_samples is not None:
        loaded = task_manager.load(names)["tasks"]
        for task in loaded.values():
            if (task.config.repeats or 1) > 1:
                task.set_config(key="repeats", value=sc_samples)
        selected = list(loaded.values())

    out = Path(output_dir) if output_dir is not None else default_output_dir(model)
    model_args = {"pretrained": pretrained}
    cache = out / GENERATION_CACHE
    if model_type == "scotd-onnx":
        # the seed of the sampled chains (lm-eval's seeds reach torch and numpy, not this model), and a file of
        # finished generations: a killed evaluation rerun into the same folder decodes only what is missing
        model_args.update(seed=seed, cache=str(cache))
    if device is None and model_type == "hf":
        # lm-eval's HFLM assumes cuda when no device is given, which fails on a CPU-only torch
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model_type == "hf":  # hf, with each sampled chain seeded by (seed, question, chain index): lm_eval_hf.py
        model_args.update(seed=seed)
    results = lm_eval.simple_evaluate(
        model=LM_EVAL_MODELS[model_type],
        model_args=model_args,
        tasks=selected,
        limit=limit,
        batch_size=batch_size,
        device=device,
        task_manager=task_manager,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # non-zero ranks of a distributed run
        raise ScotdError("lm-eval returned no results on this process (a non-zero rank of a distributed run)")

    samples = results.pop("samples", None)
    results["scotd"] = {
        "version": __version__,
        "model": str(model),
        "pretrained": pretrained,
        "model_type": model_type,
        "tasks": names,
        "limit": limit,
        "split": split or "validation",
        "sc_samples": sc_samples,
        "max_gen_toks": max_gen_toks,
    }
    table = _table(results, make_table)
    out.mkdir(parents=True, exist_ok=True)
    # results.json last: its presence says the evaluation finished (the pipeline resumes on it)
    if samples:
        for task_name, rows in samples.items():
            lines = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
            atomic.write_text(out / f"samples_{task_name}.jsonl", lines)
    atomic.write_text(out / "results.md", table)
    atomic.write_text(out / "results.json", json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    cache.unlink(missing_ok=True)  # results.json and the samples hold every generation now
    return EvalOutput(results=results, table=table, output_dir=out)


def _table(results: dict, make_table) -> str:
    meta = results["scotd"]
    head = (
        f"# scotd eval\n\nmodel `{meta['model']}` ({meta['model_type']}), split {meta['split']}, "
        f"limit {meta['limit'] if meta['limit'] is not None else 'none'}, "
        f"lm-eval {results.get('lm_eval_version', '?')}, scotd-harness {meta['version']}\n\n"
    )
    body = make_table(results)
    if results.get("groups"):
        body += "\n" + make_table(results, "groups")
    return head + body
