"""`doctor` on a machine with several GPUs: how each pair is linked (NVML) and whether NCCL works between them.

Both run in child processes with a deadline, like the NVML probe: a wedged driver or a hanging NCCL must not hang
`doctor`. Only with two GPUs or more; on one GPU or none there is nothing to check and no row is shown.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from falcon_desktop.probe_gpu import GpuInfo
from falcon_desktop.probe_system import FAIL, PASS, WARN, Check
from falcon_desktop.torch_build import wait_with_deadline

LINK_TIMEOUT_S = 10.0
NCCL_TIMEOUT_S = 120.0
# nvmlDeviceGetTopologyCommonAncestor's levels: the closest thing both GPUs hang off, nearest first.
TOPOLOGY = {0: "same board", 10: "one PCIe switch", 20: "several PCIe switches", 30: "one PCIe host bridge",
            40: "one NUMA node (through the CPU)", 50: "across CPU sockets"}
NVML_P2P_CAPS_INDEX_NVLINK = 3
NVML_P2P_STATUS_OK = 0


def read_links(pynvml: Any) -> list[dict[str, Any]]:
    """Each pair of GPUs: NVLink between them (peer-to-peer over NVLink), else the PCIe path."""
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    pairs = []
    for first in range(len(handles)):
        for second in range(first + 1, len(handles)):
            a, b = handles[first], handles[second]
            try:
                nvlink = pynvml.nvmlDeviceGetP2PStatus(a, b, NVML_P2P_CAPS_INDEX_NVLINK) == NVML_P2P_STATUS_OK
            except pynvml.NVMLError:
                nvlink = False
            try:
                path = TOPOLOGY.get(int(pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b)), "unknown")
            except pynvml.NVMLError:
                path = "unknown"
            pairs.append({"gpus": [first, second], "nvlink": nvlink, "path": path})
    return pairs


def link_check(pairs: list[dict[str, Any]]) -> Check:
    if not pairs:
        return Check("GPU links", WARN, "NVML did not report how the GPUs are linked", "Run `nvidia-smi topo -m`.")
    text = "; ".join(f"GPU {p['gpus'][0]}-{p['gpus'][1]}: {'NVLink' if p['nvlink'] else 'PCIe, ' + p['path']}"
                     for p in pairs)
    if all(p["nvlink"] for p in pairs):
        return Check("GPU links", PASS, text)
    return Check("GPU links", WARN, text, "Without NVLink the LoRA gradients (DDP) and FSDP's weights cross PCIe: "
                 "multi-GPU training scales less; `plan --gpus N` assumes NVLink.")


def nccl_check(returncode: int | None, output: str) -> Check:
    if returncode is None:
        return Check("NCCL", FAIL, f"a 2-GPU all-reduce did not finish within {NCCL_TIMEOUT_S:g} s",
                     "Set NCCL_P2P_DISABLE=1 and retry; check `nvidia-smi topo -m` and NCCL_DEBUG=INFO output.")
    if returncode == 0 and output.strip() == "3.0":
        return Check("NCCL", PASS, "2-GPU all-reduce between GPU 0 and GPU 1 gave the right sum")
    last = (output.strip().splitlines() or [f"exit code {returncode}"])[-1]
    return Check("NCCL", FAIL, f"2-GPU all-reduce failed: {last[:200]}",
                 "Run it again with NCCL_DEBUG=INFO; `train --gpus N` needs NCCL between the GPUs.")


def _child(what: str, timeout_s: float) -> tuple[int | None, str]:
    process = subprocess.Popen([sys.executable, "-m", "falcon_desktop.probe_multi_gpu", what],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, encoding="utf-8", errors="replace")
    output = wait_with_deadline(process, timeout_s)
    return (None, "") if output is None else (process.returncode, output[0])


def multi_gpu_checks(gpus: tuple[GpuInfo, ...], cuda_usable: bool) -> list[Check]:
    """The link and NCCL rows; none below two GPUs."""
    if len(gpus) < 2:
        return []
    code, output = _child("links", LINK_TIMEOUT_S)
    try:
        rows = [link_check(json.loads(output) if code == 0 else [])]
    except ValueError:
        rows = [link_check([])]
    if not cuda_usable:
        return [*rows, Check("NCCL", WARN, "not tried: PyTorch cannot use the GPUs", "Fix the CUDA rows above.")]
    return [*rows, nccl_check(*_child("nccl", NCCL_TIMEOUT_S))]


def _all_reduce(rank: int, port: int) -> None:
    import os

    import torch
    import torch.distributed as dist

    from falcon_desktop.launch import MULTICAST_OFF

    for name, value in MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.tensor([float(rank + 1)], device=f"cuda:{rank}")
    dist.all_reduce(tensor)
    if rank == 0:
        print(tensor.item())
    dist.destroy_process_group()


def _nccl_all_reduce() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_all_reduce, args=(port,), nprocs=2)


if __name__ == "__main__":
    if sys.argv[1] == "links":
        import pynvml

        pynvml.nvmlInit()
        print(json.dumps(read_links(pynvml)))
    else:
        _nccl_all_reduce()
