"""Where a training step's time goes: wall time per optimizer step against the GPU's kernel time.

Runs the real `falcon-desktop train` (same plan, data and loop) in this process, timing every optimizer step after
warm-up (start to the next step's start: the loop's own pace), and profiles three steps in a row with torch.profiler
to count kernel launches and sum kernel time. "GPU busy" is kernel time over the wall time of those steps: the share
in which the GPU had work (the rest: Python, kernel launches, host syncs). Needs a CUDA GPU.

    python benchmarks/step_profile.py --result R.json [--optimizer adamw_fused] -- train --model M --data D --max-steps 25
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import falcon_desktop.train as trainer
import falcon_desktop.train_session as session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import steady_tokens_per_second  # noqa: E402

WARMUP_STEPS = 3
PROFILED_STEP = 12  # the first of the profiled steps
PROFILED_STEPS = 3


class StepTimer:
    """Wraps the trainer's optimizer step: times each step as the interval from its start to the next step's start
    (the trainer reads a step's loss after queueing the next, so a synchronised step would hide that overlap), and
    profiles PROFILED_STEPS steps in a row, synchronised only at either end."""

    def __init__(self, step_function, warmup_steps: int, profile_at: int = PROFILED_STEP) -> None:
        self.step_function = step_function
        self.warmup_steps = warmup_steps
        self.profile_at = profile_at
        self.calls = 0
        self.walls: list[float] = []
        self.tokens: list[int] = []
        self.profile: dict = {}
        self._open: tuple[float, int] | None = None  # (start, real tokens) of the last timed step
        self._window: ProfileWindow | None = None

    def __call__(self, model, batches, *args, **kwargs):
        self.calls += 1
        first_profiled = max(self.profile_at, self.warmup_steps + 1)
        if self.calls == first_profiled:
            self._open = None
            self._window = ProfileWindow()
        now = time.perf_counter()
        if self._open is not None:
            self.walls.append(now - self._open[0])
            self.tokens.append(self._open[1])
        profiling = self._window is not None
        self._open = (now, sum(b["real_tokens"] for b in batches)) if self.calls > self.warmup_steps and \
            not profiling else None
        result = self.step_function(model, batches, *args, **kwargs)
        if profiling and (summary := self._window.after_step(len(batches))) is not None:
            self.profile, self._window = summary, None
        return result


class ProfileWindow:
    """torch.profiler over a run of steps, synchronised only at either end (the window starts with an idle GPU)."""

    def __init__(self, steps: int = PROFILED_STEPS) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.steps, self._steps_run, self._micro_batches = steps, 0, 0
        torch.cuda.synchronize()
        self._profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        self._profiler.__enter__()
        self._start = time.perf_counter()

    def after_step(self, micro_batches: int) -> dict | None:
        """Count a profiled step of `micro_batches`; after the last, stop and return the summary (else None)."""
        self._steps_run += 1
        self._micro_batches += micro_batches
        if self._steps_run < self.steps:
            return None
        torch.cuda.synchronize()
        wall = time.perf_counter() - self._start
        self._profiler.__exit__(None, None, None)
        return summarize(self._profiler.key_averages(), wall, self._micro_batches, self.steps)


# Kernel families by a piece of their name (first match wins): where a step's GPU time goes.
KERNEL_FAMILIES = (("flash attention", ("flash", "fmha", "attention")), ("4-bit dequantize", ("dequantize",)),
                   ("matmul", ("gemm", "cutlass", "xmma", "sm90_", "sm100_", "nvjet", "splitk")),
                   ("triton (fused)", ("triton",)), ("optimizer", ("adam", "multi_tensor")),
                   ("reduction / norm", ("reduce", "norm", "softmax")),
                   ("elementwise / copy", ("elementwise", "vectorized", "copy", "fill", "cat", "index")))


def kernel_family(name: str) -> str:
    lowered = name.lower()
    return next((family for family, pieces in KERNEL_FAMILIES if any(p in lowered for p in pieces)), "other")


def summarize(events, wall: float, micro_batches: int, steps: int = PROFILED_STEPS) -> dict:
    """Per step (the mean of the profiled ones): kernel launches, kernel time, wall time, GPU busy over them all,
    kernel time by family and the costliest kernels."""
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    kernel_seconds = sum(e.self_device_time_total for e in kernels) / 1e6
    top_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:16]
    families: dict[str, float] = {}
    for event in kernels:
        family = kernel_family(event.key)
        families[family] = families.get(family, 0.0) + event.self_device_time_total / 1e3 / steps
    top_kernels = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:40]
    return {
        "profiled_steps": steps,
        "kernel_launches": round(sum(e.count for e in kernels) / steps),
        "kernel_ms": round(kernel_seconds * 1e3 / steps, 2),
        "profiled_wall_ms": round(wall * 1e3 / steps, 2),  # includes the profiler's own overhead
        "gpu_busy_fraction": round(kernel_seconds / wall, 4),
        "micro_batches": micro_batches,
        "top_cpu_ms": {e.key: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in top_cpu},
        "kernel_family_ms": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": e.key[:120], "ms": round(e.self_device_time_total / 1e3 / steps, 2),
                         "calls": round(e.count / steps, 1)} for e in top_kernels],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--optimizer", help="override the plan's optimizer (adamw_fused, paged_adamw_8bit, ...)")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                        help="untimed first steps (more with --compile: its first shapes compile)")
    parser.add_argument("--profile-at", type=int, default=PROFILED_STEP,
                        help="the first profiled step (later: fewer steps that record a new shape's CUDA graph)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- train ARGS, as for falcon-desktop")
    args = parser.parse_args()
    cli_args = [a for a in args.train_args if a != "--"]
    if args.optimizer:  # setup (train_session.py) builds the optimizer with the name it imports
        make_optimizer = session.make_optimizer
        session.make_optimizer = lambda model, name, lr, device: make_optimizer(model, args.optimizer, lr, device)
    # train_step calls the name train.py imports from optim, so that is the one to wrap.
    timer = StepTimer(trainer.optimizer_step, args.warmup_steps, args.profile_at)
    trainer.optimizer_step = timer
    from falcon_desktop.cli import main as cli_main

    exit_code = cli_main(cli_args)
    wall, tokens = sum(timer.walls), sum(timer.tokens)
    result = {
        "command": ["falcon-desktop", *cli_args],
        "optimizer_override": args.optimizer,
        "exit_code": exit_code,
        "timed_steps": len(timer.walls),
        "real_tokens_per_second": round(tokens / max(wall, 1e-9)),
        "mean_step_seconds": round(wall / max(1, len(timer.walls)), 4),
        "warmup_steps": args.warmup_steps,
        "step_seconds": [round(w, 4) for w in timer.walls],
        "step_tokens": timer.tokens,
        # Without the steps that recompiled (over 3x the median): the pace of a long run once compiling is done.
        "steady_tokens_per_second": steady_tokens_per_second(timer.walls, timer.tokens),
        "profiled_step": timer.profile,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
