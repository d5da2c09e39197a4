"""Does llama.cpp itself load what `falcon-desktop export` writes, and answer as transformers does?

Loads a GGUF file with llama-cpp-python (llama.cpp's own loader and kernels; not a dependency of falcon-desktop:
`pip install llama-cpp-python`), and the model directory it came from with transformers, then compares, for a few
SQuAD prompts in our template: the tokenization of the prompt, the next-token logits after the prompt (max absolute
difference and top-1 agreement), and the greedy answers. Writes one JSON result.

    python benchmarks/llama_cpp_check.py --gguf model-f16.gguf --model MERGED_DIR --result R.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from falcon_desktop.prompts import QAPrompt

QUESTIONS = [
    ("In what country is Normandy located?",
     "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
     "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway."),
    ("What is the capital of Poland?",
     "Warsaw is the capital and largest city of Poland. It stands on the Vistula River in east-central Poland."),
    ("Who proposed the laws of motion?",
     "Newton's laws of motion are three physical laws that, together, laid the foundation for classical "
     "mechanics. Isaac Newton first compiled them in his Principia Mathematica, published in 1687."),
]
NEW_TOKENS = 16


def compare(gguf: Path, model_dir: Path) -> dict:
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    llama = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, verbose=False, seed=0)
    rows = []
    for question, context in QUESTIONS:
        prompt = QAPrompt(question, context).render()
        hf_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cpp_ids = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        with torch.no_grad():
            hf_logits = model(torch.tensor([hf_ids])).logits[0, -1].numpy()
        llama.reset()
        llama.eval(hf_ids)  # the same ids into both, so logits compare even if tokenization differed
        cpp_logits = np.array(llama.scores[len(hf_ids) - 1][: hf_logits.shape[0]], dtype=np.float32)
        with torch.no_grad():
            hf_answer = model.generate(torch.tensor([hf_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(hf_ids):]
        llama.reset()
        cpp_answer = []
        for token in llama.generate(hf_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if token == llama.token_eos() or len(cpp_answer) == NEW_TOKENS:
                break
            cpp_answer.append(int(token))
        hf_answer = [int(t) for t in hf_answer if t != tokenizer.eos_token_id][:len(cpp_answer) or NEW_TOKENS]
        rows.append({
            "question": question,
            "same_tokenization": hf_ids == list(cpp_ids),
            "max_abs_logit_difference": float(np.max(np.abs(hf_logits - cpp_logits))),
            "logit_scale": float(np.max(np.abs(hf_logits))),
            "same_top1": int(hf_logits.argmax()) == int(cpp_logits.argmax()),
            "hf_answer": tokenizer.decode(hf_answer),
            "llama_cpp_answer": tokenizer.decode(cpp_answer),
            "same_greedy_tokens": hf_answer == cpp_answer,
        })
    return {"gguf": str(gguf), "model": str(model_dir), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the model directory the file was exported from")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    result = compare(args.gguf, args.model)
    args.result.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
