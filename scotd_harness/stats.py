"""The statistics a comparison of students needs: an interval per accuracy, a paired test per pair of students on
the same questions, and a check that a run trained at all.

Standard library only (`math`, `statistics`): the report reads files and must not pull in scipy for three
formulas.

- Wilson score interval, not the normal ("Wald") one: lm-eval's `acc_stderr` gives p +- 1.96 se, which leaves
  [0, 1] near 0 % or 100 % and is too narrow for the few hundred questions of a dev split (Brown, Cai and
  DasGupta 2001, "Interval estimation for a binomial proportion").
- McNemar's exact test: two students answer the same questions, so their accuracies are not independent; only
  the questions where exactly one of them is right (the discordant pairs) carry evidence. Under the null each
  discordant pair favours either student with probability 1/2, so the two-sided p-value is twice the binomial
  tail of the smaller count. It is exact for any count; the chi-square approximation (with continuity
  correction) is only needed where exact binomial sums were too costly to compute, which integer arithmetic
  makes moot here, so it is not used.
- A failed run: a student whose most common answer covers more than half of the questions has collapsed to a
  constant (on CSQA's five balanced choices a working student's top answer sits near 20-30 %), and a run whose
  last dev loss is more than 1.5x its best has diverged. Such a run is flagged in the report, never tabled as if
  it measured the method.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

#: a run whose most common answer exceeds this share of the questions has collapsed (three or more choices)
COLLAPSE_SHARE = 0.5
#: the same line for two choices, where any run's most common answer has at least half of the questions: halfway
#: between an even split and one answer always
BINARY_COLLAPSE_SHARE = 0.75
#: a run whose last dev loss exceeds this multiple of its best dev loss has diverged
DIVERGENCE_FACTOR = 1.5


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile: 1.959963... for 95 %."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for `successes` out of `n`; (0.0, 1.0) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 (or 1) the lower (upper) bound is exactly p; floating point would leave ~1e-17 there
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b and c: P(X <= min(b, c)) * 2 under Binomial(b + c,
    1/2), capped at 1. Exact integer sums, so thousands of discordant pairs lose no precision."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Paired:
    """McNemar's test of student A against student B on the questions both answered."""

    n: int  # questions both answered
    both: int  # both right
    only_a: int  # A right, B wrong (discordant)
    only_b: int  # A wrong, B right (discordant)
    p_value: float

    @property
    def difference(self) -> float:
        """A's accuracy minus B's on the paired questions."""
        return (self.only_a - self.only_b) / self.n if self.n else 0.0


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Paired:
    """Paired exact test on per-question correctness, given in the same question order for both students."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired results differ in length: {len(correct_a)} and {len(correct_b)}")
    both = only_a = only_b = 0
    for a, b in zip(correct_a, correct_b):
        both += a and b
        only_a += a and not b
        only_b += b and not a
    return Paired(n=len(correct_a), both=both, only_a=only_a, only_b=only_b, p_value=mcnemar_exact_p(only_a, only_b))


@dataclass
class RunCheck:
    """Whether a run measured anything: its most common answer and share, its dev losses, and the flags raised."""

    questions: int
    most_common: str | None
    most_common_share: float
    flags: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.flags)


def collapse_share(choices: int | None = None) -> float:
    """The most common answer's share above which a run has collapsed, for questions with `choices` options
    (None: unknown, taken as three or more)."""
    return BINARY_COLLAPSE_SHARE if choices == 2 else COLLAPSE_SHARE


def check_run(predictions: Iterable[str], eval_losses: Sequence[float] | None = None, *, choices: int | None = None,
              divergence_factor: float = DIVERGENCE_FACTOR) -> RunCheck:
    """Flag a collapsed run (its most common answer, the no-answer sentinel included, on more than
    `collapse_share(choices)` of the questions) and a diverged one (the last of `eval_losses`, in training order,
    above `divergence_factor` times the best)."""
    counts = Counter(predictions)
    total = sum(counts.values())
    top, top_count = counts.most_common(1)[0] if counts else (None, 0)
    share = top_count / total if total else 0.0
    check = RunCheck(questions=total, most_common=top, most_common_share=share)
    if total and share > collapse_share(choices):
        check.flags.append(f"collapsed: answers {top} on {share:.0%} of {total} questions")
    divergence = diverged(eval_losses, divergence_factor)
    if divergence:
        check.flags.append(divergence)
    return check


def diverged(eval_losses: Sequence[float] | None, divergence_factor: float = DIVERGENCE_FACTOR) -> str | None:
    """The flag of a diverged run (a dev loss that is not finite, or the last, in training order, above
    `divergence_factor` times the best), or None: one rule for the report and for choosing a tuning candidate."""
    given = [float(x) for x in eval_losses or () if x is not None]
    losses = [x for x in given if math.isfinite(x)]
    if len(losses) < len(given):
        return "diverged: a dev loss is not finite"
    if losses and losses[-1] > divergence_factor * min(losses):
        return f"diverged: last dev loss {losses[-1]:.3g} > {divergence_factor}x the best {min(losses):.3g}"
    return None
