"""The memory model and the planner's choices.

The memory model is checked against the libraries themselves where a CPU can: autograd's saved tensors for the
activations (real transformers + peft modules under bf16 autocast), bitsandbytes' real NF4 storage for the weights.
The choices are checked for their promises: fits means within budget, the micro-batch is the largest and the
checkpointing the least that fit, more VRAM never gives less, JSON round-trips.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from falcon_desktop.errors import UserError
from falcon_desktop.hardware import GIB, GPUS, gpu_model
from falcon_desktop.plan import (
    Alternative, GpuSpec, Plan, PlanRequest, compute_dtype_for, cost_estimates, make_plan, rules_of_thumb,
    validate_lora_targets,
)
from falcon_desktop.plan_memory import (
    COEFFICIENTS, COMPONENTS, Setup, kept_activation_bytes, memory_breakdown, peak_bytes,
)
from falcon_desktop.plan_search import training_flops_per_token
from falcon_desktop.shapes import DEFAULT_LORA_TARGETS, PRESETS, load_shape, shape_from_config

TINY = {
    "falcon-mqa": {"model_type": "falcon", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "multi_query": True, "parallel_attn": True},
    "falcon-new-arch": {"model_type": "falcon", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True},
    "falcon-mha-sequential-bias": {"model_type": "falcon", "vocab_size": 256, "hidden_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "multi_query": False,
                                   "parallel_attn": False, "bias": True},
    "falcon-alibi": {"model_type": "falcon", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "multi_query": False, "parallel_attn": False, "bias": True,
                     "alibi": True},
    "llama": {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32},
    "qwen2": {"model_type": "qwen2", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
}
# On the CPU, autocast leaves layer_norm in bf16 (CUDA runs it in fp32) and dropout keeps its noise tensor in the
# input's dtype, fp32 after peft's cast (CUDA keeps a bool mask). Everything else is what CUDA stores.
# F.rms_norm's CPU path is composite: it keeps an fp32 copy of its input (CUDA's fused kernel keeps the 16-bit input).
CPU = dataclasses.replace(COEFFICIENTS, layer_norm_input_bytes=2.0, layer_norm_stats_bytes=4.0, dropout_mask_bytes=4.0,
                          fused_rms_norm_input_bytes=4.0)


def gpu(name: str, vram_gib: float | None = None) -> GpuSpec:
    return GpuSpec.from_table(gpu_model(name), vram_bytes=None if vram_gib is None else int(vram_gib * GIB))


def budget(vram_gib: float) -> GpuSpec:
    return GpuSpec(f"{vram_gib} GiB", int(vram_gib * GIB), (8, 9), None, None, "--vram")


def _saved_bytes(model, batch: int, seq_len: int) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for backward of one training forward pass
    (Falcon's attention through the trainer's fast path, as train.py runs it)."""
    import torch

    from falcon_desktop.attention import causal_fast_path, install_fast_attention

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    install_fast_attention(base)
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with causal_fast_path(base), torch.autocast("cpu", dtype=torch.bfloat16), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embeddings = backbone.get_input_embeddings()(ids)
        if not embeddings.requires_grad:  # as peft's enable_input_require_grads does
            embeddings.requires_grad_(True)
        backbone(inputs_embeds=embeddings, use_cache=False)
    return sum(kept.values())


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("method", "dropout"), [("lora", 0.05), ("lora", 0.0), ("full", 0.0)])
def test_activation_model_equals_what_autograd_keeps(name, method, dropout):
    """Per row of 48 tokens: the difference between batches of 3 and 2 rows removes weight casts and RoPE tables."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from test_shapes import native_config

    config = TINY[name]
    shape = shape_from_config(config, name)
    targets = DEFAULT_LORA_TARGETS[shape.model_type]
    dtype = torch.float32 if method == "full" else torch.bfloat16
    model = AutoModelForCausalLM.from_config(native_config(config), attn_implementation="sdpa", dtype=dtype)
    if method == "lora":
        model.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=list(targets)))
    model.train()
    measured = _saved_bytes(model, 3, 48) - _saved_bytes(model, 2, 48)

    def kept(rows: int) -> float:
        setup = Setup(method, 48, rows, lora_targets=targets if method == "lora" else (), lora_r=8,
                      lora_dropout=dropout)
        return kept_activation_bytes(shape, setup, CPU)

    predicted = kept(3) - kept(2)
    # LoRA is exact; full fine-tuning (not what our trainer runs, shown for comparison) is within 7%.
    assert predicted == pytest.approx(measured, rel=0.0 if method == "lora" else 0.07)


def _qlora_model(config: dict, targets: tuple[str, ...], directory, monkeypatch, dropout: float = 0.0,
                 fused: bool = False):
    """A real 4-bit bitsandbytes model of `config` with LoRA adapters, built as the trainer builds it (`fused`: with
    fused_lora.py's kernels, as the trainer runs one GPU)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from test_shapes import native_config
    from torch import nn
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.models.falcon import modeling_falcon

    from falcon_desktop.model import cast_norm_outputs

    # As the trainer loads Falcon: its FalconLinear layers built as nn.Linear, so that bitsandbytes swaps them.
    monkeypatch.setattr(modeling_falcon, "FalconLinear", nn.Linear)
    AutoModelForCausalLM.from_config(native_config(config)).save_pretrained(directory)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"}, attn_implementation="sdpa")
    model.requires_grad_(False)
    cast_norm_outputs(model, torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=list(targets)))
    if fused:
        from falcon_desktop.fused_lora import install_fused_lora, install_fused_rms_norm

        assert install_fused_lora(model) == len(targets) * config["num_hidden_layers"]
        install_fused_rms_norm(model)
    return model


