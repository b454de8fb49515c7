"""Iteration-level scheduling of many requests over one exported student (continuous batching).

One engine thread owns the onnxruntime session and one `DecodeBatch`. Between two decode steps it runs the calls
queued for the session (prompt log-probs), takes cancelled requests out of the batch, and admits waiting
requests into the free rows (their prompts prefilled together in one pass, a prompt's n chains sharing its
prefill); then it steps every row by a token and hands each request its new text. A request that arrives while
others decode therefore starts at the next step boundary instead of waiting for the batch to drain, and a row that
finishes frees its slot at once, as in vLLM and llama.cpp's server. A row's arithmetic does not depend on the rows
beside it (each has its own KV row and length), so a greedy completion is the same whether it ran alone or in a
full batch.

The server translates HTTP into `submit` and `call`; the runtime (`runtime.py`) keeps the model step and the KV
buffers. Torch-free, like the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .runtime import DecodeBatch, Generation, GenerationConfig, OnnxStudent, Sequence, lookahead

#: context (prompt + completion tokens) per row when the caller does not say: the KV buffers hold
#: max_batch x context positions per layer
DEFAULT_CONTEXT = 2048


class QueueFull(RuntimeError):
    """The bound on waiting requests is reached: try again later (the server answers 429 with Retry-After)."""


class RequestCancelled(RuntimeError):
    """The request was cancelled (its client went away) before it finished."""


@dataclass
class Delta:
    """What one choice of a request gained in one step."""

    index: int  # prompt i, chain j -> i * n + j
    text: str  # new since this choice's last Delta; never part of a stop string
    token_ids: list[int]  # the tokens decoded since the last Delta (held-back text's tokens included)
    finish_reason: str | None = None  # set on a choice's last Delta
    generation: Generation | None = None  # the whole completion, on a choice's last Delta


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Ticket:
    """One submitted request: its progress, its deltas (async) and its result (async or blocking)."""

    def __init__(self, request_id: str, rows: list[list[int]], config: GenerationConfig, n: int):
        self.id = request_id
        self.rows, self.config, self.n = rows, config, n
        self.prompt_tokens = sum(len(r) for r in rows)
        self.groups: list[list[Generation | None]] = [[None] * n for _ in rows]
        self._left = len(rows) * n
        # admission units: (prompt index, first chain, chains); a prompt's chains may join in parts
        self.units: deque[list[int]] = deque([i, 0, n] for i in range(len(rows)))
        self.live: list[Sequence] = []
        self.cancelled = False
        self.error: BaseException | None = None
        self.submitted = time.perf_counter()
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.finished: float | None = None
        self._done = threading.Event()
        self._loop = _running_loop()
        self._queue: asyncio.Queue | None = asyncio.Queue() if self._loop else None
        self._future: asyncio.Future | None = self._loop.create_future() if self._loop else None
        self._sent: dict[int, tuple[int, int]] = {}  # choice index -> (characters, tokens) handed out

    # ------------------------------------------------------------------------------------------- timings
    @property
    def queue_s(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.submitted

    @property
    def first_token_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def total_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def completion_tokens(self) -> int:
        return sum(len(g.token_ids) for group in self.groups for g in group if g is not None)

    # ------------------------------------------------------------------------------------------- consumer side
    def cancel(self) -> None:
        """Stop this request: its rows leave the batch at the next step boundary. Idempotent, any thread."""
        if not self.done:
            self.cancelled = True
            scheduler = getattr(self, "_scheduler", None)
            if scheduler is not None:
                scheduler._wake()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's new text as it is decoded, in the event loop that submitted the request."""
        if self._queue is None:
            raise RuntimeError("deltas() needs the request submitted from a running event loop")
        while True:
            delta = await self._queue.get()
            if delta is None:
                break
            yield delta
        if self.error is not None:
            raise self.error

    async def result(self) -> list[list[Generation]]:
        """groups[i][j]: prompt i's chain j."""
        if self._future is None:
            raise RuntimeError("result() needs the request submitted from a running event loop; use wait()")
        return await asyncio.shield(self._future)

    def wait(self, timeout: float | None = None) -> list[list[Generation]]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.groups

    # ------------------------------------------------------------------------------------------- engine side
    def _post(self, fn, *args) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _emit(self, seq: Sequence, index: int) -> None:
        if self.first_token is None and seq.out:
            self.first_token = time.perf_counter()
        if seq.done:
            gen = seq.generation()
            text = gen.text
        else:
            gen, text = None, _streamable(seq)
        sent, sent_ids = self._sent.get(index, (0, 0))
        new = text[sent:] if len(text) >= sent else ""
        ids = gen.token_ids if gen is not None else seq.out
        if gen is None and not new:
            return
        self._sent[index] = (max(sent, len(text)), max(sent_ids, len(ids)))
        if self._queue is not None:
            delta = Delta(index, new, list(ids[sent_ids:]), seq.finish_reason if gen else None, gen)
            self._post(self._queue.put_nowait, delta)
        if gen is not None:
            self.groups[index // self.n][index % self.n] = gen
            self._left -= 1
            if self._left == 0:
                self._close()

    def _close(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.error = error
        self.finished = time.perf_counter()
        self._done.set()
        if self._queue is not None:
            self._post(self._queue.put_nowait, None)
        if self._future is not None:
            def settle(fut=self._future):
                if fut.done():
                    return
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(self.groups)
            self._post(settle)


def _streamable(seq: Sequence) -> str:
    """The text of an unfinished sequence that is safe to hand out: no tail that could still become a stop
    string, and no incomplete UTF-8 character."""
    text = seq.student.decode(seq.out)
    hold = 0
    for stop in seq.config.stop:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    text = text[: len(text) - hold]
    return text.rstrip("\ufffd")


class Scheduler:
    """Continuous batching over one student: `submit` requests from any thread or event loop."""

    def __init__(self, student: OnnxStudent, max_batch: int = 8, max_queue: int = 64,
                 max_context: int | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        context = max_context or DEFAULT_CONTEXT
        if student.max_positions:
            context = min(context, student.max_positions)
        self.student = student
        self.max_batch, self.max_queue, self.context = max_batch, max_queue, context
        self.batch = DecodeBatch(student, capacity=max_batch, context=context)
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._calls: deque = deque()
        self._running: list[Ticket] = []
        self._closed = False
        self.generated_tokens = self.drafted_tokens = self.accepted_tokens = 0
        self._thread = threading.Thread(target=self._loop, name="scotd-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- API
    def submit(self, rows: list[list[int]], config: GenerationConfig, n: int = 1,
               request_id: str | None = None) -> Ticket:
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        if n < 1:
            raise ValueError("n must be >= 1")
        longest = max(len(r) for r in rows)
        extra = lookahead(config)
        if longest + config.max_new_tokens + extra > self.context:
            raise ValueError(f"prompt tokens ({longest}) + max_tokens ({config.max_new_tokens}) exceed the "
                             f"context of {self.context - extra} tokens per sequence")
        ticket = Ticket(request_id or uuid.uuid4().hex, [list(r) for r in rows], config, n)
        ticket._scheduler = self
        with self._cond:
            self._check_open()
            if len(self._waiting) + len(self._calls) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    def call(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        """Run fn on the engine thread between two steps: the session is the engine's alone."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._check_open()
            if len(self._waiting) + len(self._calls) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._calls.append((fn, args, kwargs, future))
            self._cond.notify()
        return future

    async def acall(self, fn, *args, **kwargs):
        return await asyncio.wrap_future(self.call(fn, *args, **kwargs))

    def stats(self) -> dict:
        with self._cond:
            queued = len(self._waiting) + len(self._calls)
        return {"running": len(self.batch.seqs), "queued": queued, "max_batch": self.max_batch,
                "max_queue": self.max_queue, "context": self.context, "steps": self.batch.steps,
                "generated_tokens": self.generated_tokens, "drafted_tokens": self.drafted_tokens,
                "accepted_tokens": self.accepted_tokens}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------- engine
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the scheduler is closed")

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._calls or self.batch.seqs
                           or any(t.cancelled for t in self._running)):
                    self._cond.wait()
                if self._closed:
                    break
                calls = list(self._calls)
                self._calls.clear()
                for ticket in [t for t in self._waiting if t.cancelled]:
                    self._waiting.remove(ticket)
                    ticket._close(RequestCancelled(f"request {ticket.id} was cancelled"))
            for fn, args, kwargs, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        future.set_exception(e)
            try:
                self._drop_cancelled()
                self._admit()
                self._step()
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the server
                self._fail_running(e)
        self._shutdown()

    def _drop_cancelled(self) -> None:
        for ticket in [t for t in self._running if t.cancelled]:
            for seq in ticket.live:
                self.batch.cancel(seq)
            ticket.live.clear()
            self._running.remove(ticket)
            ticket._close(RequestCancelled(f"request {ticket.id} was cancelled"))

    def _admit(self) -> None:
        """Move waiting requests into free rows, oldest first; one prefill pass for all that join."""
        groups, joined = [], []
        free = self.batch.free
        with self._cond:
            while free and self._waiting:
                ticket = self._waiting[0]
                unit = ticket.units[0]
                prompt, first, count = unit
                take = min(count, free)
                seqs = [Sequence(self.student, ticket.rows[prompt], ticket.config, chain=first + j,
                                 tag=(ticket, prompt * ticket.n + first + j)) for j in range(take)]
                groups.append(seqs)
                ticket.live.extend(seqs)
                free -= take
                unit[1], unit[2] = first + take, count - take
                if unit[2] == 0:
                    ticket.units.popleft()
                if ticket not in joined:
                    joined.append(ticket)
                if not ticket.units:
                    self._waiting.popleft()
        if not groups:
            return
        now = time.perf_counter()
        for ticket in joined:
            if ticket.admitted is None:
                ticket.admitted = now
            if ticket not in self._running:
                self._running.append(ticket)
        finished = self.batch.admit(groups)
        for seq in (s for g in groups for s in g):
            self._emit(seq, len(seq.out))
        self._retire(finished)

    def _step(self) -> None:
        if not self.batch.seqs:
            return
        before = {id(s): len(s.out) for s in self.batch.seqs}
        advanced = self.batch.step()
        for seq in advanced:
            self._emit(seq, len(seq.out) - before[id(seq)])
        self._retire([s for s in advanced if s.done])

    def _emit(self, seq: Sequence, new_tokens: int) -> None:
        self.generated_tokens += max(new_tokens, 0)
        ticket, index = seq.tag
        ticket._emit(seq, index)

    def _retire(self, finished: list[Sequence]) -> None:
        for seq in finished:
            ticket, _ = seq.tag
            self.drafted_tokens += seq.drafted
            self.accepted_tokens += seq.accepted
            if seq in ticket.live:
                ticket.live.remove(seq)
            if ticket.done and ticket in self._running:
                self._running.remove(ticket)

    def _fail_running(self, error: Exception) -> None:
        """A step raised: the rows in the batch are in an unknown state, so their requests fail and the batch
        starts afresh; waiting requests are untouched."""
        for ticket in self._running:
            ticket._close(RuntimeError(f"generation failed: {error}"))
        self._running.clear()
        self.batch = DecodeBatch(self.student, capacity=self.max_batch, context=self.context)

    def _shutdown(self) -> None:
        with self._cond:
            pending = list(self._waiting) + self._running
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for ticket in pending:
            ticket._close(RequestCancelled("the server is shutting down"))
        for *_, future in calls:
            future.cancel()

