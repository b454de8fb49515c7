"""`scotd serve DIR`: an exported student behind an OpenAI-compatible HTTP API."""

import click


@click.command("serve")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--max-concurrency", default=4, show_default=True, type=int,
              help="Requests in flight before new ones get 429.")
@click.option("--max-body-kb", default=256, show_default=True, type=int, help="Largest request body (413 above).")
@click.option("--log-level", default="warning", show_default=True)
def command(directory, host, port, device, threads, max_concurrency, max_body_kb, log_level):
    """Serve DIR (from `scotd export`): POST /v1/completions (OpenAI schema: n, temperature, max_tokens, stop,
    logprobs) and POST /v1/answer (question + choices -> rationale, answer, votes)."""
    from scotd_harness.export.server import serve

    serve(directory, host=host, port=port, device=device, threads=threads, max_concurrency=max_concurrency,
          max_body_bytes=max_body_kb * 1024, log_level=log_level)
