"""The teacher's few-shot CoT exemplars, one JSON file per task, written by this project.

File layout: {"task", "prompt_version", "notes", "exemplars": [{"id", "question", "choices": [[label, text]...],
"answer", "rationale"}]}. `prompt_version` is recorded in every corpus row: change it whenever an exemplar changes.
Pure standard library, like `formats`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from .. import formats
from ..errors import DataFormatError, ScotdError


@dataclass(frozen=True)
class PromptSet:
    task: str
    prompt_version: str
    exemplars: tuple[dict, ...]

    def render(self, question: str, choices: formats.Choices) -> str:
        """The teacher's few-shot prompt for one question."""
        return formats.teacher_prompt(self.exemplars, question, choices)


def available() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_prompt(task: str) -> PromptSet:
    resource = resources.files(__name__) / f"{task}.json"
    if not resource.is_file():
        raise ScotdError(f"no teacher exemplars for task {task!r} (have: {', '.join(available())})")
    data = json.loads(resource.read_text(encoding="utf-8"))
    where = f"scotd_harness/prompts/{task}.json"
    for key in ("prompt_version", "exemplars"):
        if key not in data:
            raise DataFormatError(where, None, key, "missing")
    for i, ex in enumerate(data["exemplars"]):
        for key in ("question", "choices", "answer", "rationale"):
            if key not in ex:
                raise DataFormatError(where, None, f"exemplars[{i}].{key}", "missing")
        if ex["answer"] not in {c[0] for c in ex["choices"]}:
            raise DataFormatError(where, None, f"exemplars[{i}].answer", f"{ex['answer']!r} is not one of its choices")
    return PromptSet(task, data["prompt_version"], tuple(data["exemplars"]))
