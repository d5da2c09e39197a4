"""Decoding speed of `falcon-desktop ask`: time to first token and tokens/s, batch 1, greedy, ~200-token prompt.

Runs the same code path as the REPL (`ask.Answerer`, transformers `generate` with a streamer) on a model
directory with an untrained LoRA adapter attached (an adapter's weights do not change its speed).
Usage: python benchmarks/ask_speed.py --model DIR --context-file FILE --result OUT.json [--no-quantize]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch


def main() -> None:
    from falcon_desktop.ask import Answerer
    from falcon_desktop.decoding import GenerationSettings
    from falcon_desktop.model import ModelSettings, add_lora, load_base_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--context-file", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    loaded = load_base_model(ModelSettings(args.model, quantize=not args.no_quantize, device="auto"))
    with tempfile.TemporaryDirectory() as adapter:
        peft_model = add_lora(loaded.model, ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], 16, 32, 0.05)
        peft_model.save_pretrained(adapter)
        loaded.model = peft_model.unload()
        answerer = Answerer(loaded, args.model, GenerationSettings(max_new_tokens=args.new_tokens))
        answerer.use_adapter(adapter)
        context = Path(args.context_file).read_text(encoding="utf-8")
        question = "What is the main subject of this passage?"
        prompt_tokens = answerer.count_tokens(context)
        runs = [answerer.ask(question, context) for _ in range(4)][1:]  # the first run warms up kernels
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "quantized": not args.no_quantize,
        "context_tokens": prompt_tokens,
        "new_tokens": [r.new_tokens for r in runs],
        "first_token_ms": round(1000 * statistics.median(r.first_token_seconds for r in runs), 1),
        "decode_tokens_per_second": round(statistics.median(r.tokens_per_second or 0 for r in runs), 1),
        "stop_reasons": [r.stop_reason for r in runs],
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
