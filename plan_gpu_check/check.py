"""Temporary: CUDA check of the planner's memory model (saved tensors per row, and whole-step peaks)."""
import json, os, sys, time, tempfile, dataclasses
import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, CONFIG_MAPPING
from transformers.models.falcon import modeling_falcon
from peft import LoraConfig, get_peft_model
from falcon_desktop.shapes import shape_from_config, DEFAULT_LORA_TARGETS, load_shape, preset_config
from falcon_desktop.plan_memory import Setup, kept_activation_bytes, memory_breakdown, COEFFICIENTS
from falcon_desktop.loss import answer_loss_sum
from falcon_desktop.model import set_checkpointing, backbone_and_head

modeling_falcon.FalconLinear = nn.Linear  # as the trainer loads Falcon for bitsandbytes
dev = "cuda"
OUT = os.environ.get("OUT", ".")
rows = []

def native(cfg):
    cfg = {k: v for k, v in cfg.items() if k not in ("auto_map", "architectures")}
    mt = cfg.pop("model_type")
    if mt in ("RefinedWebModel", "RefinedWeb"):
        cfg = {{"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_head_kv": "num_kv_heads"}.get(k, k): v for k, v in cfg.items()}
        cfg["new_decoder_architecture"] = mt == "RefinedWeb"; mt = "falcon"
    return CONFIG_MAPPING[mt](**cfg)

SAVED = {}
def load(cfg, method, tmp):
    conf = native(cfg)
    if method == "qlora":
        key = json.dumps(cfg, sort_keys=True)
        if key not in SAVED:
            SAVED[key] = tempfile.mkdtemp()
            AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16).save_pretrained(SAVED[key])
        tmp = SAVED[key]
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, dtype=torch.bfloat16, device_map={"": dev}, attn_implementation="sdpa")
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16, attn_implementation="sdpa")

def saved(model, B, T, vocab):
    base = model.get_base_model(); backbone = getattr(base, base.base_model_prefix)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}
    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params: kept[s.data_ptr()] = s.nbytes()
        return t
    ids = torch.randint(0, vocab, (B, T), device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        e = backbone.get_input_embeddings()(ids); e.requires_grad_(True)
        backbone(inputs_embeds=e, use_cache=False)
    return sum(kept.values())

TINY = {
 "falcon-mqa": dict(model_type="falcon", vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=8, multi_query=True, parallel_attn=True),
 "falcon-new-arch": dict(model_type="falcon", vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True),
 "falcon-mha-seq-bias": dict(model_type="falcon", vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=8, multi_query=False, parallel_attn=False, bias=True),
 "falcon-alibi": dict(model_type="falcon", vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=8, multi_query=False, parallel_attn=False, bias=True, alibi=True),
 "llama": dict(model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=640, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2),
 "qwen2": dict(model_type="qwen2", vocab_size=512, hidden_size=256, intermediate_size=640, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2),
}
T = 128
for name, cfg in TINY.items():
    shape = shape_from_config(cfg, name); targets = DEFAULT_LORA_TARGETS[shape.model_type]
    for method in ("lora", "qlora"):
        with tempfile.TemporaryDirectory() as tmp:
            base = load(cfg, method, tmp)
        base.requires_grad_(False)
        for dropout in (0.05, 0.0):
            model = get_peft_model(base, LoraConfig(r=8, lora_dropout=dropout, target_modules=list(targets)))
            model.train()
            m = saved(model, 3, T, cfg["vocab_size"]) - saved(model, 2, T, cfg["vocab_size"])
            p = lambda B: kept_activation_bytes(shape, Setup(method, T, B, lora_targets=targets, lora_r=8, lora_dropout=dropout))
            pred = p(3) - p(2)
            rows.append({"check": "saved_per_row", "model": name, "method": method, "dropout": dropout, "measured": m, "predicted": pred, "ratio": round(pred / m, 4)})
            print(rows[-1], flush=True)
            base = model.unload()
            base.requires_grad_(False)
        del base; torch.cuda.empty_cache()

# Whole-step peaks: the trainer's loss, autocast, fused AdamW on the adapters.
def step_peak(name, cfg, micro, seq, ckpt, targets, optimizer_name="adamw_fused"):
    shape = shape_from_config(cfg, name)
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        base = load(cfg, "qlora", tmp)
    base.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(targets)))
    model.train(); set_checkpointing(model, ckpt)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    backbone, head = backbone_and_head(model)
    ids = torch.randint(0, cfg["vocab_size"], (micro, seq), device=dev)
    labels = torch.full_like(ids, -100)
    labels[:, -max(1, int(0.03 * seq)):] = ids[:, -max(1, int(0.03 * seq)):]
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = answer_loss_sum(backbone, head, ids, labels)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    alloc, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    b = memory_breakdown(shape, Setup("qlora", seq, micro, ckpt, optimizer_name, tuple(targets), 16, 0.05))
    pred_alloc = sum(b.values()) - b["cuda_context"] - b["allocator_slack"]
    row = {"check": "step_peak", "model": name, "micro": micro, "seq": seq, "ckpt": ckpt, "layers": shape.num_layers,
           "allocated": alloc, "reserved": reserved, "predicted_allocated": pred_alloc,
           "predicted_reserved": sum(b.values()) - b["cuda_context"], "ratio_alloc": round(pred_alloc / alloc, 4),
           "breakdown": b}
    rows.append(row); print({k: v for k, v in row.items() if k != "breakdown"}, flush=True)
    del model, base, opt; torch.cuda.empty_cache()

f7 = {k: v for k, v in preset_config("falcon-7b").items()}; f7["n_layer"] = 4
ll = dict(preset_config("llama-3.2-1b"))
json.dump(rows, open(os.path.join(OUT, "plan_gpu_check.json"), "w"), indent=1)
for micro, seq, ckpt in [(1, 512, 0), (8, 512, 2), (4, 1024, 0)]:
    step_peak("falcon-7b-4-layers", f7, micro, seq, ckpt, DEFAULT_LORA_TARGETS["falcon"])
json.dump(rows, open(os.path.join(OUT, "plan_gpu_check.json"), "w"), indent=1)
for micro, seq, ckpt in [(8, 512, 0), (16, 1024, 15)]:
    step_peak("llama-3.2-1b", ll, micro, seq, ckpt, DEFAULT_LORA_TARGETS["llama"])
json.dump(rows, open(os.path.join(OUT, "plan_gpu_check.json"), "w"), indent=1)
print("versions", torch.__version__, torch.version.cuda, torch.cuda.get_device_name())
