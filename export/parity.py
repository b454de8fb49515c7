"""Parity between the PyTorch student and its exported graph, checked before an export is reported as done.

Like optimum's `_run_validation`, every failure is collected with its size before one typed error is raised; unlike
optimum, a failure is an error, never a warning: `scotd export` leaves no directory behind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from scotd_harness import formats
from scotd_harness.errors import ScotdError

#: Fixed parity prompts in the student format (lengths differ, so the batch is padded).
PARITY_PROMPTS: tuple[str, ...] = (
    formats.student_input(
        "Where would you put a plate after washing it?",
        [("a", "cupboard"), ("b", "restaurant"), ("c", "dishwasher"), ("d", "flea market"), ("e", "table")],
    ),
    formats.student_input(
        "What do people typically do when they are tired after a long day of work and want to rest before the "
        "next morning?",
        [("a", "go to sleep"), ("b", "run a marathon"), ("c", "cook dinner"), ("d", "shout"), ("e", "sing")],
    ),
    formats.student_input("A fox is a kind of?", [("a", "animal"), ("b", "plant"), ("c", "rock")]),
    "Q: Is the sky blue?\nA:",
)
#: New tokens compared greedily per prompt (end-of-sequence blocked, no stop strings).
PARITY_NEW_TOKENS = 16


class ParityError(ScotdError):
    """The exported graph disagrees with PyTorch beyond the tolerance; names each failing prompt and its diff."""

    def __init__(self, report: "ParityReport"):
        self.report = report
        lines = [f"parity check failed (atol {report.atol:g}):"]
        for p in report.prompts:
            problems = []
            if p["max_abs_diff"] > report.atol:
                problems.append(f"max |logit diff| {p['max_abs_diff']:.3g}")
            if not p["same_tokens"]:
                problems.append(f"greedy tokens differ from token {p['first_diff']}")
            if problems:
                lines.append(f"  prompt {p['index']}: " + "; ".join(problems))
        super().__init__("\n".join(lines))


@dataclass
class ParityReport:
    atol: float
    new_tokens: int
    prompts: list[dict] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((p["max_abs_diff"] for p in self.prompts), default=0.0)

    @property
    def ok(self) -> bool:
        return all(p["max_abs_diff"] <= self.atol and p["same_tokens"] for p in self.prompts)

    def to_dict(self) -> dict:
        return {**asdict(self), "max_abs_diff": self.max_abs_diff, "passed": self.ok}


def check_parity(model, student, atol: float, prompts=PARITY_PROMPTS, new_tokens: int = PARITY_NEW_TOKENS):
    """Compare a transformers causal LM (`model`) and an `OnnxStudent` on fixed prompts.

    Logits: every prompt position, max |diff| within `atol`. Tokens: `new_tokens` greedy ids per prompt, torch one
    prompt at a time, the runtime as one padded batch (so padding is checked too), end-of-sequence blocked in both.
    Returns the report; raises ParityError on any failure.
    """
    import numpy as np
    import torch

    from .runtime import GenerationConfig

    rows = [student.encode(p) for p in prompts]
    onnx_logits = student.forward_logits(rows)
    onnx_gens = student.generate(
        rows, GenerationConfig(max_new_tokens=new_tokens, stop=(), ignore_eos=True, temperature=0.0)
    )
    report = ParityReport(atol=atol, new_tokens=new_tokens)
    eos = model.generation_config.eos_token_id
    for i, (ids, ol, gen) in enumerate(zip(rows, onnx_logits, onnx_gens)):
        x = torch.tensor([ids])
        with torch.no_grad():
            tl = model(input_ids=x).logits[0].float().numpy()
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=eos if isinstance(eos, int) else (eos or [0])[0],
            )
        ref = out[0, len(ids) :].tolist()
        diff = float(np.abs(tl - ol).max())
        first = next((k for k, (a, b) in enumerate(zip(ref, gen.token_ids)) if a != b), None)
        if first is None and len(ref) != len(gen.token_ids):
            first = min(len(ref), len(gen.token_ids))
        report.prompts.append(
            {"index": i, "tokens": len(ids), "max_abs_diff": diff, "same_tokens": first is None, "first_diff": first}
        )
    if not report.ok:
        raise ParityError(report)
    return report
