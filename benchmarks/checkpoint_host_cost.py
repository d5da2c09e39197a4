"""The host's work for one training micro-batch with checkpointed layers, by checkpoint form, on the CPU.

    python benchmarks/checkpoint_host_cost.py [--result benchmarks/results/checkpoint-host-cost-cpu.json]

A Llama-3-8B-deep tiny model (32 layers of width 64, so the kernels are negligible and what is timed is Python,
autograd and dispatch: the host's side of an eager step) in 4-bit NF4 with LoRA r16 on all seven linear kinds,
dropout 0.05, bf16 autocast, the trainer's fused layers and answer-only loss; forward and backward of a 1x16
micro-batch. Three forms: no layer checkpointed; 30 of 32 checkpointed with torch.utils.checkpoint's non-reentrant
form (the layers' graph built in forward, saved tensors dropped by Python hooks); the same 30 with
model.GraphlessCheckpoint (forward without autograd, what `train` runs on one device without --compile). Each form:
3 warm-up micro-batches, then the minimum and median of 6 rounds of 8. A proxy of the host's share only: what it
buys on a GPU depends on how much of the step waits on the host (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from falcon_desktop.fused_lora import install_fused_lora, install_fused_rms_norm  # noqa: E402
from falcon_desktop.loss import answer_loss_sum, answer_targets  # noqa: E402
from falcon_desktop.model import add_lora, backbone_and_head, set_checkpointing  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS, CHECKPOINTED = 32, 30
FORMS = {"none": (0, False), "non-reentrant": (CHECKPOINTED, False), "graphless": (CHECKPOINTED, True)}


def tiny_model(folder: Path, checkpoint_layers: int, graphless: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})
    model = add_lora(model, TARGETS, 16, 32, 0.05)
    install_fused_rms_norm(model)
    install_fused_lora(model)
    set_checkpointing(model, checkpoint_layers, graphless_forward=graphless)
    return model.train()


def time_form(folder: Path, checkpoint_layers: int, graphless: bool) -> dict:
    model = tiny_model(folder, checkpoint_layers, graphless)
    backbone, head = backbone_and_head(model)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :8] = -100
    positions, targets = answer_targets(labels, 8)

    def micro_batch() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = answer_loss_sum(backbone, head, ids, positions, targets)
        loss.backward()

    for _ in range(3):
        micro_batch()
    rounds = []
    for _ in range(6):
        started = time.perf_counter()
        for _ in range(8):
            micro_batch()
        rounds.append((time.perf_counter() - started) / 8 * 1e3)
    return {"checkpoint_layers": checkpoint_layers, "ms_min": round(min(rounds), 1),
            "ms_median": round(statistics.median(rounds), 1)}


def main() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2)
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        forms = {name: time_form(Path(folder), *form) for name, form in FORMS.items()}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread used", "torch": torch.__version__,
              "micro_batch": "1x16 tokens, 8 labelled", "forms": forms,
              "graphless_saves_of_checkpointing_cost": round(
                  1 - (forms["graphless"]["ms_min"] - forms["none"]["ms_min"])
                  / (forms["non-reentrant"]["ms_min"] - forms["none"]["ms_min"]), 3)}
    print(json.dumps(result, indent=2))
    if args.result:
        args.result.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
