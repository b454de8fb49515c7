"""`scotd serve` as a real subprocess (the session's fp32 export), driven with the `openai` client and plain HTTP:
completions, streaming, chat, echo with prompt log-probs, /metrics, and bad input that must leave no slot held."""

from __future__ import annotations

import re

import httpx
import pytest
from openai import BadRequestError, OpenAI, UnprocessableEntityError

from scotd_harness import formats

PROMPT = formats.student_input("Where would you put a plate after washing it?",
                               [("a", "cupboard"), ("b", "restaurant"), ("c", "dishwasher")])
#: the untrained embedded model often ends at once on a student prompt; it writes on after this one
OPEN = "The kitchen has a"


@pytest.fixture(scope="module")
def client(serve_url):
    return OpenAI(base_url=serve_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def scrape(url: str) -> dict[str, float]:
    """/metrics as {sample name with labels: value}."""
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_completions_openai_schema(client):
    r = client.completions.create(model="student", prompt=OPEN, max_tokens=8, temperature=0, logprobs=2,
                                  stop=["\n\n"])
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == r.usage.completion_tokens > 0
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    assert "".join(choice.logprobs.tokens) == choice.text
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.completions.create(model="student", prompt=OPEN, max_tokens=8, temperature=0, stop=["\n\n"])
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


def test_streaming_completions_and_chat_join_to_the_plain_answer(client):
    """`stream=True` through the openai client: server-sent chunks whose texts join to the non-streamed text at
    temperature 0 (n 2: both choices streamed, interleaved by index), and the stream ends with [DONE]."""
    plain = client.completions.create(model="s", prompt=OPEN, max_tokens=24, temperature=0, n=2)
    parts: dict[int, str] = {0: "", 1: ""}
    finish = {}
    stream = client.completions.create(model="s", prompt=OPEN, max_tokens=24, temperature=0, n=2, stream=True)
    for chunk in stream:
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            parts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert parts == {c.index: c.text for c in plain.choices} and plain.choices[0].text
    assert finish == {c.index: c.finish_reason for c in plain.choices}

    messages = [{"role": "user", "content": "Name three fruits."}]
    chat = client.chat.completions.create(model="s", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="s", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [chat.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    # the raw wire format: `data: {json}` events, the last one `data: [DONE]`
    with httpx.stream("POST", str(client.base_url) + "completions", timeout=60,
                      json={"prompt": OPEN, "max_tokens": 4, "temperature": 0, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1])


def test_chat_completions_with_the_export_chat_template(client, onnx_student_dir):
    """The embedded export is not a distilled student (its scotd.json has no `student` section), so `auto` renders
    its chat template (rendered as transformers does: test_server_chat_prompt.py); the reply equals a completion of
    that rendered prompt. Sampling fields work as in completions: n, seed, stop, logprobs with top_logprobs."""
    from scotd_harness.export.chat_prompt import ChatPrompter

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is ice cold?"}]
    chat = client.chat.completions.create(model="s", messages=messages, max_tokens=12, temperature=0, logprobs=True,
                                          top_logprobs=2)
    assert chat.object == "chat.completion"
    (choice,) = chat.choices
    assert choice.message.role == "assistant" and choice.message.content
    rendered = ChatPrompter(onnx_student_dir, {})(messages)
    assert rendered.endswith("<|im_start|>assistant\n")
    plain = client.completions.create(model="s", prompt=rendered, max_tokens=12, temperature=0)
    assert choice.message.content == plain.choices[0].text
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:  # greedy: each chosen token is the top alternative, with the very same log-prob
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == t.logprob
    sampled = client.chat.completions.create(model="s", messages=messages, max_tokens=8, temperature=1.0, n=3,
                                             seed=5, stop=["."])
    again = client.chat.completions.create(model="s", messages=messages, max_tokens=8, temperature=1.0, n=3,
                                           seed=5, stop=["."])
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
    assert all("." not in c.message.content for c in sampled.choices)


def test_echo_returns_the_prompt_log_probs_lm_eval_reads(serve_url, onnx_student_dir):
    """`echo` + `logprobs` + `max_tokens` 1 with token-id prompts, as lm-eval's local-completions sends them: the
    prompt's tokens come back first (log-prob None for the first), then the one generated token; the scores are
    the runtime's own log-likelihoods, and a greedy token's log-prob is exactly its top alternative's."""
    from scotd_harness.export.runtime import OnnxStudent

    student = OnnxStudent(onnx_student_dir, threads=1)
    context = student.encode(PROMPT)
    continuations = [student.encode(PROMPT + formats.direct_target(label))[len(context):] for label in "abc"]
    rows = [context + c for c in continuations]
    r = httpx.post(serve_url + "/v1/completions", timeout=120, json={
        "prompt": rows, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert len(choices) == 3
    for row, cont, choice in zip(rows, continuations, choices):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(row) + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["tokens"][: len(row)] == [student.decode([t]) for t in row]
        assert choice["text"] == student.decode(row) + lp["tokens"][-1]
        scored = lp["token_logprobs"][len(context):-1]  # what lm-eval's parse_logprobs sums
        expected, greedy = student.loglikelihood(context, cont)
        assert sum(scored) == pytest.approx(expected, abs=1e-3)
        is_greedy = all(t == max(top.values()) for t, top in zip(scored, lp["top_logprobs"][len(context):-1]))
        assert is_greedy == greedy
        assert lp["text_offset"][1] == len(lp["tokens"][0])
    # the generated token is the greedy one, the same a plain completion picks
    plain = httpx.post(serve_url + "/v1/completions", timeout=120,
                       json={"prompt": rows[0], "max_tokens": 1, "temperature": 0, "logprobs": 0}).json()
    first = choices[0]["logprobs"]
    generated = plain["choices"][0]["logprobs"]["token_logprobs"]
    assert generated == [] or generated == [pytest.approx(first["token_logprobs"][-1], abs=1e-4)]
    # max_tokens 0: the prompt alone; a text prompt echoes its text
    r = httpx.post(serve_url + "/v1/completions", timeout=60, json={
        "prompt": OPEN, "max_tokens": 0, "logprobs": 0, "echo": True})
    body = r.json()["choices"][0]
    assert body["text"] == OPEN and body["logprobs"]["top_logprobs"] is None
    assert len(body["logprobs"]["tokens"]) == r.json()["usage"]["prompt_tokens"]
    assert r.json()["usage"]["completion_tokens"] == 0


def test_metrics_count_requests_tokens_and_batch(serve_url, client):
    before = scrape(serve_url)
    r = client.completions.create(model="s", prompt=OPEN, max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    httpx.post(serve_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1, "n": 0}, timeout=30)
    after = scrape(serve_url)
    ok = 'scotd_requests_total{endpoint="/v1/completions",status="200"}'
    bad = 'scotd_requests_total{endpoint="/v1/completions",status="422"}'
    assert after[ok] == before.get(ok, 0) + 1 and after[bad] == before.get(bad, 0) + 1
    assert r.usage.completion_tokens == 5  # ignore_eos: exactly max_tokens
    assert after["scotd_generation_tokens_total"] - before.get("scotd_generation_tokens_total", 0) == 5
    assert after["scotd_prompt_tokens_total"] - before.get("scotd_prompt_tokens_total", 0) == r.usage.prompt_tokens
    assert after["scotd_decode_steps_total"] > before.get("scotd_decode_steps_total", 0)
    assert after["scotd_num_requests_running"] == 0 and after["scotd_num_requests_waiting"] == 0
    assert after["scotd_batch_capacity"] == 8
    for name in ("scotd_time_to_first_token_seconds_count", "scotd_request_queue_time_seconds_count",
                 "scotd_e2e_request_latency_seconds_count"):
        assert after[name] >= before.get(name, 0) + 1
    assert "scotd_spec_decode_num_draft_tokens_total" in after


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
    assert sum(r.json()["votes"].values()) <= 3  # unparsable chains cast no vote


def test_bad_requests_get_4xx_with_reason(client, serve_url):
    with pytest.raises(UnprocessableEntityError):
        client.completions.create(model="student", prompt=PROMPT, max_tokens=4, n=0)
    with pytest.raises(BadRequestError, match="echo"):
        client.completions.create(model="student", prompt=PROMPT, max_tokens=4, stream=True, echo=True, logprobs=1)
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


#: (endpoint, body, status, words the error message must contain)
BAD_INPUT = [
    ("chat/completions", {"messages": "hello"}, 422, ["messages"]),
    ("chat/completions", {"messages": []}, 422, ["messages"]),
    ("chat/completions", {"messages": [{"role": "user"}]}, 400, ["messages[0].content"]),
    ("chat/completions", {"messages": [{"content": "hi"}]}, 400, ["messages[0].role"]),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}, 400,
     ["messages[1].role", "'robot'"]),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     ["messages[0].content[0]"]),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     ["top_logprobs"]),
    ("completions", {"prompt": [[1, 2], [3, 49152]], "max_tokens": 1}, 400, ["prompt[1][1]", "49152"]),
    ("completions", {"prompt": [5, -1], "max_tokens": 1}, 400, ["prompt[1]", "-1"]),
    ("completions", {"prompt": [[1, 2], [3, "x"]], "max_tokens": 1}, 422, ["prompt"]),
    ("completions", {"prompt": "hi", "echo": True, "stream": True, "logprobs": 1}, 400, ["echo", "stream"]),
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, ["max_tokens"]),
    ("completions", {"prompt": "", "max_tokens": 1}, 400, ["prompt[0]"]),
    ("completions", {"prompt": [[7] * 3000], "max_tokens": 1}, 400, ["context"]),
    ("completions", {"prompt": [[7] * 3000], "max_tokens": 1, "echo": True, "logprobs": 0}, 400, ["context"]),
    ("completions", {"prompt": "hi", "prompt_lookup": -1}, 422, ["prompt_lookup"]),
]


