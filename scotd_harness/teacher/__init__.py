"""Teacher backends: one small interface, registered by name and imported only when asked for.

A backend turns prompts into sampled completions::

    backend.sample(prompts, n, temperature, max_new_tokens, stop, keys=None, starts=None) -> list[list[Completion]]

one inner list of `n` completions per prompt, in prompt order. Completion j of prompt i is chain `starts[i] + j`
of the question named `keys[i]`; its randomness comes from a seed derived from the backend's run seed, that key
and that chain index (`scotd_harness.seeding`), so asking for chains in pieces (split requests, a resumed run
asking only for the missing indices) never repeats a chain, and a rerun reproduces them. Without `keys` a
prompt's own text names it; without `starts` its chains start at 0.

`Completion.text` is already cut at the first stop string (the stop string itself is not included); `logprob` is
the summed log-probability the teacher gave the tokens that make up that text (None where the backend gives
none), `num_tokens` their count, so a per-token mean is `logprob / num_tokens`, and `token_logprobs` the
individual values.

The registry maps names to lazy ``"module:Class"`` strings, as lm-eval's model registry does, so
`--teacher openai:...` and `--teacher onnx:...` never import torch. A teacher is named ``BACKEND:MODEL`` on the
command line: ``hf:embedded``, ``hf:/path/to/model``, ``openai:meta-llama/Llama-3.1-70B``, or
``onnx:/path/to/export`` (a directory of `scotd export`, sampled in-process on the torch-free runtime: the fast
local teacher).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import formats
from ..errors import ScotdError

#: backend name -> "module:Class"; modules import on first use.
BACKENDS: dict[str, str] = {
    "hf": "scotd_harness.teacher.hf:HFTeacher",
    "openai": "scotd_harness.teacher.openai_backend:OpenAITeacher",
    "onnx": "scotd_harness.teacher.onnx_backend:OnnxTeacher",
}


@dataclass(frozen=True)
class Completion:
    text: str
    logprob: float | None = None
    num_tokens: int | None = None
    finish_reason: str | None = None  # "stop" (stop string or end of sequence) or "length"
    #: the per-token log-probabilities summed in `logprob`, where the backend gives them
    token_logprobs: tuple[float, ...] | None = None


class TeacherBackend:
    """Base class: subclasses implement `sample`; `name` is the `BACKEND:MODEL` string recorded in corpus rows."""

    backend: str = ""

    def __init__(self, model: str):
        self.model = model

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

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
        raise NotImplementedError

    def close(self) -> None:
        """Release connections or memory; a no-op by default."""


def chain_plan(
    prompts: Sequence[str], keys: Sequence[str] | None, starts: Sequence[int] | None
) -> tuple[list[str], list[int]]:
    """Each prompt's question key and first chain index, with the defaults filled in (its text, 0)."""
    keys = list(prompts) if keys is None else list(keys)
    starts = [0] * len(prompts) if starts is None else [int(s) for s in starts]
    if len(keys) != len(prompts) or len(starts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys and {len(starts)} starts")
    if any(s < 0 for s in starts):
        raise ValueError("chain start indices must be >= 0")
    return keys, starts


def parse_teacher(spec: str) -> tuple[str, str]:
    """'hf:embedded' -> ('hf', 'embedded'). The model part may itself hold colons (paths, 'org/name:tag')."""
    backend, sep, model = spec.partition(":")
    if not sep or not model:
        raise ScotdError(f"teacher {spec!r} is not BACKEND:MODEL (backends: {', '.join(BACKENDS)}), e.g. hf:embedded")
    if backend not in BACKENDS:
        raise ScotdError(f"unknown teacher backend {backend!r} in {spec!r}; known backends: {', '.join(BACKENDS)}")
    return backend, model


def backend_class(name: str) -> type[TeacherBackend]:
    if name not in BACKENDS:
        raise ScotdError(f"unknown teacher backend {name!r}; known backends: {', '.join(BACKENDS)}")
    module_name, _, cls_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def get_teacher(spec: str, **kwargs) -> TeacherBackend:
    """A backend instance for 'BACKEND:MODEL'; kwargs go to the backend's constructor (typed options)."""
    backend, model = parse_teacher(spec)
    return backend_class(backend)(model, **kwargs)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found); the cutting itself is `formats`'."""
    cut = formats.truncate_at_stop(text, stop)
    return cut, len(cut) < len(text)


def kept_token_count(text_chars: int, n_tokens: int, prefix_chars: Callable[[int], int]) -> int:
    """How many leading tokens spell a text cut at a stop string: the fewest k with prefix_chars(k) >= text_chars,
    `prefix_chars(k)` being the length of the text of the first k tokens.

    The one place that trims a chain's per-token log-probabilities to its kept text (the hf backend, the
    `openai` backend and the ONNX runtime all call it). A token that straddles the cut (".\n\n" cut at "\n\n")
    is kept, since it spells part of the text; a stop string that is a token of its own is not. The scan runs
    from the end, where the cut usually is, so it costs a few `prefix_chars` calls, not one per token.
    """
    k = n_tokens
    while k > 0 and prefix_chars(k - 1) >= text_chars:
        k -= 1
    return k


__all__ = [
    "BACKENDS",
    "Completion",
    "TeacherBackend",
    "backend_class",
    "chain_plan",
    "cut_at_stop",
    "get_teacher",
    "kept_token_count",
    "parse_teacher",
]
