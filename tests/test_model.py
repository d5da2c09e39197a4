"""Loading really quantizes Falcon, the check catches a model that is not, and the attention fast path is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from autograd_calls import count_applies
from legacy_falcon import legacy_config, legacy_falcon_copy

from falcon_desktop.attention import RotaryEmbedding, causal_fast_path
from falcon_desktop.errors import UserError
from falcon_desktop.model import (
    ModelSettings,
    add_lora,
    backbone_and_head,
    load_base_model,
    set_checkpointing,
    verify_quantization,
)


def test_falcon_loads_with_every_linear_layer_in_nf4(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb

    loaded = load_base_model(ModelSettings(str(tiny_model_dir), device="cpu"))
    quantized = [n for n, m in loaded.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == loaded.quantization.quantized_layers == 8  # 4 per layer x 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" for n, m in loaded.model.named_modules()
               if isinstance(m, bnb.nn.Linear4bit))


def test_the_transformers_trap_is_detected(tiny_model_dir: Path) -> None:
    """transformers' own 4-bit path leaves FalconLinear in full precision; verify_quantization must refuse it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map={"": "cpu"}
    )
    with pytest.raises(UserError, match="left unquantized"):
        verify_quantization(model)


def test_lora_on_exactly_the_requested_layers(tiny_model_dir: Path) -> None:
    loaded = load_base_model(ModelSettings(str(tiny_model_dir), device="cpu"))
    model = add_lora(loaded.model, ["query_key_value"], r=4, alpha=8, dropout=0.0)
    assert sorted(model.targeted_module_names) == [f"transformer.h.{i}.self_attention.query_key_value" for i in (0, 1)]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 4 * (64 + 64 + 2 * 16)
    with pytest.raises(UserError, match="'nope'") as raised:  # one typo among valid names is not dropped silently
        add_lora(load_base_model(ModelSettings(str(tiny_model_dir), device="cpu")).model, ["dense", "nope"], 4, 8, 0.0)
    assert "dense_4h_to_h" in raised.value.hint


@pytest.mark.parametrize(("checkpoint_layers", "graphless"), [(0, False), (1, False), (2, False), (2, True)])
def test_fast_attention_path_matches_transformers(tiny_model_dir: Path, checkpoint_layers: int,
                                                  graphless: bool, monkeypatch) -> None:
    """Falcon's training attention (q and k rotated by RotaryEmbedding, causal SDPA): transformers' hidden states and
    gradients, also where checkpointed layers recompute inside backward (graphless: their first forward without
    autograd)."""
    loaded = load_base_model(ModelSettings(str(tiny_model_dir), quantize=False, device="cpu"))
    model = add_lora(loaded.model, ["query_key_value"], r=4, alpha=8, dropout=0.0)
    set_checkpointing(model, checkpoint_layers, graphless_forward=graphless)
    backbone, _ = backbone_and_head(model)
    input_ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    model.train()
    reference = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    reference.sum().backward()
    reference_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    calls = count_applies(monkeypatch, RotaryEmbedding)
    with causal_fast_path(model):
        fast = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        fast.sum().backward()
    assert len(calls) == 2 + checkpoint_layers  # each layer, and each checkpointed one again in its recomputation
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for got, expected in zip((p.grad for p in model.parameters() if p.requires_grad), reference_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("graph_safe", [False, True])
def test_fast_attention_keeps_no_fused_projection_for_backward(tiny_model_dir: Path, graph_safe: bool) -> None:
    """SDPA keeps value for backward: the fast path hands it a copy of the one key/value head, so the fused QKV
    projection is freed after the layer's forward, also where recorded steps split it by slices (make_graph_safe)."""
    from falcon_desktop.attention import make_graph_safe

    loaded = load_base_model(ModelSettings(str(tiny_model_dir), quantize=False, device="cpu"))
    model = add_lora(loaded.model, ["dense"], r=4, alpha=8, dropout=0.0)  # QKV plain: nothing of its own keeps it
    if graph_safe:
        assert make_graph_safe(model) == 2
    projections: list[torch.Tensor] = []  # kept alive, so that no saved tensor can take over their addresses
    for name, module in model.named_modules():
        if name.endswith("query_key_value"):
            module.register_forward_hook(lambda _module, _inputs, output: projections.append(output))
    saved: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    backbone, _ = backbone_and_head(model)
    model.train()
    with causal_fast_path(model), torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        backbone(input_ids=torch.arange(24).view(2, 12), use_cache=False)
    fused = {projection.untyped_storage().data_ptr() for projection in projections}
    assert len(fused) == 2 and saved
    assert not fused & {tensor.untyped_storage().data_ptr() for tensor in saved}


def test_checkpointing_only_the_first_layers(tiny_model_dir: Path) -> None:
    from falcon_desktop.model import decoder_layers

    model = load_base_model(ModelSettings(str(tiny_model_dir), device="cpu")).model
    set_checkpointing(model, 1)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, False]
    set_checkpointing(model, 0)
    assert not any(layer.gradient_checkpointing for layer in decoder_layers(model))


