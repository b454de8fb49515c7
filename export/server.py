"""`scotd serve`: an exported student over OpenAI-compatible HTTP (FastAPI + uvicorn), on 127.0.0.1 by default.

This module only translates HTTP into calls of the scheduler (`scheduler.py`), which owns the running batch, the
queue and the one onnxruntime session: concurrent requests join the running batch between decode steps, so no
lock and no decoding live here.

- `POST /v1/completions`: the OpenAI completions schema. `prompt` is a string, a list of strings, a list of token
  ids or a list of such lists (lm-eval's `local-completions` sends ids); `n` chains of a prompt share its prefill;
  `stream: true` sends server-sent events; `echo: true` with `logprobs` returns the prompt's own token log-probs
  (what lm-eval's log-likelihood tasks read), followed by those of the generated tokens. A stream carries text
  only: `logprobs` with `stream` is refused (400) until the scheduler's deltas carry per-token log-probs.
- `POST /v1/chat/completions`: `messages` turned into one prompt by `chat_prompt.ChatPrompter` (the export's chat
  template, or the student's own "Q: ... A:" format; `--chat-format`), then as above, in the chat layout.
- `POST /v1/answer`: a question and its choices in, the student's rationale, parsed answer and (n > 1) votes out.
- `GET /metrics` (Prometheus text format), `GET /v1/models`, `GET /health`.

Extensions vLLM also accepts: `ignore_eos` (decode exactly max_tokens) and `prompt_lookup` (tokens drafted per step
by prompt-lookup speculative decoding; 0 turns it off; absent: the server's `--prompt-lookup`, else the runtime's
default).

Bounds (`scotd_harness.limits`, shared with the clients that must fit them): request bodies over `max_body_bytes`
get 413; a request that finds `max_queue` requests already waiting gets 429 with `Retry-After`; malformed fields get
422 and impossible combinations 400, naming the field; a request whose prompts x n x max_tokens exceed
`MAX_TOTAL_TOKENS`, or whose prompt + max_tokens exceed the context, gets 400. A client that disconnects has its
generation cancelled: its batch rows are free at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from scotd_harness import formats
from scotd_harness.limits import MAX_LOGPROBS, MAX_N, MAX_PROMPTS, MAX_TOKENS, MAX_TOTAL_TOKENS

from . import openai_layout as layout
from .chat_prompt import ChatPrompter, ChatPromptError
from .runtime import Generation, GenerationConfig, OnnxStudent
from .scheduler import QueueFull, RequestCancelled, Scheduler
from .server_echo import echo_choices, greedy_next
from .server_metrics import CLIENT_CLOSED, RequestRecord, ServerMetrics

log = logging.getLogger("scotd_harness.serve")

#: seconds a client told 429 should wait before retrying (the `Retry-After` header)
RETRY_AFTER_S = 1
#: longest prompt text a request may carry (characters); token-id prompts are bounded by the context instead
MAX_PROMPT_CHARS = 32_000
#: chat's `max_tokens` when the request gives none (OpenAI's default is "up to the context": too long to wait for)
CHAT_DEFAULT_MAX_TOKENS = 256
#: most tokens prompt lookup may draft per step when a request asks
MAX_PROMPT_LOOKUP = 16
#: how often a waiting request checks whether its client is still there (seconds)
DISCONNECT_POLL_S = 0.1

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Generating(BaseModel):
    """Fields completions and chat share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    ignore_eos: bool = False
    prompt_lookup: Annotated[int, Field(ge=0, le=MAX_PROMPT_LOOKUP)] | None = None


