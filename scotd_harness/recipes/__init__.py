"""Shipped pipeline configs (`scotd pipeline --preset NAME`): studies a user can rerun with one command."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ScotdError


def names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def path(name: str) -> Path:
    """The YAML file of a preset (inside the installed package)."""
    found = resources.files(__name__) / f"{name}.yaml"
    if not found.is_file():
        raise ScotdError(f"unknown preset {name!r}; presets: {', '.join(names())}")
    return Path(str(found))
