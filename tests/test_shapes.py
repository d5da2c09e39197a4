"""Model shapes: parameter counts must equal what transformers builds and what peft trains, for every architecture.

Models are built on the meta device (no memory, instant), so full-size configs are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falcon_desktop.errors import UserError
from falcon_desktop.shapes import (
    DEFAULT_LORA_TARGETS, LORA_TARGETS, PRESETS, load_shape, model_reference, preset_config, shape_from_config,
)

PRESET_DIR = Path(__file__).resolve().parents[1] / "falcon_desktop" / "assets" / "presets"

# Totals published with each model (and reproduced by transformers below).
PUBLISHED_TOTALS = {
    "falcon-7b": 6_921_720_704,
    "falcon-40b": 41_303_293_952,
    "falcon-rw-1b": 1_311_625_216,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "llama-3.2-1b": 1_235_814_400,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
    "tiny-falcon": 217_472,
}

_LEGACY_KEYS = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_head_kv": "num_kv_heads"}

# Tiny configs covering every branch of every supported architecture.
TINY_CONFIGS = {
    "falcon-mqa": {"model_type": "falcon", "vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "multi_query": True, "parallel_attn": True, "bias": False},
    "falcon-mha-sequential-bias": {"model_type": "falcon", "vocab_size": 96, "hidden_size": 32,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "multi_query": False,
                                   "parallel_attn": False, "bias": True, "alibi": True},
    "falcon-new-arch": {"model_type": "falcon", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True},
    "falcon-new-arch-one-ln": {"model_type": "falcon", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True,
                               "num_ln_in_parallel_attn": 1, "ffn_hidden_size": 100, "tie_word_embeddings": False},
    "falcon-legacy-refinedwebmodel": {"model_type": "RefinedWebModel", "vocab_size": 96, "hidden_size": 32,
                                      "n_layer": 2, "n_head": 4, "multi_query": True, "parallel_attn": True},
    "falcon-legacy-refinedweb": {"model_type": "RefinedWeb", "vocab_size": 96, "hidden_size": 64, "n_layer": 2,
                                 "n_head": 8, "n_head_kv": 2, "parallel_attn": True, "bias": False},
    "llama-gqa": {"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 80,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "llama-biases-tied-head-dim": {"model_type": "llama", "vocab_size": 96, "hidden_size": 32,
                                   "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "num_key_value_heads": 1, "head_dim": 16, "attention_bias": True,
                                   "mlp_bias": True, "tie_word_embeddings": True},
    "mistral": {"model_type": "mistral", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 80,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 80,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "qwen2-tied": {"model_type": "qwen2", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 80,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                   "tie_word_embeddings": True},
}


def native_config(config: dict):
    """The transformers config object for a config.json dict (legacy Falcon keys translated by hand)."""
    from transformers import CONFIG_MAPPING

    config = {key: value for key, value in config.items() if key not in ("auto_map", "architectures")}
    model_type = config.pop("model_type")
    if model_type in ("RefinedWebModel", "RefinedWeb"):
        config = {_LEGACY_KEYS.get(key, key): value for key, value in config.items()}
        config["new_decoder_architecture"] = model_type == "RefinedWeb"
        model_type = "falcon"
    return CONFIG_MAPPING[model_type](**config)


def meta_model(config: dict):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(native_config(config))


def counts_by_kind(model) -> dict[str, int]:
    """transformers' parameters grouped as shapes.py groups them, by module path."""
    kinds = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    for name, parameter in model.named_parameters():  # tied weights are listed once
        if "word_embeddings" in name or "embed_tokens" in name:
            kind = "embeddings"
        elif name.startswith("lm_head"):
            kind = "head"
        elif "norm" in name or ".ln_" in name or "ln_f" in name:
            kind = "norms"
        elif "self_attention" in name or "self_attn" in name:
            kind = "attention"
        else:
            kind = "mlp"
        kinds[kind] += parameter.numel()
    return kinds


