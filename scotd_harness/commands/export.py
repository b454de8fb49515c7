"""`scotd export STUDENT --out DIR`: ONNX export with KV cache, optional quantisation, parity checked."""

import click

from scotd_harness.export.quantize import QUANTIZATIONS

from ..datasets import task_names
from . import data_dir_option


@click.command("export")
@click.argument("student")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Weights and activations; fp16 is for GPUs.")
@click.option("--quantize", "quantization", type=click.Choice(QUANTIZATIONS), default=None,
              help="int4: 4-bit MatMulNBits, block 32, the lm_head and each layer's value and down projections at "
                   "8 bits (fast on CPU, closest to fp32); int4-uniform: every weight 4-bit (smallest); int8: "
                   "dynamic int8.")
@click.option("--fp32-dir", type=click.Path(file_okay=False), default=None,
              help="With --quantize/--dtype fp16: an fp32 export of the same student to quantise (checked by a "
                   "content hash of its weights), or where to make one first; no second graph export.")
@click.option("--route", type=click.Choice(["dynamo-gqa", "optimum"]), default=None,
              help="Export route; default per family (Llama: dynamo-gqa, fused attention; OPT/GPT-2: optimum).")
@click.option("--atol", type=float, default=None, help="Largest accepted |logit diff| against PyTorch (fp32).")
@click.option("--accuracy-sample", type=int, default=16, show_default=True,
              help="Questions on which a quantised/fp16 export's accuracy change is measured (0: skip).")
@click.option("--accuracy-task", type=click.Choice(task_names()), default="csqa", show_default=True,
              help="Task of the accuracy sample.")
@click.option("--accuracy-split", default="validation", show_default=True,
              help="Split of the accuracy sample (one with gold answers).")
@data_dir_option
@click.option("--threads", type=int, default=None, help="CPU threads for export checks (default: all).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing non-empty --out directory (only once the new export has passed its checks).")
def command(student, out, dtype, quantization, fp32_dir, route, atol, accuracy_sample, accuracy_task, accuracy_split,
            data_dir, threads, overwrite):
    """Export STUDENT (a model directory, `embedded`, or an fp32 export to quantise) to an ONNX directory the
    torch-free runtime runs.

    Parity is checked before success is reported: fp32 logits within --atol and identical greedy tokens on fixed
    prompts; for quantised exports the accuracy change on a sample of --accuracy-task questions is measured and
    written into scotd.json. Supported families: llama, mistral, qwen2 (fused attention), opt, gpt2. The export is
    built beside --out and swapped in only once every check has passed: a failed check leaves no new directory and
    an existing one untouched.
    """
    from scotd_harness.export.exporter import export

    path = export(student, out, dtype=dtype, quantization=quantization, route=route, atol=atol,
                  accuracy_sample=accuracy_sample, accuracy_task=accuracy_task, accuracy_split=accuracy_split,
                  data_dir=data_dir, fp32_dir=fp32_dir, threads=threads, overwrite=overwrite,
                  progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))
