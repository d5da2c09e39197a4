"""`train --gpus N`: the same command again, as N processes started by accelerate's launcher.

The parent checks the request, then hands `accelerate launch --multi_gpu --num_processes N -m falcon_desktop train
...` (the same arguments, less --gpus) to accelerate's own launcher in-process: no shell string, and accelerate's
launcher is torch.distributed.run underneath, which sets RANK, WORLD_SIZE and LOCAL_RANK for `distributed.Cluster`.
Each rank starts in its own session, so a Ctrl-C in the terminal reaches the launcher alone; the launcher passes the
signal on to every rank once, and the ranks agree on the step at which they all save and stop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from falcon_desktop.errors import UserError
from falcon_desktop.paths import environment

LAUNCHED_ENV = "FALCON_DESKTOP_LAUNCHED"  # set in every rank: a rank never launches again
CPU_RANKS_ENV = "FALCON_DESKTOP_CPU_RANKS"  # "1": --gpus N runs N CPU processes over gloo (tests, CI; slow)
INTERRUPTED = 130
# NVLink SHARP multicast (NVLS) and PyTorch's symmetric-memory multicast need a fabric manager and IMEX channels
# that shared and lent machines do not set up: NCCL then fails or hangs at its first collective there. Defaults
# only (setdefault): a machine configured for multicast can switch it back on in the environment.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
# A stopping rank finishes its step and saves its checkpoint; torch.distributed.run kills ranks still running
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds after passing on a Ctrl-C (30 by default): too short for a 40B step.
SHUTDOWN_TIMEOUT = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}


def parse_gpus(value: str) -> int | str:
    """--gpus: a whole number of 1 or more, or `all`."""
    if value == "all":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"--gpus {value} is not a number of GPUs.", "Give a whole number of 1 or more, or all.")
    return count


def process_count(gpus: int | str, device: str, cuda_devices: int, environ: Mapping[str, str]) -> int:
    """How many ranks to start for --gpus on a machine with `cuda_devices` GPUs; refuses what cannot run."""
    on_cpu = environ.get(CPU_RANKS_ENV) == "1"
    if environ.get(LAUNCHED_ENV):
        raise UserError("This process is already one rank of a multi-GPU run; it cannot launch another.",
                        "Start `falcon-desktop train --gpus N` from a plain shell.")
    if gpus == "all":
        if on_cpu:
            raise UserError("--gpus all counts GPUs; with FALCON_DESKTOP_CPU_RANKS=1 give a number.", "E.g. --gpus 2.")
        gpus = cuda_devices
    if gpus == 1:
        return 1
    if on_cpu:
        return gpus
    if device == "cpu" or cuda_devices == 0:
        where = "--device cpu was given" if device == "cpu" else "PyTorch sees no CUDA GPU"
        raise UserError(f"--gpus {gpus} trains on {gpus} GPUs, but {where}.",
                        "Drop --gpus to train on one device (run `falcon-desktop doctor` to see the GPUs); "
                        f"for a test of the launch on the CPU, set {CPU_RANKS_ENV}=1.")
    if device not in ("auto", "cuda"):
        raise UserError(f"--gpus {gpus} picks the GPUs itself; --device {device} names one.",
                        "Drop --device, or hide GPUs with CUDA_VISIBLE_DEVICES.")
    if gpus > cuda_devices:
        raise UserError(f"--gpus {gpus} asks for more GPUs than the {cuda_devices} PyTorch sees.",
                        f"Pass --gpus {cuda_devices} or fewer (or --gpus all).")
    return gpus


def rank_arguments(argv: Sequence[str]) -> list[str]:
    """The command line each rank runs: the same, less --gpus (a rank learns its place from the launcher)."""
    ranks: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--gpus":
            skip = True
        elif not argument.startswith("--gpus="):
            ranks.append(argument)
    return ranks


def accelerate_arguments(argv: Sequence[str], processes: int) -> list[str]:
    """`accelerate launch`'s arguments: one machine, `processes` ranks, a free port, then `-m falcon_desktop ...`.

    Mixed precision and compilation stay ours (the plan's dtype, no dynamo): accelerate only starts the processes.
    """
    return ["--multi_gpu", "--num_machines", "1", "--num_processes", str(processes), "--main_process_port", "0",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "falcon_desktop",
            *rank_arguments(argv)]


def rank_environment(environ: Mapping[str, str], processes: int) -> dict[str, str]:
    """What the ranks' environment adds: the marker, and defaults the user may override."""
    added = {**MULTICAST_OFF, **SHUTDOWN_TIMEOUT}
    return {**{name: value for name, value in added.items() if name not in environ}, LAUNCHED_ENV: str(processes)}


def launch(argv: Sequence[str], processes: int) -> int:
    """Run the ranks to the end; the exit code of the run (130 when stopped by a signal and saved)."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(accelerate_arguments(argv, processes))
    try:
        with environment(rank_environment(os.environ, processes)):
            launch_command(args)
    except SignalException:
        return INTERRUPTED
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        if codes == {INTERRUPTED}:
            return INTERRUPTED
        first = min(error.failures)
        code = error.failures[first].exitcode
        raise UserError(f"Rank {first} of the {processes}-process run stopped with exit code {code}; its error is "
                        "above when it is rank 0.",
                        "Set FALCON_DESKTOP_DEBUG=1 to see every rank's output; the run keeps its last checkpoint "
                        "(resume with the same command and --resume).") from None
    return 0
