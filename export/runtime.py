"""The torch-free CoT runtime for an exported student: session, KV rows, one decode loop, self-consistency.

It imports only onnxruntime, tokenizers, numpy, its sibling `prompt_lookup` and three standard-library-only
modules of `scotd_harness`: `formats` (the prompt, the stop strings and the answer parser), `seeding` (per-chain
seeds) and `teacher` (the trimming of log-probs at a stop string), so a device that can run onnxruntime can run
the student::

    from scotd_harness.export.runtime import OnnxStudent, GenerationConfig
    student = OnnxStudent("student-onnx/")
    ans = student.answer("Where do you keep milk?", [("a", "fridge"), ("b", "oven")])
    ans.answer, ans.rationale                              # greedy chain of thought
    student.answer(q, choices, n=8, config=GenerationConfig(temperature=0.7, seed=0)).votes

The exported directory (see `exporter.py`) holds `model.onnx`, `tokenizer.json`, `config.json`,
`generation_config.json` and `scotd.json`, whose `graph` section says how the graph attends, and so which KV
cache class holds the rows:

- `mask` (optimum's exporter; OPT, GPT-2, any architecture) -> `GrowingCache`: the graph reads
  `attention_mask`, so rows are left-padded and positions come from the mask; the cache grows by one column a
  step, output fed back as input.
- `gqa` (torch dynamo exporter + onnxscript's ORT fusions; Llama family) -> `SlotCache`: attention is one
  GroupQueryAttention node per layer, which ignores `attention_mask` and reads per-row lengths (the graph derives
  them from `position_ids`). Rows are laid out from position 0, and each layer's cache is ONE preallocated buffer
  [rows, heads, context, dim], bound as both the past input and the present output, which the op writes in place
  (onnxruntime's shared-buffer mode); a row is a slot of it.

`DecodeBatch` is the one decode loop: sequences join it (their prompts prefilled together; the n chains of a
prompt share its prefill), step together one token a pass, and leave it when they end. `generate` and `sample_n`
admit everything and step to the end; `scheduler.py` admits requests between steps (continuous batching). The
logits come back to the host each pass ([rows, new tokens, vocab]); the KV cache stays where the session put it.

A greedy sequence decoding alone may also take prompt-lookup drafts (`prompt_lookup.py`): the step feeds its last
token and k guessed ones, and keeps the guesses greedy decoding agrees with.

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

from . import prompt_lookup

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
    #: tokens proposed per step by prompt-lookup speculative decoding (greedy only, `gqa` graphs only, while one
    #: sequence decodes alone; the output is the same token for token): None is the runtime's default
    #: (prompt_lookup.DEFAULT_DRAFT_TOKENS), 0 is off
    prompt_lookup: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.prompt_lookup is not None and self.prompt_lookup < 0:
            raise ValueError("prompt_lookup must be >= 0")
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
    #: tokens proposed by prompt lookup for this completion, and how many of them were kept
    drafted: int = 0
    accepted: int = 0

    @property
    def logprob(self) -> float | None:
        return float(sum(self.logprobs)) if self.logprobs is not None else None


@dataclass
class PromptScores:
    """A prompt's own log-probs (OpenAI's `echo`): entry i is token i given tokens 0..i-1, entry 0 is None."""

    token_logprobs: list[float | None]
    #: per position, the `top` most likely tokens (by id) and their log-probs; None at position 0
    top_logprobs: list[dict[int, float] | None]
    #: the distribution after the last prompt token (V,): the first generated token's
    next_logprobs: np.ndarray


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
        #: whether a pass over several new tokens computes each exactly as one-token steps do, so that prompt
        #: lookup gives plain greedy's tokens and can be on by default. Float graphs: yes (tested). Quantised
        #: ones: no, onnxruntime's 4-bit matmul rounds differently for one row than for several, and a near-tie
        #: (top two tokens within about 0.1 nat) can go the other way, so there prompt lookup is opt-in.
        self.exact_verify = self.kind == "gqa" and not self.meta.get("quantization")

    # ----------------------------------------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def decode(self, ids) -> str:
        """Text of token ids, special tokens dropped (as lm-eval's hf model decodes)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ----------------------------------------------------------------------------------------------- graph
    def _ortvalue(self, array: np.ndarray):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _bind_common(self, io, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray | None) -> None:
        io.bind_cpu_input("input_ids", ids)
        if "position_ids" in self.input_names:
            io.bind_cpu_input("position_ids", positions)
        if "attention_mask" in self.input_names:
            io.bind_cpu_input("attention_mask", mask if mask is not None else np.ones(ids.shape, np.int64))
        io.bind_output("logits", "cpu")  # a fresh allocation each run: its shape changes with the input's

    def _new_cache(self, capacity: int, context: int):
        return (SlotCache if self.kind == "gqa" else GrowingCache)(self, capacity, context)

    def forward_logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Full-sequence logits for each row, [len(row), vocab] (no cache kept): parity checks, log-likelihoods."""
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        cache = self._new_cache(len(rows), max(len(r) for r in rows))
        return cache.prefill(rows, keep_all=True)

    def prompt_logprobs(self, rows: list[list[int]], top: int = 0) -> list[PromptScores]:
        """Each prompt token's log-prob given the tokens before it, as OpenAI's `echo` returns them. The chosen
        tokens' values and the top ones are read from the same array, so a token that is the most likely shows
        exactly the top value (lm-eval's `is_greedy` compares them with ==)."""
        scores = []
        for ids, logits in zip(rows, self.forward_logits(rows)):
            lsm = _log_softmax(logits)
            before = lsm[:-1]  # position i - 1 predicts token i
            token_lps: list[float | None] = [None, *before[np.arange(len(ids) - 1), ids[1:]].tolist()]
            tops: list[dict[int, float] | None] = [None] * len(ids)
            if top > 0 and len(ids) > 1:
                k = min(top, lsm.shape[-1])
                best = before.argmax(axis=-1)[:, None] if k == 1 else np.argpartition(-before, k - 1, axis=-1)[:, :k]
                values = np.take_along_axis(before, best, axis=-1)
                tops[1:] = [dict(zip(b.tolist(), v.tolist())) for b, v in zip(best, values)]
            scores.append(PromptScores(token_lps, tops, lsm[-1]))
        return scores

    # ----------------------------------------------------------------------------------------------- decoding
    def _budget(self, rows: list[list[int]], config: GenerationConfig) -> None:
        if self.max_positions and max(len(r) for r in rows) + config.max_new_tokens > self.max_positions:
            raise ValueError(f"prompt + max_new_tokens exceeds the model's {self.max_positions} positions")

    def decode_to_end(self, groups: list[list[Sequence]]) -> None:
        """Decode groups of sequences (a group shares one prompt and its prefill) in one batch until all end."""
        seqs = [s for g in groups for s in g]
        longest = max(len(s.prompt) + s.config.max_new_tokens + lookahead(s.config) for s in seqs)
        batch = DecodeBatch(self, capacity=len(seqs), context=longest)
        batch.admit(groups)
        while batch.seqs:
            batch.step()

    def generate(self, prompts: list[str] | list[list[int]], config: GenerationConfig | None = None) -> list[Generation]:
        """One completion per prompt, decoded together as one batch."""
        config = config or GenerationConfig()
        rows = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        self._budget(rows, config)
        groups = [[Sequence(self, r, config, chain=0)] for r in rows]
        self.decode_to_end(groups)
        return [g[0].generation() for g in groups]

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
        groups = [[Sequence(self, r, config, chain=first_chain + j) for j in range(n)] for r in rows]
        self.decode_to_end(groups)
        return [[s.generation() for s in g] for g in groups]

    @staticmethod
    def answers_from_chains(items: list[tuple[str, formats.Choices]], groups: list[list[Generation]],
                            n: int) -> list[Answer]:
        """Parse each question's chains and vote (n > 1): the one place a chain becomes an answer."""
        answers = []
        for (_, choices), chains in zip(items, groups):
            labels = [formats.extract_answer(g.text, choices) for g in chains]
            label, votes = formats.majority_vote(labels)
            best = next((g for g, lab in zip(chains, labels) if lab == label), chains[0])
            answers.append(Answer(answer=label, rationale=formats.clean_rationale(best.text), text=best.text,
                                  votes=votes if n > 1 else {}, chains=chains))
        return answers

    def answer_many(
        self, items: list[tuple[str, formats.Choices]], n: int = 1, config: GenerationConfig | None = None
    ) -> list[Answer]:
        """Chain-of-thought answers in the student format; n > 1 votes over n sampled chains per question."""
        prompts = [formats.student_input(q, c) for q, c in items]
        groups = self.sample_n(prompts, n, config) if n > 1 else [[g] for g in self.generate(prompts, config)]
        return self.answers_from_chains(items, groups, n)

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


# --------------------------------------------------------------------------------------------------- KV caches
class SlotCache:
    """The KV rows of a `gqa` graph: per layer and K/V one buffer [capacity, kv_heads, context, head_dim].

    Live rows are slots 0..count-1, each laid out from position 0, so a step binds the first `count` rows (a
    pointer and a shape: no copy) and costs what the live rows cost. A row that leaves is replaced by the last
    one (its cached positions copied), which keeps the live rows contiguous. A row's length is the only state
    of its cache: positions past it are never attended, so rolling back rejected draft tokens is setting it.
    """

    speculative = True

    def __init__(self, student: OnnxStudent, capacity: int, context: int):
        self.s = student
        self.capacity, self.context = capacity, context
        self.shape = (capacity, student.kv_heads, context, student.head_dim)
        self.row_bytes = int(np.prod(self.shape[1:])) * np.dtype(student.kv_dtype).itemsize
        n_buffers = 2 * student.num_layers
        if student.device == "cpu":
            self.buffers = [np.zeros(self.shape, student.kv_dtype) for _ in range(n_buffers)]
            self.ptrs = [b.ctypes.data for b in self.buffers]
        else:  # device memory; row copies go through the host (a rare event: n > 1 and rows leaving)
            self.buffers = [ort.OrtValue.ortvalue_from_shape_and_type(self.shape, student.kv_dtype, student.device,
                                                                        student.device_id) for _ in range(n_buffers)]
            self.ptrs = [v.data_ptr() for v in self.buffers]
        self.lengths = np.zeros(capacity, np.int64)
        self.count = 0
        self._io = None  # the decode binding of the live rows, rebuilt when their count changes
        self._io_rows = -1

    def _binding(self, first: int, rows: int):
        io = self.s.session.io_binding()
        io.bind_output("logits", "cpu")  # first, so outputs[0] is the logits
        shape = (rows,) + self.shape[1:]
        device, device_id, dtype = self.s.device, self.s.device_id, self.s.kv_dtype
        for layer, pairs in enumerate(self.s.cache_names):
            for j, (past, present) in enumerate(pairs):
                ptr = self.ptrs[2 * layer + j] + first * self.row_bytes
                io.bind_input(past, device, device_id, dtype, shape, ptr)
                io.bind_output(present, device, device_id, dtype, shape, ptr)  # the op writes in place
        return io

    def _forward(self, io, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self.s._bind_common(io, ids, positions, None)
        self.s.session.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()

    def prefill(self, prompts: list[list[int]], keep_all: bool = False):
        """Run the prompts into new rows count..count+k-1; returns each one's last logits (k, V), or with
        `keep_all` each one's logits at every position."""
        k = len(prompts)
        if self.count + k > self.capacity:
            raise RuntimeError("no free rows")
        lengths = np.array([len(r) for r in prompts], np.int64)
        width = int(lengths.max())
        if width > self.context:
            raise ValueError(f"a prompt of {width} tokens exceeds the cache's {self.context} positions")
        ids = np.full((k, width), self.s.pad_id, np.int64)
        for b, r in enumerate(prompts):  # padding lies past each row's length, where no query looks
            ids[b, : len(r)] = r
        positions = np.minimum(np.arange(width)[None, :], (lengths - 1)[:, None]).astype(np.int64)
        logits = self._forward(self._binding(self.count, k), ids, positions)
        self.lengths[self.count : self.count + k] = lengths
        self.count += k
        if keep_all:
            return [logits[b, : lengths[b]] for b in range(k)]
        return logits[np.arange(k), lengths - 1]

    def _copy_row(self, src: int, dst: int) -> None:
        used = int(self.lengths[src])
        for buf in self.buffers:
            if isinstance(buf, np.ndarray):
                buf[dst, :, :used] = buf[src, :, :used]
            else:
                host = buf.numpy()
                host[dst, :, :used] = host[src, :, :used]
                buf.update_inplace(host)
        self.lengths[dst] = self.lengths[src]

    def duplicate(self, src: int) -> None:
        """A new last row holding row `src`'s cache: the chains of one prompt share its prefill."""
        self._copy_row(src, self.count)
        self.count += 1

    def remove(self, i: int) -> None:
        """Drop row i; the last row takes its place."""
        last = self.count - 1
        if i != last:
            self._copy_row(last, i)
        self.count -= 1

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed ids [count, S] at each row's next S positions; returns logits [count, S, V]. The rows' lengths
        are the caller's to advance (by the tokens it keeps)."""
        count, width = ids.shape
        if self._io_rows != count:
            self._io, self._io_rows = self._binding(0, count), count
        positions = (self.lengths[:count, None] + np.arange(width)[None, :]).astype(np.int64)
        return self._forward(self._io, ids, positions)


class GrowingCache:
    """The KV rows of a `mask` graph (optimum's exports: OPT, GPT-2, any architecture): left-padded rows, an
    attention mask, and a cache that grows by one column a step, each step's output fed back as the next input.

    Rows that join are prefilled apart and padded on the left to the batch's width; a row that leaves is
    replaced by the last one. Both reshape every layer's cache on the host, which is cheap for the small models
    this path serves; the decode step itself never copies. No speculation: rolling a row back would mean
    cutting columns out of one row only."""

    speculative = False

    def __init__(self, student: OnnxStudent, capacity: int, context: int):
        self.s = student
        self.capacity, self.context = capacity, context
        self.cache: list = []  # OrtValues [count, heads, width, dim] per layer and K/V
        self.mask = np.zeros((0, 0), np.int64)
        self.lengths = np.zeros(capacity, np.int64)
        self.count = 0

    def _run(self, ids, positions, mask, cache):
        io = self.s.session.io_binding()
        io.bind_output("logits", "cpu")
        self.s._bind_common(io, ids, positions, mask)
        for layer, pairs in enumerate(self.s.cache_names):
            for j, (past, present) in enumerate(pairs):
                io.bind_ortvalue_input(past, cache[2 * layer + j])
                io.bind_output(present, self.s.device, self.s.device_id)
        self.s.session.run_with_iobinding(io)
        outputs = io.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])

    def _host(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.cache]

    def _set(self, arrays: list[np.ndarray], mask: np.ndarray) -> None:
        # columns no live row attends (left padding of rows that have left) are dropped
        keep = int(np.argmax(mask.any(axis=0))) if mask.size and mask.any() else mask.shape[1]
        self.mask = np.ascontiguousarray(mask[:, keep:])
        self.cache = [self.s._ortvalue(a[:, :, keep:]) for a in arrays]

    def prefill(self, prompts: list[list[int]], keep_all: bool = False):
        k = len(prompts)
        if self.count + k > self.capacity:
            raise RuntimeError("no free rows")
        lengths = np.array([len(r) for r in prompts], np.int64)
        width = int(lengths.max())
        ids = np.full((k, width), self.s.pad_id, np.int64)
        mask = np.zeros((k, width), np.int64)
        for b, r in enumerate(prompts):
            ids[b, width - len(r) :] = r
            mask[b, width - len(r) :] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        empty = [self.s._ortvalue(np.zeros((k, self.s.kv_heads, 0, self.s.head_dim), self.s.kv_dtype))
                 for _ in range(2 * self.s.num_layers)]
        logits, cache = self._run(ids, positions, mask, empty)
        new = [v.numpy() for v in cache]
        if self.count:
            old, old_mask = self._host(), self.mask
            total = max(old_mask.shape[1], width)
            old, old_mask = _pad_left(old, old_mask, total)
            new, mask = _pad_left(new, mask, total)
            new = [np.concatenate([a, b]) for a, b in zip(old, new)]
            mask = np.concatenate([old_mask, mask])
        self._set(new, mask)
        self.lengths[self.count : self.count + k] = lengths
        self.count += k
        if keep_all:
            return [logits[b, width - lengths[b] :] for b in range(k)]
        return logits[:, -1]

    def duplicate(self, src: int) -> None:
        arrays = [np.concatenate([a, a[src : src + 1]]) for a in self._host()]
        self._set(arrays, np.concatenate([self.mask, self.mask[src : src + 1]]))
        self.lengths[self.count] = self.lengths[src]
        self.count += 1

    def remove(self, i: int) -> None:
        last = self.count - 1
        order = [r for r in range(self.count) if r != last]
        if i != last:
            order[i] = last
        arrays = [a[order] for a in self._host()]
        self._set(arrays, self.mask[order])
        self.lengths[i] = self.lengths[last]
        self.count -= 1

    def step(self, ids: np.ndarray) -> np.ndarray:
        count, width = ids.shape
        if width != 1:
            raise ValueError("a mask graph's cache steps one token at a time")
        self.mask = np.concatenate([self.mask, np.ones((count, 1), np.int64)], axis=1)
        positions = self.lengths[:count, None].copy()
        logits, self.cache = self._run(ids, positions, self.mask, self.cache)
        return logits


def _pad_left(arrays: list[np.ndarray], mask: np.ndarray, width: int):
    extra = width - mask.shape[1]
    if extra <= 0:
        return arrays, mask
    arrays = [np.concatenate([np.zeros(a.shape[:2] + (extra,) + a.shape[3:], a.dtype), a], axis=2) for a in arrays]
    return arrays, np.concatenate([np.zeros((mask.shape[0], extra), mask.dtype), mask], axis=1)


# --------------------------------------------------------------------------------------------------- the batch
class Sequence:
    """One chain being decoded: its prompt, its tokens so far, its own sampler stream and its stop rules.

    `out[-1]` is the token chosen last and not yet fed to the model (the next step feeds it)."""

    def __init__(self, student: OnnxStudent, prompt: list[int], config: GenerationConfig, chain: int = 0,
                 tag=None):
        self.student, self.prompt, self.config, self.tag = student, list(prompt), config, tag
        self.chain = chain
        self.rng = np.random.default_rng(None if config.seed is None else row_seed(config.seed, chain))
        self.out: list[int] = []
        self.lps: list[float] = []
        self.tops: list[dict[str, float]] = []
        self.finish_reason: str | None = None
        self.drafted = self.accepted = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def draft_tokens(self) -> int:
        return draft_tokens(self.config, self.student.exact_verify)

    def take(self, logits: np.ndarray) -> int:
        """Choose the next token from this position's logits and apply the stop rules; returns the token."""
        config = self.config
        student = self.student
        if config.logprobs is not None:
            lsm = _log_softmax(logits)  # the model's own distribution, before any token is blocked
        if config.ignore_eos and student.eos_ids:
            logits = logits.copy()
            logits[list(student.eos_ids)] = -np.inf
        token = int(logits.argmax()) if config.temperature == 0 else _sample(logits, config, self.rng)
        if token in student.eos_ids and not config.ignore_eos:
            self.finish_reason = "stop"
            return token
        self.out.append(token)
        if config.logprobs is not None:
            self.lps.append(float(lsm[token]))
            if config.logprobs > 0:
                top = np.argpartition(-lsm, config.logprobs)[: config.logprobs]
                self.tops.append({student.decode([int(i)]): float(lsm[i]) for i in top})
        stops = config.stop
        if stops:
            tail = student.decode(self.out[-8:])  # a stop string spans at most a few tokens
            if any(s in tail for s in stops) and any(s in student.decode(self.out) for s in stops):
                self.finish_reason = "stop"
                return token
        if len(self.out) >= config.max_new_tokens:
            self.finish_reason = "length"
        return token

    def text(self) -> str:
        """The text so far, cut at the first stop string."""
        full = self.student.decode(self.out)
        return formats.truncate_at_stop(full, self.config.stop) if self.config.stop else full

    def generation(self) -> Generation:
        student, config, out = self.student, self.config, self.out
        full = student.decode(out)
        text = formats.truncate_at_stop(full, config.stop) if config.stop else full
        gen = Generation(text=text, token_ids=list(out), finish_reason=self.finish_reason or "length",
                         prompt_tokens=len(self.prompt), drafted=self.drafted, accepted=self.accepted)
        if config.logprobs is not None:
            keep = len(out)
            if len(text) < len(full):  # cut at a stop string: keep the tokens that spell the text
                keep = kept_token_count(len(text), keep, lambda k: len(student.decode(out[:k])))
            gen.token_ids = out[:keep]
            gen.logprobs = self.lps[:keep]
            gen.tokens = [student.decode([t]) for t in out[:keep]]
            if config.logprobs > 0:
                gen.top_logprobs = self.tops[:keep]
        return gen


class DecodeBatch:
    """The running batch: sequences, one KV row each, that join, step together and leave.

    One loop serves every caller: `generate` and `sample_n` admit all their sequences and step to the end; the
    scheduler admits requests between steps and hands out each step's tokens. A step feeds every row its last
    token; when every row decodes greedily it may also feed prompt-lookup draft tokens after it and keep the
    longest prefix greedy decoding agrees with, which gives the same tokens in fewer forward passes.
    """

    def __init__(self, student: OnnxStudent, capacity: int, context: int):
        self.student = student
        self.cache = student._new_cache(capacity, context)
        self.seqs: list[Sequence] = []
        self.steps = 0

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    @property
    def free(self) -> int:
        return self.cache.capacity - len(self.seqs)

    def admit(self, groups: list[list[Sequence]]) -> list[Sequence]:
        """Prefill each group's prompt once, all groups in one pass, and give each of its sequences a row.
        Returns the sequences whose first token already ended them (they have left the batch again)."""
        if sum(len(g) for g in groups) > self.free:
            raise RuntimeError("not enough free rows")
        first = self.cache.count
        logits = self.cache.prefill([g[0].prompt for g in groups])
        self.seqs.extend(g[0] for g in groups)
        for i, group in enumerate(groups):
            for seq in group[1:]:
                self.cache.duplicate(first + i)
                self.seqs.append(seq)
        for i, group in enumerate(groups):
            for seq in group:
                seq.take(logits[i])
        return self._release()

    def cancel(self, seq: Sequence) -> None:
        """Take a sequence out of the batch now (its client left)."""
        if seq in self.seqs:
            seq.finish_reason = seq.finish_reason or "cancelled"
            self._release()

    def _release(self) -> list[Sequence]:
        finished = [i for i, s in enumerate(self.seqs) if s.done]
        out = [self.seqs[i] for i in finished]
        for i in reversed(finished):  # the last row moves into i, so go from the end
            self.cache.remove(i)
            self.seqs[i] = self.seqs[-1]
            self.seqs.pop()
        return out

    def _drafts(self) -> list[list[int]] | None:
        """Prompt-lookup drafts for the rows, or None for a plain step. Only a row decoding alone speculates:
        onnxruntime's GroupQueryAttention takes several new tokens on top of a cache for one row at a time (and
        a full batch already reads each weight once for many tokens, which is what speculation buys)."""
        if not self.cache.speculative or len(self.seqs) != 1:
            return None
        seq = self.seqs[0]
        k = min(seq.draft_tokens(), seq.config.max_new_tokens - len(seq.out) - 1,
                self.cache.context - int(self.cache.lengths[0]) - 1)
        draft = prompt_lookup.propose(seq.prompt + seq.out, k) if k > 0 else []
        return [draft] if draft else None

    def step(self) -> list[Sequence]:
        """Advance every row by one token or more; finished rows leave the batch. Returns the rows advanced."""
        seqs = self.seqs
        if not seqs:
            return []
        drafts = self._drafts()
        width = 1 + (max(len(d) for d in drafts) if drafts else 0)
        ids = np.empty((len(seqs), width), np.int64)
        for b, seq in enumerate(seqs):
            ids[b, :] = seq.out[-1]  # draft slots a row does not use repeat its token; they are never kept
            if drafts and drafts[b]:
                ids[b, 1 : 1 + len(drafts[b])] = drafts[b]
        logits = self.cache.step(ids)
        self.steps += 1
        for b, seq in enumerate(seqs):
            draft = drafts[b] if drafts else []
            kept = 0
            while True:
                token = seq.take(logits[b, kept])
                if seq.done or kept >= len(draft) or token != draft[kept]:
                    break
                kept += 1  # greedy decoding agrees with the draft: its next position's logits are valid too
            if draft:
                seq.drafted += len(draft)
                seq.accepted += kept
            self.cache.lengths[b] += 1 + kept
        advanced = list(seqs)
        self._release()
        return advanced


def draft_tokens(config: GenerationConfig, default_on: bool = True) -> int:
    """Tokens prompt lookup may propose each step: 0 unless greedy; the default where the caller left it."""
    if config.temperature != 0:
        return 0
    if config.prompt_lookup is None:
        return prompt_lookup.DEFAULT_DRAFT_TOKENS if default_on else 0
    return config.prompt_lookup


def lookahead(config: GenerationConfig) -> int:
    """Cache positions beyond prompt + max_new_tokens a sequence may need: a verify step writes its draft
    tokens' keys and values before it knows which it keeps."""
    return draft_tokens(config) + 1


def _sample(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """A draw from softmax(logits / temperature), after top-k and top-p, by inverse CDF from the row's stream."""
    x = logits.astype(np.float32) / config.temperature
    if config.top_k and config.top_k < x.shape[-1]:
        kth = np.partition(x, -config.top_k)[-config.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if config.top_p < 1.0:
        order = np.argsort(-p)
        sorted_p = p[order]
        keep_sorted = np.cumsum(sorted_p) - sorted_p < config.top_p
        keep = np.zeros_like(keep_sorted)
        keep[order] = keep_sorted
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    # inverse CDF in float64, the draw scaled to the total, so rounding never picks a token of probability 0
    cdf = np.cumsum(p, dtype=np.float64)
    u = rng.random() * cdf[-1]
    return int(min((cdf <= u).sum(), p.shape[-1] - 1))


def load(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> OnnxStudent:
    return OnnxStudent(path, device=device, threads=threads)
