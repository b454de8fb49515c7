"""`scotd serve` under concurrent real HTTP clients: requests join the running batch, greedy answers do not depend
on who else is in the batch, the queue bound answers 429 with Retry-After, a client that leaves frees its batch row,
and every request leaves one log line. The small server also runs `--chat-format student`."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from conftest import server_log, start_server, stop_server

from scotd_harness import formats

pytestmark = pytest.mark.slow  # a real model behind a real server

PROMPTS = ["The kitchen has a", "A list of three fruits:", "My favourite season is", "The old bridge over the river"]


@pytest.fixture(scope="module")
def small_server(onnx_student_int4_dir):
    """The int4 export with one batch row and one queue place (easy to fill), chatting in the student format."""
    proc, url = start_server(onnx_student_int4_dir, "--max-batch", "1", "--max-queue", "1", "--chat-format", "student")
    try:
        yield proc, url
    finally:
        stop_server(proc)


def running_and_queued(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    values = dict(re.findall(r"^(scotd_num_requests_(?:running|waiting)) (\S+)$", text, re.MULTILINE))
    return float(values["scotd_num_requests_running"]), float(values["scotd_num_requests_waiting"])


def wait_idle(url: str, within: float) -> float:
    """Seconds until no row decodes and nothing waits; fails after `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if running_and_queued(url) == (0, 0):
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"still running/queued after {within} s: {running_and_queued(url)}")


def complete(url: str, prompt: str, max_tokens: int, **extra) -> tuple[float, dict]:
    start = time.monotonic()
    r = httpx.post(url + "/v1/completions", timeout=120,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return time.monotonic() - start, r.json()


def test_concurrent_greedy_answers_equal_alone_and_late_short_request_joins(serve_url):
    """Four clients at once get exactly the greedy text each gets alone (fp32); a short request sent while three
    long ones decode joins their batch and is answered long before they finish."""
    alone = [complete(serve_url, p, 16)[1]["choices"][0]["text"] for p in PROMPTS]
    together: list[str | None] = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def one(i: int) -> None:
        barrier.wait()
        together[i] = complete(serve_url, PROMPTS[i], 16)[1]["choices"][0]["text"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and all(alone)

    finished: dict[str, float] = {}

    def long(i: int) -> None:
        complete(serve_url, PROMPTS[i], 64, ignore_eos=True)
        finished[f"long{i}"] = time.monotonic()

    longs = [threading.Thread(target=long, args=(i,)) for i in range(3)]
    for t in longs:
        t.start()
    deadline = time.monotonic() + 30
    while running_and_queued(serve_url)[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    _, short = complete(serve_url, PROMPTS[3], 4, ignore_eos=True)
    finished["short"] = time.monotonic()
    running_when_short_ended = running_and_queued(serve_url)[0]
    for t in longs:
        t.join()
    assert short["choices"][0]["text"] == complete(serve_url, PROMPTS[3], 4, ignore_eos=True)[1]["choices"][0]["text"]
    assert finished["short"] < min(finished[k] for k in ("long0", "long1", "long2")), finished
    assert running_when_short_ended >= 1  # the long ones were still decoding


def test_full_queue_gets_429_with_retry_after(small_server):
    """One batch row and one queue place: of six clients at once, the one decoding and the one waiting are
    answered, the others refused at once with 429 and Retry-After; every refused client overlapped a running one."""
    proc, url = small_server
    clients = 6
    barrier = threading.Barrier(clients - 1)
    results: list = [None] * clients

    def one(i: int) -> None:
        # the first holds the one row long enough for the other five, sent together once it decodes, to find it
        # taken (whether the engine had taken a request off the queue yet must not decide who is refused)
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 400 if i == 0 else 48, "temperature": 0,
                "ignore_eos": True}
        with httpx.Client(timeout=120) as http:
            if i:
                barrier.wait()
            start = time.monotonic()
            response = http.post(url + "/v1/completions", json=body)
            results[i] = (start, time.monotonic(), response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while running_and_queued(url)[0] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    ok = [(s, e) for s, e, r in results if r.status_code == 200]
    limited = [(s, e, r) for s, e, r in results if r.status_code == 429]
    assert len(ok) + len(limited) == clients, [r.text for _, _, r in results]
    assert len(ok) >= 2 and limited, [r.status_code for _, _, r in results]
    for start, end, r in limited:
        assert r.headers["retry-after"] == "1"
        assert "queue is full" in r.json()["error"]["message"]
        assert any(s <= end and e >= start for s, e in ok)
        assert end - start < 2.0  # refused at once, not after waiting
    wait_idle(url, within=10)
    log = server_log(proc)
    assert len(re.findall(r"endpoint=/v1/completions status=429 ", log)) >= len(limited)


def test_client_that_leaves_frees_its_row(small_server):
    """A client that gives up (non-streaming: its read times out; streaming: it closes the stream after a few
    events) has its generation cancelled: the one batch row is free again within a moment, far sooner than its
    1000 tokens would take, and the next request is answered."""
    proc, url = small_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", timeout=1.0,
                   json={"prompt": PROMPTS[0], "max_tokens": 1000, "temperature": 0, "ignore_eos": True})
    assert wait_idle(url, within=3) < 3

    with httpx.stream("POST", url + "/v1/completions", timeout=30,
                      json={"prompt": PROMPTS[1], "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
                            "stream": True}) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: {")
            if events == 3:
                break
    assert wait_idle(url, within=3) < 3

    _, body = complete(url, PROMPTS[2], 8, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 8
    log = server_log(proc)
    assert len(re.findall(r"endpoint=/v1/completions status=499 ", log)) >= 2


def test_one_log_line_per_request(small_server):
    """Each request leaves one INFO line: id, endpoint, status, prompt and completion tokens, queue and total time."""
    proc, url = small_server
    _, body = complete(url, PROMPTS[0], 3, ignore_eos=True)
    time.sleep(0.2)  # the line is written once the response has gone out
    lines = [line for line in server_log(proc).splitlines() if f"id={body['id']} " in line]
    assert len(lines) == 1, lines
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    assert fields["endpoint"] == "/v1/completions" and fields["status"] == "200"
    assert int(fields["prompt_tokens"]) == body["usage"]["prompt_tokens"]
    assert int(fields["completion_tokens"]) == 3
    assert float(fields["queue_s"]) <= float(fields["total_s"])
    assert "INFO scotd_harness.serve" in lines[0]


def test_chat_in_the_student_format(small_server):
    """`--chat-format student`: the last user message is the student prompt (used as is when it starts with "Q:"),
    with the student format's stop strings, so the reply is the plain completion of that prompt."""
    _, url = small_server
    question = "Q: Name three things you can find in a kitchen.\nA: Three things are"
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "system", "content": "unused"}, {"role": "user", "content": question}],
        "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    _, plain = complete(url, question, 16, stop=list(formats.STOP_STRINGS))
    assert r.json()["choices"][0]["message"]["content"] == plain["choices"][0]["text"] != ""
    assert r.json()["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
