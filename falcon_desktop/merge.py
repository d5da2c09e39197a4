"""`falcon-desktop merge`: fuse a LoRA adapter into a 16-bit copy of its base, for serving without peft.

The base is loaded in bf16 (never 4-bit: merging into NF4 weights would round the sum back to 4 bits), the adapter
attached, `merge_and_unload` folds B@A*scale into each targeted weight, and the result is saved as standard
safetensors with the tokenizer and a model card (base, adapter, data, metrics from the run card). The directory is
written as checkpoints are (`atomic.write_directory`): beside the target, renamed into place once complete, so a
failed merge never leaves a half-written model.
Merging runs on the CPU by default: it is a few matrix products per layer, and a 16-bit 7B model (~14 GB) rarely
fits a consumer GPU next to anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from falcon_desktop import __version__
from falcon_desktop.atomic import refuse_existing, write_directory
from falcon_desktop.console import info
from falcon_desktop.errors import UserError
from falcon_desktop.prompts import ABSTAIN, QAPrompt
from falcon_desktop.runs import ADAPTER_CONFIG, adapter_label, base_model_of, read_json_file, resolve_adapter, run_card_of

DTYPES = ("bfloat16", "float16", "float32")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class MergeOptions:
    adapter: str                   # run name, run directory or adapter directory
    output: Path
    model: str | None = None       # base model; default: the one the adapter was trained on
    dtype: str = "bfloat16"        # of the saved weights; float16 for GPUs before compute capability 8.0
    device: str = "cpu"
    overwrite: bool = False
    trust_remote_code: bool = False


def _fmt(value: object, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def model_card(base: str, adapter_dir: Path, dtype: str) -> str:
    """README.md for the merged model: where it came from and how well it did, from the run card."""
    card = run_card_of(adapter_dir)
    lora = read_json_file(adapter_dir / ADAPTER_CONFIG) or {}
    data = card.data if card else {}
    metrics = card.metrics if card else {}
    targets = lora.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [str(targets)]
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        "tags: [falcon-desktop, lora, qlora, squad, question-answering]",
        "---",
        "",
        f"# {adapter_label(adapter_dir)} (merged)",
        "",
        f"{base} fine-tuned for extractive question answering on SQuAD-format data with LoRA by falcon-desktop, "
        f"the adapter merged into {dtype} weights by falcon-desktop {__version__} (no peft needed to run it).",
        "",
        "## Training",
        "",
        f"- Base model: `{base}`",
        f"- Adapter: `{adapter_dir}` (r={lora.get('r', '?')}, alpha={lora.get('lora_alpha', '?')}, "
        f"targets: {', '.join(targets) or '?'})",
        f"- Data: `{data.get('source', '?')}`, {data.get('train_examples', '?')} training examples, "
        f"fingerprint `{data.get('fingerprint', '?')}`",
        f"- Steps: {card.steps if card else '?'}, final training loss: {_fmt(metrics.get('final_loss'), 4)}",
        f"- Status: {card.status if card else 'unknown (no run card)'}",
        "",
        "## Evaluation",
        "",
        "Official SQuAD v2 exact match and F1 (%) on the run's held-out articles:",
        "",
        "| | exact | F1 | HasAns exact | HasAns F1 | NoAns exact | questions |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, key in (("before fine-tuning", "eval_before"), ("after fine-tuning", "eval_after")):
        scores = metrics.get(key) or {}
        lines.append(
            f"| {label} | {_fmt(scores.get('exact'))} | {_fmt(scores.get('f1'))} | {_fmt(scores.get('HasAns_exact'))} "
            f"| {_fmt(scores.get('HasAns_f1'))} | {_fmt(scores.get('NoAns_exact'))} | {scores.get('total', '-')} |"
        )
    example = QAPrompt("Where is the falcon found?", "The falcon is found on every continent except Antarctica.")
    lines += [
        "",
        "## Prompt format",
        "",
        f"The model was trained on this template and answers `{ABSTAIN}` when the passage holds no answer; "
        "stop at EOS or at a line starting with `###`:",
        "",
        "```text",
        example.render().rstrip("\n"),
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)",
        f'model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype="{dtype}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def merge_adapter(options: MergeOptions) -> Path:
    """Write the merged model to `options.output`; returns it."""
    import torch
    from transformers import AutoTokenizer

    from falcon_desktop.gguf_io import hf_directory
    from falcon_desktop.model import check_model_reference, load_adapter, load_causal_lm, resolve_device

    if options.dtype not in DTYPES:
        raise UserError(f"Unknown --dtype {options.dtype!r}.", f"Choose one of: {', '.join(DTYPES)}.")
    adapter_dir = resolve_adapter(options.adapter).resolve()
    base = options.model or base_model_of(adapter_dir)
    if not base:
        raise UserError(f"The adapter in {str(adapter_dir)!r} does not name its base model.", "Pass --model BASE.")
    weights = hf_directory(base)  # a .gguf base merges into its cached safetensors copy
    check_model_reference(weights)  # a moved or mistyped local base fails here with a message, not a traceback
    output = Path(options.output).expanduser()
    refuse_existing(output, options.overwrite)
    device = resolve_device(options.device)

    info(f"Loading {base} in {options.dtype} on {device} ...")
    # The loader train and ask use: a legacy Falcon config (RefinedWebModel) loads without remote code.
    model = load_causal_lm(weights, getattr(torch, options.dtype), device, options.trust_remote_code)
    has_tokenizer = any((adapter_dir / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir) if has_tokenizer else weights,
                                              trust_remote_code=options.trust_remote_code)
    info(f"Merging adapter {adapter_label(adapter_dir)!r} ...")
    merged = load_adapter(model, adapter_dir, "merge").merge_and_unload()

    def write(staging: Path) -> None:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(model_card(base, adapter_dir, options.dtype), encoding="utf-8")

    write_directory(output, write)
    info(f"Merged model written to {output}")
    return output
