"""A regular (non-editable) install ships the task YAMLs, their utils and the prompts, and finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scotd_harness.datasets import TASKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("scotd_harness-*.whl"))


def test_wheel_carries_tasks_export_and_prompts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "scotd_harness/prompts/csqa.json" in names
    assert "scotd_harness/tasks/__init__.py" in names and "scotd_harness/export/__init__.py" in names
    yamls = [n for n in names if n.startswith("scotd_harness/tasks/") and n.endswith(".yaml")]
    assert yamls, "no task YAML in the wheel"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_installed_package_finds_its_resources(wheel, tmp_path):
    """Install the wheel into a fresh virtual environment (reusing this interpreter's dependencies) and ask the
    installed package, not the checkout, for its prompts and task files."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    code = (
        "import scotd_harness, scotd_harness.tasks as t, pathlib;"
        "from scotd_harness.prompts import load_prompt, available;"
        "print(scotd_harness.__file__);"
        "print(len(available()), load_prompt('csqa').prompt_version);"
        "print(len(list(pathlib.Path(t.__file__).parent.rglob('*.yaml'))))"
    )
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split("\n")
    assert str(venv) in out[0], f"imported the checkout, not the installed copy: {out[0]}"
    n_prompts, version = out[1].split()
    assert int(n_prompts) == len(TASKS) and version.startswith("csqa-")  # one prompt file per registry task
    assert int(out[2]) > 0
