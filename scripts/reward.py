"""Stage script: runs :mod:`coati_hf.scripts.reward` (see its docstring; `--help` lists every option).

    python scripts/reward.py --config recipes/smollm2_cpu/reward.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/reward.py --config recipes/smollm2_cpu/reward.yaml
"""

import os
import sys

# Run from a checkout, this file uses the checkout's coati_hf (installed or not).
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "coati_hf", "__init__.py")):
    sys.path.insert(0, _checkout)

from coati_hf.scripts.reward import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
