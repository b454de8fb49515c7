"""The `openai` teacher backend over real HTTP on 127.0.0.1, against a real OpenAI-compatible server running a
real model: this project's `scotd serve` on an ONNX export (the `serve_url` session fixture in conftest.py).

Faults (429, 503, a time-out) are injected by a small forwarding proxy between the backend and that server: every
answer the backend parses still comes from the real server. Servers that ignore `n` (llama-cpp-python's, TGI) are
played by a small HTTP server that answers one choice per request from the real ONNX runtime: llama-cpp-python
itself compiles for many minutes, too long to install for a test.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from click.testing import CliRunner

from scotd_harness import formats
from scotd_harness.cli import cli
from scotd_harness.corpus import read_corpus
from scotd_harness.datasets import Example
from scotd_harness.errors import ScotdError
from scotd_harness.export.runtime import GenerationConfig, OnnxStudent
from scotd_harness.limits import MAX_N
from scotd_harness.prompts import PromptSet, load_prompt
from scotd_harness.sampling import SampleSettings, run_sampling
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


def test_scotd_sample_splits_n_by_max_n_per_request(api_base, data_dir, tmp_path):
    out = tmp_path / "corpus.jsonl"
    with FaultProxy(api_base) as proxy:
        args = ["sample", "--task", "csqa", "--split", "train", "--teacher", "openai:student", "--api-base", proxy.url,
                "-n", "3", "--max-n-per-request", "2", "--limit", "1", "--max-new-tokens", "4", "--num-exemplars",
                "1", "--no-progress", "--out", str(out), "--data-dir", str(data_dir)]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        assert proxy.requests == 2  # 2 + 1
    assert sorted(r.sample_index for r in read_corpus(out)) == [0, 1, 2]


# ------------------------------------------------------------------------------------ per-chain seeds, real server
QUESTIONS = [
    Example("csqa", "g1", "Where do you put grapes before checking out?",
            (("a", "mouth"), ("b", "grocery cart"), ("c", "fruit basket")), "b"),
    Example("csqa", "g2", "What colour is the sky on a clear day?", (("a", "blue"), ("b", "green"), ("c", "red")), "a"),
]
SEED_SETTINGS = SampleSettings(task="csqa", split="train", teacher="openai:student", n=8, temperature=1.0,
                               max_new_tokens=8, prompt_version="v", seed=0, num_exemplars=1)


def _render():
    full = load_prompt("csqa")
    prompt = PromptSet(full.task, full.prompt_version, full.exemplars[:1])
    return lambda ex: prompt.render(ex.question, ex.choices)


def _sample_corpus(api_base: str, out, *, resume=False):
    """n=8 chains per question, asked in requests of at most 3 (so 3 + 3 + 2), from a teacher seeded with 0."""
    teacher = get_teacher("openai:student", api_base=api_base, max_n_per_request=3, concurrency=2,
                          seed=SEED_SETTINGS.seed)
    try:
        run_sampling(QUESTIONS, _render(), teacher, SEED_SETTINGS, out, resume=resume, stop=(), progress=False)
    finally:
        teacher.close()


def _chains(path) -> dict[tuple[str, int], str]:
    rows = list(read_corpus(path, tolerate_torn_tail=False))
    chains = {(r.id, r.sample_index): r.raw for r in rows}
    assert len(chains) == len(rows)  # no key written twice
    return chains


def _assert_eight_distinct(chains: dict[tuple[str, int], str]) -> None:
    """8 chains per question, and no chain repeated. A chain the teacher ends at once is empty (the embedded model
    sometimes does): empty chains are alike without being repeats, so the check is on the others, most of them."""
    for q in QUESTIONS:
        texts = [chains[(q.id, i)] for i in range(8)]
        spoken = [t for t in texts if t.strip()]
        assert len(spoken) >= 6 and len(set(spoken)) == len(spoken), texts


def test_seeded_chains_never_repeat_across_split_and_resumed_requests(api_base, tmp_path):
    """Against `scotd serve`, which honours `seed`: n=8 in requests of 3 gives 8 distinct chains per question. A
    corpus cut during the write of question g1's chain 5 (the append-only file a kill leaves: g1's first 5 chains,
    a torn line, nothing of g2) and resumed gets 3 new chains for g1, distinct from its kept 5, and g2 sampled
    afresh is the same 8 chains as in the first run: the same seed reproduces them."""
    full = tmp_path / "full.jsonl"
    _sample_corpus(api_base, full)
    chains = _chains(full)
    assert len(chains) == 16
    _assert_eight_distinct(chains)

    part = tmp_path / "part.jsonl"
    lines = full.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines[:8]] == ["g1"] * 8
    part.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    full.with_name(full.name + ".meta.json").replace(part.with_name(part.name + ".meta.json"))
    _sample_corpus(api_base, part, resume=True)
    resumed = _chains(part)
    assert len(resumed) == 16
    _assert_eight_distinct(resumed)
    assert all(resumed[("g1", i)] == chains[("g1", i)] for i in range(5))
    assert all(resumed[("g2", i)] == chains[("g2", i)] for i in range(8))


def test_max_n_per_request_defaults_to_the_servers_cap():
    teacher = get_teacher("openai:student", api_base="http://127.0.0.1:9/v1")
    assert teacher.max_n_per_request == MAX_N
    teacher.close()


class OneChoiceServer:
    """An OpenAI-compatible `/v1/completions` that returns ONE choice whatever `n` asks, as llama-cpp-python's
    server and TGI do, generated by the real ONNX runtime with the request's `seed`. Records each request's
    `n` and `seed`. `extra=True` returns one choice MORE than asked instead (a broken server)."""

    def __init__(self, student: OnnxStudent, extra: bool = False):
        self.requests: list[tuple[int, int | None]] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                n = int(body.get("n", 1))
                config = GenerationConfig(max_new_tokens=body["max_tokens"], temperature=body["temperature"],
                                          seed=body.get("seed"), stop=tuple(body.get("stop") or ()),
                                          ignore_eos=True, logprobs=0 if body.get("logprobs") is not None else None)
                with lock:
                    server.requests.append((n, body.get("seed")))
                    (gens,) = student.sample_n([body["prompt"]], n + 1 if extra else 1, config)
                choices = [{"text": g.text, "index": i, "finish_reason": g.finish_reason,
                            "logprobs": {"tokens": g.tokens, "token_logprobs": g.logprobs, "top_logprobs": None,
                                         "text_offset": [0] * len(g.tokens)}} for i, g in enumerate(gens)]
                payload = json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 0,
                                      "model": body.get("model"), "choices": choices}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def runtime_student(onnx_student_dir) -> OnnxStudent:
    return OnnxStudent(onnx_student_dir, threads=2)


def test_server_that_ignores_n_is_asked_again_each_time_with_its_own_seed(runtime_student, caplog):
    with OneChoiceServer(runtime_student) as server:
        teacher = get_teacher("openai:smollm2-gguf", api_base=server.url, concurrency=1, seed=0)
        with caplog.at_level(logging.WARNING, logger="scotd_harness.teacher.openai_backend"):
            (first,) = teacher.sample(PROMPTS[:1], 4, 1.0, 8, ())
            (second,) = teacher.sample(PROMPTS[1:], 4, 1.0, 8, ())
        teacher.close()
    assert len({c.text for c in first}) == 4 and len({c.text for c in second}) == 4
    assert all(c.num_tokens == 8 and c.logprob < 0 for c in first + second)
    # asked for 4, got 1: the other 3 asked one by one; the next question asks one at a time from the start
    assert [n for n, _ in server.requests] == [4, 1, 1, 1] + [1, 1, 1, 1]
    assert len({seed for _, seed in server.requests}) == 8 and teacher.effective_n == 1
    warnings = [r.getMessage() for r in caplog.records if "ignores or caps n" in r.getMessage()]
    assert len(warnings) == 1 and "returned 1 choices for n=4" in warnings[0]


def test_more_choices_than_asked_is_an_error(runtime_student):
    with OneChoiceServer(runtime_student, extra=True) as server:
        teacher = get_teacher("openai:broken", api_base=server.url, concurrency=1, max_retries=0, seed=0)
        with pytest.raises(ScotdError, match="returned 3 choices for n=2"):
            teacher.sample(PROMPTS[:1], 2, 1.0, 4, ())
        teacher.close()


def test_pipeline_with_an_endpoint_teacher_is_seeded_and_reproducible(api_base, tmp_path):
    """`scotd pipeline` with an openai teacher hands the run seed to the backend: two runs of one config sample the
    same corpus from `scotd serve` (which honours seeds), and a run with another seed does not."""
    from scotd_harness.pipeline import PipelineConfig, run_pipeline

    def corpus(seed: int, name: str) -> list[str]:
        cfg = PipelineConfig(task="demo", teacher="openai:student", api_base=api_base, n=3, train_limit=2,
                             max_new_tokens=8, seed=seed)
        run = run_pipeline(cfg, tmp_path / name, until="sample", say=lambda msg: None)
        return [(r.id, r.sample_index, r.raw) for r in read_corpus(run.corpus)]

    first = corpus(0, "a")
    assert len(first) == 6 and len({raw for *_, raw in first}) > 1
    assert corpus(0, "b") == first
    assert corpus(1, "c") != first
