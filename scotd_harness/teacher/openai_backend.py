"""Teacher behind any OpenAI-compatible `/v1/completions` endpoint: vLLM, TGI, llama.cpp's server, `scotd serve`,
OpenAI itself. Scaling past one machine happens behind the endpoint (a vLLM deployment), not here.

One request per prompt asks for all its chains at once (`n`, split into several requests when the server caps `n`),
with `logprobs` so each chain's token log-probabilities come back. Requests run on a bounded thread pool
(`concurrency`), and each is retried with exponential backoff and jitter on 429, 5xx, time-outs and dropped
connections (tenacity, as lm-eval's API models do); other errors (400, 401, 404) fail at once with the server's
message. The API key comes from the caller or `OPENAI_API_KEY` and is never logged or recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ..errors import ScotdError
from . import Completion, TeacherBackend, cut_at_stop

log = logging.getLogger(__name__)

#: The OpenAI API accepts at most four stop sequences.
MAX_STOP = 4


class OpenAITeacher(TeacherBackend):
    """`openai:MODEL`, MODEL being the name the endpoint serves.

    Options: `api_base` (default $OPENAI_BASE_URL, else https://api.openai.com/v1), `api_key` (default
    $OPENAI_API_KEY; local servers usually need none), `concurrency` (requests in flight), `max_retries`,
    `timeout` (seconds per request), `max_n_per_request` (split larger `n`), `logprobs` (ask for token
    log-probabilities), `seed` (sent with each request; servers that ignore it sample freely).
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
        max_n_per_request: int = 128,
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

    def close(self) -> None:
        self.client.close()

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str],
    ) -> list[list[Completion]]:
        stop = [s for s in stop if s][:MAX_STOP]
        jobs = []
        for i, prompt in enumerate(prompts):
            left = n
            while left > 0:
                take = min(left, self.max_n_per_request)
                jobs.append((i, prompt, take))
                left -= take
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(lambda job: self._request(job[1], job[2], temperature, max_new_tokens, stop), jobs))
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _, _), completions in zip(jobs, answers):
            out[i].extend(completions)
        return out

    def _retryable(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError)):
            return True
        return isinstance(exc, o.APIStatusError) and (exc.status_code >= 500 or exc.status_code in (408, 409, 429))

    def _request(self, prompt: str, n: int, temperature: float, max_tokens: int, stop: list[str]) -> list[Completion]:
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        def before_sleep(state):
            self.retries += 1
            exc = state.outcome.exception()
            log.warning("teacher request failed (%s), retry %d of %d", _describe(exc), state.attempt_number,
                        self.max_retries)

        kwargs = dict(model=self.model, prompt=prompt, n=n, temperature=temperature, max_tokens=max_tokens)
        if stop:
            kwargs["stop"] = stop
        if self.logprobs:
            kwargs["logprobs"] = 1
        if self.seed is not None:
            kwargs["seed"] = self.seed
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
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != n:
            raise ScotdError(f"teacher endpoint returned {len(choices)} choices for n={n}")
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
        token_lps = [x for x in lp.token_logprobs if x is not None]
        tokens = lp.tokens or []
        if tokens and len(tokens) == len(lp.token_logprobs) and "".join(tokens).startswith(text):
            # keep the tokens that spell the kept text (a server may return the stop token's log-probability too)
            kept, length = [], 0
            for tok, x in zip(tokens, lp.token_logprobs):
                if length >= len(text):
                    break
                kept.append(x)
                length += len(tok)
            token_lps = [x for x in kept if x is not None]
        token_lps = tuple(float(x) for x in token_lps)
        logprob, num_tokens = float(sum(token_lps)), len(token_lps)
    else:
        token_lps = None
    finish = choice.finish_reason or None
    return Completion(text=text, logprob=logprob, num_tokens=num_tokens, finish_reason=finish,
                      token_logprobs=token_lps)
