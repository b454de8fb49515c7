"""The OpenAI response layouts `scotd serve` writes: completions and chat bodies, their log-prob blocks, and the
server-sent-event chunks of a stream. Pure functions of plain values, so the layout is in one place and the server
only fills it.

Log-prob lists follow the legacy completions API (what lm-eval's `local-completions` parses): `tokens`,
`token_logprobs` (None for the first prompt token of an echo: nothing precedes it), `top_logprobs` (one
{token text: log-prob} dict per token, or None) and `text_offset` (each token's start in the returned text).
Chat uses the newer `logprobs.content` list of `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
"""

from __future__ import annotations

import json
import time
import uuid

#: the line that ends every stream
SSE_DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(obj: dict) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(tokens: list[str], token_logprobs: list, top_logprobs: list | None) -> dict:
    """The completions `logprobs` block; `top_logprobs` None when no alternatives were asked for (logprobs 0)."""
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def chat_logprobs(tokens: list[str], token_logprobs: list[float], top_logprobs: list[dict] | None) -> dict:
    """The chat `logprobs` block."""
    content = []
    for k, (tok, lp) in enumerate(zip(tokens, token_logprobs)):
        top = top_logprobs[k] if top_logprobs is not None else {}
        content.append({
            "token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                             for t, v in sorted(top.items(), key=lambda kv: -kv[1])],
        })
    return {"content": content}


def completion_body(model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                    request_id: str) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def completion_choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_body(model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int, request_id: str) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def chat_choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish_reason}


def completion_chunk(request_id: str, model: str, choices: list[dict], created: int, usage_: dict | None = None) -> dict:
    chunk = {"id": request_id, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def chat_chunk(request_id: str, model: str, choices: list[dict], created: int, usage_: dict | None = None) -> dict:
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def chat_delta(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def stream_error(message: str) -> dict:
    """The event a stream ends with when its generation failed after the 200 went out (as vLLM sends it)."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": 500}}
