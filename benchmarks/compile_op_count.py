"""Operations dispatched per training step, eager vs `train --compile`'s compiled layers, on the CPU.

    python benchmarks/compile_op_count.py

A tiny random Llama (4 layers) with LoRA r16 on all seven linear kinds, dropout 0.05, the trainer's answer-only loss
and foreach AdamW; five warm-up steps (the compile, and the recompile that makes lengths dynamic), then one step under
torch.profiler. "top-level" counts the operations Python and the autograd engine dispatch one by one, the source of a
small model's per-step fixed cost on a GPU (docs/benchmarks.md). A proxy only: GPU kernel launches and time are
measured on the GPU, not here.
"""
import torch
from torch.profiler import profile, ProfilerActivity
from transformers import LlamaConfig, AutoModelForCausalLM
from falcon_desktop.model import add_lora, decoder_layers, backbone_and_head
from falcon_desktop.loss import answer_loss_sum
torch.set_num_threads(2)
cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
for comp in (False, True):
    torch.manual_seed(0)
    m = add_lora(AutoModelForCausalLM.from_config(cfg), ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], 16, 32, 0.05)
    if comp:
        for layer in decoder_layers(m): layer.compile()
    m.train(); bb, head = backbone_and_head(m)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, foreach=True)
    def step(L):
        ids = torch.randint(0, 256, (4, L)); labels = ids.clone(); labels[:, :L-5] = -100
        loss = answer_loss_sum(bb, head, ids, labels); loss.backward(); opt.step(); opt.zero_grad()
    for L in (37, 50, 61, 45, 52):  # warm-up: compile and the dynamic-shape recompile
        step(L)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(47)
    events = prof.events()
    top = [e for e in events if e.cpu_parent is None]
    print("compiled" if comp else "eager", "top-level ops:", len(top), "all ops:", len(events),
          "aten ops:", sum(1 for e in events if e.name.startswith("aten::")))
