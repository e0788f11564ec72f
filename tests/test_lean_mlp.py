"""SiLUMul keeps gate and up (not silu(gate)) for backward, with bitwise the numbers of plain
autograd; lean_gated_mlps applies it to a model's SwiGLU MLPs only where it computes exactly what
the module does, and puts every forward back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coati_hf.models import make_tiny_llama
from coati_hf.ppo.lean_mlp import SiLUMul, lean_gated_mlps

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def saved_bytes(function) -> tuple[object, int]:
    """``function()``'s result and the bytes autograd saved for its backward (storages counted once)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function()
    return result, sum(storages.values())


def test_silu_mul_matches_autograd_bitwise_and_saves_one_tensor_less():
    generator = torch.Generator().manual_seed(0)
    gate = torch.randn(4, 7, 64, generator=generator, requires_grad=True)
    up = torch.randn(4, 7, 64, generator=generator, requires_grad=True)
    upstream = torch.randn(4, 7, 64, generator=generator)

    plain, plain_bytes = saved_bytes(lambda: F.silu(gate) * up)
    lean, lean_bytes = saved_bytes(lambda: SiLUMul.apply(gate, up))
    assert torch.equal(plain, lean)
    assert plain_bytes == 3 * gate.numel() * 4 and lean_bytes == 2 * gate.numel() * 4
    plain_grads = torch.autograd.grad(plain, (gate, up), upstream)
    lean_grads = torch.autograd.grad(lean, (gate, up), upstream)
    for plain_grad, lean_grad in zip(plain_grads, lean_grads):
        assert torch.equal(plain_grad, lean_grad)
    # only the gradient that is asked for is computed
    frozen_up = up.detach()
    (gate_only,) = torch.autograd.grad(SiLUMul.apply(gate, frozen_up), gate, upstream)
    assert torch.equal(gate_only, torch.autograd.grad(F.silu(gate) * frozen_up, gate, upstream)[0])


def test_a_tiny_llama_trains_bitwise_the_same_with_less_saved():
    model, tokenizer = make_tiny_llama(seed=0, num_hidden_layers=3)
    batch = tokenizer(["lean activations, same numbers", "a second row"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def loss_and_grads():
        model.zero_grad()
        loss, stored = saved_bytes(lambda: model(**batch, labels=labels).loss)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, stored

    plain_loss, plain_grads, plain_bytes = loss_and_grads()
    with lean_gated_mlps(model) as swapped:
        lean_loss, lean_grads, lean_bytes = loss_and_grads()
    assert swapped == 3
    assert torch.equal(plain_loss, lean_loss)
    for name in plain_grads:
        assert torch.equal(plain_grads[name], lean_grads[name]), name
    tokens = int(batch["input_ids"].numel())
    intermediate = model.config.intermediate_size
    assert plain_bytes - lean_bytes == 3 * tokens * intermediate * 4  # one silu output per layer
    assert all("forward" not in module.__dict__ for module in model.modules())  # every forward is back


class GeluGated(nn.Module):
    """Looks like a SwiGLU MLP but is not one: it must be left alone."""

    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.act_fn = nn.GELU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_a_module_that_computes_something_else_is_left_alone():
    module = GeluGated()
    with lean_gated_mlps(module) as swapped:
        assert swapped == 0
        assert "forward" not in module.__dict__
