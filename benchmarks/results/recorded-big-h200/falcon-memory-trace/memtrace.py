"""Run planner_matrix.py's `model` command with CUDA memory history on; at exit, the live allocations at the peak,
grouped by where they were made (innermost falcon_desktop frame, innermost transformers frame, op)."""
import atexit, collections, json, os, runpy, sys
import torch

torch.cuda.memory._record_memory_history(max_entries=3_000_000, stacks="python")


def analyse():
    snap = torch.cuda.memory._snapshot()
    live, peak, peak_live, total = {}, 0, None, 0
    for event in snap["device_traces"][0]:
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, peak_live = total, dict(live)
        elif action == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    groups = collections.Counter()
    counts = collections.Counter()
    for event in peak_live.values():
        frames = event.get("frames", [])
        ours = next((f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in frames
                     if "falcon_desktop" in f["filename"]), "-")
        hf = next((f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in frames
                   if "transformers" in f["filename"] or "peft" in f["filename"]), "-")
        key = f"{ours} | {hf} | stream {event['stream']}"
        groups[key] += event["size"]
        counts[key] += 1
    print(f"MEMTRACE peak of traced allocations {peak / 1e9:.3f} GB; {len(peak_live)} live", flush=True)
    for key, size in groups.most_common(30):
        print(f"MEMTRACE {size / 1e9:8.3f} GB x{counts[key]:5d}  {key}", flush=True)


atexit.register(analyse)
sys.argv = ["planner_matrix.py"] + sys.argv[1:]
runpy.run_path("benchmarks/planner_matrix.py", run_name="__main__")