class CompletionRequest(_Generating):
    prompt: (Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
             | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
             | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    #: 0 only with echo (the prompt's log-probs and nothing generated)
    max_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    best_of: int | None = None


class ChatRequest(_Generating):
    #: checked message by message by chat_prompt.validate_messages, whose 400 names the field
    messages: Annotated[list[Any], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=8_000)]
    #: choice texts (labelled a, b, ... in order) or [label, text] pairs
    choices: Annotated[list[str] | list[tuple[str, str]], Field(min_length=2, max_length=len(formats.LABELS))]
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 128
    seed: int | None = None


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its generation has been cancelled."""


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body, so OpenAI clients show the reason."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status, headers=headers)


def _bad(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def _total_tokens_problem(prompts: int, n: int, max_tokens: int) -> str | None:
    """Why a request asks for too much generation in all, or None. Each field has its own cap, but their product
    is what a request costs: 32 prompts x n 32 x 1024 tokens, each within its cap, would hold most of the batch
    for a very long time."""
    total = prompts * n * max_tokens
    if total <= MAX_TOTAL_TOKENS:
        return None
    return (f"the request asks for up to {prompts} prompts x n {n} x max_tokens {max_tokens} = {total} generated "
            f"tokens; the cap is {MAX_TOTAL_TOKENS} per request (split it into several requests)")


def prompt_rows(prompt, student: OnnxStudent) -> tuple[list[list[int]], list[str]]:
    """A completions `prompt` in any of its four shapes -> (token rows, prompt texts). Token ids are checked
    against the vocabulary, and a bad one is named by its place (`prompt[i][j]`)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], str):
        for i, text in enumerate(prompt):
            if not text:
                raise _bad(f"prompt[{i}]: empty prompt")
            if len(text) > MAX_PROMPT_CHARS:
                raise _bad(f"prompt[{i}]: over {MAX_PROMPT_CHARS} characters")
        return [student.encode(p) for p in prompt], list(prompt)
    nested = isinstance(prompt[0], list)
    rows = prompt if nested else [prompt]
    for i, row in enumerate(rows):
        for j, token in enumerate(row):
            if not 0 <= token < student.vocab_size:
                where = f"prompt[{i}][{j}]" if nested else f"prompt[{j}]"
                raise _bad(f"{where}: token id {token} is outside the vocabulary (0..{student.vocab_size - 1})")
    return [list(r) for r in rows], [student.decode(r) for r in rows]


def _stop(stop) -> tuple[str, ...] | None:
    """The request's stop strings, or None when it names none."""
    if stop is None:
        return None
    return (stop,) if isinstance(stop, str) else tuple(stop)


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _result(request: Request, ticket) -> list[list[Generation]]:
    """The ticket's completions, unless the client leaves first: then the ticket is cancelled (its rows leave the
    batch at the next step) and ClientGone raised."""
    result = asyncio.ensure_future(ticket.result())
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if result.done():
        try:
            return result.result()
        except RequestCancelled as e:  # not by this request's client (which is watched above): a shutdown
            raise HTTPException(503, str(e)) from None
    ticket.cancel()
    result.cancel()
    raise ClientGone


