"""Under Gemini the Trainer's loss is a ColoTensor, whose in-place operators are out-of-place:
unless the mixin hands the Trainer a plain tensor, its running loss is never reset and each logged
loss is the sum of every step before it (seen on an H200 with benchmarks/cuda_check.py). Gemini
needs CUDA, so this test reproduces the mechanism on CPU: a Trainer whose step returns a
ColoTensor, trained through the mixin (ddp strategy), must log the same per-step losses as plain
transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from colossalai.tensor.colo_tensor import ColoTensor
    from coati_hf.colossalai import ColossalAIMixin, ColossalAIPlugin
    from coati_hf.models import make_tiny_llama

    class ColoTensorLoss(Trainer):  # what Gemini's boosted modules hand back
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            loss.__class__ = ColoTensor
            return loss

    class Through(ColossalAIMixin, ColoTensorLoss):
        pass

    PartialState(cpu=True)
    ids = [[(start * 7 + k) % 500 + 100 for k in range(16)] for start in range(32)]
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 16] * 32, "labels": ids})
    losses = {}
    for name in ("plain", sys.argv[1]):
        torch.manual_seed(0)
        model, _ = make_tiny_llama(seed=0)
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=5, learning_rate=1e-3,
                                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                                     disable_tqdm=True)
            if name == "plain":
                trainer = Trainer(model=model, args=args, train_dataset=data)
            else:
                trainer = Through(model=model, args=args, train_dataset=data,
                                  colossalai_plugin=ColossalAIPlugin(name, precision="fp32"))
            trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        losses[name + "_train_loss"] = trainer.state.log_history[-1]["train_loss"]
    print("LOSSES" + json.dumps(losses))
    """
)


def test_logged_losses_are_per_step_when_the_loss_is_a_colotensor(tmp_path):
    strategy = "ddp"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29631",
               OMP_NUM_THREADS="1")  # fmt: skip
    proc = subprocess.run([sys.executable, str(script), strategy], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("LOSSES"))
    losses = json.loads(line[len("LOSSES"):])
    assert len(losses["plain"]) == 5
    assert losses[strategy] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses[strategy + "_train_loss"] == pytest.approx(losses["plain_train_loss"], rel=1e-4)
