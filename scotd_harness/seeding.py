"""Per-chain seeds: one place that turns (run seed, question, chain index) into the seed of one sampled chain.

Why: a teacher asked for N chains of a question may be asked in pieces (`n` split over several requests, a
resumed run asking only for the chains still missing, a server that answers fewer chains than asked). If every
piece carried the run's one seed, a server that honours `seed` (vLLM, `scotd serve`) would return the same chains
again and again. Deriving a seed per piece from the run seed, the question and the first chain index it covers
makes every piece distinct, and a rerun with the same run seed reproduces them.

The derivation is sha256 over a canonical JSON encoding of the parts, cut to 63 bits: stable across processes,
machines and Python versions (never Python's `hash()`, which is salted per process), non-negative, and within the
int64 range every server and RNG accepts (numpy's `default_rng`, `torch.Generator.manual_seed`, vLLM's `seed`).
Standard library only, so the torch-free runtime can import it.
"""

from __future__ import annotations

import hashlib
import json

#: derived seeds lie in [0, 2**63)
SEED_BITS = 63


def derive_seed(*parts: int | str | None) -> int:
    """A 63-bit seed that is a pure function of `parts` (ints, strings or None, in order)."""
    canonical = []
    for p in parts:
        if p is None or isinstance(p, str):
            canonical.append(p)
        elif hasattr(p, "__index__") and not isinstance(p, bool):  # int, numpy integers
            canonical.append(p.__index__())
        else:
            raise TypeError(f"seed parts must be int, str or None, not {type(p).__name__}")
    blob = json.dumps(canonical, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> (64 - SEED_BITS)


def question_key(task: str, question_id: str) -> str:
    """The key that names a question in seed derivations (unambiguous whatever characters the id holds)."""
    return json.dumps([task, question_id], separators=(",", ":"), ensure_ascii=True)


def chain_seed(run_seed: int | None, key: str, chain_index: int) -> int:
    """Seed of chain `chain_index` of question `key` in a run seeded with `run_seed` (also the seed a request
    covering chains [chain_index, chain_index + k) sends)."""
    return derive_seed("chain", run_seed, key, chain_index)


def row_seed(seed: int, chain_index: int) -> int:
    """Seed of chain `chain_index` of one prompt when a request with `seed` asks for several chains of it (the
    runtime's per-row sampler), so the chains differ from each other and reproduce on a rerun."""
    return derive_seed("row", seed, chain_index)


__all__ = ["SEED_BITS", "chain_seed", "derive_seed", "question_key", "row_seed"]
