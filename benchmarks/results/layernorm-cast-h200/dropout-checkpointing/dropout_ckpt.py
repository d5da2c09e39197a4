"""Does a checkpointed compiled layer recompute the same LoRA dropout masks? Grads with all-but-one layer
checkpointed vs none, same seed, dropout 0.05; eager as the control (torch.utils.checkpoint restores the RNG)."""
import sys, time, torch
from falcon_desktop.attention import causal_fast_path
from falcon_desktop.distributed import AnswerLoss
from falcon_desktop.model import ModelSettings, add_lora, compile_layers, load_base_model, set_checkpointing, decoder_layers
T = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

def grads(model_dir, ckpt, style, dropout):
    torch.manual_seed(0)
    loaded = load_base_model(ModelSettings(model_dir, quantize=True, compute_dtype="bfloat16", device="cuda"))
    model = add_lora(loaded.model, T, 16, 32, dropout)
    for n, p in model.named_parameters():
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.02)
    layers = len(decoder_layers(model))
    set_checkpointing(model, layers - 1 if ckpt else 0)
    if style: compile_layers(model, style)
    model.train()
    ids = torch.randint(0, 60000, (16, 256), generator=torch.Generator().manual_seed(1)).cuda()
    labels = ids.clone(); labels[:, :200] = -100
    for i in range(3):
        torch.manual_seed(123); torch.cuda.manual_seed(123)
        model.zero_grad(set_to_none=True)
        with causal_fast_path(model):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = AnswerLoss(model)(ids, labels)
            loss.backward()
    out = float(loss), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    del model, loaded; torch._dynamo.reset(); torch.cuda.empty_cache()
    return out

def diff(a, b):
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)

import os
if os.environ.get("FALLBACK_RANDOM"):
    import torch._inductor.config as ic; ic.fallback_random = True
import transformers; print("transformers", transformers.__version__, "fallback_random", bool(os.environ.get("FALLBACK_RANDOM")))
start = time.time()
for style in os.environ.get("STYLES", "eager,kernels").split(","):
    style = None if style == "eager" else style
    for dropout in [float(x) for x in os.environ.get("DROPOUTS", "0.05,0.0").split(",")]:
        if time.time() - start > float(sys.argv[2]): print("budget"); break
        l0, g0 = grads(sys.argv[1], False, style, dropout)
        l1, g1 = grads(sys.argv[1], True, style, dropout)
        print(f"{style or 'eager'} dropout {dropout}: loss {l0:.5f} / ckpt {l1:.5f}; worst rel L2 ckpt vs none {diff(g1, g0):.3e}  t={time.time()-start:.0f}", flush=True)
