"""The training session: everything `train`'s loop needs, built once from the config and the plan.

`setup` loads the model and the data, adds LoRA, compiles the layers if asked, builds the optimizer and its
schedule, and on `--resume` restores the newest readable checkpoint; `check_local_model` and `check_compile` refuse,
before the model loads, what would fail after it. The loop that uses the `Session` is in train.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.markup import escape

from falcon_desktop.attention import make_graph_safe
from falcon_desktop.checkpoint import TrainerState, list_checkpoints, load_newest_checkpoint
from falcon_desktop.console import info, warn
from falcon_desktop.data import fingerprint, split_by_article, tokenize_records
from falcon_desktop.distributed import Cluster
from falcon_desktop.errors import UserError
from falcon_desktop.fused_lora import install_fused_lora, install_fused_rms_norm
from falcon_desktop.model import (
    PAD_MULTIPLE,
    ModelSettings,
    add_lora,
    compile_layers,
    compile_style,
    compile_tip,
    compile_unavailable,
    decoder_layers,
    load_base_model,
    set_checkpointing,
)
from falcon_desktop.optim import make_optimizer, micro_batch_backward, schedule_phases, warmup_cosine_phases
from falcon_desktop.plan import Plan
from falcon_desktop.recorded_checkpoint import CheckpointStreams
from falcon_desktop.runs import RunCard, RunDir
from falcon_desktop.shapes import load_shape
from falcon_desktop.step_graphs import PAD_MULTIPLE as GRAPHS_PAD_MULTIPLE
from falcon_desktop.step_graphs import StepGraphs, graphs_unavailable
from falcon_desktop.train_config import TrainConfig


@dataclass
class Session:
    """Everything the loop needs, built once by `setup`."""

    config: TrainConfig
    plan: Plan
    run: RunDir
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    compute_dtype: torch.dtype
    examples: list
    lengths: list[int]
    eval_records: list
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    state: TrainerState
    card: RunCard
    schedules: dict[int, list[list[int]]] = field(default_factory=dict)  # epoch -> its steps' example indices
    cluster: Cluster = field(default_factory=Cluster)  # this process's rank of a multi-GPU run (distributed.py)
    pad_multiple: int = 1  # micro-batch lengths round up to it for compiled layers and recorded steps
    step_graphs: StepGraphs | None = None  # the steps' CUDA graphs (step_graphs.py); None: eager steps


def check_local_model(model: str) -> None:
    """A local model folder must hold a config and weights: said in a second, not after a failed load."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return  # a hub id: the loader resolves it
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json") for p in folder.glob(pattern)]
    missing = [name for name, present in (("config.json", (folder / "config.json").is_file()), ("weights", weights))
               if not present]
    if missing:
        raise UserError(f"The model folder {folder} lacks {' and '.join(missing)} (*.safetensors or *.bin).",
                        "Pass a folder saved with save_pretrained (config.json, weights, tokenizer files), or a hub id.")


def check_compile(cluster: Cluster, device: torch.device, model: str) -> None:
    """Refuse --compile where it cannot run or cannot be trusted, before the model loads."""
    if load_shape(model).alibi:  # transformers' attention, not our fast path (attention.py), runs these layers
        raise UserError("--compile is not supported for Falcon models with ALiBi attention: compiled, their attention "
                        "computed gradients 0.4-4% off in our tests (tests/test_compile.py).",
                        "Train without --compile.")
    if cluster.distributed:
        raise UserError("--compile is not supported with several GPUs yet (DDP/FSDP wrap the layers it compiles).",
                        "Train without --compile, or on one GPU.")
    reason = compile_unavailable(device)
    if reason:
        raise UserError(f"--compile cannot run here: {reason}.", "Train without --compile.")


def adapted_for_training(base: torch.nn.Module, plan: Plan, eager_one_device: bool = True):
    """The base model as the plan trains it: LoRA adapters, the fused kernels the memory model prices (fused_lora.py;
    peft's own layers under FSDP, as plan_parallel.ShardedPricer prices them) and the plan's checkpointed layers,
    whose first forward builds no autograd graph where the steps run eagerly on one device (`eager_one_device`: not
    compiled, not distributed; model.GraphlessCheckpoint)."""
    model = add_lora(base, plan.lora_targets, plan.lora_r, plan.lora_alpha, plan.lora_dropout)
    install_fused_rms_norm(model)
    if plan.sharding != "fsdp":
        install_fused_lora(model)
    set_checkpointing(model, plan.checkpoint_layers, graphless_forward=eager_one_device)
    return model


