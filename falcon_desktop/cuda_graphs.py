"""What every CUDA graph recording here (decoding in fast_decode.py, training steps in step_graphs.py) needs after a
recording fails.

When a recording fails (the model's code waits on the GPU, say), PyTorch's CUDA random generator stays marked as
recording: `torch.cuda.CUDAGraph.capture_end` raises before it tells the generator the recording is over, and
every later random draw outside a recording then fails with "Offset increment outside graph capture encountered
unexpectedly" (measured on the H200, torch 2.11: LoRA init after a failed decoding recording). Any recording
that completes resets that mark.
"""

from __future__ import annotations

import torch


def clear_failed_recording(device: torch.device) -> None:
    """Let the CUDA random generator draw again after a failed recording: record one trivial graph to the end."""
    graph = torch.cuda.CUDAGraph()
    scratch = torch.zeros(1, device=device)
    with torch.cuda.graph(graph):
        scratch.add_(1)
    del graph