@pytest.mark.parametrize("name", ["falcon-mqa", "falcon-mha-sequential-bias", "llama", "falcon-new-arch"])
@pytest.mark.parametrize(("dropout", "fused"), [(0.0, False), (0.05, True), (0.0, True)])
def test_qlora_activations_under_cuda_autocast_rules(name, dropout, fused, tmp_path, monkeypatch):
    """The CUDA figures (default coefficients), with CUDA's autocast rules emulated on the CPU: layer_norm in fp32,
    and peft's 4-bit layer seeing autocast on. On an H100 the peft rows measured the same bytes (plan_memory.py);
    fused_lora.py's layers keep their input once and a bool mask per adapter (on CUDA too)."""
    import torch
    import torch.nn.functional as F

    config = TINY[name]
    shape = shape_from_config(config, name)
    targets = DEFAULT_LORA_TARGETS[shape.model_type]
    model = _qlora_model(config, targets, tmp_path, monkeypatch, dropout, fused)
    monkeypatch.setattr(torch.nn.LayerNorm, "forward", lambda self, x: F.layer_norm(
        x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps))
    was_enabled = torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args, **kwargs: True)
    model.train()
    try:
        measured = _saved_bytes(model, 3, 48) - _saved_bytes(model, 2, 48)
    finally:
        # torch.autocast's exit restores the state is_autocast_enabled reported on entry: with the patch, "on". Left
        # so, every later test in the session would run under CPU bf16 autocast.
        monkeypatch.undo()
        torch.set_autocast_enabled("cpu", was_enabled)

    def kept(rows: int) -> float:
        setup = Setup("qlora", 48, rows, lora_targets=targets, lora_r=8, lora_dropout=dropout, fused_lora=fused,
                      fused_rms_norm=fused)
        return kept_activation_bytes(shape, setup, dataclasses.replace(COEFFICIENTS, fused_rms_norm_input_bytes=4.0))

    assert kept(3) - kept(2) == measured


@pytest.mark.parametrize("name", ["falcon-mqa", "llama"])
def test_nf4_weights_and_constants_equal_bitsandbytes_storage(name, tmp_path, monkeypatch):
    import torch
    from test_shapes import native_config
    from torch import nn
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.models.falcon import modeling_falcon

    # As the trainer loads Falcon: its FalconLinear layers built as nn.Linear, so that bitsandbytes swaps them.
    monkeypatch.setattr(modeling_falcon, "FalconLinear", nn.Linear)
    config = {**TINY[name], "hidden_size": 128}  # NF4 blocks of 64 need more than one block per row
    shape = shape_from_config(config, name)
    AutoModelForCausalLM.from_config(native_config(config)).save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})

    def nbytes(tensor) -> int:
        return tensor.numel() * tensor.element_size()

    weights = sum(nbytes(p) for p in {id(p): p for p in model.parameters()}.values())
    constants = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            constants += nbytes(state.absmax) + nbytes(state.code) + nbytes(state.offset)
            constants += nbytes(state.state2.absmax) + nbytes(state.state2.code)
    breakdown = memory_breakdown(shape, Setup("qlora", 8))
    assert (breakdown["weights"], breakdown["quant_constants"]) == (weights, constants)