def test_every_preset_file_is_a_preset_and_back():
    files = sorted(path.stem for path in PRESET_DIR.glob("**/*.json"))
    assert len(files) == 9
    assert set(files) == set(PRESETS) - {"tiny-falcon"}
    assert set(PUBLISHED_TOTALS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_totals_equal_published_and_transformers(name):
    shape = load_shape(name)
    assert shape.total_params == PUBLISHED_TOTALS[name]
    model = meta_model(preset_config(name))
    assert sum(p.numel() for p in model.parameters()) == shape.total_params
    assert counts_by_kind(model) == shape.parameter_counts()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_configs_match_transformers_by_module_kind(name):
    config = TINY_CONFIGS[name]
    shape = shape_from_config(config, name)
    model = meta_model(config)
    assert counts_by_kind(model) == shape.parameter_counts()
    assert shape.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_linear_modules_are_the_models_linear_layers(name):
    from torch import nn

    config = TINY_CONFIGS[name]
    shape = shape_from_config(config, name)
    found = {}
    for module_name, module in meta_model(config).named_modules():
        if isinstance(module, nn.Linear) and module_name != "lm_head":
            found[module_name.split(".")[-1]] = (module.in_features, module.out_features)
    assert found == shape.linear_modules()
    assert tuple(found) == tuple(LORA_TARGETS[shape.model_type])


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("r", [1, 8])
def test_lora_trainable_counts_equal_peft(name, r):
    import torch
    from peft import LoraConfig, get_peft_model

    config = TINY_CONFIGS[name]
    shape = shape_from_config(config, name)
    targets = DEFAULT_LORA_TARGETS[shape.model_type]
    for subset in (targets[:1], targets):
        with torch.device("meta"):
            model = get_peft_model(meta_model(config), LoraConfig(r=r, target_modules=list(subset)))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert shape.lora_parameters(subset, r) == trainable


def test_falcon_7b_lora_r16_on_query_key_value_trains_4718592():
    import torch
    from peft import LoraConfig, get_peft_model

    shape = load_shape("falcon-7b")
    assert shape.lora_parameters(("query_key_value",), 16) == 4_718_592
    with torch.device("meta"):
        model = get_peft_model(meta_model(preset_config("falcon-7b")),
                               LoraConfig(r=16, target_modules=["query_key_value"]))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_718_592


def test_falcon_legacy_and_native_configs_give_one_shape(shared_dir):
    legacy = json.loads((shared_dir / "data/falcon-7b/config.json").read_text(encoding="utf-8"))
    native = json.loads((shared_dir / "data/falcon-7b/config-instruct-native.json").read_text(encoding="utf-8"))
    assert legacy["model_type"] == "RefinedWebModel" and native["model_type"] == "falcon"
    legacy_shape, native_shape = shape_from_config(legacy, "x"), shape_from_config(native, "x")
    assert legacy_shape == native_shape
    assert legacy_shape.total_params == 6_921_720_704


@pytest.mark.parametrize(("name", "kind", "kv_heads"), [
    ("falcon-7b", "MQA", 1), ("falcon-40b", "GQA", 8), ("falcon-rw-1b", "MHA", 32), ("llama-3-8b", "GQA", 8),
    ("qwen2-7b", "GQA", 4), ("smollm2-135m", "GQA", 3),
])
def test_attention_kinds(name, kind, kv_heads):
    shape = load_shape(name)
    assert (shape.attention_kind, shape.num_kv_heads) == (kind, kv_heads)


def test_falcon_40b_has_two_layer_norms_and_broadcasts_kv():
    shape = load_shape("falcon-40b")
    assert shape.norms_per_layer == 2 and shape.new_decoder_architecture
    assert shape.attention_kv_heads == shape.num_heads == 128


def test_unknown_model_type_names_it_and_the_supported_ones():
    with pytest.raises(UserError, match="'gpt2'") as error:
        shape_from_config({"model_type": "gpt2", "n_embd": 768}, "gpt2")
    assert "falcon" in error.value.hint and "qwen2" in error.value.hint and "RefinedWeb" in error.value.hint


def test_missing_key_is_a_user_error():
    config = {key: value for key, value in TINY_CONFIGS["llama-gqa"].items() if key != "intermediate_size"}
    with pytest.raises(UserError, match="intermediate_size"):
        shape_from_config(config, "broken")


def test_load_shape_preset_names_are_case_insensitive_and_hub_ids_of_presets_work_offline():
    assert load_shape("Falcon-7B").name == "falcon-7b"
    by_id = load_shape("tiiuae/falcon-7b")
    assert by_id.name == "tiiuae/falcon-7b" and by_id.total_params == PUBLISHED_TOTALS["falcon-7b"]


def test_model_reference_turns_presets_into_hub_ids():
    assert model_reference("Falcon-7B") == "tiiuae/falcon-7b"
    assert model_reference("qwen2-7b") == "Qwen/Qwen2-7B"
    assert model_reference("./my-model") == "./my-model" and model_reference("org/model") == "org/model"


def test_load_shape_from_directory_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIGS["qwen2"]), encoding="utf-8")
    from_dir = load_shape(str(tmp_path))
    assert from_dir.model_type == "qwen2" and from_dir.source == "directory"
    assert load_shape(str(tmp_path / "config.json")) == shape_from_config(TINY_CONFIGS["qwen2"], str(
        tmp_path / "config.json"), "file")


def test_load_shape_errors(tmp_path):
    with pytest.raises(UserError, match="holds no config.json"):
        load_shape(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "vocab_size": }', encoding="utf-8")
    with pytest.raises(UserError, match="line 2, column"):
        load_shape(str(tmp_path))
    with pytest.raises(UserError, match="Did you mean falcon-7b") as error:
        load_shape("falcon-7")
    assert "llama-3-8b" in error.value.hint


def test_hub_id_offline_and_uncached_is_a_user_error():
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        load_shape("someone/not-a-cached-model")


def test_hub_id_is_read_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--tiny-llama" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_CONFIGS["llama-gqa"]), encoding="utf-8")
    (tmp_path / "models--someone--tiny-llama" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-llama" / "refs" / "main").write_text("abc123", encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    shape = load_shape("someone/tiny-llama")
    assert shape.source == "hub" and shape.model_type == "llama"
