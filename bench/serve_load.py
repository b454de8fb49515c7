"""`scotd serve` under load, beside the runtime's own in-process batch throughput, in one run.

A real `scotd serve` subprocess (continuous batching, `--max-batch 8`) on the embedded int4 export, driven by real
HTTP clients on 127.0.0.1: threads, each its own httpx client, streaming (server-sent events) so that the time to
the first token is seen as a user sees it. Prompts are CSQA dev questions in the student format (read through
--data-dir / SCOTD_DATA_DIR); every request asks for 64 new tokens, greedy, `ignore_eos`, no stop string, so all
levels decode the same amount of work.

- Levels of 1, 4 and 8 concurrent clients; each client sends its next request when its last one ends, a fixed
  number of requests per client. Per level: aggregate generated tok/s (all tokens / wall time from the first
  request sent to the last one finished, prefill and HTTP included), p50 and p95 request latency, p50 time to first
  token, and the server's batch occupancy (rows decoding, from its `/metrics`, sampled every 0.2 s).
- Interleaving: 7 long requests (256 tokens) decoding, then one short request (8 tokens): with iteration-level
  scheduling its first token and its end come before the long ones finish, not after.
- In-process: with the server stopped, `OnnxStudent.generate` on 8 of the same prompts at once (64 tokens,
  `ignore_eos`), the same threads: the ceiling the server's batch of 8 is compared with.

Targets (issue 20), as ratios with pass/fail: 8 clients >= 2.5x the aggregate tok/s of 1 client; 8 clients >= 0.8x
the in-process batch-8 tok/s; the short request finishes before the long ones.

    python bench/serve_load.py [--export DIR] [--data-dir DIR] [--out bench/results/serve_load]

Without --export it reuses (or builds, a few minutes) the embedded int4 export the tests use. Writes
bench/results/serve_load.json and .md; the tables are rewritten after every part, so an interrupted run keeps what
it measured. Figures on a shared CPU are noisy: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import bench_support

THREADS = 2
NEW_TOKENS = 64
TARGET_SCALING = 2.5  # 8 clients vs 1 client, aggregate tok/s
TARGET_VS_INPROC = 0.8  # 8 clients vs in-process batch 8


# ------------------------------------------------------------------------------------------------ the server
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`scotd serve` as a subprocess on 127.0.0.1 (as tests/conftest.py's start_server); its log goes to a temporary
    file, not a pipe nobody reads (a full pipe would stall the server)."""

    def __init__(self, export: Path, max_batch: int, max_queue: int, timeout: float = 300.0):
        import httpx

        # closed (and removed) in stop(), which every path out of the benchmark reaches
        self.log = tempfile.NamedTemporaryFile("w+", prefix="scotd-serve-", suffix=".log")  # noqa: SIM115
        port = _free_port()
        self.args = ["serve", "EXPORT", "--port", str(port), "--threads", str(THREADS), "--max-batch",
                     str(max_batch), "--max-queue", str(max_queue)]
        cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "serve", str(export),
               *self.args[2:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scotd serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"scotd serve did not become ready within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------------ clients
def stream_completion(client, url: str, prompt: str, max_tokens: int, on_first=None,
                      prompt_lookup: int | None = None) -> dict:
    """One streamed greedy completion; times (perf_counter) of sending, first non-empty text, and the end.

    Generated tokens: the `usage` chunk where the server sends one (stream_options.include_usage), else max_tokens
    when it finished by length (ignore_eos and no stop: the only way to finish), else left as None and counted as an
    error (the server did not honour ignore_eos)."""
    body = {"model": "student", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    if prompt_lookup is not None:
        body["prompt_lookup"] = prompt_lookup
    sent = time.perf_counter()
    first = None
    finish = usage = None
    pieces = []
    with client.stream("POST", url + "/v1/completions", json=body, timeout=900) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                if choice.get("text"):
                    if first is None:
                        first = time.perf_counter()
                        if on_first:
                            on_first()
                    pieces.append(choice["text"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    tokens = usage.get("completion_tokens") if usage else (max_tokens if finish == "length" else None)
    return {"sent": sent, "first": first, "end": end, "tokens": tokens, "finish_reason": finish,
            "chars": len("".join(pieces))}


class MetricsPoller:
    """Samples the server's `/metrics` every `interval` s in a thread: rows decoding (batch occupancy) and requests
    queued, the gauges the server reads from its scheduler at scrape time."""

    #: the server's gauges (export/server_metrics.py; vLLM's names with the scotd_ prefix)
    RUNNING = "scotd_num_requests_running"
    QUEUED = "scotd_num_requests_waiting"
    #: its counters read before and after each level: decode steps and prompt-lookup tokens
    COUNTERS: ClassVar[dict[str, str]] = {
        "steps": "scotd_decode_steps_total",
        "drafted": "scotd_spec_decode_num_draft_tokens_total",
        "accepted": "scotd_spec_decode_num_accepted_tokens_total",
    }

    def __init__(self, url: str, interval: float = 0.2):
        self.url, self.interval = url, interval
        self.samples: list[tuple[float, float | None, float | None]] = []
        self.error: str | None = None  # the last failed scrape, if any
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def scrape(url: str) -> dict[str, float]:
        """Every unlabelled sample of the Prometheus text as name -> value."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(url + "/metrics", timeout=5).text
        return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
                if not s.labels}

    @classmethod
    def counters(cls, url: str) -> dict[str, float | None]:
        values = cls.scrape(url)
        return {key: values.get(name) for key, name in cls.COUNTERS.items()}

    def _run(self) -> None:
        import httpx

        while not self._stop.is_set():
            try:
                values = self.scrape(self.url)
                self.samples.append((time.perf_counter(), values.get(self.RUNNING), values.get(self.QUEUED)))
            except (httpx.HTTPError, ValueError) as e:  # a missed scrape only thins the samples
                self.samples.append((time.perf_counter(), None, None))
                self.error = repr(e)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self, start: float, end: float) -> dict:
        running = [r for t, r, _ in self.samples if start <= t <= end and r is not None]
        queued = [q for t, _, q in self.samples if start <= t <= end and q is not None]
        return {"occupancy_mean": round(statistics.fmean(running), 2) if running else None,
                "occupancy_max": max(running) if running else None,
                "queued_mean": round(statistics.fmean(queued), 2) if queued else None,
                "metric_samples": len(running)}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, prompts: list[str], clients: int, per_client: int, max_tokens: int,
              prompt_lookup: int | None) -> dict:
    """`clients` threads, each sending its `per_client` requests one after another."""
    import httpx

    def client_loop(i: int) -> list[dict]:
        mine = [prompts[(i * per_client + k) % len(prompts)] for k in range(per_client)]
        with httpx.Client() as client:
            return [stream_completion(client, url, p, max_tokens, prompt_lookup=prompt_lookup) for p in mine]

    before = MetricsPoller.counters(url)
    with MetricsPoller(url) as poller, ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client_loop, range(clients)) for r in rs]
    after = MetricsPoller.counters(url)
    server = {k: (after[k] - before[k]) if after[k] is not None and before[k] is not None else None for k in after}
    start, end = min(r["sent"] for r in results), max(r["end"] for r in results)
    bad = [r for r in results if r["tokens"] is None]
    tokens = sum(r["tokens"] or 0 for r in results)
    latency = [r["end"] - r["sent"] for r in results]
    ttft = [r["first"] - r["sent"] for r in results if r["first"] is not None]
    row = {"clients": clients, "requests": len(results), "generated_tokens": tokens, "wall_s": round(end - start, 2),
           "tok_s": round(tokens / (end - start), 1),
           "latency_p50_s": round(_percentile(latency, 50), 2), "latency_p95_s": round(_percentile(latency, 95), 2),
           "ttft_p50_s": round(_percentile(ttft, 50), 3), "ttft_p95_s": round(_percentile(ttft, 95), 3),
           "not_by_length": len(bad), **poller.summary(start, end),
           "decode_steps": server["steps"], "drafted": server["drafted"], "accepted": server["accepted"]}
    print(f"  {clients} clients: {row['requests']} requests, {tokens} tokens in {row['wall_s']} s = "
          f"{row['tok_s']} tok/s; latency p50 {row['latency_p50_s']} s p95 {row['latency_p95_s']} s; "
          f"TTFT p50 {row['ttft_p50_s']} s; occupancy mean {row['occupancy_mean']}", flush=True)
    return row


def interleaving(url: str, prompts: list[str], long_tokens: int, short_tokens: int, prompt_lookup: int | None,
                 n_long: int = 7) -> dict:
    """`n_long` long requests decoding (each has streamed its first token), then one short request: when do its
    first token and its end come, against the long ones' ends? Times in seconds from the first long request."""
    import httpx

    started = threading.Semaphore(0)

    def one(prompt: str, tokens: int, signal: bool) -> dict:
        with httpx.Client() as client:
            return stream_completion(client, url, prompt, tokens, on_first=started.release if signal else None,
                                     prompt_lookup=prompt_lookup)

    with ThreadPoolExecutor(n_long + 1) as pool:
        longs = [pool.submit(one, prompts[i % len(prompts)], long_tokens, True) for i in range(n_long)]
        for _ in range(n_long):  # every long request is in the batch and decoding
            if not started.acquire(timeout=600):
                raise RuntimeError("the long requests did not all start within 600 s")
        short = pool.submit(one, prompts[n_long % len(prompts)], short_tokens, False).result()
        longs = [f.result() for f in longs]
    t0 = min(r["sent"] for r in longs)
    first_long_end = min(r["end"] for r in longs)
    res = {"long_requests": n_long, "long_tokens": long_tokens, "short_tokens": short_tokens,
           "long_first_token_s": [round(r["first"] - t0, 2) for r in longs],
           "long_end_s": [round(r["end"] - t0, 2) for r in longs],
           "short_sent_s": round(short["sent"] - t0, 2),
           "short_first_token_s": round(short["first"] - t0, 2) if short["first"] else None,
           "short_end_s": round(short["end"] - t0, 2),
           "short_ttft_s": round(short["first"] - short["sent"], 3) if short["first"] else None}
    res["passed"] = bool(short["first"] is not None and short["end"] < first_long_end)
    print(f"  interleaving: short sent at {res['short_sent_s']} s, first token {res['short_first_token_s']} s, "
          f"end {res['short_end_s']} s; long ones end {min(res['long_end_s'])}-{max(res['long_end_s'])} s: "
          f"{'pass' if res['passed'] else 'FAIL'}", flush=True)
    return res


# ------------------------------------------------------------------------------------------------ in-process
def in_process(export: Path, prompts: list[str], batch: int, new_tokens: int, rounds: int,
               prompt_lookup: int | None) -> dict:
    """The server's runtime called directly: `generate` on `batch` prompts at once, the same settings as the
    requests (greedy, ignore_eos, no stop, the runtime's default prompt lookup), one warm-up, median of `rounds`."""
    from scotd_harness.export.runtime import GenerationConfig, OnnxStudent

    student = OnnxStudent(export, threads=THREADS)
    chunk = prompts[:batch]
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, stop=(), ignore_eos=True,
                              prompt_lookup=prompt_lookup)
    student.generate(chunk, config)
    times, tokens, drafted, accepted = [], 0, 0, 0
    for _ in range(rounds):
        t = time.perf_counter()
        gens = student.generate(chunk, config)
        times.append(time.perf_counter() - t)
        tokens = sum(len(g.token_ids) for g in gens)
        drafted = sum(g.drafted for g in gens)
        accepted = sum(g.accepted for g in gens)
    seconds = statistics.median(times)
    row = {"batch": batch, "generated_tokens": tokens, "seconds": [round(t, 2) for t in times],
           "tok_s": round(tokens / seconds, 1), "drafted": drafted, "accepted": accepted}
    # the same prompts one at a time: what batching itself can add on this machine is batch-8 / batch-1
    t = time.perf_counter()
    alone = sum(len(student.generate([p], config)[0].token_ids) for p in chunk)
    row["batch1_tok_s"] = round(alone / (time.perf_counter() - t), 1)
    row["batch_gain"] = round(row["tok_s"] / row["batch1_tok_s"], 2)
    print(f"  in-process batch {batch}: {tokens} tokens in {seconds:.2f} s (median of {rounds}) = {row['tok_s']} tok/s; "
          f"one prompt at a time {row['batch1_tok_s']} tok/s ({row['batch_gain']}x)", flush=True)
    return row


# ------------------------------------------------------------------------------------------------ driver
def _prompts(n: int, data_dir: str | None) -> list[str]:
    from scotd_harness import formats
    from scotd_harness.datasets import load_examples

    return [formats.student_input(e.question, e.choices) for e in load_examples("csqa", "validation", data_dir, n)]





def targets(result: dict) -> list[dict]:
    levels = {row["clients"]: row for row in result.get("levels", [])}
    out = []
    if 1 in levels and 8 in levels:
        ratio = levels[8]["tok_s"] / levels[1]["tok_s"]
        out.append({"target": f"8 clients >= {TARGET_SCALING}x the tok/s of 1 client", "ratio": round(ratio, 2),
                    "passed": ratio >= TARGET_SCALING})
    if 8 in levels and result.get("in_process"):
        ratio = levels[8]["tok_s"] / result["in_process"]["tok_s"]
        out.append({"target": f"8 clients >= {TARGET_VS_INPROC}x in-process batch 8", "ratio": round(ratio, 2),
                    "passed": ratio >= TARGET_VS_INPROC})
    if result.get("interleaving"):
        il = result["interleaving"]
        out.append({"target": (f"a short request ({il['short_tokens']} tokens) ends before the "
                               f"{il['long_requests']} long ones ({il['long_tokens']} tokens)"),
                    "ratio": None, "passed": il["passed"],
                    "detail": f"short first token {il['short_first_token_s']} s, end {il['short_end_s']} s; "
                              f"first long end {min(il['long_end_s'])} s"})
    return out


def write(result: dict, out: Path) -> str:
    from scotd_harness.atomic import write_json, write_text

    result["targets"] = targets(result)
    result["load_average_at_write"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), result, indent=2)
    md = markdown(result)
    write_text(out.with_suffix(".md"), md)
    return md


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = ["# `scotd serve` under load", "",
             (f"Machine: {r['machine']}; load average at start {r['load_average_at_start']}, at write "
              f"{r['load_average_at_write']}. Export: {r['export']['name']} ({r['export']['weights']}, "
              f"{r['export']['attention']}). Server: `scotd {' '.join(r['server_args'])}`."), "",
             (f"CSQA dev prompts in the student format, {s['new_tokens']} new tokens each, greedy, ignore_eos, no "
              f"stop, streamed; {s['requests_per_client']} requests per client, each sent when the client's last one "
              "ended."),
             "", f"Command: `{' '.join(r['command'])}`", "",
             ("| clients | requests | tokens | wall s | aggregate tok/s | vs 1 client | latency p50 / p95 s | "
              "TTFT p50 / p95 s | batch occupancy mean (max) | queued mean | decode steps | prompt lookup "
              "accepted / drafted |"),
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | --- |"]
    levels = r.get("levels", [])
    base = next((row["tok_s"] for row in levels if row["clients"] == 1), None)
    for row in levels:
        occ = "" if row["occupancy_mean"] is None else f"{row['occupancy_mean']} ({row['occupancy_max']:g})"
        scale = f"{row['tok_s'] / base:.2f}x" if base else ""
        lines.append(f"| {row['clients']} | {row['requests']} | {row['generated_tokens']} | {row['wall_s']} | "
                     f"{row['tok_s']} | {scale} | "
                     f"{row['latency_p50_s']} / {row['latency_p95_s']} | {row['ttft_p50_s']} / {row['ttft_p95_s']} | "
                     f"{occ} | {row['queued_mean'] if row['queued_mean'] is not None else ''} | "
                     f"{_num(row['decode_steps'])} | {_num(row['accepted'])} / {_num(row['drafted'])} |")
    if any(row["not_by_length"] for row in levels):
        lines += ["", ("Some requests did not finish by length (the server did not honour ignore_eos): their tokens "
                       "are not counted; see `not_by_length` in the JSON.")]
    if r.get("in_process"):
        ip = r["in_process"]
        lines += ["", (f"In-process (server stopped): `OnnxStudent.generate` on {ip['batch']} of the same prompts, "
                       f"{ip['generated_tokens']} tokens, {ip['tok_s']} tok/s (runs {ip['seconds']} s; prompt lookup "
                       f"drafted {ip['drafted']}, accepted {ip['accepted']}). The same prompts one at a time: "
                       f"{ip.get('batch1_tok_s')} tok/s, so batching itself gives {ip.get('batch_gain')}x on this "
                       "machine: the ceiling of the 8-client over 1-client ratio.")]
    if r.get("interleaving"):
        il = r["interleaving"]
        lines += ["", (f"Interleaving: {il['long_requests']} requests of {il['long_tokens']} tokens, first tokens "
                       f"at {min(il['long_first_token_s'])}-{max(il['long_first_token_s'])} s; then one of "
                       f"{il['short_tokens']} tokens sent at {il['short_sent_s']} s: first token at "
                       f"{il['short_first_token_s']} s (TTFT {il['short_ttft_s']} s), end at {il['short_end_s']} s; "
                       f"the long ones end at {min(il['long_end_s'])}-{max(il['long_end_s'])} s.")]
    if r.get("targets"):
        lines += ["", "| target | measured | result |", "| --- | ---: | --- |"]
        for t in r["targets"]:
            measured = f"{t['ratio']}x" if t["ratio"] is not None else t.get("detail", "")
            lines.append(f"| {t['target']} | {measured} | {'pass' if t['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=None,
                    help="ONNX export to serve (default: the embedded int4 export the tests use, built if missing)")
    ap.add_argument("--data-dir", default=None, help="official data files (default: $SCOTD_DATA_DIR)")
    ap.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated")
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    ap.add_argument("--max-queue", type=int, default=32, help="the server's --max-queue")
    ap.add_argument("--long-tokens", type=int, default=256, help="interleaving check: the 7 long requests")
    ap.add_argument("--short-tokens", type=int, default=8, help="interleaving check: the short request")
    ap.add_argument("--skip-interleaving", action="store_true")
    ap.add_argument("--prompt-lookup", type=int, default=None,
                    help="prompt_lookup in every request and the in-process run (default: the server's/runtime's)")
    ap.add_argument("--inproc-batch", type=int, default=8)
    ap.add_argument("--inproc-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load")
    args = ap.parse_args()
    export = args.export or bench_support.embedded_int4()
    levels = [int(c) for c in args.clients.split(",")]
    need = max(max(levels) * args.requests_per_client, args.inproc_batch, 8)
    prompts = _prompts(need, args.data_dir)
    result = {"command": ["python", "bench/serve_load.py", *bench_support.public_argv(sys.argv[1:])],
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} cores, "
                         f"python {platform.python_version()}, {THREADS} onnxruntime threads",
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
              "export": bench_support.describe(export),
              "settings": {"new_tokens": args.new_tokens, "requests_per_client": args.requests_per_client,
                           "prompts": "CSQA dev, student format", "greedy": True, "ignore_eos": True, "stop": None,
                           "prompt_lookup": "server default" if args.prompt_lookup is None else args.prompt_lookup},
              "levels": []}
    print(f"serving {result['export']['name']} ({result['export']['weights']}); {len(prompts)} CSQA dev prompts",
          flush=True)
    server = Server(export, args.max_batch, args.max_queue)
    result["server_args"] = server.args
    try:
        import httpx

        with httpx.Client() as client:  # warm-up: the session's first runs are slower
            stream_completion(client, server.url, prompts[0], 8)
        for clients in levels:
            result["levels"].append(run_level(server.url, prompts, clients, args.requests_per_client,
                                              args.new_tokens, args.prompt_lookup))
            write(result, args.out)
        if not args.skip_interleaving:
            result["interleaving"] = interleaving(server.url, prompts, args.long_tokens, args.short_tokens,
                                                  args.prompt_lookup)
            write(result, args.out)
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    result["in_process"] = in_process(export, prompts, args.inproc_batch, args.new_tokens, args.inproc_rounds,
                                      args.prompt_lookup)
    print(write(result, args.out))


if __name__ == "__main__":
    main()
