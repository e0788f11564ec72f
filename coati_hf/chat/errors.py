"""The one error type of :mod:`coati_hf.chat` that the command line shows as is."""

from __future__ import annotations


class ChatError(RuntimeError):
    """Bad input a user can fix (a folder that is not a model, a base model that is not on this
    machine, a quantization mode this machine cannot run). The message is one line that says
    what is wrong and what to do; the ``coati-hf`` commands print it without a traceback."""
