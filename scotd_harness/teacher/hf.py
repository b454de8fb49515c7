"""Local transformers teacher with shared prefill: each prompt is run through the model once and its KV cache is
copied to its N sample rows, so N chains cost one prefill instead of N.

`generate(num_return_sequences=N)` does not do this: it expands the inputs to N rows *before* the first forward
pass, so the prompt is prefilled N times (bench/sample_throughput.py counts the prompt tokens each way). The decode
loop below is therefore written out, one commented step per line, in the spirit of nanoGPT's `generate`:

    prefill B prompts (left-padded)  ->  repeat cache, mask and last logits N times per prompt
    loop: sample a token per row, record its log-probability, drop rows that hit EOS or a stop string,
          feed the rest one token further

Rows that finish are removed from the cache (`batch_select_indices`), so a batch slows down only as long as its
longest chain. Log-probabilities are the model's own (log-softmax of the unscaled logits), so they do not depend
on the sampling temperature, as with OpenAI-compatible servers.

Every row draws its tokens from its own random stream, seeded by `seeding.chain_seed(seed, question, chain
index)`: one uniform number per step, turned into a token by the inverse of the row's cumulative distribution (as
the ONNX runtime does). Chain i of a question therefore gets the same tokens whichever batch it lands in and
whether or not the run was resumed (up to the floating-point differences of batched kernels), and chains asked
in pieces never repeat. One shared torch generator could not give that: a row's draws would depend on the rows
beside it. The per-row streams are numpy generators on the host, one scalar per row and step (one small
host-to-device copy per step on a GPU); on a CPU the draw is faster than the `torch.multinomial` it replaces
(64 rows x 49,152 tokens on 2 cores: about 26 ms a step against 80 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..seeding import chain_seed
from . import Completion, TeacherBackend, chain_plan, cut_at_stop, kept_token_count

log = logging.getLogger(__name__)


class HFTeacher(TeacherBackend):
    """`hf:MODEL`: MODEL is `embedded`, a local model directory or a hub id.

    Options: `device` (default cuda if available, else cpu), `dtype` ("auto": bfloat16 on cuda, float32 on cpu),
    `max_batch_rows` (sample rows decoded together: questions per batch = max(1, max_batch_rows // n)),
    `shared_prefill` (False prefills each sample row separately: the naive baseline the benchmark compares
    against), `seed` (the run seed, from which each chain's own seed is derived).
    """

    backend = "hf"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_batch_rows: int = 64,
        shared_prefill: bool = True,
        seed: int = 0,
    ):
        super().__init__(model)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .. import embedded

        path = embedded.resolve_model(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        self._setup(lm, AutoTokenizer.from_pretrained(path), max_batch_rows, shared_prefill, seed)

    @classmethod
    def over(cls, name: str, lm, tokenizer, *, seed: int = 0, max_batch_rows: int = 64, encode=None) -> HFTeacher:
        """The sampler over a model something else has loaded (lm-eval's `scotd-hf`), sharing its weights; the
        tokenizer is copied, since sampling pads on the left. `encode(prompts) -> (input_ids, attention_mask)`,
        left-padded, replaces the tokenizer's default encoding: the chains then start from the tokens the owner
        would have read (lm-eval's BOS and truncation rules)."""
        import copy

        self = cls.__new__(cls)
        TeacherBackend.__init__(self, name)
        self.device = next(lm.parameters()).device
        self._setup(lm, copy.deepcopy(tokenizer), max_batch_rows, True, seed)
        if encode is not None:
            self._encode = encode
        return self

    def _setup(self, lm, tokenizer, max_batch_rows: int, shared_prefill: bool, seed: int) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = lm
        eos = self.lm.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, self.tokenizer.eos_token_id] if e is not None}
        self.max_batch_rows = max_batch_rows
        self.shared_prefill = shared_prefill
        self.seed = seed
        #: Counters for benchmarks: prompt tokens run through the model, and decode forward passes.
        self.prefill_tokens = 0
        self.decode_steps = 0

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str],
        *,
        keys: Sequence[str] | None = None,
        starts: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        keys, starts = chain_plan(prompts, keys, starts)
        per_batch = max(1, self.max_batch_rows // max(n, 1))
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), per_batch):
            end = start + per_batch
            rngs = [np.random.default_rng(chain_seed(self.seed, key, first + j))
                    for key, first in zip(keys[start:end], starts[start:end]) for j in range(n)]
            out.extend(self._sample_batch(list(prompts[start:end]), n, temperature, max_new_tokens, stop, rngs))
        return out

    def _encode(self, prompts: list[str]):
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return enc["input_ids"], enc["attention_mask"]

    def _sample_batch(self, prompts, n, temperature, max_new_tokens, stop, rngs) -> list[list[Completion]]:
        """`rngs`: one random stream per sample row (prompt-major: prompt i's chains are rows i*n .. i*n+n-1)."""
        import torch

        ids, mask = (t.to(self.device) for t in self._encode(prompts))
        if not self.shared_prefill:  # naive: every sample row carries (and prefills) its own copy of the prompt
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            # 1. prefill: one forward pass over the prompts fills the KV cache
            # (logits for the last position only: the full [rows, length, vocab] tensor would take gigabytes)
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            self.prefill_tokens += int(mask.sum())
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            if self.shared_prefill:
                # 2. share it: each prompt's cache rows, mask and last logits repeated for its n samples
                cache.batch_repeat_interleave(n)
                mask, positions = mask.repeat_interleave(n, 0), positions.repeat_interleave(n, 0)
                logits = logits.repeat_interleave(n, 0)
            rows = logits.shape[0]
            next_pos = positions[:, -1:] + 1
            active = list(range(rows))  # original row index of each row still in the batch
            tokens: list[list[int]] = [[] for _ in range(rows)]
            token_lps: list[list[float]] = [[] for _ in range(rows)]
            finish: list[str | None] = [None] * rows
            for step in range(max_new_tokens):
                # 3. sample one token per row, each from its own stream (inverse CDF of one uniform draw, in
                # float64 so no rounding picks a token of probability 0); temperature 0 is argmax
                logp = torch.log_softmax(logits, dim=-1)
                if temperature > 0:
                    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
                    u = torch.tensor([[rngs[r].random()] for r in active], dtype=cdf.dtype, device=self.device)
                    nxt = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
                else:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                # 4. the model's own log-probability of the chosen token (independent of temperature)
                lps = logp.gather(-1, nxt).squeeze(-1).tolist()
                nxt_list = nxt.squeeze(-1).tolist()
                keep = []
                for j, r in enumerate(active):
                    tok = nxt_list[j]
                    if tok in self.eos_ids:
                        finish[r] = "stop"
                        continue
                    tokens[r].append(tok)
                    token_lps[r].append(lps[j])
                    keep.append(j)
                # 5. a row whose text now holds a stop string is finished
                if stop and keep:
                    texts = self.tokenizer.batch_decode([tokens[active[j]] for j in keep], skip_special_tokens=True)
                    still = []
                    for j, text in zip(keep, texts):
                        if cut_at_stop(text, stop)[1]:
                            finish[active[j]] = "stop"
                        else:
                            still.append(j)
                    keep = still
                if not keep or step == max_new_tokens - 1:
                    break
                # 6. drop finished rows from the cache and feed the rest one token further
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, next_pos, nxt = mask[index], next_pos[index], nxt[index]
                    active = [active[j] for j in keep]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                out = self.lm(
                    input_ids=nxt, attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True
                )
                self.decode_steps += 1
                cache, logits = out.past_key_values, out.logits[:, -1, :].float()
                next_pos = next_pos + 1
        completions = [self._completion(tokens[r], token_lps[r], finish[r] or "length", stop) for r in range(rows)]
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _completion(self, tokens: list[int], lps: list[float], finish: str, stop) -> Completion:
        full = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(full, stop)
        k = len(tokens)
        if stopped:  # keep the tokens that spell the text before the stop string
            decode = self.tokenizer.decode
            k = kept_token_count(len(text), k, lambda i: len(decode(tokens[:i], skip_special_tokens=True)))
        kept = tuple(float(x) for x in lps[:k])
        return Completion(text=text, logprob=float(sum(kept)), num_tokens=k, finish_reason=finish, token_logprobs=kept)