class _Bounds:
    """Body bound, per-request record and cleanup, as pure ASGI middleware.

    Pure ASGI rather than `@app.middleware("http")`: it wraps the whole response, a stream included, so the
    request's record (log line, metrics) is finished and its generation cancelled when the last byte has gone or
    the client has left, and it leaves `receive` to the endpoint, where disconnects are watched."""

    def __init__(self, app, max_body_bytes: int, metrics: ServerMetrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(endpoint=scope["path"])
        scope.setdefault("state", {})["record"] = record
        ended = False

        async def watched_send(message):
            nonlocal ended
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            body = await self._body(scope, receive)
            if body is None:
                await _error(413, f"request body over {self.max_body_bytes} bytes")(scope, receive, watched_send)
                return
            await self.app(scope, _replay(body, receive), watched_send)
        except Exception:
            record.status = 500
            raise
        finally:
            if not ended and record.status != 500:
                record.status = CLIENT_CLOSED
            self.metrics.finish(record)

    async def _body(self, scope, receive) -> bytes | None:
        """The whole body, or None past the bound (also for chunked bodies, which carry no content-length)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """`receive` that hands the body already read, then passes on (so disconnects still arrive)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(
    student: OnnxStudent,
    model_name: str = "scotd-student",
    max_batch: int = 8,
    max_queue: int = 32,
    max_context: int | None = 2048,
    max_body_bytes: int = 256 * 1024,
    chat_format: str = "auto",
    prompt_lookup: int | None = None,
    scheduler: Scheduler | None = None,
) -> FastAPI:
    """The app over one student. It starts a `Scheduler` (closed at shutdown) unless one is given."""
    owned = scheduler is None
    if owned:
        scheduler = Scheduler(student, max_batch=max_batch, max_queue=max_queue, max_context=max_context)
    prompter = ChatPrompter(student.path, student.meta, chat_format)
    metrics = ServerMetrics(scheduler.stats)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if owned:
            scheduler.close()

    app = FastAPI(title="scotd student", version="2", lifespan=lifespan)
    app.add_middleware(_Bounds, max_body_bytes=max_body_bytes, metrics=metrics)
    app.state.scheduler = scheduler
    app.state.chat_format = prompter.format

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in exc.errors()
        )
        return _error(422, reasons or "invalid request")

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return _error(CLIENT_CLOSED, "client closed the request")

    # ------------------------------------------------------------------------------------------- helpers
    def config_for(req, max_tokens: int, stop: tuple[str, ...], logprobs: int | None) -> GenerationConfig:
        lookup = req.prompt_lookup if req.prompt_lookup is not None else prompt_lookup
        return GenerationConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, stop=stop, seed=req.seed, ignore_eos=req.ignore_eos,
                                logprobs=logprobs, prompt_lookup=lookup)

    def submit(request: Request, rows: list[list[int]], config: GenerationConfig, n: int, kind: str = "cmpl"):
        """Hand the request to the scheduler; its record cancels it when the response ends, however it ends."""
        record: RequestRecord = request.state.record
        try:
            ticket = scheduler.submit(rows, config, n=n, request_id=layout.new_id(kind))
        except QueueFull as e:
            raise HTTPException(429, f"the queue is full ({e}); retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ValueError as e:
            raise _bad(str(e)) from None
        record.cleanups.append(ticket.cancel)
        record.from_ticket(ticket, sum(len(r) for r in rows))
        return ticket

    async def engine_call(fn, *args):
        try:
            return await scheduler.acall(fn, *args)
        except QueueFull as e:
            raise HTTPException(429, f"the queue is full ({e}); retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def stream_response(events) -> StreamingResponse:
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def include_usage(req) -> bool:
        return bool((req.stream_options or {}).get("include_usage"))

    # ------------------------------------------------------------------------------------------- endpoints
    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "scotd"}]}

    @app.get("/metrics")
    def scrape():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        if req.best_of not in (None, req.n):
            raise _bad("best_of: not supported (leave it unset or equal to n)")
        if req.echo and req.stream:
            raise _bad("echo: not supported with stream (ask for the prompt's log-probs without streaming)")
        if req.stream and req.logprobs is not None:
            raise _bad("logprobs: not supported with stream yet (ask without stream)")
        if req.max_tokens == 0 and not req.echo:
            raise _bad("max_tokens: 0 is only meaningful with echo")
        rows, texts = prompt_rows(req.prompt, student)
        if problem := _total_tokens_problem(len(rows), req.n, req.max_tokens):
            raise _bad(problem)
        stop = _stop(req.stop) or ()
        model = req.model or model_name
        if req.echo:
            return await echo(req, request, rows, texts, stop, model)
        config = config_for(req, req.max_tokens, stop, req.logprobs)
        ticket = submit(request, rows, config, req.n)
        if req.stream:
            return stream_response(completion_events(ticket, request, model, include_usage(req)))
        groups = await _result(request, ticket)
        choices, completion_tokens = [], 0
        for i, group in enumerate(groups):
            for j, gen in enumerate(group):
                completion_tokens += len(gen.token_ids)
                lp = (layout.completion_logprobs(gen.tokens, gen.logprobs, gen.top_logprobs if req.logprobs else None)
                      if req.logprobs is not None else None)
                choices.append(layout.completion_choice(i * req.n + j, gen.text, lp, gen.finish_reason))
        request.state.record.completion_tokens = completion_tokens
        return layout.completion_body(model, choices, ticket.prompt_tokens, completion_tokens, ticket.id)

    async def completion_events(ticket, request: Request, model: str, with_usage: bool):
        record: RequestRecord = request.state.record
        created = int(time.time())
        try:
            async for d in ticket.deltas():
                choice = layout.completion_choice(d.index, d.text, None, d.finish_reason)
                yield layout.sse(layout.completion_chunk(ticket.id, model, [choice], created))
            record.completion_tokens = ticket.completion_tokens
            if with_usage:
                u = layout.usage(ticket.prompt_tokens, record.completion_tokens)
                yield layout.sse(layout.completion_chunk(ticket.id, model, [], created, u))
            yield layout.SSE_DONE
        except RuntimeError as e:  # the generation failed or the server is shutting down: say so in the stream
            yield layout.sse(layout.stream_error(str(e)))
            yield layout.SSE_DONE
        finally:
            ticket.cancel()  # a no-op once finished; frees the rows of a stream the client left

    async def echo(req: CompletionRequest, request: Request, rows, texts, stop, model: str):
        """The prompt's own token log-probs, then the generated tokens' (`server_echo` says why it is shaped so)."""
        record: RequestRecord = request.state.record
        for i, row in enumerate(rows):
            if len(row) + req.max_tokens > scheduler.context:
                raise _bad(f"prompt[{i}]: {len(row)} tokens + max_tokens {req.max_tokens} exceed the context of "
                           f"{scheduler.context} tokens")
        one_greedy = req.max_tokens == 1 and req.temperature == 0
        scores = None
        if req.logprobs is not None or one_greedy:
            scores = await engine_call(student.prompt_logprobs, rows, req.logprobs or 0)
        if req.max_tokens == 0:
            groups = [[None] * req.n for _ in rows]
        elif one_greedy:
            groups = [[greedy_next(student, s, stop, req.logprobs or 0, req.ignore_eos, len(r))] * req.n
                      for s, r in zip(scores, rows)]
        else:
            ticket = submit(request, rows, config_for(req, req.max_tokens, stop, req.logprobs), req.n)
            groups = await _result(request, ticket)
        choices, completion_tokens = echo_choices(student, rows, texts, groups, scores, req.logprobs)
        record.id = record.id if record.ticket is not None else layout.new_id("cmpl")
        record.prompt_tokens, record.completion_tokens = sum(len(r) for r in rows), completion_tokens
        return layout.completion_body(model, choices, record.prompt_tokens, completion_tokens, record.id)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        if req.top_logprobs is not None and not req.logprobs:
            raise _bad("top_logprobs: needs logprobs: true")
        if req.stream and req.logprobs:
            raise _bad("logprobs: not supported with stream yet (ask without stream)")
        try:
            prompt = prompter(req.messages)
        except ChatPromptError as e:
            raise _bad(str(e)) from None
        max_tokens = req.max_completion_tokens or req.max_tokens or CHAT_DEFAULT_MAX_TOKENS
        if problem := _total_tokens_problem(1, req.n, max_tokens):
            raise _bad(problem)
        stop = _stop(req.stop)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        config = config_for(req, max_tokens, prompter.default_stop if stop is None else stop, logprobs)
        rows = [student.encode(prompt)]
        ticket = submit(request, rows, config, req.n, kind="chatcmpl")
        model = req.model or model_name
        if req.stream:
            return stream_response(chat_events(ticket, request, model, include_usage(req)))
        (group,) = await _result(request, ticket)
        choices = []
        for j, gen in enumerate(group):
            lp = layout.chat_logprobs(gen.tokens, gen.logprobs, gen.top_logprobs) if req.logprobs else None
            choices.append(layout.chat_choice(j, gen.text, lp, gen.finish_reason))
        completion_tokens = sum(len(g.token_ids) for g in group)
        request.state.record.completion_tokens = completion_tokens
        return layout.chat_body(model, choices, ticket.prompt_tokens, completion_tokens, ticket.id)

    async def chat_events(ticket, request: Request, model: str, with_usage: bool):
        record: RequestRecord = request.state.record
        created = int(time.time())
        try:
            first = [layout.chat_delta(j, {"role": "assistant", "content": ""}) for j in range(ticket.n)]
            yield layout.sse(layout.chat_chunk(ticket.id, model, first, created))
            async for d in ticket.deltas():
                delta = {"content": d.text} if d.text else {}
                yield layout.sse(layout.chat_chunk(ticket.id, model, [layout.chat_delta(d.index, delta,
                                                                                       d.finish_reason)], created))
            record.completion_tokens = ticket.completion_tokens
            if with_usage:
                u = layout.usage(ticket.prompt_tokens, record.completion_tokens)
                yield layout.sse(layout.chat_chunk(ticket.id, model, [], created, u))
            yield layout.SSE_DONE
        except RuntimeError as e:  # the generation failed or the server is shutting down: say so in the stream
            yield layout.sse(layout.stream_error(str(e)))
            yield layout.SSE_DONE
        finally:
            ticket.cancel()

    @app.post("/v1/answer")
    async def answer(req: AnswerRequest, request: Request):
        try:
            choices = formats.normalize_choices(req.choices)
        except ValueError as e:
            raise _bad(f"choices: {e}") from None
        if problem := _total_tokens_problem(1, req.n, req.max_tokens):
            raise _bad(problem)
        temperature = req.temperature if req.temperature is not None else (0.0 if req.n == 1 else 0.7)
        if req.n > 1 and temperature == 0:
            raise _bad("n: n > 1 needs temperature > 0 (greedy chains would all be the same)")
        config = GenerationConfig(max_new_tokens=req.max_tokens, temperature=temperature, seed=req.seed,
                                  prompt_lookup=prompt_lookup)
        items = [(req.question, choices)]
        ticket = submit(request, [student.encode(formats.student_input(req.question, choices))], config, req.n)
        groups = await _result(request, ticket)
        ans = OnnxStudent.answers_from_chains(items, groups, req.n)[0]
        request.state.record.completion_tokens = sum(len(g.token_ids) for g in groups[0])
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
    max_batch: int = 8,
    max_queue: int = 32,
    max_context: int | None = 2048,
    max_body_bytes: int = 256 * 1024,
    chat_format: str = "auto",
    prompt_lookup: int | None = None,
    log_level: str = "info",
) -> None:
    """Load the export and serve it until interrupted. Request lines go to stderr at INFO (logger
    `scotd_harness.serve`); uvicorn's own access log is off, since that line replaces it."""
    import uvicorn

    from scotd_harness.errors import ScotdError

    try:
        student = OnnxStudent(directory, device=device, threads=threads)
    except FileNotFoundError as e:  # no scotd.json: a user's wrong path, not a bug
        raise ScotdError(str(e)) from None
    try:
        app = create_app(student, model_name=student.meta.get("source", "scotd-student"), max_batch=max_batch,
                         max_queue=max_queue, max_context=max_context, max_body_bytes=max_body_bytes,
                         chat_format=chat_format, prompt_lookup=prompt_lookup)
    except ValueError as e:  # e.g. --chat-format template on an export without a template
        raise ScotdError(str(e)) from None
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    log.propagate = False
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)

