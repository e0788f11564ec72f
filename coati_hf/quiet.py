"""Log filters that keep a coati_hf run's output about the run.

Each drops one specific message that reports nothing wrong in a coati_hf run; anything that
differs from it in the least still gets through.

- :func:`silence_bitsandbytes_cpu_kernel_notice`: bitsandbytes (imported by peft, which
  transformers imports) logs at import, on CPUs with AVX512-BF16, that it could not load an
  optional 4-bit CPU kernel from the ``kernels`` package. coati_hf never runs bitsandbytes on a
  CPU (its 4/8-bit modes need CUDA), so the notice is dropped. ``import coati_hf`` installs the
  filter, before anything of coati_hf can import bitsandbytes.
- :func:`expected_new_value_head`: loading a sequence classifier (reward model, critic) from a
  causal-LM checkpoint makes transformers log a "LOAD REPORT" warning that lists the value head
  as MISSING ("newly initialized ... Consider training"). coati_hf initialises that head on
  purpose, so inside this context a report whose only entries are MISSING keys of the head
  (``score.*`` / ``classifier.*``) becomes one INFO line; a report with any other key or status
  (a missing backbone weight, an unexpected or mismatched key) stays the warning it was.

- :func:`silence_colossalai_notices`: colossalai 0.5.0 warns at import that apex (fused
  kernels) and tensornvme (asynchronous saving) are not installed, and its ZeRO optimizer calls
  ``torch.distributed.reduce_scatter_tensor`` / ``all_gather_into_tensor``, which torch 2.10+
  deprecates with a FutureWarning per call site. None of them can be acted on by a coati_hf
  user; the ColossalAI backend installs these filters when it sets up.

- :func:`silence_peft_checkpointing_notice`: peft reads ``model.is_gradient_checkpointing`` whenever
  it wraps a model in a LoRA adapter, a property transformers 5 deprecated with a FutureWarning
  that the user cannot act on. The scripts and the demo install this filter (a library import
  does not change the process's warning filters).

Only :mod:`logging` and :mod:`warnings` are imported here: ``import coati_hf`` must stay free of torch.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_CPU_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
TRANSFORMERS_LOAD_LOGGER = "transformers.modeling_utils"
VALUE_HEAD_MODULES = ("score", "classifier")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _DropBitsandbytesCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BITSANDBYTES_CPU_NOTICE)


def silence_bitsandbytes_cpu_kernel_notice() -> None:
    """Install (once) the filter that drops bitsandbytes' optional-CPU-kernel notice."""
    target = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(existing, _DropBitsandbytesCpuNotice) for existing in target.filters):
        target.addFilter(_DropBitsandbytesCpuNotice())


def load_report_rows(message: str) -> list[tuple[str, str]] | None:
    """``(key, status)`` rows of a transformers LOAD REPORT message; None if it is not one."""
    text = _ANSI.sub("", message)
    if "LOAD REPORT" not in text:
        return None
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < 2 or not cells[0] or set(cells[0]) <= {"-", "+"} or cells[0] == "Key":
            continue
        rows.append((cells[0], cells[1]))
    return rows


class _NewValueHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rows = load_report_rows(record.getMessage())
        if not rows:
            return True
        if all(status == "MISSING" and key.split(".")[0] in VALUE_HEAD_MODULES for key, status in rows):
            logger.info("New value head %s initialised on purpose (coati_hf's value-head init).", ", ".join(k for k, _ in rows))
            return False
        return True


@contextmanager
def expected_new_value_head() -> Iterator[None]:
    """Within this block, a load report that only lists a new value head is logged as INFO."""
    target = logging.getLogger(TRANSFORMERS_LOAD_LOGGER)
    report_filter = _NewValueHeadReport()
    target.addFilter(report_filter)
    try:
        yield
    finally:
        target.removeFilter(report_filter)


#: (category, message regex) of colossalai's notices that a user cannot act on.
COLOSSALAI_NOTICES = (
    (UserWarning, r"Please install apex from source"),
    (UserWarning, r"Please install the latest tensornvme"),
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"),
)


def silence_colossalai_notices() -> None:
    """Ignore :data:`COLOSSALAI_NOTICES` from now on (idempotent)."""
    for category, message in COLOSSALAI_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)


PEFT_CHECKPOINTING_NOTICE = r"`is_gradient_checkpointing` is deprecated"


def silence_peft_checkpointing_notice() -> None:
    """Ignore transformers' deprecation of ``is_gradient_checkpointing``, which peft reads (idempotent)."""
    warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING_NOTICE, category=FutureWarning)
