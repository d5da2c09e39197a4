"""FSDP for the LoRA trainer: the model sharded over the ranks, its adapter and optimizer gathered whole to save.

PyTorch FSDP1 (`FullyShardedDataParallel`, `use_orig_params=True`), wrapped by peft's `fsdp_auto_wrap_policy`: one
FSDP unit per decoder layer (its frozen base weights) and one per LoRA matrix (trainable), the rest (embeddings,
final norm, head) in the root, which wraps the loss module so the forward and backward run through FSDP's hooks.
This is the Hugging Face / Answer.AI FSDP-QLoRA recipe. Not FSDP2 (`fully_shard`): it turns every parameter into a
DTensor, and bitsandbytes keeps a 4-bit weight's quantization state on the parameter object, recovering it when
lost by reassigning `module.weight` (`fix_4bit_weight_quant_state_from_module`), which FSDP2's per-parameter
bookkeeping does not expect; FSDP1 flattens 4-bit weights stored as bfloat16 (`ModelSettings.quant_storage`) with
the 16-bit parameters of their layer, as that recipe does. Units hold only frozen or only trainable parameters, so
FSDP allocates no gradient for the base. `use_orig_params=True` keeps the parameter objects, so the optimizer is
built over them as on one process.

The trainer's loss is already normalised over the whole step's answer tokens, so the gradients are summed across
ranks (a communication hook: FSDP's own reduce-scatter averages). The checkpoint keeps the single-process format -
the adapter's full state dict and the optimizer state keyed by parameter index - gathered to rank 0 with
`torch.distributed.checkpoint.state_dict`, so a run resumes on any number of ranks, sharded or not.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

ROOT_PREFIX = "model."  # the root wraps `AnswerLoss`, whose `model` attribute is the peft model


class ShardedModel:
    """The FSDP root over the loss module, and how its trainable parameters are named in the checkpoint."""

    def __init__(self, root: nn.Module, adapter_names: dict[str, str], parameter_names: dict[int, str],
                 device: torch.device) -> None:
        self.root = root
        self.device = device
        self.adapter_names = adapter_names      # peft's adapter key -> the parameter's name under the root
        self.parameter_names = parameter_names  # id(parameter) -> its name under the root

    @classmethod
    def wrap(cls, loss_module: nn.Module, model: nn.Module, device: torch.device) -> ShardedModel:
        from peft import get_peft_model_state_dict
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        parameter_names = {id(p): ROOT_PREFIX + name for name, p in trainable.items()}
        adapter_names = {key: parameter_names[id(p)]
                         for key, p in get_peft_model_state_dict(model, state_dict=trainable).items()}
        root = FullyShardedDataParallel(loss_module, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                                        sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                                        device_id=device, limit_all_gathers=True)
        root.register_comm_hook(None, _sum_shards)
        return cls(root, adapter_names, parameter_names, device)

    # ------------------------------------------------------------------------------------- saving (collective)
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The whole adapter on rank 0 under peft's keys (on GPUs empty on the other ranks).

        peft's own `get_peft_model_state_dict` finds the adapter by the names of the LoRA layers, which FSDP's
        wrappers change (`_fsdp_wrapped_module.`): the keys were mapped before wrapping instead.
        """
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.root, options=self._gathered(ignore_frozen_params=True))
        return {key: full[name] for key, name in self.adapter_names.items() if name in full}

    @staticmethod
    def save_adapter(model: nn.Module, weights: dict[str, torch.Tensor], directory: Path) -> None:
        """What `PeftModel.save_pretrained` writes (its config, for inference, and the weights), from `weights`: the
        wrapped model's own would miss the renamed layers."""
        from safetensors.torch import save_file

        config = model.peft_config["default"]
        replace(config, inference_mode=True).save_pretrained(str(directory))
        save_file({key: tensor.contiguous() for key, tensor in weights.items()},
                  str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The whole optimizer state on rank 0, keyed by parameter index like `optimizer.state_dict()`."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(self.root, optimizer, options=self._gathered())
        if not full:
            return {}
        index = {name: number for number, name in enumerate(n for group in full["param_groups"] for n in group["params"])}
        return {"state": {index[name]: state for name, state in full["state"].items()},
                "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                                 for group in full["param_groups"]]}

    # ------------------------------------------------------------------------------------ loading (every rank)
    def load(self, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, optimizer_state: dict) -> None:
        """Each rank reads the single-process checkpoint whole and keeps its shard."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        set_model_state_dict(self.root, {self.adapter_names[key]: tensor for key, tensor in weights.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))
        names = [self.parameter_names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        named = {"state": {names[int(number)]: state for number, state in optimizer_state["state"].items()},
                 "param_groups": [{**group, "params": [names[int(n)] for n in group["params"]]}
                                  for group in optimizer_state["param_groups"]]}
        set_optimizer_state_dict(self.root, optimizer, named, options=StateDictOptions(full_state_dict=True))

    def _gathered(self, **options):
        """Whole tensors: on GPUs copied to rank 0's memory alone; between CPU processes (where FSDP's offload to
        the CPU crashes, torch 2.13) on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=self.device.type == "cuda", **options)

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """The norm over every rank's shard of the gradients (a local norm would miss the others')."""
        return self.root.clip_grad_norm_(max_norm)


def _sum_shards(process_group, unsharded_grad, sharded_grad=None):  # noqa: ANN001 - FSDP's hook signature
    """FSDP communication hook: reduce-scatter by sum (FSDP's default averages over the ranks)."""
    if sharded_grad is None:  # an unsharded unit (NO_SHARD): every rank keeps the whole sum
        dist.all_reduce(unsharded_grad, group=process_group)
    else:
        dist.reduce_scatter_tensor(sharded_grad, unsharded_grad, group=process_group)
