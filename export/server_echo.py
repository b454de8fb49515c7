"""OpenAI's legacy `echo` for `scotd serve`: the prompt's own token log-probs, then the generated tokens'.

This is what lm-eval's `local-completions` model asks for to score log-likelihood tasks: `echo: true`,
`logprobs: 1`, `max_tokens: 1`, temperature 0 and token-id prompts; it then sums `token_logprobs[ctxlen:-1]` (the
last entry is the generated token's) and calls a continuation greedy when each of its tokens' log-prob equals the
largest of its `top_logprobs`. So:

- the generated token is always returned, end-of-sequence included (as vLLM does): dropped, lm-eval's `[:-1]`
  would drop a prompt token from the score instead;
- a greedy token's log-prob and its top entry come from the same float (`OnnxStudent.prompt_logprobs` computes
  both from one log-softmax), so lm-eval's `==` holds.

The prompt is scored by one forward pass (`prompt_logprobs`, run on the scheduler's engine thread); for one greedy
token the next token is that pass's argmax, exactly what greedy decoding picks, so no second pass is needed.
"""

from __future__ import annotations

import numpy as np

from scotd_harness import formats

from . import openai_layout as layout
from .runtime import Generation, OnnxStudent, PromptScores


def top_by_text(student: OnnxStudent, top: dict[int, float]) -> dict[str, float]:
    """{token id: log-prob} -> {token text: log-prob}; ids that spell the same text keep the larger."""
    out: dict[str, float] = {}
    for t, v in top.items():
        text = student.decode([t])
        out[text] = max(v, out.get(text, -np.inf))
    return out


def greedy_next(student: OnnxStudent, scores: PromptScores, stop: tuple[str, ...], top: int, ignore_eos: bool,
                prompt_tokens: int) -> Generation:
    """The greedy next token from the prompt's last distribution, as a one-token Generation (end-of-sequence
    kept as the token, with empty text)."""
    next_lps = scores.next_logprobs
    pick = np.array(next_lps, dtype=np.float32, copy=True)
    if ignore_eos and student.eos_ids:
        pick[list(student.eos_ids)] = -np.inf
    token = int(pick.argmax())
    piece = student.decode([token])
    text = formats.truncate_at_stop(piece, stop) if stop else piece
    ended = (token in student.eos_ids and not ignore_eos) or len(text) < len(piece)
    gen = Generation(text=text, token_ids=[token], finish_reason="stop" if ended else "length",
                     prompt_tokens=prompt_tokens, logprobs=[float(next_lps[token])], tokens=[piece])
    if top:
        best = np.argpartition(-next_lps, top)[:top]
        gen.top_logprobs = [top_by_text(student, {int(t): float(next_lps[t]) for t in best})]
    return gen


def echo_choices(student: OnnxStudent, rows: list[list[int]], texts: list[str],
                 groups: list[list[Generation | None]], scores: list[PromptScores] | None,
                 logprobs: int | None) -> tuple[list[dict], int]:
    """The completions choices of an echo request (prompt i, chain j at index i * n + j; a chain None when
    nothing was generated, max_tokens 0) and the number of generated tokens."""
    choices, completion_tokens = [], 0
    for i, (row, text, group) in enumerate(zip(rows, texts, groups)):
        n = len(group)
        for j, gen in enumerate(group):
            completion_tokens += len(gen.token_ids) if gen else 0
            lp = None
            if logprobs is not None:
                s = scores[i]
                tokens = [student.decode([t]) for t in row] + (gen.tokens if gen else [])
                lps = list(s.token_logprobs) + (gen.logprobs if gen else [])
                tops = None
                if logprobs:
                    tops = [None if t is None else top_by_text(student, t) for t in s.top_logprobs]
                    tops += gen.top_logprobs if gen else []
                lp = layout.completion_logprobs(tokens, lps, tops)
            choices.append(layout.completion_choice(i * n + j, text + (gen.text if gen else ""), lp,
                                                    gen.finish_reason if gen else "length"))
    return choices, completion_tokens