def test_falcon_7b_qlora_weights_are_the_measured_footprint():
    # Measured on the H100 (transformers 5.17, bitsandbytes 0.50.2): Falcon-7B really quantized has a 3.9 GB footprint
    # (get_memory_footprint, 1e9 bytes).
    breakdown = memory_breakdown(load_shape("falcon-7b"), Setup("qlora", 512))
    assert round(breakdown["weights"] / 1e9, 1) == 3.9


def test_training_attention_is_linear_in_length_and_generation_quadratic_for_falcon():
    """Training runs flash SDPA (attention.py's fast path); generation runs transformers' Falcon attention, whose
    single K/V head sends SDPA to its math kernel and its (seq x seq) fp32 probabilities."""
    falcon = load_shape("falcon-7b")

    def activations(method: str, seq_len: int) -> int:
        targets = ("query_key_value",) if method != "inference" else ()
        return memory_breakdown(falcon, Setup(method, seq_len, lora_targets=targets))["activations"]

    def curvature(method: str) -> int:  # second difference over evenly spaced lengths: 0 for a straight line
        return activations(method, 3072) - 2 * activations(method, 2048) + activations(method, 1024)

    assert abs(curvature("qlora")) <= 2  # rounding
    assert curvature("inference") > 10**8


def test_memory_model_is_within_ten_percent_of_the_h100_matrix():
    """The committed H100 measurements (benchmarks/results/matrix-*.json) against the model, as the lead's
    benchmarks/planner_accuracy.py compares them."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "planner_accuracy.py"
    if not script.is_file():
        pytest.skip("benchmarks/planner_accuracy.py is absent")
    spec = importlib.util.spec_from_file_location("planner_accuracy", script)
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    assert accuracy.main() == 0


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_memory_grows_with_sequence_and_micro_batch_and_falls_with_checkpointing(name, method):
    shape = load_shape(name)
    targets = DEFAULT_LORA_TARGETS[shape.model_type] if method != "full" else ()

    def peak(seq_len: int = 256, micro: int = 2, ckpt: int = 0) -> int:
        return peak_bytes(shape, Setup(method, seq_len, micro, ckpt, lora_targets=targets))

    seqs = [peak(seq_len=n) for n in (64, 128, 256, 512, 1024, 2048, 4096)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    micros = [peak(micro=m) for m in (1, 2, 3, 8, 16)]
    assert micros == sorted(micros) and len(set(micros)) == len(micros)
    ckpts = [peak(ckpt=k) for k in range(shape.num_layers)]
    assert ckpts == sorted(ckpts, reverse=True) and len(set(ckpts)) == len(ckpts)
    # Checkpointing the last layer too only adds its input: backward recomputes it at once.
    assert peak(ckpt=shape.num_layers) > peak(ckpt=shape.num_layers - 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("method", ["inference", "full", "lora", "qlora"])
def test_every_preset_and_method_plans(name, method):
    shape = load_shape(name)
    plan = make_plan(shape, budget(24), PlanRequest(method=method, examples=1000))
    assert tuple(plan.breakdown) == COMPONENTS and sum(plan.breakdown.values()) == plan.peak_vram_bytes
    assert plan.breakdown["weights"] > 0 and plan.breakdown["cuda_context"] == COEFFICIENTS.cuda_context_bytes
    assert set(plan.methods) == {"inference_fp32", "inference_bf16", "inference_nf4", "full", "lora", "qlora"}
    assert plan.methods["inference_nf4"] < plan.methods["inference_bf16"] < plan.methods["inference_fp32"]
    if plan.total_params > 10**8:  # a tiny model's adapters and their activations outweigh its weights
        assert max(plan.methods["qlora"], plan.methods["lora"]) < plan.methods["full"]
    # QLoRA is not always below LoRA: Falcon's 4-bit projections return fp32 activations (plan_memory.py).
    assert plan.fits == (plan.peak_vram_bytes <= 24 * GIB * (1 - COEFFICIENTS.safety_margin_fraction))
    assert Plan.from_json(plan.to_json()) == plan
    if method == "inference":
        assert plan.trainable_params == 0 and plan.optimizer == "none" and plan.gradient_accumulation_steps == 1


@pytest.mark.parametrize("name", ["falcon-7b", "llama-3-8b", "qwen2-7b"])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_more_vram_never_gives_a_smaller_micro_batch_or_shorter_sequence(name, method):
    shape = load_shape(name)
    request = PlanRequest(method=method, max_seq_len=1024)
    previous = None
    for vram in (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80):
        plan = make_plan(shape, budget(vram), request)
        if previous is not None and previous.fits:
            assert plan.fits
            assert (plan.max_seq_len, plan.micro_batch_size) >= (previous.max_seq_len, previous.micro_batch_size)
            if plan.micro_batch_size == previous.micro_batch_size and plan.max_seq_len == previous.max_seq_len:
                assert plan.checkpoint_layers <= previous.checkpoint_layers
        previous = plan
    assert previous.fits


@pytest.mark.parametrize("vram", [6, 8, 12, 16, 24, 48, 80])
def test_the_choice_is_the_largest_micro_batch_and_fewest_checkpointed_layers_that_fit(vram):
    shape = load_shape("falcon-7b")
    request = PlanRequest(effective_batch_size=16)
    plan = make_plan(shape, budget(vram), request)
    assert plan.fits
    usable = vram * GIB * (1 - COEFFICIENTS.safety_margin_fraction)

    def peak(micro: int, ckpt: int) -> int:
        return peak_bytes(shape, Setup("qlora", plan.max_seq_len, micro, ckpt, plan.optimizer, plan.lora_targets,
                                       plan.lora_r, plan.lora_dropout))

    assert peak(plan.micro_batch_size, plan.checkpoint_layers) == plan.peak_vram_bytes <= usable
    if plan.checkpoint_layers:
        assert peak(plan.micro_batch_size, plan.checkpoint_layers - 1) > usable
    assert plan.gradient_accumulation_steps == math.ceil(16 / plan.micro_batch_size)
    if plan.gradient_accumulation_steps > 1:  # one step fewer would need more rows than fit
        rows = math.ceil(16 / (plan.gradient_accumulation_steps - 1))
        assert peak(rows, shape.num_layers - 1) > usable
    assert plan.micro_batch_size == math.ceil(16 / plan.gradient_accumulation_steps)


def test_checkpointing_only_when_needed():
    shape = load_shape("llama-3.2-1b")
    roomy = make_plan(shape, budget(80), PlanRequest(effective_batch_size=8))
    assert (roomy.micro_batch_size, roomy.checkpoint_layers, roomy.gradient_checkpointing) == (8, 0, False)
    assert "not needed" in roomy.reasons["checkpoint_layers"]
    tight = make_plan(shape, budget(8), PlanRequest(effective_batch_size=8))
    assert tight.fits and 0 < tight.checkpoint_layers and tight.gradient_checkpointing


def test_forced_settings_are_kept_or_reported_as_not_fitting():
    shape = load_shape("falcon-7b")
    forced = make_plan(shape, budget(80), PlanRequest(micro_batch_size=3, gradient_checkpointing=True))
    assert (forced.micro_batch_size, forced.checkpoint_layers, forced.gradient_accumulation_steps) == (3, 32, 6)
    off = make_plan(shape, budget(80), PlanRequest(gradient_checkpointing=False))
    assert off.fits and off.checkpoint_layers == 0
    too_big = make_plan(shape, budget(24), PlanRequest(micro_batch_size=16, gradient_checkpointing=False))
    assert not too_big.fits and (too_big.micro_batch_size, too_big.checkpoint_layers) == (16, 0)
    assert any(a.flags.startswith("drop --micro-batch") for a in too_big.alternatives)


def test_sequence_shortens_when_the_requested_one_does_not_fit():
    shape = load_shape("falcon-7b")  # math attention: memory per token grows with the sequence
    plan = make_plan(shape, budget(8), PlanRequest(max_seq_len=8192))
    assert plan.fits and 256 <= plan.max_seq_len < 8192 and plan.max_seq_len % 64 == 0
    assert "8192 tokens do not fit" in plan.reasons["max_seq_len"]
    longer = make_plan(shape, budget(8), PlanRequest(max_seq_len=plan.max_seq_len + 64, micro_batch_size=1))
    assert longer.max_seq_len < plan.max_seq_len + 64


def test_does_not_fit_lists_the_nearest_settings_that_do():
    shape = load_shape("falcon-7b")
    lora = make_plan(shape, budget(8), PlanRequest(method="lora"))
    assert not lora.fits and "exceeds the budget" in lora.reasons["fits"]
    flags = [a.flags for a in lora.alternatives]
    assert "--method qlora" in flags and any(flag.startswith("--gpu") for flag in flags)
    assert all(a.peak_vram_bytes <= 80 * GIB for a in lora.alternatives)
    full = make_plan(shape, budget(24), PlanRequest(method="full"))
    assert not full.fits and {"--method qlora", "--method lora"} <= {a.flags for a in full.alternatives}
    nothing = make_plan(shape, budget(3), PlanRequest())
    assert not nothing.fits and [a.flags for a in nothing.alternatives] == ['--gpu "RTX 3070"']
    # Falcon-40B's 4-bit weights nearly fill 25.3 GiB: 256 tokens (the automatic floor) do not fit, fewer do.
    shorter = make_plan(load_shape("falcon-40b"), budget(25.3), PlanRequest(lora_r=4))
    seq_flags = [a.flags for a in shorter.alternatives if a.flags.startswith("--seq-len")]
    assert not shorter.fits and len(seq_flags) == 1
    seq_len = int(seq_flags[0].split()[-1])
    assert seq_len < 256 and seq_len % 64 == 0
    assert make_plan(load_shape("falcon-40b"), budget(25.3), PlanRequest(lora_r=4, max_seq_len=seq_len)).fits
    assert not make_plan(load_shape("falcon-40b"), budget(25.3), PlanRequest(lora_r=4, max_seq_len=seq_len + 64,
                                                                              micro_batch_size=1)).fits


def test_no_gpu_plans_the_least_memory_and_names_the_smallest_card():
    plan = make_plan(load_shape("falcon-7b"), None, PlanRequest())
    assert not plan.fits and plan.vram_budget_bytes == 0 and plan.gpu is None
    assert (plan.micro_batch_size, plan.checkpoint_layers, plan.optimizer) == (1, 31, "paged_adamw_8bit")
    assert plan.reasons["fits"] == "no GPU detected: pass --vram or --gpu"
    assert plan.estimated_tokens_per_second is None and plan.estimated_hours is None
    smallest = min((g for g in GPUS if make_plan(load_shape("falcon-7b"), GpuSpec.from_table(g), PlanRequest()).fits),
                   key=lambda g: (g.vram_gib, g.bf16_tflops))
    assert plan.alternatives[-1].flags == f'--gpu "{smallest.name}"'


def test_optimizer_fused_for_adapters_paged_8bit_when_it_buys_something():
    shape = load_shape("falcon-7b")
    qlora = make_plan(shape, budget(24), PlanRequest())
    assert qlora.optimizer == "adamw_fused" and "only the LoRA adapters" in qlora.reasons["optimizer"]
    full = make_plan(load_shape("llama-3.2-1b"), budget(24), PlanRequest(method="full"))
    assert full.fits and full.optimizer == "paged_adamw_8bit" and "all parameters" in full.reasons["optimizer"]
    fused_full = peak_bytes(load_shape("llama-3.2-1b"), Setup("full", full.max_seq_len, full.micro_batch_size,
                                                               full.checkpoint_layers, "adamw_fused"))
    assert fused_full > full.peak_vram_bytes


@pytest.mark.parametrize(("card", "dtype"), [("RTX 4090", "bfloat16"), ("A100 80GB", "bfloat16"),
                                             ("T4", "float16"), ("V100", "float16")])
def test_compute_dtype_follows_compute_capability(card, dtype):
    assert compute_dtype_for(gpu(card))[0] == dtype
    assert make_plan(load_shape("tiny-falcon"), gpu(card), PlanRequest()).compute_dtype == dtype


def test_compute_dtype_without_a_known_card_is_bf16():
    assert compute_dtype_for(None)[0] == "bfloat16"


def test_trainable_params_for_falcon_7b_query_key_value():
    plan = make_plan(load_shape("falcon-7b"), budget(24), PlanRequest(lora_targets=("query_key_value",)))
    assert (plan.total_params, plan.trainable_params) == (6_921_720_704, 4_718_592)


def test_lora_targets_are_checked_one_by_one():
    shape = load_shape("falcon-7b")
    with pytest.raises(UserError, match="'query_key_valuedense'") as error:
        validate_lora_targets(shape, ("query_key_valuedense", "dense_h_to_4h"))
    assert "query_key_value, dense, dense_h_to_4h, dense_4h_to_h" in error.value.hint
    assert "without a comma" in error.value.hint
    with pytest.raises(UserError, match="No LoRA target"):
        validate_lora_targets(shape, ())
    assert validate_lora_targets(shape, ("dense", "dense", "query_key_value")) == ("dense", "query_key_value")
    assert validate_lora_targets(load_shape("qwen2-7b"), "all-linear") == DEFAULT_LORA_TARGETS["qwen2"]
    with pytest.raises(UserError, match="q_proj"):
        make_plan(shape, budget(24), PlanRequest(lora_targets=("q_proj",)))


def test_plan_request_reports_every_problem_at_once():
    with pytest.raises(UserError) as error:
        PlanRequest(method="dpo", lora_r=0, examples=10, tokens=10, epochs=0)
    for fragment in ("'dpo'", "rank", "not both", "epochs"):
        assert fragment in error.value.message


def test_json_round_trip_with_alternatives_gpu_and_no_gpu():
    shape = load_shape("falcon-7b")
    for plan in (make_plan(shape, gpu("RTX 4090"), PlanRequest(examples=100)),
                 make_plan(shape, budget(8), PlanRequest(method="lora")),
                 make_plan(shape, None, PlanRequest())):
        data = plan.to_json()
        assert isinstance(data["lora_targets"], list)
        assert Plan.from_json(data) == plan
    assert isinstance(Plan.from_json(make_plan(shape, budget(8), PlanRequest(method="lora")).to_json())
                      .alternatives[0], Alternative)


def test_json_unknown_keys_warn_and_missing_keys_fail(capsys):
    data = make_plan(load_shape("tiny-falcon"), budget(8), PlanRequest()).to_json()
    assert Plan.from_json({**data, "from_the_future": 1}) == Plan.from_json(data)
    assert "from_the_future" in capsys.readouterr().err
    with pytest.raises(UserError, match="micro_batch_size"):
        Plan.from_json({key: value for key, value in data.items() if key != "micro_batch_size"})


def test_flops_per_token_follow_the_rules():
    shape = load_shape("falcon-7b")
    n = shape.linear_weight_params

    def flops(method: str, fraction: float = 0.0, trainable: int = 0) -> float:
        return training_flops_per_token(shape, method, fraction, context_tokens=0, trainable_params=trainable,
                                        labelled_fraction=0.0)

    assert flops("full") == 6 * n
    assert flops("qlora") == 4 * n
    assert flops("qlora", 1.0) == 6 * n and flops("full", 0.5) == 7 * n
    assert flops("lora", trainable=1000) == 4 * n + 6000


def test_time_and_cost():
    shape = load_shape("falcon-7b")
    request = PlanRequest(examples=10_000, epochs=2, price_per_kwh=0.5)
    plan = make_plan(shape, gpu("RTX 4090"), request)
    tokens = 10_000 * request.mean_tokens_per_example * 2
    assert plan.estimated_hours == pytest.approx(tokens / plan.estimated_tokens_per_second / 3600)
    costs = cost_estimates(shape, request, plan)
    assert costs["trained_tokens"] == tokens
    assert costs["electricity"]["cost"] == pytest.approx(450 * plan.estimated_hours / 1000 * 0.5)
    p4d = next(row for row in costs["cloud"] if row["instance"] == "p4d.24xlarge")
    a100 = make_plan(shape, gpu("A100 40GB"), request)
    assert p4d["tokens_per_second"] == pytest.approx(8 * a100.estimated_tokens_per_second)
    assert p4d["usd"] == pytest.approx(tokens / p4d["tokens_per_second"] / 3600 * 32.77)
    assert costs["cloud_prices_date"]
    without_size = make_plan(shape, gpu("RTX 4090"), PlanRequest())
    assert without_size.estimated_tokens_per_second and without_size.estimated_hours is None
    assert make_plan(shape, budget(24), request).estimated_tokens_per_second is None  # no FLOPS known


def test_rules_of_thumb_are_the_seed_figures():
    thumbs = rules_of_thumb(1_000_000_000)
    assert thumbs["inference_fp32"] == 4_000_000_000 and thumbs["full"] == 24_000_000_000
    assert rules_of_thumb(70_000_000_000)["inference_fp32"] == 280_000_000_000
