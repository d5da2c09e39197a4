"""A tiny Falcon and its tokenizer, built offline: the demo's model and the tests' fixture.

The architecture is the real `FalconForCausalLM` (config shipped in `assets/tiny-falcon/config.json`), with random
weights. The tokenizer is a byte-level BPE trained on the shipped demo passages and the prompt template, with
Falcon's special-token layout (`<|endoftext|>` as EOS, no pad token). It shows the mechanics of the flow, never
quality: a random 2-layer model cannot answer questions.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from falcon_desktop.prompts import ABSTAIN, QAPrompt

TINY_SEED = 1234
EOS = "<|endoftext|>"


def asset_path(name: str) -> Path:
    """Path to a file shipped in `falcon_desktop/assets/`."""
    return Path(str(resources.files("falcon_desktop") / "assets" / name))


def _training_corpus() -> list[str]:
    texts = [QAPrompt(question="What is this?", context="A passage.").render() + ABSTAIN]
    squad = json.loads(asset_path("demo-squad.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"])
            texts.extend(qa["question"] for qa in paragraph["qas"])
    return texts


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer shaped like Falcon's: EOS `<|endoftext|>`, no pad token, no BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[">>ABSTRACT<<", ">>INTRODUCTION<<", EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, model_max_length=2048)


def build_tiny_model(directory: Path) -> Path:
    """Write the tiny Falcon (safetensors) and its tokenizer to `directory`; return it."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    config_data = json.loads(asset_path("tiny-falcon/config.json").read_text(encoding="utf-8"))
    tokenizer = build_tokenizer(config_data["vocab_size"])
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config_data.update(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    config = FalconConfig(**{k: v for k, v in config_data.items() if k not in ("architectures", "model_type")})
    config.architectures = ["FalconForCausalLM"]
    torch.manual_seed(TINY_SEED)
    model = FalconForCausalLM(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
