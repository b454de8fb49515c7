"""The torch-free CoT runtime for an exported student: session, encode, a lean decode loop, self-consistency.

All of it in this one file, readable top to bottom. It imports only onnxruntime, tokenizers, numpy and three
standard-library-only modules of `scotd_harness`: `formats` (the prompt, the stop strings and the answer parser),
`seeding` (per-chain seeds) and `teacher` (the trimming of log-probs at a stop string), so a device that can run
onnxruntime can run the student::

    from scotd_harness.export.runtime import OnnxStudent, GenerationConfig
    student = OnnxStudent("student-onnx/")
    ans = student.answer("Where do you keep milk?", [("a", "fridge"), ("b", "oven")])
    ans.answer, ans.rationale                              # greedy chain of thought
    student.answer(q, choices, n=8, config=GenerationConfig(temperature=0.7, seed=0)).votes

The exported directory (see `exporter.py`) holds `model.onnx`, `tokenizer.json`, `config.json`,
`generation_config.json` and `scotd.json`, whose `graph` section says how the graph attends:

- `mask` (optimum's exporter; OPT, GPT-2, any architecture): the graph reads `attention_mask`, so batches are
  left-padded and positions come from the mask; the cache grows by one column a step, output fed back as input.
- `gqa` (torch dynamo exporter + onnxscript's ORT fusions; Llama family): attention is one GroupQueryAttention
  node per layer, which ignores `attention_mask` and reads per-row lengths (the graph derives them from
  `position_ids`). Rows are therefore laid out from position 0 (right-padded: a row's padding lies past its
  length and is never attended), and each layer's cache is ONE preallocated buffer of the final length, bound as
  both the past input and the present output, which the op writes in place (onnxruntime's shared-buffer mode).

Either way the loop is the same few lines per step: bind the new token and its position, run, pick the next
token. The KV cache lives in OrtValues bound through IO binding, so on CUDA it never goes back to the host. The
logits do, bound to host memory: [batch, 1, vocab] per decode step, but for the prefill the whole [batch, prompt
length, vocab] tensor, because the graph has one logits output for every position (the decode loop then reads
only each row's last position; `forward_logits` and log-likelihoods read them all). Self-consistency runs the
prompt's prefill once and repeats its cache over the N chains.

Sampling draws one uniform number per row and step from that row's own stream, and picks the token where the
row's cumulative distribution passes it. With a `seed`, chain j of a prompt is seeded with
`seeding.row_seed(seed, j)`: the n chains of one request differ from each other, a rerun reproduces them, and a
chain does not depend on the other prompts in the batch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from scotd_harness import formats
from scotd_harness.seeding import row_seed
from scotd_harness.teacher import kept_token_count

log = logging.getLogger(__name__)

#: scotd.json format this runtime reads (the exporter writes it)
SCOTD_JSON_VERSION = 1


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. `temperature == 0` means greedy (argmax, no divide by zero)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    #: keep only the k most likely tokens before sampling (0: all)
    top_k: int = 0
    #: nucleus sampling mass (1.0: all)
    top_p: float = 1.0
    #: generation ends at the first of these strings, which is cut from the text
    stop: tuple[str, ...] = formats.STOP_STRINGS
    #: seeds the sampler: chain j of each prompt gets its own numpy Generator seeded with `row_seed(seed, j)`;
    #: None draws fresh entropy
    seed: int | None = None
    #: keep going past end-of-sequence (benchmarks use it to decode a fixed number of tokens)
    ignore_eos: bool = False
    #: None: no log-probs; 0: the chosen tokens' log-probs; k > 0: also the k most likely alternatives
    logprobs: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))


@dataclass
class Generation:
    """One completion. `text` is cut at the first stop string; log-prob lists cover the kept tokens."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (stop string or end-of-sequence) or "length"
    prompt_tokens: int
    logprobs: list[float] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None

    @property
    def logprob(self) -> float | None:
        return float(sum(self.logprobs)) if self.logprobs is not None else None


@dataclass
class Answer:
    """A CoT answer: the rationale, the parsed label (or formats.INVALID) and, for n > 1, the votes."""

    answer: str
    rationale: str
    text: str
    votes: dict[str, int] = field(default_factory=dict)
    chains: list[Generation] = field(default_factory=list)


