"""`lm_eval --model scotd-onnx --model_args pretrained=DIR`: lm-eval's LM interface over the torch-free runtime.

A thin adapter: all decoding is `runtime.OnnxStudent`'s. Requests come back in input order.

- `generate_until`: greedy requests are batched by length; sampled requests repeated for self-consistency
  (`repeats: N` hands the same context N times) share one prefill per context (`OnnxStudent.sample_n`).
- `loglikelihood`: context/continuation split the way lm-eval's `hf` model splits them (trailing context spaces
  move to the continuation), scored with a numpy log-softmax.

Encoding follows `hf` for causal LMs: no special tokens added (the exported `scotd.json` records it).
"""

from __future__ import annotations

import logging

import onnxruntime as ort
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

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
        self._calls = 0

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
        for req in tqdm(requests, disable=disable_tqdm, desc="scotd-onnx loglikelihood"):
            context, continuation = req.args
            ctx, cont = self._split(context, continuation)
            results.append(self.student.loglikelihood(ctx, cont) if cont else (0.0, True))
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
    def _config(self, gen_kwargs: dict) -> GenerationConfig:
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
        self._calls += 1
        return GenerationConfig(
            max_new_tokens=int(kwargs.pop("max_gen_toks", self.max_gen_toks)),
            temperature=temperature,
            top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
            top_k=int(kwargs.pop("top_k", 0) or 0),
            stop=tuple(until or ()),
            seed=int(kwargs.pop("seed", self.seed + self._calls)),
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
            config = self._config(requests[idx[0]].args[1])
            (sampled if config.temperature > 0 else greedy).append((key[0], config, idx))
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="scotd-onnx generate_until")
        # greedy: batch prompts of similar length that share a config
        greedy.sort(key=lambda g: (repr(g[1]), len(g[0])))
        for start in range(0, len(greedy), self.batch_size):
            chunk = greedy[start : start + self.batch_size]
            by_config: dict = {}
            for item in chunk:
                by_config.setdefault(item[1], []).append(item)
            for config, items in by_config.items():
                gens = self.student.generate([c for c, _, _ in items], config)
                for (_, _, idx), gen in zip(items, gens):
                    for i in idx:
                        out[i] = gen.text
                    bar.update(len(idx))
        for context, config, idx in sampled:
            for start in range(0, len(idx), max(self.batch_size, 1)):
                part = idx[start : start + self.batch_size]
                # first_chain: each part continues the chain numbering, so a seeded config never repeats a chain
                gens = self.student.sample_n([context], len(part), config, first_chain=start)[0]
                for i, gen in zip(part, gens):
                    out[i] = gen.text
                bar.update(len(part))
        bar.close()
        return out
