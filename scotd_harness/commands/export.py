"""`scotd export STUDENT --out DIR`: ONNX export with KV cache, optional quantisation, parity checked."""

import click

from scotd_harness.export.quantize import QUANTIZATIONS


@click.command("export")
@click.argument("student")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Weights and activations; fp16 is for GPUs.")
@click.option("--quantize", "quantization", type=click.Choice(QUANTIZATIONS), default=None,
              help="int4: 4-bit MatMulNBits, block 32, the lm_head and each layer's value and down projections at "
                   "8 bits (fast on CPU, closest to fp32); int4-uniform: every weight 4-bit (smallest); int8: "
                   "dynamic int8.")
@click.option("--route", type=click.Choice(["dynamo-gqa", "optimum"]), default=None,
              help="Export route; default per family (Llama: dynamo-gqa, fused attention; OPT/GPT-2: optimum).")
@click.option("--atol", type=float, default=None, help="Largest accepted |logit diff| against PyTorch (fp32).")
@click.option("--accuracy-sample", type=int, default=16, show_default=True,
              help="CSQA dev questions on which a quantised/fp16 export's accuracy change is measured (0: skip).")
@click.option("--threads", type=int, default=None, help="CPU threads for export checks (default: all).")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty --out directory.")
def command(student, out, dtype, quantization, route, atol, accuracy_sample, threads, overwrite):
    """Export STUDENT (a model directory or `embedded`) to an ONNX directory the torch-free runtime runs.

    Parity is checked before success is reported: fp32 logits within --atol and identical greedy tokens on fixed
    prompts; for quantised exports the accuracy change on a CSQA dev sample is measured and written into
    scotd.json. A failed check leaves no directory behind.
    """
    from scotd_harness.export.exporter import export

    path = export(student, out, dtype=dtype, quantization=quantization, route=route, atol=atol,
                  accuracy_sample=accuracy_sample, threads=threads, overwrite=overwrite,
                  progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))
