"""Are `train --compile`'s gradients right on the GPU path? LoRA gradients of one forward and backward of the
trainer's loss on an NF4 base with bf16 autocast, eager and compiled (fused kernels with and without checkpointed
layers, CUDA graphs), each against the same model computed in fp32 (same 4-bit weights, same LoRA init). bf16
rounds every matmul, so eager bf16 is itself a few percent off fp32: the check is that compiled is no further.

    python benchmarks/compile_gradients.py MODEL_DIR [--budget-s 200]      # a Llama-architecture model, on CUDA

Prints, per configuration: the loss, the worst relative L2 error of a LoRA tensor's gradient against fp32, and the
lowest cosine similarity. Results: benchmarks/results/compile-h200/gradients/.
"""

from __future__ import annotations

import argparse
import time

import torch

from falcon_desktop.attention import causal_fast_path
from falcon_desktop.distributed import AnswerLoss
from falcon_desktop.loss import answer_targets
from falcon_desktop.model import ModelSettings, add_lora, compile_layers, load_base_model, set_checkpointing

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_gradients(model_dir: str, compute_dtype: str, checkpoint_layers: int, style: str | None):
    """(loss, {name: gradient}) of the third call (a compiled model compiles and records in the first two)."""
    torch.manual_seed(0)
    loaded = load_base_model(ModelSettings(model_dir, quantize=True, compute_dtype=compute_dtype, device="cuda"))
    model = add_lora(loaded.model, LLAMA_TARGETS, 16, 32, 0.0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
            torch.nn.init.normal_(parameter, std=0.02)
    set_checkpointing(model, checkpoint_layers)
    if style:
        compile_layers(model, style)
    model.train()
    input_ids = torch.randint(0, 60000, (16, 256), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :200] = -100
    input_ids, targets = input_ids.cuda(), [t.cuda() for t in answer_targets(labels)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16")
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        with causal_fast_path(model):  # backward inside: checkpointed layers run their forward again there
            with autocast:
                loss = AnswerLoss(model)(input_ids, *targets)
            loss.backward()
    result = float(loss.detach()), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    del model, loaded
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no configuration after this")
    args = parser.parse_args()
    deadline = time.time() + args.budget_s
    reference_loss, reference = lora_gradients(args.model, "float32", 0, None)
    half = sum(1 for name in reference if "q_proj.lora_A" in name) // 2
    for label, dtype, checkpoint_layers, style in [
        ("bf16 eager, no checkpointing", "bfloat16", 0, None),
        ("bf16 eager, half checkpointed", "bfloat16", half, None),
        ("bf16 fused kernels, half checkpointed", "bfloat16", half, "kernels"),
        ("bf16 fused kernels, no checkpointing", "bfloat16", 0, "kernels"),
        ("bf16 CUDA graphs, no checkpointing", "bfloat16", 0, "graphs")]:
        if time.time() > deadline:
            print(f"{label}: skipped (budget)")
            continue
        loss, gradients = lora_gradients(args.model, dtype, checkpoint_layers, style)
        relative = max(((gradients[n] - reference[n]).norm() / reference[n].norm()).item() for n in reference)
        cosine = min(torch.nn.functional.cosine_similarity(gradients[n].flatten(), reference[n].flatten(), dim=0).item()
                     for n in reference)
        print(f"{label}: loss {loss:.5f} (fp32 {reference_loss:.5f}), worst relative L2 error {relative:.3e}, "
              f"lowest cosine {cosine:.5f}", flush=True)


if __name__ == "__main__":
    main()
