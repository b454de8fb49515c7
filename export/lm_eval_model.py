"""`lm_eval --model scotd-onnx --model_args pretrained=DIR`: lm-eval's LM interface over the torch-free runtime.

A thin adapter: all decoding is `runtime.OnnxStudent`'s. Requests come back in input order.

- `generate_until`: greedy requests are batched by length; sampled requests repeated for self-consistency
  (`repeats: N` hands the same context N times) share one prefill per context (`OnnxStudent.sample_n`).
- `loglikelihood`: context/continuation split the way lm-eval's `hf` model splits them (trailing context spaces
  move to the continuation), scored with a numpy log-softmax.

Sampled chains are seeded from the model's `seed` (or the request's), the context and the chain index, never from
the order requests arrive in: the same question gets the same chains whether it is asked alone, in another batch or
after a resume. `cache=FILE` makes a long job resumable: every finished generation and log-likelihood is appended to FILE (JSON
lines) and a rerun answers those requests from it, so a killed self-consistency run over thousands of chains loses
at most one batch. Entries are keyed by the export (its scotd.json), the request and the decoding settings (with
the chain index), so a file left by another model or other settings is never read as this one's.

Encoding follows `hf` for causal LMs: no special tokens added (the exported `scotd.json` records it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import onnxruntime as ort
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from scotd_harness.seeding import derive_seed

from .runtime import GenerationConfig, OnnxStudent

log = logging.getLogger(__name__)


@register_model("scotd-onnx")
class ScotdOnnxLM(LM):
    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
        seed: int = 1234,
        prompt_lookup: int | None = None,
        cache: str | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            log.warning("scotd-onnx ignores model_args %s", sorted(kwargs))
        if str(device).startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
            # lm_eval passes cuda:0 when --device is not given; on a CPU-only onnxruntime that means the CPU
            log.warning("scotd-onnx: %s requested but onnxruntime has no CUDA provider; using cpu", device)
            device = "cpu"
        self.student = OnnxStudent(pretrained, device=device, threads=int(threads) if threads else None)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        #: draft tokens for prompt-lookup decoding of greedy chains (None: the runtime's default, 0: off)
        self.prompt_lookup = None if prompt_lookup in (None, "", "None") else int(prompt_lookup)
        self.cache = ResultCache(Path(cache), _fingerprint(pretrained)) if cache not in (None, "", "None") else None

    # ------------------------------------------------------------------------------------------- loglikelihood
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self.student.encode(context + continuation)
        ctx = self.student.encode(context)
        cont = whole[len(ctx) :]
        if not ctx:
            ctx = [next(iter(self.student.eos_ids), self.student.pad_id)]
        return ctx, cont

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        cache = self.cache
        for n, req in enumerate(tqdm(requests, disable=disable_tqdm, desc="scotd-onnx loglikelihood"), 1):
            context, continuation = req.args
            value = cache.get_loglikelihood(context, continuation) if cache else None
            if value is None:
                ctx, cont = self._split(context, continuation)
                value = self.student.loglikelihood(ctx, cont) if cont else (0.0, True)
                if cache is not None:
                    cache.put_loglikelihood(context, continuation, value)
                    if n % 64 == 0:
                        cache.flush()
            results.append(value)
        if cache is not None:
            cache.flush()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for req in tqdm(requests, disable=disable_tqdm, desc="scotd-onnx loglikelihood_rolling"):
            (text,) = req.args
            ids = self.student.encode(text)
            bos = next(iter(self.student.eos_ids), self.student.pad_id)
            results.append(self.student.loglikelihood([bos], ids)[0] if ids else 0.0)
        return results

    # ------------------------------------------------------------------------------------------- generation
    def _config(self, context: str, gen_kwargs: dict) -> GenerationConfig:
        kwargs = dict(gen_kwargs)  # shared between requests: never mutate the caller's dict
        until = kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if not do_sample:
            temperature = 0.0
        elif temperature == 0.0:
            temperature = 1.0
        # one seed per context: the runtime derives chain j's sampler from it and j (seeding.row_seed)
        base_seed = int(kwargs.pop("seed", self.seed))
        return GenerationConfig(
            max_new_tokens=int(kwargs.pop("max_gen_toks", self.max_gen_toks)),
            temperature=temperature,
            top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
            top_k=int(kwargs.pop("top_k", 0) or 0),
            stop=tuple(until or ()),
            seed=derive_seed("lm-eval context", base_seed, context) if temperature > 0 else None,
            prompt_lookup=self.prompt_lookup,
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        # group identical (context, kwargs): sampled repeats share one prefill, greedy duplicates decode once
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            key = (context, repr(sorted(gen_kwargs.items())))
            groups.setdefault(key, []).append(i)
        greedy, sampled = [], []
        for key, idx in groups.items():
            config = self._config(key[0], requests[idx[0]].args[1])
            (sampled if config.temperature > 0 else greedy).append((key[0], config, idx))
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="scotd-onnx generate_until")
        cache = self.cache

        def done(context, config, chain, idx, text):
            for i in idx:
                out[i] = text
            bar.update(len(idx))
            if cache is not None:
                cache.put(context, config, chain, text)

        if cache is not None:  # answer what an earlier, interrupted run finished; decode the rest
            for context, config, idx in greedy:
                text = cache.get(context, config, 0)
                if text is not None:
                    for i in idx:
                        out[i] = text
                    bar.update(len(idx))
            greedy = [g for g in greedy if out[g[2][0]] is None]
        # greedy: batch prompts of similar length that share a config
        greedy.sort(key=lambda g: (repr(g[1]), len(g[0])))
        for start in range(0, len(greedy), self.batch_size):
            chunk = greedy[start : start + self.batch_size]
            by_config: dict = {}
            for item in chunk:
                by_config.setdefault(item[1], []).append(item)
            for config, items in by_config.items():
                gens = self.student.generate([c for c, _, _ in items], config)
                for (context, _, idx), gen in zip(items, gens):
                    done(context, config, 0, idx, gen.text)
            if cache is not None:
                cache.flush()
        for context, config, idx in sampled:
            for start in range(0, len(idx), max(self.batch_size, 1)):
                part = idx[start : start + self.batch_size]
                cached = [cache.get(context, config, start + j) for j in range(len(part))] if cache else [None]
                if all(text is not None for text in cached):
                    for i, text in zip(part, cached):
                        out[i] = text
                    bar.update(len(part))
                    continue
                # first_chain: each part continues the chain numbering, so no part repeats another's chains
                gens = self.student.sample_n([context], len(part), config, first_chain=start)[0]
                for j, (i, gen) in enumerate(zip(part, gens)):
                    done(context, config, start + j, [i], gen.text)
                if cache is not None:
                    cache.flush()
        bar.close()
        return out


def _fingerprint(pretrained: str) -> str:
    """What identifies the exported model in cache keys: its scotd.json (the student's checksum, dtype and
    quantisation), or the path where there is none."""
    meta = Path(pretrained) / "scotd.json"
    blob = meta.read_bytes() if meta.is_file() else str(Path(pretrained).resolve()).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ResultCache:
    """Append-only JSON lines of finished results, so a killed evaluation resumes where it stopped.

    A generation's line is {"key", "text"}, its key a hash of the model fingerprint, the context, the decoding
    settings (seed included) and the chain index; a log-likelihood's is {"key", "loglikelihood": [logprob,
    is_greedy]}, keyed by the fingerprint, context and continuation. A line cut short by a kill is dropped on open
    (the file is truncated to its last complete line, so the next append starts clean)."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.entries: dict[str, dict] = {}
        if path.is_file():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            for line in complete.decode("utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = row
                except (ValueError, KeyError, TypeError):
                    log.warning("scotd-onnx: skipping an unreadable line of the result cache %s", path)
            if len(complete) < len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(complete))
        path.parent.mkdir(parents=True, exist_ok=True)
        # open for the model's lifetime: lm-eval calls the model once per request type
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def _key(self, *parts) -> str:
        blob = json.dumps([self.fingerprint, *parts], ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    def _generation_key(self, context: str, config: GenerationConfig, chain: int) -> str:
        settings = repr((config.max_new_tokens, config.temperature, config.top_p, config.top_k, config.stop,
                         config.seed, config.prompt_lookup if config.temperature == 0 else None))
        return self._key("generation", context, settings, chain)

    def _get(self, key: str, field: str):
        return self.entries.get(key, {}).get(field)

    def _put(self, key: str, field: str, value) -> None:
        row = {"key": key, field: value}
        self.entries[key] = row
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def get(self, context: str, config: GenerationConfig, chain: int) -> str | None:
        return self._get(self._generation_key(context, config, chain), "text")

    def put(self, context: str, config: GenerationConfig, chain: int, text: str) -> None:
        self._put(self._generation_key(context, config, chain), "text", text)

    def get_loglikelihood(self, context: str, continuation: str) -> tuple[float, bool] | None:
        value = self._get(self._key("loglikelihood", context, continuation), "loglikelihood")
        return (float(value[0]), bool(value[1])) if value is not None else None

    def put_loglikelihood(self, context: str, continuation: str, value: tuple[float, bool]) -> None:
        self._put(self._key("loglikelihood", context, continuation), "loglikelihood", [float(value[0]), bool(value[1])])

    def flush(self) -> None:
        """After each batch: what was decoded survives a kill of the process (or of the machine)."""
        self._file.flush()
        os.fsync(self._file.fileno())