def test_bad_input_is_refused_by_field_and_holds_no_slot(serve_url):
    """Each malformed request gets its 4xx naming the field; after the burst no batch row is held, nothing waits,
    and a good request still answers."""
    for endpoint, body, status, words in BAD_INPUT:
        r = httpx.post(f"{serve_url}/v1/{endpoint}", json=body, timeout=30)
        assert r.status_code == status, (endpoint, body, r.text)
        message = r.json()["error"]["message"]
        assert all(w in message for w in words), (body, message)
    metrics = scrape(serve_url)
    assert metrics["scotd_num_requests_running"] == 0 and metrics["scotd_num_requests_waiting"] == 0
    r = httpx.post(serve_url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


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


def test_metrics_text_is_prometheus_exposition(serve_url):
    """Every sample line parses as `name{labels} value` and every family has HELP and TYPE lines."""
    text = httpx.get(serve_url + "/metrics", timeout=30).text
    families = set(re.findall(r"^# TYPE (\S+) (counter|gauge|histogram)$", text, re.MULTILINE))
    names = {name for name, _ in families}
    assert {"scotd_requests_total", "scotd_num_requests_running", "scotd_num_requests_waiting",
            "scotd_time_to_first_token_seconds", "scotd_prompt_tokens_total", "scotd_generation_tokens_total"} <= names
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-zA-Z_:][\w:]*(\{[^}]*\})? \S+", line), line
            float(line.rsplit(" ", 1)[1])
