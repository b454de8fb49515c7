"""Teacher behind any OpenAI-compatible `/v1/completions` endpoint: vLLM, TGI, llama.cpp's server, `scotd serve`,
OpenAI itself. Scaling past one machine happens behind the endpoint (a vLLM deployment), not here.

One request per prompt asks for all its chains at once (`n`, split into several requests when the server caps `n`,
each with its own derived seed: see `OpenAITeacher`),
with `logprobs` so each chain's token log-probabilities come back. Requests run on a bounded thread pool
(`concurrency`), and each is retried with exponential backoff and jitter on 429, 5xx, time-outs and dropped
connections (tenacity, as lm-eval's API models do); other errors (400, 401, 404) fail at once with the server's
message. The API key comes from the caller or `OPENAI_API_KEY` and is never logged or recorded.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ..errors import ScotdError
from ..limits import MAX_N
from ..seeding import chain_seed
from . import Completion, TeacherBackend, chain_plan, cut_at_stop, kept_token_count

log = logging.getLogger(__name__)

#: The OpenAI API accepts at most four stop sequences.
MAX_STOP = 4


class OpenAITeacher(TeacherBackend):
    """`openai:MODEL`, MODEL being the name the endpoint serves.

    Options: `api_base` (default $OPENAI_BASE_URL, else https://api.openai.com/v1), `api_key` (default
    $OPENAI_API_KEY; local servers usually need none), `concurrency` (requests in flight), `max_retries`,
    `timeout` (seconds per request), `max_n_per_request` (split larger `n`; the default is `scotd serve`'s cap),
    `logprobs` (ask for token log-probabilities), `seed` (the run seed: each request sends its own seed derived
    from it, the question and the first chain index it covers; None sends none and the server samples freely).

    Seeds per request: a request for chains [start, start + k) of question q sends `chain_seed(seed, q, start)`.
    Chains asked in pieces therefore never share a seed, and the same run seed and the same pieces reproduce them
    on a server that honours `seed`. A server that returns fewer choices than `n` asked (llama.cpp's server and
    TGI ignore `n`) is asked again for the rest, each request with its own seed; its effective `n` is remembered
    for the rest of the run, and a warning says so once.
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 600.0,
        max_n_per_request: int = MAX_N,
        logprobs: bool = True,
        seed: int | None = None,
    ):
        super().__init__(model)
        try:
            import openai
        except ImportError as e:  # pragma: no cover - openai is a core dependency
            raise ScotdError("the openai backend needs the `openai` package: pip install openai") from e
        self._openai = openai
        api_base = api_base or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if urlsplit(api_base).path.strip("/") == "":  # "http://host:8000" means the usual "/v1" root
            api_base = api_base.rstrip("/") + "/v1"
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers check no key
        # retries are ours (tenacity, below), so the client's own are off
        self.client = openai.OpenAI(base_url=api_base, api_key=api_key, max_retries=0, timeout=timeout)
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.max_n_per_request = max(1, max_n_per_request)
        self.logprobs = logprobs
        self.seed = seed
        #: Requests retried so far (reported in run summaries and tests).
        self.retries = 0
        #: The most choices the server has been seen to return for one request, once it returned fewer than asked
        #: (None: it has always returned what was asked).
        self.effective_n: int | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _n_cap(self) -> int:
        return min(self.max_n_per_request, self.effective_n or self.max_n_per_request)

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str],
        *,
        keys: Sequence[str] | None = None,
        starts: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        stop = [s for s in stop if s][:MAX_STOP]
        keys, starts = chain_plan(prompts, keys, starts)
        # one job per (prompt, chain range) of at most the server's n; a job asks again for what a server that
        # ignores n left out, so each job returns exactly its chains, in chain order
        jobs = []
        cap = self._n_cap()
        for i, prompt in enumerate(prompts):
            for first in range(starts[i], starts[i] + n, cap):
                jobs.append((i, first, min(cap, starts[i] + n - first)))

        def run(job):
            i, first, count = job
            return self._chains(prompts[i], keys[i], first, count, temperature, max_new_tokens, stop)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(run, jobs))
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _, _), completions in zip(jobs, answers):
            out[i].extend(completions)
        return out

    def _chains(self, prompt: str, key: str, first: int, count: int, temperature: float, max_tokens: int,
                stop: list[str]) -> list[Completion]:
        """Chains [first, first + count) of one prompt, in as many requests as the server's effective n needs."""
        got: list[Completion] = []
        while len(got) < count:
            start = first + len(got)
            take = min(count - len(got), self._n_cap())
            seed = None if self.seed is None else chain_seed(self.seed, key, start)
            choices = self._request(prompt, take, temperature, max_tokens, stop, seed)
            if not choices or len(choices) > take:
                raise ScotdError(f"teacher endpoint {self.client.base_url} returned {len(choices)} choices for "
                                 f"n={take}")
            if len(choices) < take:
                self._note_effective_n(len(choices), take)
            got.extend(choices)
        return got

    def _note_effective_n(self, returned: int, asked: int) -> None:
        with self._lock:
            first_time = self.effective_n is None
            self.effective_n = min(returned, self.effective_n or returned)
        if first_time:
            log.warning("teacher endpoint %s returned %d choices for n=%d (it ignores or caps n); asking for at "
                        "most %d chains per request from now on, each request with its own seed",
                        self.client.base_url, returned, asked, returned)

    def _retryable(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError)):
            return True
        return isinstance(exc, o.APIStatusError) and (exc.status_code >= 500 or exc.status_code in (408, 409, 429))

    def _request(self, prompt: str, n: int, temperature: float, max_tokens: int, stop: list[str],
                 seed: int | None) -> list[Completion]:
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        def before_sleep(state):
            self.retries += 1
            exc = state.outcome.exception()
            log.warning("teacher request failed (%s), retry %d of %d", _describe(exc), state.attempt_number,
                        self.max_retries)

        kwargs = {"model": self.model, "prompt": prompt, "n": n, "temperature": temperature, "max_tokens": max_tokens}
        if stop:
            kwargs["stop"] = stop
        if self.logprobs:
            kwargs["logprobs"] = 1
        if seed is not None:
            kwargs["seed"] = seed
        retrying = Retrying(
            retry=retry_if_exception(self._retryable),
            wait=wait_random_exponential(multiplier=0.5, max=30),
            stop=stop_after_attempt(self.max_retries + 1),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            response = retrying(self.client.completions.create, **kwargs)
        except RetryError as e:  # pragma: no cover - reraise=True re-raises the last error instead
            raise ScotdError(f"teacher endpoint kept failing: {e}") from e
        except self._openai.APIError as e:
            if self._retryable(e):
                raise ScotdError(f"teacher endpoint {self.client.base_url} kept failing after {self.max_retries} "
                                 f"retries: {_describe(e)}") from e
            raise ScotdError(f"teacher endpoint {self.client.base_url} refused the request: {_describe(e)}") from e
        choices = sorted(response.choices or [], key=lambda c: c.index)
        return [_to_completion(c, stop) for c in choices]


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {str(exc)[:200]}"


def _to_completion(choice, stop: Sequence[str]) -> Completion:
    """Text cut at the stop strings (in case the server ignored them) and its summed token log-probability."""
    text, _ = cut_at_stop(choice.text or "", stop)
    logprob = num_tokens = None
    lp = getattr(choice, "logprobs", None)
    if lp is not None and getattr(lp, "token_logprobs", None) is not None:
        values, tokens = list(lp.token_logprobs), list(lp.tokens or [])
        if tokens and len(tokens) == len(values) and "".join(tokens).startswith(text):
            # keep the tokens that spell the kept text (a server may return the stop token's log-probability too)
            ends = list(itertools.accumulate((len(t) for t in tokens), initial=0))
            values = values[: kept_token_count(len(text), len(tokens), ends.__getitem__)]
        token_lps = tuple(float(x) for x in values if x is not None)
        logprob, num_tokens = float(sum(token_lps)), len(token_lps)
    else:
        token_lps = None
    finish = choice.finish_reason or None
    return Completion(text=text, logprob=logprob, num_tokens=num_tokens, finish_reason=finish,
                      token_logprobs=token_lps)
