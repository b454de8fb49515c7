"""`lm_eval --model scotd-hf`: lm-eval's `hf` model, with each sampled chain seeded by its question and index.

The stock `hf` model samples from torch's global generator, so a chain depends on every request decoded before
it: ask a question alone, in another batch, or after a resume, and its self-consistency chains change. This model
is `hf` in everything else (loading, log-likelihoods, greedy generation) and decodes sampled requests with the hf
teacher's sampler: the chains of one context share one prefill, and chain j draws from its own stream, seeded by
(seed, context, j) (`seeding.chain_seed`), as the scotd-onnx model and the sampling backends do. The context is
tokenised by `hf`'s own encoder with its left truncation (one context at a time). A student of `scotd train` is
read with no BOS, as it was trained and is exported (`add_bos_token=True` overrides); other models keep `hf`'s
rule. `scotd eval --model-type hf` uses it. Decoding settings the sampler does not have (top_p, top_k) fall back
to `hf`'s own sampling, with a warning.
"""

from __future__ import annotations

import logging
import os

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from .teacher.hf import HFTeacher
from .train import SCOTD_JSON

log = logging.getLogger(__name__)

#: settings the seeded sampler reads; any other sampling setting goes to `hf`'s own generate
SAMPLER_KWARGS = {"do_sample", "temperature", "until", "max_gen_toks", "seed"}


def is_student(pretrained) -> bool:
    """A directory `scotd train` wrote (it holds scotd.json)."""
    return isinstance(pretrained, str) and os.path.isfile(os.path.join(pretrained, SCOTD_JSON))


@register_model("scotd-hf")
class ScotdHFLM(HFLM):
    def __init__(self, *args, seed: int = 1234, add_bos_token: bool | None | str = "auto", **kwargs):
        # a student is trained on its prompt with no special tokens (train.py) and exported that way: `hf` would
        # prepend the BOS of a tokenizer that adds one (Llama, Mistral, Gemma) to a prompt it never saw with one.
        # Any other model (a base model, a teacher) keeps `hf`'s rule: it was pretrained, and samples, with it.
        if add_bos_token == "auto":
            add_bos_token = False if is_student(kwargs.get("pretrained")) else None
        super().__init__(*args, add_bos_token=add_bos_token, **kwargs)
        self.seed = int(seed)
        #: the context length `hf` keeps for the request being sampled (it left-truncates to leave room for output)
        self._context_limit: int | None = None
        self._sampler = HFTeacher.over("lm-eval", self.model, self.tokenizer, seed=self.seed, encode=self._encode)

    def _encode(self, contexts: list[str]):
        """The context tokens exactly as `hf`'s generate_until reads them: its BOS rule and left truncation."""
        return self.tok_batch_encode(contexts, left_truncate_len=self._context_limit, truncation=self.truncation)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        rest = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if not kwargs.get("do_sample") or kwargs.get("temperature", 0) <= 0:
                rest.append(i)
            elif set(kwargs) - SAMPLER_KWARGS:
                log.warning("scotd-hf: %s not supported by the seeded sampler; these chains use hf's sampling",
                            ", ".join(sorted(set(kwargs) - SAMPLER_KWARGS)))
                rest.append(i)
            else:
                groups.setdefault((context, repr(sorted(gen_kwargs.items()))), []).append(i)
        if rest:
            for i, text in zip(rest, super().generate_until([requests[i] for i in rest], disable_tqdm)):
                out[i] = text
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for (context, _), idx in tqdm(groups.items(), disable=disable_tqdm, desc="scotd-hf sampled contexts"):
            kwargs = normalize_gen_kwargs(dict(requests[idx[0]].args[1]), self.max_gen_toks)
            self._sampler.seed = int(kwargs.get("seed", self.seed))
            self._context_limit = self.max_length - int(kwargs["max_gen_toks"])
            if self._context_limit <= 0:  # (hf asserts the same)
                raise ValueError(f"max_gen_toks {kwargs['max_gen_toks']} leaves no room for the context in a "
                                 f"window of {self.max_length} tokens")
            (chains,) = self._sampler.sample([context], len(idx), float(kwargs["temperature"]),
                                             int(kwargs["max_gen_toks"]),
                                             handle_stop_sequences(kwargs.get("until"), eos=eos),
                                             keys=[context], starts=[0])
            for i, chain in zip(idx, chains):
                out[i] = chain.text
        return out
