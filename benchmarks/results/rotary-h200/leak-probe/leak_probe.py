"""Which memory a recorded matrix row leaves behind in the process (session 14)."""
import gc, sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
import torch
import planner_matrix as pm

original = pm.measure_row
count = [0]
def live_cuda_tensor_bytes():
    total, n = 0, 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                total += obj.untyped_storage().nbytes(); n += 1
        except Exception:
            pass
    return total, n

def probed(*args, **kwargs):
    row, bare = original(*args, **kwargs)
    count[0] += 1
    pm._free_memory(True)
    t, n = live_cuda_tensor_bytes()
    print(f"after row {count[0]}: allocated {torch.cuda.memory_allocated()/1e9:.3f} reserved {torch.cuda.memory_reserved()/1e9:.3f} "
          f"peak reserved {row['measured']['peak_reserved_bytes']/1e9:.3f} live cuda tensors {n} {t/1e9:.3f} GB", flush=True)
    if count[0] == 3:
        torch._C._cuda_clearCublasWorkspaces(); pm._free_memory(True)
        print(f"  cublas workspaces cleared: allocated {torch.cuda.memory_allocated()/1e9:.3f} reserved {torch.cuda.memory_reserved()/1e9:.3f}", flush=True)
    snap = torch.cuda.memory_stats()
    print("  segments", snap.get("segment.all.current"), "active blocks", snap.get("active.all.current"), flush=True)
    return row, bare
pm.measure_row = probed
settings = pm.MatrixSettings(data=".bench-data/dev-v2.0-half.json", tokenizer=".bench-data", target_sets=("attention",),
                             caps_gib=(8.0, 9.0, 10.0, 11.0, 12.0), recorded=True)
pm.measure_model("smollm2-135m", Path("/tmp/mm"), settings, Path("/tmp/leak.json"))
