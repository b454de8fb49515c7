"""`scotd serve` as a real subprocess, driven with the `openai` client and plain HTTP."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError, OpenAI, UnprocessableEntityError

from scotd_harness import formats

PROMPT = formats.student_input("Where would you put a plate after washing it?",
                               [("a", "cupboard"), ("b", "restaurant"), ("c", "dishwasher")])


@pytest.fixture(scope="module")
def client(serve_url):
    return OpenAI(base_url=serve_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_completions_openai_schema(client):
    r = client.completions.create(model="student", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2,
                                  stop=["\n\n"])
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == r.usage.completion_tokens
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    assert "".join(choice.logprobs.tokens) == choice.text
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.completions.create(model="student", prompt=PROMPT, max_tokens=8, temperature=0, stop=["\n\n"])
    assert again.choices[0].text == choice.text


def test_completions_n_and_prompt_list(client):
    r = client.completions.create(model="student", prompt=[PROMPT, "Q: Is ice cold?\nA:"], max_tokens=6, n=3,
                                  temperature=0.8, seed=1, logprobs=0)
    assert [c.index for c in r.choices] == list(range(6))
    assert all(c.logprobs.top_logprobs is None and len(c.logprobs.token_logprobs) == len(c.logprobs.tokens)
               for c in r.choices)
    assert any(c.logprobs.tokens for c in r.choices)
    r2 = client.completions.create(model="student", prompt=[PROMPT, "Q: Is ice cold?\nA:"], max_tokens=6, n=3,
                                   temperature=0.8, seed=1)
    assert [c.text for c in r.choices] == [c.text for c in r2.choices]


def test_answer_endpoint(serve_url):
    r = httpx.post(serve_url + "/v1/answer", json={"question": "Where do you keep milk?",
                                                   "choices": ["fridge", "oven", "shoe"], "max_tokens": 32},
                   timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == formats.INVALID or body["answer"] in "abc"
    assert set(body) >= {"rationale", "answer", "votes", "chains"}
    r = httpx.post(serve_url + "/v1/answer", json={"question": "Where do you keep milk?", "choices": ["fridge", "oven"],
                                                   "n": 3, "temperature": 0.7, "max_tokens": 16, "seed": 0},
                   timeout=120)
    assert r.status_code == 200 and len(r.json()["chains"]) == 3


def test_bad_requests_get_4xx_with_reason(client, serve_url):
    with pytest.raises(UnprocessableEntityError):
        client.completions.create(model="student", prompt=PROMPT, max_tokens=4, n=0)
    with pytest.raises(BadRequestError, match="stream"):
        client.completions.create(model="student", prompt=PROMPT, max_tokens=4, stream=True)
    r = httpx.post(serve_url + "/v1/completions", json={"prompt": "x" * 400_000, "max_tokens": 1}, timeout=30)
    assert r.status_code == 413 and "bytes" in r.text
    r = httpx.post(serve_url + "/v1/answer", json={"question": "q", "choices": ["only one"]}, timeout=30)
    assert r.status_code == 422
    r = httpx.post(serve_url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 422
    r = httpx.post(serve_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 9000}, timeout=30)
    assert r.status_code == 422 and "max_tokens" in r.text
    from scotd_harness.limits import MAX_N, MAX_PROMPTS

    r = httpx.post(serve_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1, "n": MAX_N + 1}, timeout=30)
    assert r.status_code == 422 and f"n: Input should be less than or equal to {MAX_N}" in r.text
    r = httpx.post(serve_url + "/v1/completions", json={"prompt": ["hi"] * (MAX_PROMPTS + 1), "max_tokens": 1},
                   timeout=30)
    assert r.status_code == 422 and "prompt" in r.text
    r = httpx.get(serve_url + "/v1/models", timeout=30)
    assert r.status_code == 200 and r.json()["data"]


def test_total_generation_cap_is_named_in_the_400(client, serve_url):
    """Each field is capped, and so is their product: 2 prompts x n 32 x 1024 tokens is refused before any work."""
    from scotd_harness.limits import MAX_N, MAX_TOKENS, MAX_TOTAL_TOKENS

    with pytest.raises(BadRequestError) as err:
        client.completions.create(model="student", prompt=[PROMPT, PROMPT], n=MAX_N, max_tokens=MAX_TOKENS)
    message = str(err.value)
    assert f"2 prompts x n {MAX_N} x max_tokens {MAX_TOKENS} = {2 * MAX_N * MAX_TOKENS}" in message
    assert f"the cap is {MAX_TOTAL_TOKENS}" in message
    # one prompt with every field at its own cap still fits: the cap only bites on products of several
    assert MAX_TOTAL_TOKENS >= MAX_N * MAX_TOKENS
    r = httpx.post(serve_url + "/v1/answer", json={"question": "q?", "choices": ["x", " "]}, timeout=30)
    assert r.status_code == 400 and "choices: choice 2 (b) has no text" in r.json()["error"]["message"]


def test_oversize_chunked_body_gets_413(serve_url):
    """A body sent without content-length (chunked) is bounded too, by what arrives."""

    def chunks():
        for _ in range(40):
            yield b"x" * 8192

    r = httpx.post(serve_url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


def test_too_many_in_flight_get_429_with_retry_after(serve_url):
    """Real clients at once: the server (max_concurrency 4, one generation at a time) admits 4 and refuses the
    rest with 429 and Retry-After, and every refused request overlapped in time with at least 4 admitted ones."""
    import threading
    import time

    clients, max_concurrency = 8, 4
    barrier = threading.Barrier(clients)
    results: list[tuple[float, float, httpx.Response]] = [None] * clients  # type: ignore[list-item]

    def one(i: int) -> None:
        body = {"prompt": PROMPT, "max_tokens": 32, "temperature": 1.0, "seed": i}
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            start = time.monotonic()
            response = http.post(serve_url + "/v1/completions", json=body)
            results[i] = (start, time.monotonic(), response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [(s, e) for s, e, r in results if r.status_code == 200]
    limited = [(s, e, r) for s, e, r in results if r.status_code == 429]
    assert len(ok) + len(limited) == clients, [r.text for _, _, r in results]
    assert limited and ok, [r.status_code for _, _, r in results]
    for start, end, r in limited:
        assert r.headers["retry-after"] == "1"
        assert f"more than {max_concurrency} requests in flight" in r.json()["error"]["message"]
        overlapping = sum(s <= end and e >= start for s, e in ok)
        assert overlapping >= max_concurrency
