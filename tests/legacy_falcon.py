"""A Falcon checkpoint in the form Falcon-7B was published in: `RefinedWebModel` config keys and `auto_map`.

transformers refuses such a config without trust_remote_code unless our loader translates it, so every verb that
loads a base (train, ask, eval, merge) is tested on one. The keys are those of tiiuae/falcon-7b's config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

AUTO_MAP = {"AutoConfig": "configuration_RW.RWConfig", "AutoModel": "modelling_RW.RWModel",
            "AutoModelForCausalLM": "modelling_RW.RWForCausalLM"}
# Keys the legacy config shares with transformers' FalconConfig.
_SHARED_KEYS = ("alibi", "apply_residual_connection_post_layernorm", "attention_dropout", "bias", "bos_token_id",
                "eos_token_id", "hidden_dropout", "hidden_size", "initializer_range", "layer_norm_epsilon",
                "multi_query", "parallel_attn", "use_cache", "vocab_size")


def legacy_config(native: dict, model_type: str = "RefinedWebModel") -> dict:
    """`native` (a FalconConfig dict) as the custom-code era wrote it: n_head, n_layer, n_head_kv, auto_map."""
    legacy = {key: native[key] for key in _SHARED_KEYS if key in native}
    legacy.update(model_type=model_type, architectures=["RWForCausalLM"], auto_map=AUTO_MAP,
                  n_head=native["num_attention_heads"], n_layer=native["num_hidden_layers"])
    if model_type == "RefinedWeb":  # Falcon-40B's code: grouped K/V heads
        legacy["n_head_kv"] = native["num_kv_heads"]
    return legacy


def legacy_falcon_copy(model_dir: Path, target: Path) -> Path:
    """A copy of the (old-architecture) Falcon in `model_dir` whose config.json has Falcon-7B's legacy form."""
    shutil.copytree(model_dir, target)
    native = json.loads((target / "config.json").read_text(encoding="utf-8"))
    assert not native.get("new_decoder_architecture"), "RefinedWebModel is the old decoder architecture"
    (target / "config.json").write_text(json.dumps(legacy_config(native), indent=2), encoding="utf-8")
    return target
