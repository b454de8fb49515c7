"""Fixed pseudo-random subsets chosen by a hash of an id: the train-holdout split, training's dev slice and the
question subsets of train_sizes.

A hash (not a seeded shuffle) keeps membership stable when a file grows, shrinks or is reordered, and the same on
every machine and Python version. Standard library only.
"""

from __future__ import annotations

import hashlib


def hash_bucket(key: str, modulus: int) -> int:
    """sha1(key) as an integer, modulo `modulus`."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % modulus


def hash_rank(key: str, salt: str = "") -> str:
    """The place of `key` in a fixed pseudo-random order (sha1 of salt + key): the first n ids by it are the same
    whatever a file's order, and nested (the first 2000 are among the first 4000)."""
    return hashlib.sha1(f"{salt}{key}".encode()).hexdigest()


def in_hash_fraction(key: str, fraction: float, modulus: int = 10_000) -> bool:
    """Whether `key` falls in the first `fraction` of `modulus` hash buckets (never, for fraction <= 0).

    `modulus` is the resolution of `fraction`. Published subsets fix it: train-holdout is modulus 10 (a tenth:
    sha1 % 10 == 0), training's dev slice modulus 10_000; changing either moves ids between the sets.
    """
    return fraction > 0 and hash_bucket(key, modulus) < fraction * modulus
