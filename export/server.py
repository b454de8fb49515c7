"""`scotd serve`: an exported student over HTTP (FastAPI + uvicorn), bound to 127.0.0.1 unless told otherwise.

- `POST /v1/completions`: the OpenAI completions schema (`prompt` as a string or a list of strings, `n`,
  `temperature`, `top_p`, `max_tokens`, `stop`, `logprobs`, `seed`), so the `openai` client, lm-eval's API models
  and this project's own `openai` teacher backend can call it. `n > 1` shares each prompt's prefill across its n
  chains. Log-probs are the model's own (temperature 1) distribution.
- `POST /v1/answer`: a question and its choices in, the student's rationale, parsed answer and (n > 1) votes out.
- `GET /v1/models`, `GET /health`.

Bounds (`scotd_harness.limits`, shared with the clients that must fit them): request bodies over
`max_body_bytes` get 413, more than `max_concurrency` requests in flight get 429 with `Retry-After` (generation
itself runs one request at a time: one session already uses every core it is given), malformed or out-of-range
fields get 422 and requests whose prompts x n x max_tokens exceed `MAX_TOTAL_TOKENS` get 400, with the reason.
All decoding is the runtime's; this module only translates.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from scotd_harness import formats
from scotd_harness.limits import MAX_LOGPROBS, MAX_N, MAX_PROMPTS, MAX_TOKENS, MAX_TOTAL_TOKENS

from .runtime import GenerationConfig, OnnxStudent

#: seconds a client told 429 should wait before retrying (the `Retry-After` header)
RETRY_AFTER_S = 1


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: Annotated[str, Field(max_length=32_000)] | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    seed: int | None = None
    stream: bool = False
    echo: bool = False
    best_of: int | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=8_000)]
    #: choice texts (labelled a, b, ... in order) or [label, text] pairs
    choices: Annotated[list[str] | list[tuple[str, str]], Field(min_length=2, max_length=len(formats.LABELS))]
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 128
    seed: int | None = None


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body, so OpenAI clients show the reason."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status, headers=headers)


def _total_tokens_problem(prompts: int, n: int, max_tokens: int) -> str | None:
    """Why a request asks for too much generation in all, or None. Each field has its own cap, but their product
    is what a request costs: 32 prompts x n 32 x 1024 tokens, each within its cap, would hold the one session
    (and every client queued behind it) for a very long time."""
    total = prompts * n * max_tokens
    if total <= MAX_TOTAL_TOKENS:
        return None
    return (f"the request asks for up to {prompts} prompts x n {n} x max_tokens {max_tokens} = {total} generated "
            f"tokens; the cap is {MAX_TOTAL_TOKENS} per request (split it into several requests)")


def _logprobs_block(gen) -> dict:
    offsets, pos = [], 0
    for tok in gen.tokens:
        offsets.append(pos)
        pos += len(tok)
    return {
        "tokens": gen.tokens,
        "token_logprobs": gen.logprobs,
        "top_logprobs": gen.top_logprobs,
        "text_offset": offsets,
    }


def create_app(
    student: OnnxStudent,
    model_name: str = "scotd-student",
    max_concurrency: int = 4,
    max_body_bytes: int = 256 * 1024,
) -> FastAPI:
    app = FastAPI(title="scotd student", version="1")
    run_lock = threading.Lock()  # one generation at a time on the one session
    in_flight = {"n": 0}
    guard = asyncio.Lock()

    def generate(fn, *args):
        with run_lock:
            return fn(*args)

    @app.middleware("http")
    async def bounds(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return _error(413, f"request body over {max_body_bytes} bytes")
        if request.method == "POST":
            body = await request.body()  # also bounds chunked bodies, which carry no content-length
            if len(body) > max_body_bytes:
                return _error(413, f"request body over {max_body_bytes} bytes")
            async with guard:
                if in_flight["n"] >= max_concurrency:
                    return _error(429, f"more than {max_concurrency} requests in flight; retry later",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
                in_flight["n"] += 1
            try:
                return await call_next(request)
            finally:
                async with guard:
                    in_flight["n"] -= 1
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in exc.errors()
        )
        return _error(422, reasons or "invalid request")

    def _bad(message: str) -> HTTPException:
        return HTTPException(status_code=400, detail=message)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "scotd"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if req.stream:
            raise _bad("stream is not supported")
        if req.echo:
            raise _bad("echo is not supported")
        if req.best_of not in (None, req.n):
            raise _bad("best_of is not supported (leave it unset or equal to n)")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if any(not p for p in prompts):
            raise _bad("empty prompt")
        if problem := _total_tokens_problem(len(prompts), req.n, req.max_tokens):
            raise _bad(problem)
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        config = GenerationConfig(
            max_new_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=stop,
            seed=req.seed,
            logprobs=req.logprobs,
        )
        rows = [student.encode(p) for p in prompts]
        limit = student.max_positions
        if limit and max(len(r) for r in rows) + req.max_tokens > limit:
            raise _bad(f"prompt tokens + max_tokens exceed the model's {limit} positions")
        if req.n > 1:
            groups = await run_in_threadpool(generate, student.sample_n, rows, req.n, config)
        else:
            groups = [[g] for g in await run_in_threadpool(generate, student.generate, rows, config)]
        choices, completion_tokens = [], 0
        for i, group in enumerate(groups):
            for j, gen in enumerate(group):
                completion_tokens += len(gen.token_ids)
                choices.append(
                    {
                        "text": gen.text,
                        "index": i * req.n + j,
                        "logprobs": _logprobs_block(gen) if req.logprobs is not None else None,
                        "finish_reason": gen.finish_reason,
                    }
                )
        prompt_tokens = sum(len(r) for r in rows)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model or model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @app.post("/v1/answer")
    async def answer(req: AnswerRequest):
        try:
            choices = formats.normalize_choices(req.choices)
        except ValueError as e:
            raise _bad(f"choices: {e}") from None
        if problem := _total_tokens_problem(1, req.n, req.max_tokens):
            raise _bad(problem)
        temperature = req.temperature if req.temperature is not None else (0.0 if req.n == 1 else 0.7)
        if req.n > 1 and temperature == 0:
            raise _bad("n > 1 needs temperature > 0 (greedy chains would all be the same)")
        config = GenerationConfig(max_new_tokens=req.max_tokens, temperature=temperature, seed=req.seed)
        ans = await run_in_threadpool(generate, student.answer, req.question, choices, req.n, config)
        return {
            "answer": ans.answer,
            "rationale": ans.rationale,
            "text": ans.text,
            "votes": ans.votes,
            "chains": [g.text for g in ans.chains],
            "model": model_name,
        }

    return app


def serve(
    directory,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    threads: int | None = None,
    max_concurrency: int = 4,
    max_body_bytes: int = 256 * 1024,
    log_level: str = "warning",
) -> None:
    import uvicorn

    from scotd_harness.errors import ScotdError

    try:
        student = OnnxStudent(directory, device=device, threads=threads)
    except FileNotFoundError as e:  # no scotd.json: a user's wrong path, not a bug
        raise ScotdError(str(e)) from None
    name = student.meta.get("source", "scotd-student")
    app = create_app(student, model_name=name, max_concurrency=max_concurrency, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
