"""Operations dispatched per training step, eager vs `train --compile`'s compiled layers, on the CPU.

    python benchmarks/compile_op_count.py

A tiny random Llama (4 layers) with LoRA r16 on all seven linear kinds, dropout 0.05, the trainer's answer-only loss
and foreach AdamW; five warm-up steps (the compile, and the recompile that makes lengths dynamic), then one step under
torch.profiler. "top-level" counts the operations Python and the autograd engine dispatch one by one, the source of a
small model's per-step fixed cost on a GPU (docs/benchmarks.md). A proxy only: GPU kernel launches and time are
measured on the GPU, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from falcon_desktop.loss import answer_loss_sum, answer_targets  # noqa: E402
from falcon_desktop.model import add_lora, backbone_and_head, decoder_layers  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WARMUP_LENGTHS = (37, 50, 61, 45, 52)


def count_ops(compiled: bool) -> dict[str, int]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    model = add_lora(AutoModelForCausalLM.from_config(config), TARGETS, 16, 32, 0.05)
    if compiled:
        for layer in decoder_layers(model):
            layer.compile()
    model.train()
    backbone, head = backbone_and_head(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, foreach=True)

    def step(length: int) -> None:
        input_ids = torch.randint(0, config.vocab_size, (4, length))
        labels = input_ids.clone()
        labels[:, : length - 5] = -100
        answer_loss_sum(backbone, head, input_ids, *answer_targets(labels)).backward()
        optimizer.step()
        optimizer.zero_grad()

    for length in WARMUP_LENGTHS:
        step(length)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(47)
    events = profiler.events()
    return {"top-level": sum(1 for e in events if e.cpu_parent is None), "all": len(events),
            "aten": sum(1 for e in events if e.name.startswith("aten::"))}


if __name__ == "__main__":
    torch.set_num_threads(2)
    for compiled in (False, True):
        counts = count_ops(compiled)
        print(f"{'compiled' if compiled else 'eager':>8}: " + ", ".join(f"{k} ops {v:,}" for k, v in counts.items()))
