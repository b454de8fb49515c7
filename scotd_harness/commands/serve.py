"""`scotd serve DIR`: an exported student behind an OpenAI-compatible HTTP API."""

import click


@click.command("serve")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most sequences decoding together (a request with n chains takes n). Requests that arrive "
                   "while the batch runs join it at the next step.")
@click.option("--max-queue", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most requests waiting for a batch slot; past it, new requests get 429 with Retry-After.")
@click.option("--max-context", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Longest prompt + max_tokens a request may ask for (also capped by the model's positions); "
                   "longer requests get 400.")
@click.option("--max-body-kb", default=256, show_default=True, type=click.IntRange(min=1),
              help="Largest request body (413 above).")
@click.option("--chat-format", type=click.Choice(["auto", "template", "student"]), default="auto",
              show_default=True,
              help="How /v1/chat/completions builds its prompt: 'student' = the distilled student's own "
                   "'Q: ... A:' format from the last user message; 'template' = the export's chat template; "
                   "'auto' = student for a student trained by `scotd train`, else the template if there is one.")
@click.option("--prompt-lookup", type=click.IntRange(min=0), default=None,
              help="Tokens drafted per step by prompt-lookup speculative decoding for greedy requests that do not "
                   "set `prompt_lookup` themselves (0: off; default: the runtime's).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="'info' logs one line per request (id, tokens, queue and total time).")
def command(directory, host, port, device, threads, max_batch, max_queue, max_context, max_body_kb, chat_format,
            prompt_lookup, log_level):
    """Serve DIR (from `scotd export`) on an OpenAI-compatible API with continuous batching.

    \b
    POST /v1/completions        OpenAI schema: n, temperature, top_p, max_tokens, stop, seed, logprobs, echo,
                                stream; prompt as text or token ids (lm-eval's local-completions works as is)
    POST /v1/chat/completions   messages, n, temperature, max_tokens, stop, seed, logprobs, stream
    POST /v1/answer             question + choices -> rationale, answer, votes
    GET  /metrics               Prometheus text format (requests, tokens, batch occupancy, queue length)
    """
    from scotd_harness.export.server import serve

    serve(directory, host=host, port=port, device=device, threads=threads, max_batch=max_batch, max_queue=max_queue,
          max_context=max_context, max_body_bytes=max_body_kb * 1024, chat_format=chat_format,
          prompt_lookup=prompt_lookup, log_level=log_level)
