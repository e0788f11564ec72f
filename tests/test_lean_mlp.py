"""SiLUMul keeps gate and up (not silu(gate)) for backward, with bitwise the numbers of plain
autograd; lean_gated_mlps applies it to exactly the allowlisted SwiGLU MLP classes with a SiLU
(checked one by one at realistic input magnitudes), never to the clamped SwiGLUs of DeepSeek-V4,
GLM-5-next, Step-3.7 or Ling, a subclass or another activation, and puts every forward back."""

from __future__ import annotations

import importlib
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coati_hf.models import make_tiny_llama
from coati_hf.ppo.lean_mlp import SWIGLU_MLP_CLASSES, SiLUMul, lean_gated_mlps

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


def _mlp_config(**overrides):
    """What the transformers MLP classes read from their config (tiny sizes, SiLU, biases on
    where the class takes ``mlp_bias``)."""
    settings = dict(hidden_size=32, intermediate_size=64, share_expert_dim=64, hidden_act="silu", hidden_activation="silu",
                    mlp_bias=True)  # fmt: skip
    settings.update(overrides)
    return types.SimpleNamespace(**settings)


def _output_and_grads(module, x):
    x = x.detach().requires_grad_()
    output = module(x)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    params = [x, *module.parameters()]
    return output.detach(), torch.autograd.grad(output, params, upstream)


def _realistic_input():
    """MLP inputs 30x unit scale: gate and up projections in the tens, as in trained models."""
    return 30 * torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))


# Each clamps gate and up to +-swiglu_limit (DeepSeek-V4, GLM-5-next) or its activation output
# (Step-3.7, Ling/Bailing shared experts): not the SwiGLU that SiLUMul computes.
CLAMPED_MLPS = [
    ("deepseek_v4", "DeepseekV4MLP", ()),
    ("glm5_next", "Glm5NextTextMLP", ()),
    ("step3p7", "Step3p7MLP", (0,)),
    ("bailing_hybrid", "BailingHybridMLP", (None, 0)),
]


@pytest.mark.parametrize("model_type, class_name, extra_args", CLAMPED_MLPS, ids=[c[1] for c in CLAMPED_MLPS])
def test_swiglu_mlps_with_a_limit_are_never_swapped(model_type, class_name, extra_args):
    module_class = getattr(importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"), class_name)
    torch.manual_seed(0)
    module = module_class(_mlp_config(swiglu_limit=7.0, swiglu_limits_shared=[7.0, 7.0]), *extra_args)
    x = _realistic_input()
    with torch.no_grad():
        assert module.gate_proj(x).abs().max() > 7.0  # the clamp acts at this size: the test can fail
    plain_output, plain_grads = _output_and_grads(module, x)
    with lean_gated_mlps(module) as swapped:
        output, grads = _output_and_grads(module, x)
    assert swapped == 0
    assert torch.equal(output, plain_output)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


@pytest.mark.parametrize("class_path", sorted(SWIGLU_MLP_CLASSES), ids=lambda path: path.rsplit(".", 1)[-1])
def test_every_allowlisted_mlp_is_swapped_and_exact_at_realistic_magnitudes(class_path):
    """Every class on the allowlist, built with biases where it takes them and fed inputs 30x
    unit scale: swapped, with bitwise the output and gradients of its own forward."""
    module_path, class_name = class_path.rsplit(".", 1)
    module_class = getattr(importlib.import_module(module_path), class_name)
    torch.manual_seed(0)
    module = module_class(_mlp_config())
    x = _realistic_input()
    plain_output, plain_grads = _output_and_grads(module, x)
    assert plain_output.abs().max() > 30  # realistic magnitudes, not a unit-scale probe
    with lean_gated_mlps(module) as swapped:
        output, grads = _output_and_grads(module, x)
    assert swapped == 1
    assert torch.equal(output, plain_output)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


def test_an_allowlisted_mlp_with_another_activation_is_left_alone():
    from transformers.models.gemma.modeling_gemma import GemmaMLP
    from transformers.models.llama.modeling_llama import LlamaMLP

    for module in (GemmaMLP(_mlp_config(hidden_act="gelu_pytorch_tanh")), LlamaMLP(_mlp_config(hidden_act="relu"))):
        with lean_gated_mlps(module) as swapped:
            assert swapped == 0


def test_a_subclass_of_an_allowlisted_mlp_is_left_alone():
    """A subclass may override forward (here: a clamp); the allowlist names exact classes."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    class ClampedLlamaMLP(LlamaMLP):
        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x).clamp(max=7.0)) * self.up_proj(x))

    with lean_gated_mlps(ClampedLlamaMLP(_mlp_config())) as swapped:
        assert swapped == 0
