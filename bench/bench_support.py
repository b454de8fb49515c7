"""What the serving and runtime benchmarks share: the exports they measure, and results that name no path.

The embedded student's fp32 and int4 exports that the tests use serve benchmarks run without `--fp32`/`--export`.

tests/conftest.py builds them once per machine into the user cache (`_cached_export`, keyed by name and
`ONNX_TEST_EXPORT_VERSION`, under a file lock). The benchmarks reuse that cache rather than keeping a second copy
of the same 600 MB, so the key and the lock come from conftest itself; where an export is missing it is built here
with the fixtures' settings (a few minutes on 2 cores). The int4 export's accuracy sample reads CSQA dev through
SCOTD_DATA_DIR, as the fixture does.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

_CONFTEST = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"


def _conftest():
    spec = importlib.util.spec_from_file_location("scotd_tests_conftest", _CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def embedded_fp32() -> Path:
    """The embedded model exported to ONNX, fp32, fused GroupQueryAttention (the `onnx_student_dir` fixture)."""
    from scotd_harness.export.exporter import export

    return _conftest()._cached_export(
        "embedded-fp32", lambda out: export("embedded", out, threads=2, overwrite=True, progress=print)
    )


def embedded_int4() -> Path:
    """The fp32 export quantised to 4-bit MatMulNBits (the `onnx_student_int4_dir` fixture)."""
    from scotd_harness.export.exporter import derive

    fp32 = embedded_fp32()
    return _conftest()._cached_export(
        "embedded-int4",
        lambda out: derive(fp32, out, "int4", accuracy_sample=4, threads=2, overwrite=True, progress=print),
    )


def describe(export_dir: str | Path) -> dict:
    """What an export is, without its path (results files must not name this machine's folders)."""
    meta = json.loads((Path(export_dir) / "scotd.json").read_text())
    q = meta.get("quantization")
    weights = f"{q['method']} int{q['bits']}" if q else meta.get("dtype", "fp32")
    return {"name": Path(export_dir).name, "source": meta.get("source"), "weights": weights,
            "attention": (meta.get("graph") or {}).get("attention")}


def public_argv(argv: list[str]) -> list[str]:
    """The command line as run, with paths cut to their last part (results files name no machine's folders)."""
    return [Path(a).name if os.sep in a and Path(a).exists() else a for a in argv]