def _parse_device(device: str) -> tuple[str, int]:
    """'cpu', 'cuda' or 'cuda:N' -> (kind, device id)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return kind, int(index or 0)


def _providers(kind: str, device_id: int) -> list:
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device 'cuda' needs onnxruntime-gpu (pip install 'scotd-harness[gpu]')")
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


class OnnxStudent:
    """An exported student loaded for inference. Thread-safe for concurrent calls only under an outside lock."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        model_file: str | None = None,
    ):
        self.path = Path(path)
        meta_file = self.path / "scotd.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} is missing: not an exported student (see `scotd export`)")
        self.meta = json.loads(meta_file.read_text())
        graph = self.meta["graph"]
        self.kind = graph["attention"]
        if self.kind not in ("mask", "gqa"):
            raise ValueError(f"unknown attention kind {self.kind!r} in {meta_file}")
        self.num_layers = int(graph["num_layers"])
        self.add_special_tokens = bool(graph.get("add_special_tokens", False))
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.eos_ids = set(graph.get("eos_token_ids") or [])
        self.pad_id = int(graph.get("pad_token_id", next(iter(self.eos_ids), 0)))
        self.device, self.device_id = _parse_device(device)

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # the shared-buffer cache's shape differs from the declared one by design
        model = self.path / (model_file or graph.get("model_file", "model.onnx"))
        self.session = ort.InferenceSession(str(model), so, providers=_providers(self.device, self.device_id))
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        names = [(graph["past_key"], graph["present_key"]), (graph["past_value"], graph["present_value"])]
        # per layer: (past key, present key), (past value, present value)
        self.cache_names = [[(p.format(i=i), q.format(i=i)) for p, q in names] for i in range(self.num_layers)]
        first = inputs[self.cache_names[0][0][0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = np.float16 if "float16" in first.type else np.float32
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        self.max_positions = int(graph.get("max_positions") or 0) or None

    # ----------------------------------------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def decode(self, ids) -> str:
        """Text of token ids, special tokens dropped (as lm-eval's hf model decodes)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ----------------------------------------------------------------------------------------------- graph
    def _ortvalue(self, array: np.ndarray):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _empty_cache(self, batch: int, length: int) -> list:
        """One zero buffer per layer and K/V: length 0 for `mask` graphs, the final length for `gqa` graphs."""
        shape = (batch, self.kv_heads, length, self.head_dim)
        return [self._ortvalue(np.zeros(shape, self.kv_dtype)) for _ in range(2 * self.num_layers)]

    def _run(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray | None, state: dict) -> np.ndarray:
        """One forward pass; returns the logits as numpy and leaves the cache to use next in `state`.

        The binding lives as long as the generation: for `gqa` graphs the cache buffers are bound once (past and
        present alike) and each step rebinds only the new token, its position and the logits.
        """
        io = state.get("io")
        if io is None:
            io = state["io"] = self.session.io_binding()
            io.bind_output("logits", "cpu")  # first, so outputs[0] is the logits and outputs[1:] the cache
            if self.kind == "gqa":
                self._bind_cache(io, state["cache"], shared=True)
        io.bind_cpu_input("input_ids", ids)
        if "position_ids" in self.input_names:
            io.bind_cpu_input("position_ids", positions)
        if "attention_mask" in self.input_names:
            io.bind_cpu_input("attention_mask", mask if mask is not None else np.ones(ids.shape, np.int64))
        io.bind_output("logits", "cpu")  # a fresh allocation: the shape changes between prefill and decode
        if self.kind == "mask":
            self._bind_cache(io, state["cache"], shared=False)
        self.session.run_with_iobinding(io)
        outputs = io.get_outputs()
        if self.kind == "mask":
            state["cache"] = list(outputs[1:])
        return outputs[0].numpy()

    def _bind_cache(self, io, cache: list, shared: bool) -> None:
        for layer, pairs in enumerate(self.cache_names):
            for j, (past, present) in enumerate(pairs):
                value = cache[2 * layer + j]
                io.bind_ortvalue_input(past, value)
                if shared:
                    io.bind_ortvalue_output(present, value)  # same buffer: the op writes the new step in place
                else:
                    io.bind_output(present, self.device, self.device_id)

    def forward_logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Full-sequence logits for each row (no cache kept): parity checks and log-likelihoods."""
        state, _ = self._prefill(rows, extra=0, keep_all=True)
        return state.pop("all_logits")

    def _prefill(self, rows: list[list[int]], extra: int, keep_all: bool = False) -> tuple[dict, np.ndarray]:
        """Run the prompts; returns the decoding state and each row's last logits (B, V)."""
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        lengths = np.array([len(r) for r in rows], np.int64)
        batch, width = len(rows), int(lengths.max())
        ids = np.full((batch, width), self.pad_id, np.int64)
        if self.kind == "gqa":
            # rows start at position 0; padding lies past each row's length, where no query looks
            for b, r in enumerate(rows):
                ids[b, : len(r)] = r
            positions = np.minimum(np.arange(width)[None, :], (lengths - 1)[:, None]).astype(np.int64)
            mask = None
            cache = self._empty_cache(batch, width + extra)
            last = lengths - 1
        else:
            mask = np.zeros((batch, width + extra), np.int64)
            for b, r in enumerate(rows):
                ids[b, width - len(r) :] = r
                mask[b, width - len(r) : width] = 1
            positions = np.clip(np.cumsum(mask[:, :width], axis=1) - 1, 0, None).astype(np.int64)
            cache = self._empty_cache(batch, 0)
            last = np.full(batch, width - 1)
        state = {"cache": cache, "mask": mask, "lengths": lengths.copy(), "width": width}
        logits = self._run(ids, positions, None if mask is None else mask[:, :width], state)
        if keep_all:
            if self.kind == "gqa":
                state["all_logits"] = [logits[b, : lengths[b]] for b in range(batch)]
            else:
                state["all_logits"] = [logits[b, width - lengths[b] :] for b in range(batch)]
        return state, logits[np.arange(batch), last]

    def _repeat(self, state: dict, n: int) -> dict:
        """Share one prefill across n chains: repeat each row's cache n times along the batch axis."""
        if n == 1:
            return state
        cache = [self._ortvalue(np.repeat(v.numpy(), n, axis=0)) for v in state["cache"]]
        mask = None if state["mask"] is None else np.repeat(state["mask"], n, axis=0)
        return {**state, "cache": cache, "mask": mask, "lengths": np.repeat(state["lengths"], n), "io": None}

    def _step(self, state: dict, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row at the row's next position; returns the next logits (B, V)."""
        lengths = state["lengths"]
        mask = state["mask"]
        if mask is not None:
            col = state["width"]
            mask[:, col] = 1
            state["width"] = col + 1
            mask = mask[:, : col + 1]
        logits = self._run(tokens[:, None], lengths[:, None].copy(), mask, state)
        state["lengths"] = lengths + 1
        return logits[:, -1]

    # ----------------------------------------------------------------------------------------------- decoding
    def _choose(self, logits: np.ndarray, config: GenerationConfig, rngs: list[np.random.Generator]) -> np.ndarray:
        """One token per row: argmax at temperature 0, else a draw from each row's own stream."""
        if config.temperature == 0:
            return logits.argmax(axis=-1)
        x = logits.astype(np.float32) / config.temperature
        if config.top_k and config.top_k < x.shape[-1]:
            kth = np.partition(x, -config.top_k, axis=-1)[:, -config.top_k][:, None]
            x = np.where(x < kth, -np.inf, x)
        p = np.exp(x - x.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        if config.top_p < 1.0:
            order = np.argsort(-p, axis=-1)
            sorted_p = np.take_along_axis(p, order, axis=-1)
            keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < config.top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, axis=-1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(axis=-1, keepdims=True)
        # inverse CDF in float64, the draw scaled to the total, so rounding never picks a token of probability 0
        cdf = np.cumsum(p, axis=-1, dtype=np.float64)
        u = np.array([rng.random() for rng in rngs])[:, None] * cdf[:, -1:]
        return np.minimum((cdf <= u).sum(axis=-1), p.shape[-1] - 1)

    def _decode(self, state: dict, logits: np.ndarray, prompt_lengths: list[int], config: GenerationConfig,
                chain_indices: list[int]):
        """Decode every row to the end; `chain_indices[b]` is row b's chain index within its prompt (its seed)."""
        batch = logits.shape[0]
        rngs = [np.random.default_rng(None if config.seed is None else row_seed(config.seed, j)) for j in chain_indices]
        out: list[list[int]] = [[] for _ in range(batch)]
        lps: list[list[float]] = [[] for _ in range(batch)]
        tops: list[list[dict]] = [[] for _ in range(batch)]
        reason = ["length"] * batch
        done = np.zeros(batch, bool)
        stops = config.stop
        eos = set() if config.ignore_eos else self.eos_ids
        for step in range(config.max_new_tokens):
            if config.logprobs is not None:
                lsm = _log_softmax(logits)  # the model's own distribution, before any token is blocked
            if config.ignore_eos and self.eos_ids:
                logits[:, list(self.eos_ids)] = -np.inf
            tokens = self._choose(logits, config, rngs)
            tokens[done] = self.pad_id
            for b in np.flatnonzero(~done):
                t = int(tokens[b])
                if t in eos:
                    done[b], reason[b] = True, "stop"
                    continue
                out[b].append(t)
                if config.logprobs is not None:
                    lps[b].append(float(lsm[b, t]))
                    if config.logprobs > 0:
                        top = np.argpartition(-lsm[b], config.logprobs)[: config.logprobs]
                        tops[b].append({self.decode([int(i)]): float(lsm[b, i]) for i in top})
                if stops:
                    tail = self.decode(out[b][-8:])  # a stop string spans at most a few tokens
                    if any(s in tail for s in stops) and any(s in self.decode(out[b]) for s in stops):
                        done[b], reason[b] = True, "stop"
            if done.all() or step == config.max_new_tokens - 1:
                break
            logits = self._step(state, tokens.astype(np.int64))
        results = []
        for b in range(batch):
            full = self.decode(out[b])
            text = formats.truncate_at_stop(full, stops) if stops else full
            gen = Generation(text=text, token_ids=out[b], finish_reason=reason[b], prompt_tokens=prompt_lengths[b])
            if config.logprobs is not None:
                keep = len(out[b])
                if len(text) < len(full):  # cut at a stop string: keep the tokens that spell the text
                    keep = kept_token_count(len(text), keep, lambda k, ids=out[b]: len(self.decode(ids[:k])))
                gen.token_ids = out[b][:keep]
                gen.logprobs = lps[b][:keep]
                gen.tokens = [self.decode([t]) for t in out[b][:keep]]
                if config.logprobs > 0:
                    gen.top_logprobs = tops[b][:keep]
            results.append(gen)
        return results

    def _budget(self, rows: list[list[int]], config: GenerationConfig) -> None:
        if self.max_positions and max(len(r) for r in rows) + config.max_new_tokens > self.max_positions:
            raise ValueError(f"prompt + max_new_tokens exceeds the model's {self.max_positions} positions")

    def generate(self, prompts: list[str] | list[list[int]], config: GenerationConfig | None = None) -> list[Generation]:
        """One completion per prompt, decoded together as one batch."""
        config = config or GenerationConfig()
        rows = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        self._budget(rows, config)
        state, logits = self._prefill(rows, extra=config.max_new_tokens)
        return self._decode(state, logits, [len(r) for r in rows], config, [0] * len(rows))

    def sample_n(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        config: GenerationConfig | None = None,
        first_chain: int = 0,
    ) -> list[list[Generation]]:
        """n completions per prompt; each prompt's prefill runs once and its cache is shared by its n chains.

        With `config.seed`, chain j of every prompt is seeded with `row_seed(seed, j)`, so `generate` (one chain
        per prompt) gives chain 0, and a prompt's chains do not depend on the prompts batched beside it. The
        chains are numbered from `first_chain`: a caller that asks for a prompt's chains in parts passes each
        part's first index, so no part repeats another."""
        config = config or GenerationConfig()
        rows = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        self._budget(rows, config)
        state, logits = self._prefill(rows, extra=config.max_new_tokens)
        state = self._repeat(state, n)
        gens = self._decode(state, np.repeat(logits, n, axis=0), [len(r) for r in rows for _ in range(n)], config,
                            list(range(first_chain, first_chain + n)) * len(rows))
        return [gens[i * n : (i + 1) * n] for i in range(len(rows))]

    def answer_many(
        self, items: list[tuple[str, formats.Choices]], n: int = 1, config: GenerationConfig | None = None
    ) -> list[Answer]:
        """Chain-of-thought answers in the student format; n > 1 votes over n sampled chains per question."""
        prompts = [formats.student_input(q, c) for q, c in items]
        groups = self.sample_n(prompts, n, config) if n > 1 else [[g] for g in self.generate(prompts, config)]
        answers = []
        for (_, choices), chains in zip(items, groups):
            labels = [formats.extract_answer(g.text, choices) for g in chains]
            label, votes = formats.majority_vote(labels)
            best = next((g for g, lab in zip(chains, labels) if lab == label), chains[0])
            answers.append(
                Answer(
                    answer=label,
                    rationale=formats.clean_rationale(best.text),
                    text=best.text,
                    votes=votes if n > 1 else {},
                    chains=chains,
                )
            )
        return answers

    def answer(self, question: str, choices: formats.Choices, n: int = 1, config: GenerationConfig | None = None):
        return self.answer_many([(question, choices)], n=n, config=config)[0]

    def loglikelihood(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log P(continuation | context) and whether the continuation is the greedy one (lm-eval semantics)."""
        ids = (list(context) + list(continuation))[-(self.max_positions or 10**9) :]
        logits = self.forward_logits([ids])[0]
        n = len(continuation)
        lsm = _log_softmax(logits[len(ids) - n - 1 : len(ids) - 1])
        target = np.asarray(ids[len(ids) - n :])
        total = float(lsm[np.arange(n), target].sum())
        return total, bool((lsm.argmax(axis=-1) == target).all())


def load(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> OnnxStudent:
    return OnnxStudent(path, device=device, threads=threads)
