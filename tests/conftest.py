"""Shared fixtures. Real data comes through SCOTD_DATA_DIR (set by .ci/run to the official files); the embedded
model is prepared once per machine into the user cache and reused."""

from __future__ import annotations

import os
import shutil
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


#: QuaRel train in a data folder: the partial rebuild of public copies (830 questions, no official dev file) that
#: development machines hold, or the official release that `scotd data fetch` brings (1941, with dev and test).
QUAREL_PARTIAL_SHA256 = "ddcf9a48eb74ff4228fa54e0900579a0345f4cdcb99419252809bd8280511057"


@pytest.fixture(scope="session")
def quarel_train_size(data_dir) -> int:
    """How many QuaRel train questions this data folder holds (tests that count them accept either copy)."""
    from scotd_harness.checksums import sha256_of

    path = data_dir / "quarel" / "quarel-v1-train.jsonl"
    return 830 if sha256_of(path) == QUAREL_PARTIAL_SHA256 else 1941


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The prepared embedded model (SmolLM2-135M-Instruct as float32 safetensors)."""
    from scotd_harness import embedded

    return embedded.prepare()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


# ---------------------------------------------------------------------------------------------- ONNX student
#: Bump when the export changes, so cached test exports are rebuilt rather than trusted.
ONNX_TEST_EXPORT_VERSION = 2


def _cached_export(name: str, build) -> Path:
    """Build an export once per machine under the user cache (keyed by name and version), under a file lock."""
    from filelock import FileLock

    from scotd_harness.datasets.base import cache_dir

    root = cache_dir() / "test-exports"
    target = root / f"{name}-v{ONNX_TEST_EXPORT_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{name}.lock"):
        if not (target / "scotd.json").is_file():
            build(target)
    return target


def copy_export(src: Path, dst: Path) -> Path:
    """A copy of an export that a test may lose: hard links where the two folders share a file system (an
    fp32 export is 0.5 GB), a plain copy where they do not."""
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    return Path(shutil.copytree(src, dst, copy_function=link_or_copy))


@pytest.fixture(scope="session")
def onnx_student_dir(embedded_model_dir) -> Path:
    """The embedded model exported to ONNX (fp32, default route: fused GroupQueryAttention), parity-checked.

    Exported once per machine and reused across test sessions (a few minutes the first time)."""
    from scotd_harness.export.exporter import export

    return _cached_export(
        "embedded-fp32", lambda out: export("embedded", out, threads=2, overwrite=True, progress=lambda m: None)
    )


@pytest.fixture(scope="session")
def onnx_student_int4_dir(onnx_student_dir, data_dir) -> Path:
    """The same export quantised to 4-bit MatMulNBits (accuracy change measured on 4 CSQA dev questions)."""
    from scotd_harness.export.exporter import derive

    return _cached_export(
        "embedded-int4",
        lambda out: derive(onnx_student_dir, out, "int4", accuracy_sample=4, threads=2, overwrite=True,
                           progress=lambda m: None),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path, *extra: str, timeout: float = 120.0):
    """Start `scotd serve DIRECTORY` as a real subprocess on 127.0.0.1; returns (process, base URL) once ready.

    Its stderr (uvicorn's messages and the one log line per request) goes to a temporary file, `proc.log_path`,
    rather than a pipe nobody reads, which a long test would fill until the server blocks; `server_log(proc)`
    reads it. Stop it with `stop_server(process)`."""
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-c", "from scotd_harness.cli import cli; cli()", "serve", str(directory),
           "--port", str(port), "--threads", "2", *extra]
    with tempfile.NamedTemporaryFile("w+", prefix="scotd-serve-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log_path = Path(log.name)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scotd serve exited with {proc.returncode}: {server_log(proc)[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"scotd serve did not become ready within {timeout} s")


def server_log(proc) -> str:
    """What a server started by `start_server` has written to stderr so far."""
    return proc.log_path.read_text(errors="replace")


def stop_server(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def serve_url(onnx_student_dir):
    """Base URL (http://127.0.0.1:PORT, no /v1) of `scotd serve` running the fp32 embedded export."""
    proc, url = start_server(onnx_student_dir)
    try:
        yield url
    finally:
        stop_server(proc)
