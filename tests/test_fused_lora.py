"""fused_lora.py: the fused 4-bit LoRA layer computes what peft's layers compute, draws the same dropout masks,
falls back to peft wherever it would not, and the fused RMSNorm equals transformers' (CPU here; CUDA where present).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from autograd_calls import count_applies
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, FalconConfig, LlamaConfig

from falcon_desktop.fused_lora import QuantizedLoraGroup, install_fused_lora, install_fused_rms_norm

LLAMA = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
FALCON = FalconConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                      parallel_attn=True, bias=False)
TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    from transformers.models.falcon import modeling_falcon

    folders = {}
    for name, config in (("llama", LLAMA), ("falcon", FALCON)):
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        folders[name] = folder
    assert modeling_falcon.FalconLinear is not nn.Linear
    return folders


def _lora_model(folder, name: str, dropout: float, fused: bool, device: str = "cpu",
                dtype: torch.dtype = torch.float32, monkeypatch=None, targets: list[str] | None = None):
    """The tiny model in 4-bit with LoRA on every linear kind, lora_B non-zero so the adapters count."""
    from transformers.models.falcon import modeling_falcon

    if name == "falcon":  # as the trainer loads Falcon (model._falcon_linear_as_nn_linear)
        monkeypatch.setattr(modeling_falcon, "FalconLinear", nn.Linear)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=dtype,
                                                 device_map={"": device})
    model.requires_grad_(False)
    torch.manual_seed(1)
    targets = targets or TARGETS[name]
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=targets))
    for parameter_name, parameter in model.named_parameters():
        if "lora_B" in parameter_name:
            nn.init.normal_(parameter, std=0.05)
    if fused:
        assert install_fused_lora(model) == len(targets) * 2
        assert install_fused_lora(model) == 0  # installed once
    return model.train()


def _loss_and_gradients(model, seed: int = 5, autocast: torch.dtype | None = None):
    device = next(model.parameters()).device
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3)).to(device)
    torch.manual_seed(seed)
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    gradients = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), gradients


def _largest_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in a)


@pytest.mark.parametrize("name", ["llama", "falcon"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_layers_compute_what_peft_computes(saved_models, name, dropout, monkeypatch):
    """Same loss (the dropout draws the same masks from the same generator) and gradients within fp32 rounding."""
    peft_loss, peft_gradients = _loss_and_gradients(_lora_model(saved_models[name], name, dropout, False,
                                                                monkeypatch=monkeypatch))
    fused_loss, fused_gradients = _loss_and_gradients(_lora_model(saved_models[name], name, dropout, True,
                                                                  monkeypatch=monkeypatch))
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert _largest_relative_difference(fused_gradients, peft_gradients) < 1e-5
    if dropout:  # and the masks matter: another seed draws others
        other_loss, _ = _loss_and_gradients(_lora_model(saved_models[name], name, dropout, True,
                                                        monkeypatch=monkeypatch), seed=6)
        assert other_loss != pytest.approx(fused_loss, rel=1e-6)


def test_siblings_adapted_in_part_draw_what_peft_draws(saved_models):
    """LoRA on q and v but not k (peft's default for Llama), and on up but not gate: q's call computes v's output too,
    with v's dropout mask drawn right after q's, as peft draws them around the unadapted k."""
    targets = ["q_proj", "v_proj", "up_proj"]
    peft_loss, peft_gradients = _loss_and_gradients(_lora_model(saved_models["llama"], "llama", 0.3, False,
                                                                targets=targets))
    fused_loss, fused_gradients = _loss_and_gradients(_lora_model(saved_models["llama"], "llama", 0.3, True,
                                                                  targets=targets))
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert _largest_relative_difference(fused_gradients, peft_gradients) < 1e-5


def test_a_sibling_called_on_another_input_computes_its_own(saved_models):
    """The outputs a sibling computed for the others are taken only for the very input they were computed on."""
    peft_model = _lora_model(saved_models["llama"], "llama", 0.0, False)
    fused_model = _lora_model(saved_models["llama"], "llama", 0.0, True)
    x, y = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    outputs = {}
    for name, model in (("peft", peft_model), ("fused", fused_model)):
        attention = model.base_model.model.model.layers[0].self_attn
        outputs[name] = (attention.q_proj(x), attention.k_proj(y), attention.k_proj(x), attention.v_proj(x))
    for peft_output, fused_output in zip(outputs["peft"], outputs["fused"]):
        assert torch.allclose(fused_output, peft_output, rtol=1e-5, atol=1e-6)


def test_fused_layers_fall_back_to_peft_where_they_would_differ(saved_models, monkeypatch):
    """In evaluation without gradients (generation), with adapters disabled or merged, peft's own forward runs."""
    from falcon_desktop.fused_lora import _fusable_adapter

    model = _lora_model(saved_models["llama"], "llama", 0.3, True)
    calls = count_applies(monkeypatch, QuantizedLoraGroup)
    ids = torch.randint(0, 256, (1, 6))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():  # asked, not run: bitsandbytes' CPU kernels for evaluation want other shapes than these
        assert _fusable_adapter(q_proj.eval(), (), {}) is None
        assert _fusable_adapter(q_proj.train(), (), {}) == "default"  # a checkpointed layer's graphless forward
    with model.disable_adapter():
        model(input_ids=ids).logits.sum()
    assert calls == []
    model(input_ids=ids).logits.sum().backward()
    assert len(calls) == 2 * 4  # per layer: q/k/v together, o, gate/up together, down


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("name", ["llama", "falcon"])
def test_graphless_checkpoints_train_what_uncheckpointed_layers_train(saved_models, name, device, monkeypatch):
    """Checkpointed layers whose first forward builds no graph (model.GraphlessCheckpoint, what eager steps run):
    the same loss and gradients as without checkpointing, dropout included (the recomputation draws the forward's
    masks), the first layer's adapters included (its input, the frozen embeddings, needs no gradient), and both
    forwards through the fused function."""
    from falcon_desktop.model import GraphlessCheckpoint, decoder_layers, set_checkpointing

    plain = _loss_and_gradients(_lora_model(saved_models[name], name, 0.3, True, device, monkeypatch=monkeypatch))
    model = _lora_model(saved_models[name], name, 0.3, True, device, monkeypatch=monkeypatch)
    set_checkpointing(model, 2, graphless_forward=True)
    assert all(isinstance(layer._gradient_checkpointing_func, GraphlessCheckpoint) for layer in decoder_layers(model))
    calls = count_applies(monkeypatch, QuantizedLoraGroup)
    loss, gradients = _loss_and_gradients(model)
    assert loss == pytest.approx(plain[0], rel=1e-6)
    assert _largest_relative_difference(gradients, plain[1]) < 1e-5
    assert len(calls) == 2 * 2 * 4  # two layers, forward and recomputation, 4 functions a layer in both families


def test_adapter_weights_changed_between_forwards_are_used(saved_models):
    """The adapters' compute-dtype copies last from a forward to its backward only: weights an 8-bit optimizer
    rewrites without a version bump (here through .data) are used by the next forward, as peft uses them."""
    losses = {}
    for fused in (False, True):
        model = _lora_model(saved_models["llama"], "llama", 0.0, fused, dtype=torch.bfloat16)
        first, _ = _loss_and_gradients(model, autocast=torch.bfloat16)
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.data.mul_(-3.0)
        losses[fused] = first, _loss_and_gradients(model, autocast=torch.bfloat16)[0]
    assert losses[True][1] != pytest.approx(losses[True][0], rel=1e-3)  # the change matters
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)  # bf16 rounding apart