def test_a_directory_without_config_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="config.json"):
        load_base_model(ModelSettings(str(tmp_path), device="cpu"))


def test_legacy_refinedweb_config_loads_without_remote_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Falcon's original config (model_type RefinedWebModel, n_head/n_layer, auto_map) must not need remote code."""
    legacy = legacy_falcon_copy(tiny_model_dir, tmp_path / "legacy")
    loaded = load_base_model(ModelSettings(str(legacy), device="cpu"))
    assert type(loaded.model).__name__ == "FalconForCausalLM" and loaded.quantization.quantized_layers == 8


@pytest.mark.parametrize("model_type", ["RefinedWebModel", "RefinedWeb"])
def test_planner_and_loader_read_a_legacy_falcon_config_alike(model_type: str, tmp_path: Path) -> None:
    """shapes.py (no torch) and model.load_config must build one architecture from one legacy config."""
    import json

    from transformers import FalconForCausalLM

    from falcon_desktop.model import load_config
    from falcon_desktop.shapes import shape_from_config

    native = {"vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "num_kv_heads": 2,
              "multi_query": True, "parallel_attn": True, "bias": False}
    config = legacy_config(native, model_type)
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    shape, loaded = shape_from_config(config, "legacy"), load_config(str(tmp_path))
    assert loaded.new_decoder_architecture == shape.new_decoder_architecture == (model_type == "RefinedWeb")
    with torch.device("meta"):
        model = FalconForCausalLM(loaded)
    assert sum(p.numel() for p in model.parameters()) == shape.total_params
    kv_dim = model.transformer.h[0].self_attention.query_key_value.out_features - native["hidden_size"]
    assert kv_dim == 2 * shape.num_kv_heads * shape.head_dim


