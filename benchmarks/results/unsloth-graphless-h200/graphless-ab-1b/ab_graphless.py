"""A/B on the GPU: gpu_bench.py ours, eager steps (no recording), checkpointed layers graphless or not (NO_GRAPHLESS=1)."""
import os, sys, runpy
from dataclasses import replace
from functools import partial
import falcon_desktop.plan as plan_module
original = plan_module.make_plan
plan_module.make_plan = lambda *a, **k: replace(original(*a, **k), records_steps=False)
if os.environ.get("NO_GRAPHLESS"):
    import falcon_desktop.model as m
    from torch.utils.checkpoint import checkpoint
    m.GraphlessCheckpoint = lambda: partial(checkpoint, use_reentrant=False)
sys.argv = ["gpu_bench.py"] + sys.argv[1:]
runpy.run_path("benchmarks/gpu_bench.py", run_name="__main__")
