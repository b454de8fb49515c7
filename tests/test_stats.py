"""scotd_harness.stats against values worked out by hand from the formulas' definitions, and against scipy where
it is installed (it is not a dependency)."""

from __future__ import annotations

import math
import random

import pytest

from scotd_harness.stats import check_run, mcnemar, mcnemar_exact_p, wilson_interval, z_value


def test_wilson_matches_closed_forms_worked_by_hand():
    z2 = z_value() ** 2
    assert z_value() == pytest.approx(1.959963984540054, abs=1e-12)
    # 0 of n: the interval is [0, z^2 / (n + z^2)]; n of n mirrors it
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2), rel=1e-12))
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2), rel=1e-12), 1.0)
    # 41 of 100, the centre and half width written out: (p + z^2/2n) / (1 + z^2/n) -+ z sqrt(pq/n + z^2/4n^2) / (...)
    p, n = 0.41, 100
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low, high = wilson_interval(41, 100)
    assert (low, high) == (pytest.approx(centre - half, rel=1e-12), pytest.approx(centre + half, rel=1e-12))
    assert (round(low, 4), round(high, 4)) == (0.3187, 0.5080)
    # wider at 99 %, asymmetric around p, and empty data says nothing
    low99, high99 = wilson_interval(41, 100, confidence=0.99)
    assert low99 < low and high99 > high
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_matches_binomial_tails_by_hand():
    # b=1, c=5: 2 * P(X <= 1 | Bin(6, 1/2)) = 2 * (1 + 6) / 64
    assert mcnemar_exact_p(1, 5) == pytest.approx(14 / 64, rel=1e-15)
    assert mcnemar_exact_p(5, 1) == mcnemar_exact_p(1, 5)
    # b=0, c=3: 2 / 8; equal counts and no discordant pair cannot reject
    assert mcnemar_exact_p(0, 3) == pytest.approx(0.25, rel=1e-15)
    assert mcnemar_exact_p(4, 4) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # Agresti, Categorical Data Analysis, the presidential approval table (794, 150 / 86, 570): the chi-square
    # statistic (150 - 86)^2 / 236 = 17.36 is far out; the exact test agrees (p < 1e-4); thousands of pairs stay exact
    assert mcnemar_exact_p(150, 86) < 1e-4 < mcnemar_exact_p(20, 10)
    assert 0.0 < mcnemar_exact_p(1200, 1000) < 1e-4


def test_mcnemar_counts_the_discordant_pairs():
    a = [True, True, False, False, True, True, True]
    b = [True, False, True, False, False, False, True]
    result = mcnemar(a, b)
    assert (result.n, result.both, result.only_a, result.only_b) == (7, 2, 3, 1)
    assert result.p_value == pytest.approx(mcnemar_exact_p(3, 1)) and result.p_value == pytest.approx(2 * 5 / 16)
    assert result.difference == pytest.approx(2 / 7)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar(a, b[:-1])


def test_against_scipy_where_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 400)
        k = rng.randint(0, n)
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
        b, c = rng.randint(0, 300), rng.randint(0, 300)
        if b + c:
            expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
            assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_check_run_flags_collapse_and_divergence():
    healthy = check_run(list("abcdeabcdeaab"), eval_losses=[2.0, 1.5, 1.2, 1.3])
    assert not healthy.failed and healthy.most_common == "a" and healthy.most_common_share == pytest.approx(4 / 13)

    collapsed = check_run(["d"] * 6 + ["a", "b", "c"])
    assert collapsed.failed and collapsed.most_common == "d" and collapsed.flags == [
        "collapsed: answers d on 67% of 9 questions"]
    # exactly half is not more than half
    assert not check_run(["d", "d", "a", "b"]).failed

    diverged = check_run(list("abcde"), eval_losses=[2.0, 1.0, 1.6])
    assert diverged.failed and diverged.flags[0].startswith("diverged: last dev loss 1.6 > 1.5x the best 1")
    assert not check_run(list("abcde"), eval_losses=[2.0, 1.0, 1.5]).failed
    assert check_run(list("abcde"), eval_losses=[2.0, float("nan")]).flags == ["diverged: a dev loss is not finite"]
    assert check_run([]).most_common is None and not check_run([]).failed


def test_two_choice_tasks_collapse_at_three_quarters_not_half():
    """With two choices every student's top answer covers half the questions: 54% of (b) on QuaRel is a working
    student (the csqa-palm scotd_2k one), 90% is collapsed; with five choices 54% is collapsed."""
    from scotd_harness.datasets import choices_of

    working = ["b"] * 54 + ["a"] * 46
    assert not check_run(working, choices=2).failed
    assert check_run(working, choices=5).failed and check_run(working).failed  # unknown: the stricter line
    assert check_run(["a"] * 90 + ["b"] * 10, choices=2).flags == ["collapsed: answers a on 90% of 100 questions"]
    assert [choices_of(t) for t in ("csqa", "scotd_csqa_sc", "scotd_csqa2_direct", "scotd_quarel",
                                     "scotd_openbookqa_direct", "scotd_imdb_contrast_sc", "boolq")] == [
        5, 5, 2, 2, 4, 2, None]


def test_tuning_passes_over_a_collapsed_candidate_by_the_line_of_its_task():
    from scotd_harness.student_stages import choose_candidate

    lopsided = {"learning_rate": 1e-4, "accuracy": 0.6, "most_common_share": 0.7, "dev_losses": [1.0, 0.9], "epochs": 2}
    even = {"learning_rate": 2e-4, "accuracy": 0.55, "most_common_share": 0.4, "dev_losses": [1.0, 0.9], "epochs": 2}
    assert choose_candidate([lopsided, even], choices=2) is lopsided  # 70% of one answer of two: working
    assert choose_candidate([lopsided, even], choices=5) is even  # of five: collapsed
