"""The IMDb contrast set (Gardner et al. 2020): original reviews and their minimally edited, label-flipped twins.

Files: `contrast_sets_imdb/{dev,test}_{original,contrast}.tsv` with header `Sentiment\\tText`; row i of the
original pairs with row i of the contrast file, so ids carry the row index (`dev-17`) to pair them again.
There is no train split and no hub copy: without a data directory the files are fetched from the public
repository at a pinned commit and checked against their pinned sha256 (`scotd data fetch`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from ..errors import DataFormatError, ScotdError
from .base import Example, fetch_official, require_file

SPLIT_FILES = {"validation": "dev", "test": "test"}
CHOICES = (("a", "positive"), ("b", "negative"))
QUESTION = "{review}\nWhat is the sentiment of this movie review?"


def _file_name(task: str, split: str) -> str:
    if split not in SPLIT_FILES:
        raise ScotdError(f"{task} has no {split!r} split (it has {', '.join(SPLIT_FILES)})")
    return f"{SPLIT_FILES[split]}_{task.split('_', 1)[1]}.tsv"


def parse_tsv(path: Path, task: str, split: str) -> list[Example]:
    csv.field_size_limit(sys.maxsize)
    examples = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["Sentiment", "Text"]:
            raise DataFormatError(path, 1, "<header>", f"expected 'Sentiment<TAB>Text', got {header!r}")
        for row in reader:
            lineno = reader.line_num
            if len(row) != 2:
                raise DataFormatError(path, lineno, "<row>", f"expected 2 tab-separated fields, got {len(row)}")
            sentiment, text = row
            label = {"positive": "a", "negative": "b"}.get(sentiment.strip().lower())
            if label is None:
                raise DataFormatError(path, lineno, "Sentiment", f"expected Positive or Negative, got {sentiment!r}")
            review = " ".join(text.replace("<br />", " ").split())
            index = len(examples)
            examples.append(
                Example(task, f"{SPLIT_FILES[split]}-{index}", QUESTION.format(review=review), CHOICES, label, {"pair": index})
            )
    return examples


def load_official(task: str, split: str, data_dir: Path) -> list[Example]:
    name = _file_name(task, split)
    return parse_tsv(require_file(data_dir / "contrast_sets_imdb" / name, task, split), task, split)


def load_from_hub(task: str, split: str) -> list[Example]:
    name = _file_name(task, split)
    return parse_tsv(fetch_official(f"contrast_sets_imdb/{name}"), task, split)
