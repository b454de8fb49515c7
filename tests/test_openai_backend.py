"""The `openai` teacher backend over real HTTP on 127.0.0.1, against a real OpenAI-compatible server running a
real model: this project's `scotd serve` on an ONNX export (the `serve_url` session fixture in conftest.py).

Faults (429, 503, a time-out) are injected by a small forwarding proxy between the backend and that server: every
answer the backend parses still comes from the real server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from click.testing import CliRunner

from scotd_harness import formats
from scotd_harness.cli import cli
from scotd_harness.corpus import read_corpus
from scotd_harness.errors import ScotdError
from scotd_harness.teacher import get_teacher

pytestmark = pytest.mark.slow  # a real model behind a real server

PROMPTS = [
    formats.student_input("Where do you put grapes before checking out?", [("a", "mouth"), ("b", "grocery cart")]),
    formats.student_input("What colour is the sky?", [("a", "blue"), ("b", "green")]),
]


def v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@pytest.fixture(scope="module")
def api_base(serve_url) -> str:
    return v1(serve_url)


class FaultProxy:
    """Forwards POSTs to the real server, except that the first requests get the planned faults
    (an HTTP status, or 'sleep' to outlast the client's time-out). Counts requests and peak concurrency."""

    def __init__(self, upstream: str, faults=()):
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults)
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy.lock:
                    proxy.requests += 1
                    proxy.in_flight += 1
                    proxy.peak = max(proxy.peak, proxy.in_flight)
                    fault = proxy.faults.pop(0) if proxy.faults else None
                try:
                    if fault == "sleep":
                        time.sleep(8)
                        fault = 504
                    if isinstance(fault, int):
                        payload = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                        self.send_response(fault)
                        self.send_header("content-type", "application/json")
                        self.send_header("content-length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                    r = httpx.post(proxy.upstream + path, content=body, timeout=120,
                                   headers={"content-type": "application/json"})
                    self.send_response(r.status_code)
                    self.send_header("content-type", r.headers.get("content-type", "application/json"))
                    self.send_header("content-length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_samples_n_chains_with_logprobs(api_base):
    teacher = get_teacher("openai:student", api_base=api_base, concurrency=2)
    try:
        results = teacher.sample(PROMPTS, 3, 1.0, 12, formats.STOP_STRINGS)
    finally:
        teacher.close()
    assert len(results) == 2 and all(len(r) == 3 for r in results)
    for completions in results:
        for c in completions:
            assert isinstance(c.text, str) and "\n\n" not in c.text and "\nQ:" not in c.text
            assert c.logprob is not None and c.logprob <= 0 and 0 <= c.num_tokens <= 12
            assert c.finish_reason in ("stop", "length")
    assert teacher.retries == 0


def test_splits_n_over_several_requests(api_base):
    with FaultProxy(api_base) as proxy:
        teacher = get_teacher("openai:student", api_base=proxy.url, max_n_per_request=2, concurrency=1)
        (chains,) = teacher.sample(PROMPTS[:1], 5, 1.0, 4, formats.STOP_STRINGS)
        teacher.close()
    assert len(chains) == 5 and proxy.requests == 3


def test_retries_429_5xx_and_timeouts_with_backoff(api_base):
    with FaultProxy(api_base, faults=[429, 503, "sleep"]) as proxy:
        teacher = get_teacher("openai:student", api_base=proxy.url, concurrency=1, max_retries=6, timeout=4)
        results = teacher.sample(PROMPTS[:1], 2, 1.0, 4, formats.STOP_STRINGS)
        teacher.close()
    assert len(results[0]) == 2 and teacher.retries >= 3 and proxy.requests >= 4


def test_gives_up_after_max_retries_and_fails_fast_on_client_errors(api_base):
    with FaultProxy(api_base, faults=[500, 500, 500]) as proxy:
        teacher = get_teacher("openai:student", api_base=proxy.url, concurrency=1, max_retries=2)
        with pytest.raises(ScotdError, match="after 2 retries") as e:
            teacher.sample(PROMPTS[:1], 1, 1.0, 4, formats.STOP_STRINGS)
        assert "500" in str(e.value) and proxy.requests == 3
    teacher = get_teacher("openai:student", api_base=api_base, max_retries=5)
    with pytest.raises(ScotdError, match="refused"):
        teacher.sample(PROMPTS[:1], 1, 1.0, 100_000, formats.STOP_STRINGS)  # over the server's max_tokens: 4xx
    assert teacher.retries == 0


def test_concurrency_is_bounded(api_base):
    prompts = PROMPTS * 3
    with FaultProxy(api_base) as proxy:
        teacher = get_teacher("openai:student", api_base=proxy.url, concurrency=2)
        results = teacher.sample(prompts, 1, 1.0, 4, formats.STOP_STRINGS)
        teacher.close()
    assert len(results) == 6 and proxy.requests == 6 and 1 <= proxy.peak <= 2


def test_scotd_sample_through_the_endpoint_keeps_the_key_secret(api_base, data_dir, tmp_path):
    out = tmp_path / "corpus.jsonl"
    secret = "sk-test-not-a-real-key-4242"
    args = ["sample", "--task", "csqa", "--split", "train", "--teacher", "openai:student", "--api-base", api_base,
            "-n", "2", "--limit", "2", "--max-new-tokens", "8", "--num-exemplars", "1", "--no-progress",
            "--out", str(out), "--data-dir", str(data_dir)]
    res = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": secret})
    assert res.exit_code == 0, res.output
    rows = list(read_corpus(out))
    assert len(rows) == 4 and {r.sample_index for r in rows} == {0, 1}
    assert all(r.teacher == "openai:student" and r.logprob is not None for r in rows)
    for r in rows:  # per-token log-probabilities kept, summing to the chain's
        assert len(r.extra["token_logprobs"]) == r.num_tokens
        assert sum(r.extra["token_logprobs"]) == pytest.approx(r.logprob, abs=1e-3 * (r.num_tokens + 1))
    for path in (out, out.with_name(out.name + ".meta.json")):
        assert secret not in path.read_text()
    assert secret not in res.output
