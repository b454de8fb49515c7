"""What `scotd serve` tells an operator: one log line per request and `GET /metrics` (Prometheus text format).

Both come from one place, `ServerMetrics.finish(record)`, called once per request when its response has been
sent (for a stream: when the last event went out or the client left), so the log and the counters never disagree.
The metric names follow vLLM's where there is one (requests, prompt/generation tokens, queue time, time to first
token, end-to-end latency, running and waiting requests, speculative draft/accepted tokens), with the `scotd_`
prefix. Each app gets its own `CollectorRegistry` (not prometheus_client's global one), so a process can hold
several apps, as tests do. The batch and queue gauges and the prompt-lookup counters are read from
`scheduler.stats()` at scrape time: the scheduler is their one source.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("scotd_harness.serve")

#: seconds; small steps at the low end, where a 135M student on a few cores answers
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

#: the HTTP status logged for a client that went away before its answer (nginx's convention)
CLIENT_CLOSED = 499


@dataclass
class RequestRecord:
    """One request's facts, filled in by the handler while it runs and reported once by `ServerMetrics.finish`."""

    endpoint: str
    id: str = "-"
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: the scheduler's ticket of the request's generation (its queue and first-token times), if it has one
    ticket: object | None = None
    started: float = field(default_factory=time.monotonic)
    #: called once when the response is over, however it ended (e.g. cancel the request's generation)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def from_ticket(self, ticket, prompt_tokens: int) -> None:
        """Tie the record to a scheduler ticket; its times are read when the request ends (a stream's first token
        comes after the handler has returned)."""
        self.id = ticket.id
        self.prompt_tokens = prompt_tokens
        self.ticket = ticket

    @property
    def queue_s(self) -> float | None:
        return getattr(self.ticket, "queue_s", None)

    @property
    def first_token_s(self) -> float | None:
        return getattr(self.ticket, "first_token_s", None)


class _SchedulerCollector:
    """Batch occupancy, queue length and prompt-lookup counts, read from the scheduler when scraped."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        yield GaugeMetricFamily("scotd_num_requests_running", "Rows decoding in the running batch (batch "
                                "occupancy; a request with n chains holds n rows)", value=s["running"])
        yield GaugeMetricFamily("scotd_num_requests_waiting", "Requests queued for a batch slot", value=s["queued"])
        yield GaugeMetricFamily("scotd_batch_capacity", "Most rows the running batch holds (--max-batch)",
                                value=s["max_batch"])
        yield GaugeMetricFamily("scotd_queue_capacity", "Most requests that may wait (--max-queue)",
                                value=s["max_queue"])
        yield CounterMetricFamily("scotd_decode_steps", "Decode steps the scheduler ran", value=s["steps"])
        yield CounterMetricFamily("scotd_spec_decode_num_draft_tokens", "Tokens proposed by prompt lookup",
                                  value=s["drafted_tokens"])
        yield CounterMetricFamily("scotd_spec_decode_num_accepted_tokens",
                                  "Prompt-lookup tokens the model accepted", value=s["accepted_tokens"])


class ServerMetrics:
    def __init__(self, scheduler_stats: Callable[[], dict]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("scotd_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("scotd_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.generation_tokens = Counter("scotd_generation_tokens", "Tokens generated for answered requests",
                                         registry=r)
        self.queue_time = Histogram("scotd_request_queue_time_seconds", "Submit to first admission to the batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("scotd_time_to_first_token_seconds", "Submit to the first generated token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("scotd_e2e_request_latency_seconds", "Request arrival to its last byte sent",
                                 buckets=LATENCY_BUCKETS, registry=r)
        r.register(_SchedulerCollector(scheduler_stats))

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def finish(self, record: RequestRecord) -> None:
        """Run the record's cleanups, then count it and write its log line (once per request)."""
        for cleanup in record.cleanups:
            cleanup()
        record.cleanups.clear()
        total = time.monotonic() - record.started
        self.requests.labels(record.endpoint, str(record.status)).inc()
        if record.status == 200:
            self.prompt_tokens.inc(record.prompt_tokens)
            self.generation_tokens.inc(record.completion_tokens)
            self.latency.observe(total)
            if record.queue_s is not None:
                self.queue_time.observe(record.queue_s)
            if record.first_token_s is not None:
                self.first_token.observe(record.first_token_s)
        log.info("request id=%s endpoint=%s status=%d prompt_tokens=%d completion_tokens=%d queue_s=%s total_s=%.3f",
                 record.id, record.endpoint, record.status, record.prompt_tokens, record.completion_tokens,
                 "-" if record.queue_s is None else f"{record.queue_s:.3f}", total)