def test_real_falcon_7b_legacy_config_has_the_published_parameter_count(shared_dir: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import FalconForCausalLM

    from falcon_desktop.model import load_config

    shutil.copy(shared_dir / "data" / "falcon-7b" / "config.json", tmp_path / "config.json")
    with torch.device("meta"):
        model = FalconForCausalLM(load_config(str(tmp_path)))
    assert sum(p.numel() for p in model.parameters()) == 6_921_720_704


ROTARY_MODELS = ["llama-gqa", "llama-biases-tied-head-dim", "mistral", "qwen2", "qwen2-tied", "falcon-mqa",
                 "falcon-new-arch"]


def test_the_planner_prices_the_rotary_fast_path_for_the_model_types_it_serves() -> None:
    """plan_speed cannot import attention.py (no torch in the planner), so it names the model types whose attention
    the fast path serves: the same ones ROTARY_ATTENTIONS patches."""
    from transformers import AutoModelForCausalLM

    from falcon_desktop.attention import ROTARY_ATTENTIONS, install_fast_attention
    from falcon_desktop.plan_speed import ROTARY_FAST_PATH_TYPES
    from test_shapes import TINY_CONFIGS, native_config

    assert len(ROTARY_FAST_PATH_TYPES) == len(ROTARY_ATTENTIONS)
    for model_type in ROTARY_FAST_PATH_TYPES:
        config = next(c for name, c in TINY_CONFIGS.items() if c["model_type"] == model_type)
        assert install_fast_attention(AutoModelForCausalLM.from_config(native_config(config))) == 2, model_type


def _hidden_and_gradients(model, ids: torch.Tensor, fast: bool):
    backbone, _ = backbone_and_head(model)
    model.zero_grad()
    with causal_fast_path(model) if fast else torch.enable_grad():
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        hidden.square().sum().backward()
    return hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("name", ROTARY_MODELS)
def test_rotary_fast_path_matches_transformers(name: str, checkpointed: bool, device: str, monkeypatch) -> None:
    """Llama, Mistral, Qwen2 and Falcon attention inside the trainer's fast path (one rotary function, causal SDPA;
    GQA, multi-query, biases, a head_dim of its own, tied heads): the same hidden states and LoRA gradients as
    transformers' forward, also with every layer checkpointed (graphless: recomputed inside backward)."""
    from transformers import AutoModelForCausalLM

    from falcon_desktop.attention import install_fast_attention
    from test_shapes import TINY_CONFIGS, native_config

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(native_config(TINY_CONFIGS[name]), attn_implementation="sdpa")
    targets = ["query_key_value", "dense"] if name.startswith("falcon") else ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = add_lora(base.to(device), targets, r=4, alpha=8, dropout=0.0)
    for parameter_name, parameter in model.named_parameters():
        if "lora_B" in parameter_name:
            torch.nn.init.normal_(parameter, std=0.05)
    assert install_fast_attention(model) == 2
    set_checkpointing(model, 2 if checkpointed else 0, graphless_forward=checkpointed)
    model.train()
    ids = torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(0)).to(device)
    reference, reference_grads = _hidden_and_gradients(model, ids, fast=False)
    calls = count_applies(monkeypatch, RotaryEmbedding)
    fast, fast_grads = _hidden_and_gradients(model, ids, fast=True)
    assert len(calls) == 2 * (2 if checkpointed else 1)  # each layer, again in its recomputation
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    # To fp32 rounding: other kernels sum in other orders (on the GPU machine's CPU, torch 2.11: 1.1e-4 of the
    # largest element); a wrong rotation or a lost gradient is off by the gradient itself.
    for got, expected in zip(fast_grads, reference_grads, strict=True):
        assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()


def test_a_sliding_window_shorter_than_the_rows_takes_transformers_attention(monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from falcon_desktop.attention import install_fast_attention
    from test_shapes import TINY_CONFIGS, native_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(native_config({**TINY_CONFIGS["mistral"], "sliding_window": 4}),
                                             attn_implementation="sdpa")
    install_fast_attention(model)
    model.train()
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    reference, _ = _hidden_and_gradients(model, ids, fast=False)
    calls = count_applies(monkeypatch, RotaryEmbedding)
    windowed, _ = _hidden_and_gradients(model, ids, fast=True)
    assert calls == []
    torch.testing.assert_close(windowed, reference)


def test_rotary_function_equals_transformers_rotation_in_bf16() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 7, 4, 16, generator=generator, dtype=torch.bfloat16, requires_grad=True)
    key = torch.randn(2, 7, 2, 16, generator=generator, dtype=torch.bfloat16, requires_grad=True)
    angles = torch.randn(2, 7, 8, generator=generator)
    cos, sin = (f(torch.cat((angles, angles), -1)).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    grads = [torch.randn(2, 7, heads, 16, generator=generator, dtype=torch.bfloat16) for heads in (4, 2)]
    ours = RotaryEmbedding.apply(query, key, cos, sin)
    theirs = [x.transpose(1, 2) for x in apply_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), cos, sin)]
    for got, expected in zip(ours, theirs):
        torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02)  # one bf16 rounding fewer in ours
    ours_grads = torch.autograd.grad(ours, (query, key), grads)
    theirs_grads = torch.autograd.grad(theirs, (query, key), grads)
    for got, expected in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02)
