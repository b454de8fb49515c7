"""The `Example` every dataset becomes, and the small readers the official-file loaders share."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFormatError, ScotdError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One multiple-choice question, whatever its source. `answer` is a label ('a', 'b', ...) or None."""

    task: str
    id: str
    question: str
    choices: tuple[tuple[str, str], ...]
    answer: str | None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "id": self.id,
            "question": self.question,
            "choices": [list(c) for c in self.choices],
            "answer": self.answer,
            "meta": self.meta,
        }


def data_dir_from_env(data_dir: str | os.PathLike | None) -> Path | None:
    """An explicit `data_dir` wins; else `SCOTD_DATA_DIR`; else None (the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get("SCOTD_DATA_DIR") or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ScotdError(f"data directory {path} does not exist (from --data-dir or SCOTD_DATA_DIR)")
    return path


def require_file(path: Path, task: str, split: str) -> Path:
    if not path.is_file():
        raise ScotdError(
            f"{task} {split}: expected the official file {path}, which is missing "
            f"(the data directory follows the layout of the official releases; unset SCOTD_DATA_DIR to use the hub, "
            f"or use the split 'train-holdout', a fixed tenth of train)"
        )
    return path


def get_field(record: dict, name: str, path, lineno: int | None, kind: type | tuple = str):
    """record[name] with a typed check; 'question.stem' walks nested dicts."""
    value = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataFormatError(path, lineno, name, "missing")
        value = value[part]
    if not isinstance(value, kind):
        raise DataFormatError(path, lineno, name, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def cache_dir() -> Path:
    return Path(os.environ.get("SCOTD_CACHE", Path.home() / ".cache" / "scotd_harness")).expanduser()


def fetch_official(path: str) -> Path:
    """A file with no hub copy (IMDb contrast set, CSQA 2.0), fetched once into the cache by `scotd data fetch`'s
    download: from its pinned release location (or $SCOTD_DATA_MIRROR), checked against its pinned sha256."""
    from .. import data_fetch

    root = cache_dir() / "data"
    target = root / path
    if target.is_file():
        return target
    files = [f for f in data_fetch.MANIFEST if f.path == path]
    if not files:
        raise ScotdError(f"no official file {path} is known to `scotd data fetch`")
    summary = data_fetch.fetch(root, files=files, mirror=os.environ.get(data_fetch.MIRROR_ENV),
                               say=lambda msg: log.warning("%s", msg))
    if summary.failed or not target.is_file():
        raise ScotdError(f"could not fetch {path} (see the message above); pass --data-dir with the official files, "
                         f"or fetch them with `scotd data fetch DIR`")
    return target


def load_hub(name: str, config: str | None, split: str):
    """A Hugging Face hub dataset split; `datasets` is imported only here."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise ScotdError("loading from the hub needs the `datasets` package") from e
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - re-raised with the remedy; the original is chained
        raise ScotdError(
            f"could not load {name}{'/' + config if config else ''} split {split!r} from the Hugging Face hub ({e}); "
            f"offline, set SCOTD_DATA_DIR (or --data-dir) to a folder with the official files"
        ) from e
