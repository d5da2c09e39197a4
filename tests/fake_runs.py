"""Run directories with a real (random) LoRA adapter on the tiny Falcon, until tests can use a trained run.

`make_adapter_run` writes what `falcon-desktop train` writes for `ask`, `eval`, `merge` and `runs`: adapter/ in peft
format with the tokenizer, and a run.json card. LoRA B matrices are drawn at random (peft starts them at zero) so
each adapter really changes the answers and two adapters differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def make_adapter_run(run_dir: Path, base_dir: Path, seed: int, card: dict | None = None) -> Path:
    import torch

    from falcon_desktop.model import ModelSettings, add_lora, load_base_model

    loaded = load_base_model(ModelSettings(str(base_dir), quantize=False, device="cpu"))
    model = add_lora(loaded.model, TARGETS, r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(str(run_dir / "adapter"))
    loaded.tokenizer.save_pretrained(str(run_dir / "adapter"))
    default_card = {
        "version": "0.1.0", "model": str(base_dir), "status": "finished", "steps": 7,
        "finished_at": f"2026-01-0{seed}T10:00:00",
        "data": {"source": "demo", "train_examples": 54, "fingerprint": "abc123"},
        "train": {"quantize": False},
        "metrics": {"final_loss": 2.5 + seed, "eval_before": {"exact": 0.0, "f1": 1.5, "total": 6},
                    "eval_after": {"exact": 10.0 * seed, "f1": 12.5 * seed, "total": 6}},
    }
    (run_dir / "run.json").write_text(json.dumps(card if card is not None else default_card), encoding="utf-8")
    return run_dir


def copy_runs(source: Path, runs_root: Path) -> Path:
    """Place prebuilt runs under a test's runs directory (the home differs per test)."""
    shutil.copytree(source, runs_root, dirs_exist_ok=True)
    return runs_root