def test_without_bitsandbytes_nothing_is_fused(monkeypatch):
    """Where bitsandbytes is missing peft defines no 4-bit layer (a --no-quantize run): nothing to fuse, no error."""
    import sys

    monkeypatch.setitem(sys.modules, "peft.tuners.lora.bnb", None)  # what an absent bitsandbytes leaves: no import
    assert install_fused_lora(nn.Sequential(nn.Linear(4, 4))) == 0


def test_fused_rms_norm_equals_transformers(saved_models):
    model = AutoModelForCausalLM.from_pretrained(saved_models["llama"], dtype=torch.float32)
    norm = model.model.layers[0].input_layernorm
    nn.init.normal_(norm.weight)
    x = torch.randn(2, 5, 64, requires_grad=True)
    expected = norm(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    assert install_fused_rms_norm(model) == 2 * 2 + 1
    got = norm(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_layers_on_cuda_under_bf16_autocast(saved_models, dropout):
    """As the trainer runs them: bf16 compute under autocast. The fused layer adds the adapter in the matmul's fp32
    epilogue (peft rounds its product, the scaling and the sum), so gradients agree to bf16 rounding."""
    peft_loss, peft_gradients = _loss_and_gradients(
        _lora_model(saved_models["llama"], "llama", dropout, False, "cuda", torch.bfloat16), autocast=torch.bfloat16)
    fused_loss, fused_gradients = _loss_and_gradients(
        _lora_model(saved_models["llama"], "llama", dropout, True, "cuda", torch.bfloat16), autocast=torch.bfloat16)
    assert fused_loss == pytest.approx(peft_loss, rel=2e-3)
    assert _largest_relative_difference(fused_gradients, peft_gradients) < 0.05


@needs_cuda
def test_fused_rms_norm_on_cuda_keeps_its_16_bit_input_and_a_statistic_per_row(saved_models):
    """What plan_memory's fused_rms_norm_input_bytes (2) and rms_norm_stats_bytes (4) say, byte for byte."""
    model = AutoModelForCausalLM.from_pretrained(saved_models["llama"], dtype=torch.bfloat16).cuda()
    install_fused_rms_norm(model)
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(3, 40, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kept: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() != norm.weight.untyped_storage().data_ptr():
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autocast("cuda", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = norm(x)
    assert output.dtype == torch.bfloat16
    assert sum(kept.values()) == 3 * 40 * (64 * 2 + 4)
