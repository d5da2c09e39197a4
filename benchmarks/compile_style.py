"""`benchmarks/step_profile.py` with `train --compile`'s style forced: "kernels" or "graphs" wherever the trainer
would choose the other (model.compile_style picks CUDA graphs when no layer is checkpointed, fused kernels
otherwise). For the kernels-against-graphs rows of docs/benchmarks.md, on a CUDA GPU:

    python benchmarks/compile_style.py --style kernels --warmup-steps 10 --result R.json -- train --model M \
        --data D --max-steps 40 --compile --eval-examples 0 --eval-fraction 0 --save-every 1000

Forcing "graphs" on a plan that checkpoints layers reproduces the failure that keeps them apart (transformers before
5.24; from 5.24 they run, slower: docs/benchmarks.md). `--region backbone` compiles the whole transformer as one
region instead of layer by layer (one graph for the forward, one for the backward).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import falcon_desktop.train_session as session
from falcon_desktop.model import PAD_MULTIPLE, backbone_and_head


def compile_backbone(model, style: str) -> int:
    backbone, _ = backbone_and_head(model)
    backbone.compile(mode="reduce-overhead" if style == "graphs" else None)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", choices=[style for style in PAD_MULTIPLE if style != "eager"], required=True)
    parser.add_argument("--region", choices=["layers", "backbone"], default="layers")
    args, profile_args = parser.parse_known_args()
    session.compile_style = lambda requested, device_type, checkpoint_layers: args.style if requested else "eager"
    if args.region == "backbone":
        session.compile_layers = compile_backbone
    step_profile = Path(__file__).with_name("step_profile.py")
    sys.argv = [str(step_profile), *profile_args]
    runpy.run_path(str(step_profile), run_name="__main__")


if __name__ == "__main__":
    main()