def setup(config: TrainConfig, plan: Plan, card: RunCard | None, report, cluster: Cluster | None = None) -> Session:
    """Build the session; `card` is the run being resumed, None for a fresh run."""
    run = RunDir(Path(config.output))
    cluster = cluster or Cluster()
    torch.manual_seed(config.seed)

    loaded = load_base_model(ModelSettings(config.model, config.quantize, plan.compute_dtype,
                                           cluster.device_for(config.device), config.trust_remote_code,
                                           quant_storage="bfloat16" if plan.sharding == "fsdp" else None))
    _keep_4bit_weights_trainable(loaded.model)
    plan = fit_plan_to_device(plan, loaded.device)
    examples, eval_records, data_card = _prepare_data(config, plan, loaded.tokenizer, report)
    style = compile_style(config.compile, loaded.device.type, plan.checkpoint_layers)
    model = adapted_for_training(loaded.model, plan, eager_one_device=style == "eager" and not cluster.distributed)
    if style == "graphs":
        info(f"Compiling {compile_layers(model, style)} decoder layers as CUDA graphs (torch.compile) at the first "
             "steps and at each new batch shape.")
    elif style == "kernels":
        ckpt = plan.checkpoint_layers
        why = f"; not as CUDA graphs: {ckpt} layers are checkpointed" if ckpt else ""
        info(f"Compiling {compile_layers(model, style)} decoder layers (torch.compile{why}) at the first steps.")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable != plan.trainable_params:
        warn(f"peft trains {trainable:,} parameters; the plan counted {plan.trainable_params:,}.")
    info(f"Trainable parameters: {trainable:,} of {plan.total_params:,} "
         f"(LoRA r={plan.lora_r} on {', '.join(plan.lora_targets)}).")
    cluster.prepare(model, plan.sharding)  # FSDP shards here (counted whole above), before the optimizer is built

    steps_per_epoch = math.ceil(len(examples) / plan.effective_batch_size)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    tip = compile_tip(config.compile, loaded.device.type, plan.checkpoint_layers, total_steps,
                      lambda: compile_unavailable(loaded.device),
                      bool(getattr(loaded.model.config, "alibi", False)), cluster.distributed, str(run.root))
    if tip:
        info(tip)
    phases = schedule_phases(card, total_steps, config.learning_rate)
    optimizer = make_optimizer(model, plan.optimizer, config.learning_rate, loaded.device)
    lr_factor = warmup_cosine_phases(phases, config.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    state = TrainerState(token_budget=plan.micro_batch_size * plan.max_seq_len)
    scaler = torch.amp.GradScaler(loaded.device.type, enabled=loaded.compute_dtype == torch.float16)
    graphs = make_step_graphs(config, plan, model, style, cluster, loaded.compute_dtype, scaler, loaded.device)

    if card is not None:
        if card.data.get("fingerprint") not in (None, data_card["fingerprint"]):
            raise UserError(
                "The training data changed since this run started (its fingerprint differs).",
                "Resume with the same --data file, or start a new run with --output.",
            )
        state = _resume_state(run, model, optimizer, scheduler, state, total_steps, cluster)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_factor(state.step)  # the schedule's value, also where an extension begins
    card = card or RunCard(
        model=config.model, status="running", data=data_card, plan=plan.to_json(), train=config.to_json(),
        quantization=loaded.quantization.to_json() if loaded.quantization else None,
    )
    card.status, card.trainable_params, card.total_steps, card.schedule = "running", trainable, total_steps, phases
    # How this command runs: --max-steps and --compile may change on resume.
    card.train = {**card.train, "max_steps": config.max_steps, "compile": config.compile, "compile_style": style,
                  "cuda_graphs": graphs is not None}
    if cluster.is_main:
        card.write(run.root)
    return Session(
        config, plan, run, model, loaded.tokenizer, loaded.device, loaded.compute_dtype, examples,
        [len(e.input_ids) for e in examples], eval_records, steps_per_epoch, total_steps, optimizer, scheduler,
        scaler, state, card, cluster=cluster,
        pad_multiple=GRAPHS_PAD_MULTIPLE if graphs else PAD_MULTIPLE[style], step_graphs=graphs,
    )


def make_step_graphs(config: TrainConfig, plan: Plan, model, style: str, cluster: Cluster,
                     compute_dtype: torch.dtype, scaler: torch.amp.GradScaler,
                     device: torch.device) -> StepGraphs | None:
    """The run's recorded steps, where it can record them (step_graphs.py); says why not on a GPU that cannot."""
    if not config.cuda_graphs:
        return None
    why_not = graphs_unavailable(device.type, plan.checkpoint_layers, style, cluster.distributed)
    if why_not is None and not plan.records_steps:
        why_not = f"the plan chose eager steps ({plan.reasons.get('records_steps', 'no reason saved')})"
    if why_not:
        if device.type == "cuda":
            info(f"Training steps run eagerly, not as CUDA graphs: {why_not}.")
        return None
    make_graph_safe(model)  # Falcon's head split copies an index to the GPU at every call, which cannot be recorded
    trainable = [p for p in model.parameters() if p.requires_grad]
    streams = CheckpointStreams(decoder_layers(model), device) if plan.checkpoint_layers else None
    info("Recording the training step as CUDA graphs, once per batch shape at its first step; lengths pad to "
         f"multiples of {GRAPHS_PAD_MULTIPLE}.")
    return StepGraphs(micro_batch_backward(cluster.loss_function(model), compute_dtype, scaler, device), trainable,
                      streams=streams)


def _resume_state(run: RunDir, model, optimizer, scheduler, fresh: TrainerState, total_steps: int,
                  cluster: Cluster) -> TrainerState:
    """The newest readable checkpoint's state; with none, the run starts over and the dead run's metrics go."""
    state = load_newest_checkpoint(run.checkpoints, model, optimizer, scheduler, cluster)
    if state is None:
        if list_checkpoints(run.checkpoints):
            warn(f"No checkpoint in {escape(str(run.checkpoints))} could be read.")
        info(f"No usable checkpoint in {escape(str(run.root))} yet: starting the run over from step 0.")
        state = fresh
    if cluster.is_main:
        run.metrics.truncate_after(state.step)
    info(f"Resuming {escape(str(run.root))} at step {state.step} of {total_steps}.")
    return state


def _keep_4bit_weights_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking NF4 weights for CPU inference.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode with an input that needs no gradient converts its
    weight, permanently, to a packed layout for `gemv_4bit` (`_convert_weight_packed_for_cpu`). The evaluation before
    training does exactly that, and every later training forward then runs a kernel without autograd: the gradient
    through the frozen 4-bit weights to the LoRA layers below is silently lost. Training must see the weights it loaded.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def fit_plan_to_device(plan: Plan, device: torch.device) -> Plan:
    """On the CPU there is no VRAM to plan for: a whole step per micro-batch, no checkpointing, plain AdamW
    (bitsandbytes' 8-bit optimizers are CUDA-only)."""
    if device.type == "cuda":
        return plan
    return replace(plan, micro_batch_size=max(plan.micro_batch_size, plan.effective_batch_size), checkpoint_layers=0,
                   gradient_checkpointing=False, optimizer="adamw", compute_dtype="float32")


def _prepare_data(config: TrainConfig, plan: Plan, tokenizer, report) -> tuple[list, list, dict]:
    train_records, eval_records = split_by_article(report.records, config.eval_fraction, config.seed)
    tokenized = tokenize_records(train_records, tokenizer, plan.max_seq_len)
    if not tokenized.examples:
        raise UserError(f"No training example fits in {plan.max_seq_len} tokens.", "Raise --seq-len.")
    data_card = {
        "source": str(config.data),
        "summary": report.summary(),
        "train_examples": len(tokenized.examples),
        "eval_records": len(eval_records),
        "fingerprint": fingerprint(tokenized.examples),
    }
    info(f"Data: {len(tokenized.examples):,} training examples, {len(eval_records):,} held-out questions.")
    return tokenized.examples, eval_records, data_card
