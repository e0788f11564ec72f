#!/usr/bin/env bash
# A separate virtual environment with TRL 1.12, the last TRL with a PPOTrainer, for
# benchmarks/ppo_vs_trl.py. The project itself needs trl >= 1.13, so the two cannot share one.
#
# Everything but TRL is pinned to the versions of the project's own .venv, so the comparison
# measures the trainers, not the libraries under them. Idempotent (a stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT_PY=${PROJECT_PY:-.venv/bin/python}
VENV=${TRL112_VENV:-benchmarks/.venv-trl112}
STAMP="$VENV/.stamp"

pins=$("$PROJECT_PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "tokenizers")))
EOF
)
want="trl==1.12.0 $pins"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, alone: the CPU build on this machine's disk (never a multi-GB CUDA wheel)
torch_pin=$(echo "$pins" | tr ' ' '\n' | grep '^torch==' | sed 's/+cpu//')
"$VENV/bin/python" -m pip install -q "$torch_pin" 2>&1 | grep -v "^WARNING: Location" || true
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $(echo "$want" | sed 's/+cpu//g') psutil 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import trl, transformers; from trl.experimental.ppo import PPOTrainer; print('[setup] TRL', trl.__version__, 'transformers', transformers.__version__)"
echo "$want" > "$STAMP"
