"""Shared fixtures. Real data comes through SCOTD_DATA_DIR (set by .ci/run to the official files); the embedded
model is prepared once per machine into the user cache and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests with a real model (still run in CI)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The official data files. Tests that read real data need SCOTD_DATA_DIR; .ci/run sets it."""
    value = os.environ.get("SCOTD_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail("set SCOTD_DATA_DIR to the folder of official data files (see README, 'Tests')")
    return Path(value)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The prepared embedded model (SmolLM2-135M-Instruct as float32 safetensors)."""
    from scotd_harness import embedded

    return embedded.prepare()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
