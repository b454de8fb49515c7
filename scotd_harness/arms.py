"""Which students a pipeline run trains, and on what: arms x training-set sizes.

An *arm* is what a student learns from: `scotd` (the teacher's chains), `label_only` (the gold answer alone) or
`cose` (CoS-E v1.11 human explanations). A *size* is how many corpus questions it trains on. Every arm of one size
trains on exactly the same questions (a comparison of arms is then a comparison of targets, and their answers to
the same dev questions pair up for McNemar's test), and a smaller size's questions are among a larger one's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .hashsplit import hash_rank

ARMS = ("scotd", "label_only", "cose")
#: the corpus each arm trains on (label-only reads the chains' corpus for its questions and gold answers)
ARM_CORPUS = {"scotd": "chains", "label_only": "chains", "cose": "cose"}


def size_suffix(questions: int | None) -> str:
    """`_2k` for 2000 questions, `_1500` for 1500, nothing for the whole corpus."""
    if questions is None:
        return ""
    return f"_{questions // 1000}k" if questions % 1000 == 0 else f"_{questions}"


@dataclass(frozen=True)
class Student:
    """One student of a run: `scotd_2k` is the scotd arm trained on 2000 questions."""

    arm: str
    questions: int | None
    train: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.arm + size_suffix(self.questions)

    @property
    def label_only(self) -> bool:
        return self.arm == "label_only"

    @property
    def corpus(self) -> str:
        """File stem of its corpus in the run directory: `chains`, `chains_2k`, `cose_2k`, ..."""
        return ARM_CORPUS[self.arm] + size_suffix(self.questions)

    def task(self, task: str) -> str:
        """The lm-eval task that scores it: a label-only student answers directly, the others write a chain."""
        return f"scotd_{task}_direct" if self.label_only else f"scotd_{task}"


def students(cfg) -> list[Student]:
    """Every student of a run (a PipelineConfig), smaller sizes first, arms in config order."""
    sizes = sorted(cfg.train_sizes, key=lambda s: (s.questions is None, s.questions or 0))
    return [Student(arm, size.questions, size.train) for size in sizes for arm in cfg.arm_names]


def subsample(ids, questions: int | None, seed: int) -> set[str]:
    """`questions` of `ids` chosen by a seeded hash of each id: the same subset whatever the file order, and nested
    (the first 2000 are among the first 4000)."""
    ids = sorted(set(ids))
    if questions is None or questions >= len(ids):
        return set(ids)
    return set(sorted(ids, key=lambda qid: hash_rank(qid, salt=f"{seed}:"))[:questions])


def corpus_path(root: Path, stem: str) -> Path:
    """Where the filter stage writes a corpus: the run's `corpus.filtered.jsonl` is the whole chains corpus (the
    file a plain run has always trained on); the others go under `corpora/`."""
    if stem == "chains":
        return root / "corpus.filtered.jsonl"
    return root / "corpora" / f"{stem}.jsonl"
