"""Answer speed of `falcon-desktop ask` against plain transformers `generate`, in one run.

Batch 1, greedy, a ~200-token prompt (a passage and a question in the training template), 128 new tokens, a LoRA
adapter (r=16 on all four Falcon linear layers, random non-zero weights so it really computes) attached through peft.
For each precision (NF4 as QLoRA trained, then bf16) it times:
  plain     transformers `generate` with a streamer, as tutorials and our first version did
  eager     our StreamingDecoder without CUDA graphs (static KV cache only)
  ours      our StreamingDecoder as `ask` runs it: static KV cache and CUDA-graph replay, via `Answerer.ask`
Time to first token is from the call to the first new token (prompt processing included); tokens/s counts the
tokens after the first one over the time after it. Medians of 5 runs after one warm-up.

Usage: python benchmarks/ask_speed.py --model DIR --context-file FILE --result OUT.json [--precision nf4 bf16]
"""

from __future__ import annotations

import argparse
import gc
import os
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

QUESTION = "What is the main subject of this passage?"
TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


class _Clock:
    """A transformers streamer that only notes when tokens arrive (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.arrivals: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.arrivals.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        torch.cuda.synchronize()


def _summary(runs: list[tuple[float, float, int]]) -> dict:
    """(first token seconds, total seconds, new tokens) per run -> medians."""
    return {
        "first_token_ms": round(1000 * statistics.median(first for first, _, _ in runs), 1),
        "decode_tokens_per_second": round(statistics.median((n - 1) / (total - first) for first, total, n in runs), 1),
        "new_tokens": [n for _, _, n in runs],
    }


def _plain_generate(model, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    from falcon_desktop.fast_decode import input_device

    input_ids = torch.tensor([prompt_ids], device=input_device(model))
    runs = []
    for _ in range(repeats + 1):
        clock = _Clock()
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, streamer=clock, pad_token_id=0)
        runs.append((clock.arrivals[0] - clock.started, clock.arrivals[-1] - clock.started, len(clock.arrivals)))
    return _summary(runs[1:])


def _ours(answerer, context: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats + 1):
        result = answerer.ask(QUESTION, context)
        runs.append((result.first_token_seconds, result.total_seconds, result.new_tokens))
    # The first question of a session also records the CUDA graphs for its lengths.
    return {**_summary(runs[1:]), "first_question_first_token_ms": round(1000 * runs[0][0], 1)}


def _measure(model_dir: str, precision: str, context: str, new_tokens: int, repeats: int, modes: list[str]) -> dict:
    from peft import LoraConfig, get_peft_model

    from falcon_desktop.ask import Answerer
    from falcon_desktop.decoding import GenerationSettings
    from falcon_desktop.fast_decode import StreamingDecoder
    from falcon_desktop.generate import encode_prompt
    from falcon_desktop.model import ModelSettings, load_base_model

    loaded = load_base_model(ModelSettings(model_dir, quantize=precision == "nf4", device="auto"))
    settings = GenerationSettings(max_new_tokens=new_tokens)
    with tempfile.TemporaryDirectory() as adapter:
        torch.manual_seed(0)
        lora = get_peft_model(loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False))
        lora.save_pretrained(adapter)
        loaded.model = lora.unload()
        answerer = Answerer(loaded, model_dir, settings)
        answerer.use_adapter(adapter)
        prompt_ids = encode_prompt(answerer.tokenizer, QUESTION, context)
        result = {"prompt_tokens": len(prompt_ids)}
        if "plain" in modes:
            result["plain"] = _plain_generate(answerer.model, prompt_ids, new_tokens, repeats)
        if "eager" in modes:
            answerer._decoder = StreamingDecoder(answerer.model, cuda_graphs=False)
            result["eager"] = _ours(answerer, context, repeats)
        if "ours" in modes:
            answerer._decoder = StreamingDecoder(answerer.model)
            result["ours"] = _ours(answerer, context, repeats)
    result["allocated_after_gb"] = round(torch.cuda.memory_allocated() / 1e9, 2)
    result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    del answerer, loaded, lora
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--context-file", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--precision", nargs="+", choices=["nf4", "bf16"], default=["nf4", "bf16"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=["plain", "eager", "ours"], default=["plain", "eager", "ours"])
    args = parser.parse_args()

    context = Path(args.context_file).read_text(encoding="utf-8")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "new_tokens": args.new_tokens,
              "allocator": os.environ.get("PYTORCH_ALLOC_CONF", ""),
              "batch": 1, "decoding": "greedy", "adapter": "LoRA r=16 on " + ", ".join(TARGETS)}
    for precision in args.precision:
        result[precision] = _measure(args.model, precision, context, args.new_tokens, args.repeats, args.modes)
        print(json.dumps({precision: result[precision]}), flush=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
