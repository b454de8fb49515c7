"""Per-chain seeds (`scotd_harness.seeding`) and the one trimming of log-probs at a stop string
(`teacher.kept_token_count`): pure functions, checked directly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from scotd_harness import seeding
from scotd_harness.teacher import chain_plan, kept_token_count


def test_seeds_are_distinct_per_chain_and_in_range():
    key = seeding.question_key("csqa", "q1")
    seeds = {seeding.chain_seed(0, key, i) for i in range(1000)}
    seeds |= {seeding.chain_seed(1, key, i) for i in range(1000)}
    seeds |= {seeding.chain_seed(0, seeding.question_key("csqa", "q2"), i) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= s < 2**63 for s in seeds)
    assert seeding.row_seed(5, 0) != seeding.row_seed(5, 1) != seeding.row_seed(6, 1)
    # ids holding separators cannot collide with another (task, id) split
    assert seeding.question_key("a:b", "c") != seeding.question_key("a", "b:c")
    assert seeding.derive_seed(np.int64(3), "x") == seeding.derive_seed(3, "x")
    for bad in (1.5, True, b"x"):
        with pytest.raises(TypeError):
            seeding.derive_seed(bad)


def test_seeds_are_the_same_in_every_process():
    """Unlike Python's salted `hash()`, a derived seed does not change with the interpreter's hash seed."""
    code = "from scotd_harness import seeding; print(seeding.chain_seed(7, seeding.question_key('t', 'q'), 3))"
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert outs == {str(seeding.chain_seed(7, seeding.question_key("t", "q"), 3))}


def test_chain_plan_defaults_and_checks():
    assert chain_plan(["p", "q"], None, None) == (["p", "q"], [0, 0])
    assert chain_plan(["p"], ["k"], [4]) == (["k"], [4])
    with pytest.raises(ValueError):
        chain_plan(["p", "q"], ["k"], None)
    with pytest.raises(ValueError):
        chain_plan(["p"], None, [-1])


@pytest.mark.parametrize(
    ("tokens", "text", "kept"),
    [
        (["A", " cat", ".\n\n", "Q"], "A cat.", 3),  # a token straddling the cut is kept
        (["A", " cat", ".", "\n\n", "Q"], "A cat.", 3),  # a stop string of its own is not
        (["A", " cat"], "A cat", 2),  # nothing cut
        (["\n\n", "x"], "", 0),  # cut at once
    ],
)
def test_kept_token_count(tokens, text, kept):
    ends = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens) + 1)]
    assert kept_token_count(len(text), len(tokens), ends.__getitem__) == kept
