"""`onnx:DIR`: any export of `scotd export` as a teacher, on the project's own torch-free runtime.

Why a third backend: the `hf` backend decodes with eager PyTorch and a growing cache, and going through `scotd
serve` costs an HTTP round trip and JSON per request. This one drives the runtime's decode loop
(`export/runtime.py`) in-process, which is the fastest way this project has to sample many chains on a CPU:

- each question's prompt is prefilled once and its KV row copied to its N chains (one `Sequence` group per
  question: the runtime's shared prefill);
- questions are batched, up to `max_batch_rows` rows decoding together. The batch is kept full: when chains
  end, their rows go to the next questions (prefilled between two steps), so a call does not slow down to its
  longest chain with the batch half empty, as a batch decoded to the end would;
- every chain carries its own seed, `seeding.chain_seed(seed, question key, chain index)`, as its
  `GenerationConfig.seed` (its sampler stream is then `row_seed(that seed, 0)`). A chain therefore does not
  depend on the call it lands in, the questions beside it or the pieces the chains were asked in (up to the
  floating-point differences of batched kernels), so split requests and resumed runs never repeat a chain and
  a rerun with the same seed reproduces the corpus;
- the kept tokens' log-probabilities are the model's own (log-softmax of the unscaled logits, independent of
  the temperature), trimmed at the stop string by the runtime, for `likelihood-k`.

The export directory is the model: `onnx:embedded` is refused with the command that makes an export of it.
Importing this module imports neither onnxruntime nor the runtime (the pipeline validates `onnx:` teachers with
`check_export_dir` alone).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from ..errors import ScotdError
from ..seeding import chain_seed
from . import Completion, TeacherBackend, chain_plan

log = logging.getLogger(__name__)

#: prompts prefilled in one pass at most: the graph returns logits at every prompt position ([prompts, length,
#: vocab] floats, about 160 MB for one 820-token CSQA teacher prompt with a 49k vocabulary), so admitting a whole
#: batch of n=1 questions at once would take gigabytes for no gain in speed
MAX_PREFILL_PROMPTS = 4


def check_export_dir(model: str) -> Path:
    """The export directory an `onnx:` teacher names, or a one-line ScotdError saying what is wrong with it."""
    path = Path(model).expanduser()
    if model == "embedded" and not path.exists():
        raise ScotdError("teacher onnx:embedded: an onnx teacher is an export directory; export the model first "
                         "(scotd export embedded --out DIR) and pass onnx:DIR")
    if not path.is_dir():
        raise ScotdError(f"teacher onnx:{model}: directory {path} not found (give an export of `scotd export`)")
    if not (path / "scotd.json").is_file():
        raise ScotdError(f"teacher onnx:{model}: {path} is not an export of `scotd export` (no scotd.json)")
    return path


class OnnxTeacher(TeacherBackend):
    """`onnx:DIR`: DIR is a directory written by `scotd export` (fp32 or quantised).

    Options: `device` ("cpu", "cuda" or "cuda:N"; cuda needs onnxruntime-gpu), `threads` (onnxruntime intra-op
    threads; None: onnxruntime's default, one per physical core), `max_batch_rows` (chains decoded together; a
    question's N chains are one group of rows, so about max_batch_rows // N questions decode at once), `seed`
    (the run seed, from which each chain's own seed is derived).
    """

    backend = "onnx"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        threads: int | None = None,
        max_batch_rows: int = 64,
        seed: int = 0,
    ):
        super().__init__(model)
        path = check_export_dir(model)
        from ..export.runtime import OnnxStudent

        try:
            self.student = OnnxStudent(path, device=device or "cpu", threads=threads)
        except (ValueError, RuntimeError, KeyError) as e:  # a bad device, a damaged scotd.json, no onnxruntime-gpu
            raise ScotdError(f"teacher onnx:{model}: {e}") from None
        if max_batch_rows < 1:
            raise ScotdError("max_batch_rows must be >= 1")
        self.max_batch_rows = max_batch_rows
        self.seed = seed
        #: Counters for benchmarks: prompt tokens prefilled, and decode steps (one forward pass each).
        self.prefill_tokens = 0
        self.decode_steps = 0

    def questions_per_call(self, n: int) -> int:
        """How many questions the sampling driver should hand over per call: enough for four batches' worth of
        chains, since the batch drains as a call's last chains finish (and a call's chains are written when it
        returns, so a kill loses at most one call)."""
        return max(16, 4 * self.max_batch_rows // max(n, 1))

    def close(self) -> None:
        self.student = None  # the session and its memory go with it

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
        from ..export.runtime import DecodeBatch, GenerationConfig, lookahead
        from ..export.runtime import Sequence as Chain

        keys, starts = chain_plan(prompts, keys, starts)
        if not prompts or n < 1:
            return [[] for _ in prompts]
        student = self.student
        rows = [student.encode(p) for p in prompts]
        if any(not r for r in rows):
            raise ScotdError(f"teacher onnx:{self.model}: an empty prompt (no tokens) cannot be sampled from")
        longest = max(len(r) for r in rows)
        if student.max_positions and longest + max_new_tokens > student.max_positions:
            raise ScotdError(f"teacher onnx:{self.model}: a prompt of {longest} tokens + max_new_tokens "
                             f"{max_new_tokens} exceeds the model's {student.max_positions} positions")
        # chain j of prompt i: its own seed, so it is the same chain whichever call or batch it lands in
        configs = [[GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop=tuple(stop),
                                     logprobs=0, seed=chain_seed(self.seed, keys[i], starts[i] + j))
                    for j in range(n)] for i in range(len(prompts))]
        # one group per prompt (one prefill shared by its chains); more chains than the batch holds: several groups
        width = min(n, self.max_batch_rows)
        pending = deque((i, first, min(width, n - first)) for i in range(len(prompts)) for first in range(0, n, width))
        capacity = min(self.max_batch_rows, len(prompts) * n)
        context = longest + max_new_tokens + lookahead(configs[0][0])
        batch = DecodeBatch(student, capacity=capacity, context=context)
        out: list[list[Completion | None]] = [[None] * n for _ in prompts]

        def collect(seqs) -> None:
            for seq in seqs:
                if seq.done:
                    i, j = seq.tag
                    out[i][j] = _completion(seq.generation())

        while pending or batch.seqs:
            # admit the next questions into the rows that chains have left (prefilled between two steps)
            groups = []
            free = batch.free
            while pending and pending[0][2] <= free and len(groups) < MAX_PREFILL_PROMPTS:
                i, first, count = pending.popleft()
                groups.append([Chain(student, rows[i], configs[i][j], chain=0, tag=(i, j))
                               for j in range(first, first + count)])
                free -= count
            if groups:
                self.prefill_tokens += sum(len(g[0].prompt) for g in groups)
                collect(batch.admit(groups))  # chains whose first token ended them leave at once
            if batch.seqs:
                collect(batch.step())
                self.decode_steps += 1
        return out  # type: ignore[return-value]  # every slot is filled: each chain ends (stop or length)


def _completion(gen) -> Completion:
    """A runtime `Generation` (decoded with logprobs=0, so its tokens and log-probs are trimmed at the stop
    string) as a teacher `Completion`."""
    lps = tuple(float(x) for x in gen.logprobs or ())
    return Completion(text=gen.text, logprob=float(sum(lps)), num_tokens=len(lps), finish_reason=gen.finish_reason,
                      token_logprobs=lps)
