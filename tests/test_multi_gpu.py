"""Several processes, one run: the launch of `train --gpus N`, and real two-rank runs of the tiny Falcon over gloo on
the CPU (FALCON_DESKTOP_CPU_RANKS=1), compared with one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from falcon_desktop.cli import main
from falcon_desktop.distributed import Cluster
from falcon_desktop.errors import UserError
from falcon_desktop.launch import (
    CPU_RANKS_ENV,
    LAUNCHED_ENV,
    accelerate_arguments,
    parse_gpus,
    process_count,
    rank_arguments,
    rank_environment,
)
from falcon_desktop.tiny import asset_path
from interrupt import interrupt_run

DEMO = str(asset_path("demo-squad.json"))
# No LoRA dropout: ranks draw their own masks, so only a dropout-free run can match one process bit for bit.
STEPS = ["--batch-size", "8", "--learning-rate", "3e-3", "--eval-examples", "0", "--lora-dropout", "0"]
# FSDP runs on a 16-bit base here: bitsandbytes' CPU 4-bit layers and FSDP do not run together on the CPU.
LORA = ["--method", "lora"]
# Each multi-rank run: its extra flags, and the one-process run (fixture) it must match.
RANKS = pytest.mark.parametrize(("extra", "reference"), [
    ([], "one_process_run"),
    ([*LORA, "--sharding", "fsdp"], "one_process_lora_run"),
], ids=["ddp", "fsdp"])


# ---------------------------------------------------------------------------------------------------- the launch
def test_gpus_2_relaunches_the_same_command_through_accelerate_without_gpus() -> None:
    argv = ["train", "--model", "m", "--gpus", "2", "--data", "d", "--gpus=2", "--output", "o"]
    assert rank_arguments(argv) == ["train", "--model", "m", "--data", "d", "--output", "o"]
    arguments = accelerate_arguments(argv, 2)
    assert arguments[arguments.index("--num_processes") + 1] == "2"
    assert arguments[arguments.index("--module"):] == ["--module", "falcon_desktop", *rank_arguments(argv)]

    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args(arguments)  # accelerate's own parser accepts them
    assert parsed.multi_gpu and parsed.num_processes == 2 and parsed.module and parsed.training_script == "falcon_desktop"
    assert parsed.training_script_args == rank_arguments(argv)


def test_rank_environment_turns_multicast_off_unless_the_user_set_it() -> None:
    added = rank_environment({}, 2)
    assert added["NCCL_NVLS_ENABLE"] == "0" and added["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert added[LAUNCHED_ENV] == "2"
    assert "NCCL_NVLS_ENABLE" not in rank_environment({"NCCL_NVLS_ENABLE": "1"}, 2)


@pytest.mark.parametrize(("gpus", "device", "cuda", "environ", "expected"), [
    (1, "auto", 0, {}, 1),
    (2, "auto", 2, {}, 2),
    ("all", "auto", 4, {}, 4),
    (2, "auto", 0, {CPU_RANKS_ENV: "1"}, 2),
])
def test_process_count(gpus, device, cuda, environ, expected) -> None:
    assert process_count(gpus, device, cuda, environ) == expected


@pytest.mark.parametrize(("gpus", "device", "cuda", "environ", "words"), [
    (2, "auto", 0, {}, "no CUDA GPU"),
    (2, "cpu", 2, {}, "--device cpu"),
    (3, "auto", 2, {}, "more GPUs than the 2"),
    (2, "cuda:1", 2, {}, "names one"),
    (2, "auto", 2, {LAUNCHED_ENV: "2"}, "already one rank"),
])
def test_process_count_refuses_what_cannot_run(gpus, device, cuda, environ, words) -> None:
    with pytest.raises(UserError, match=words):
        process_count(gpus, device, cuda, environ)


def test_bad_gpus_values_are_one_error(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    for value in ("0", "two", "-1"):
        with pytest.raises(UserError, match="not a number of GPUs"):
            parse_gpus(value)
    assert main(["train", "--model", str(tiny_model_dir), "--data", DEMO, "--output", str(tmp_path / "r"),
                 "--gpus", "2"]) == 1
    assert "Hint:" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_plain_process_is_a_cluster_of_one() -> None:
    assert Cluster.from_environment({}) == Cluster()
    cluster = Cluster.from_environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (cluster.rank, cluster.world_size, cluster.is_main) == (1, 2, False)
    assert cluster.shard(list(range(7))) == [1, 3, 5] and Cluster().shard([4, 5]) == [4, 5]


# ------------------------------------------------------------------------------------------ two ranks over gloo
def _command(model: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "falcon_desktop", "train", "--model", str(model), "--data", DEMO,
            "--output", str(output), *STEPS, *extra]


def _cpu_ranks() -> dict[str, str]:
    return {**os.environ, CPU_RANKS_ENV: "1", "OMP_NUM_THREADS": "1"}


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _assert_same_adapter(run: Path, reference: Path) -> None:
    got = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    expected = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)


def _one_process(model: Path, run: Path, *extra: str) -> Path:
    subprocess.run(_command(model, run, "--max-steps", "8", "--save-every", "100", *extra), check=True,
                   capture_output=True, timeout=300)
    return run


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _one_process(tiny_model_dir, tmp_path_factory.mktemp("one") / "run")


@pytest.fixture(scope="module")
def one_process_lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _one_process(tiny_model_dir, tmp_path_factory.mktemp("one-lora") / "run", *LORA)


@RANKS
def test_two_ranks_learn_what_one_process_learns_from_the_same_global_batch(
        tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest, extra: list[str], reference: str) -> None:
    one_process_run = request.getfixturevalue(reference)
    run = tmp_path / "two"
    done = subprocess.run(_command(tiny_model_dir, run, "--max-steps", "8", "--save-every", "100", "--gpus", "2",
                                   *extra), check=False, env=_cpu_ranks(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert done.stderr.decode(errors="replace").count("Done") == 1  # progress and messages: rank 0's alone
    assert ("FSDP: the model is sharded over 2 processes" in done.stdout.decode(errors="replace")
            + done.stderr.decode(errors="replace")) == ("fsdp" in extra)
    two, one = _history(run), _history(one_process_run)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5)
    assert [r["real_tokens"] for r in two] == [r["real_tokens"] for r in one]  # each step's tokens, summed
    _assert_same_adapter(run, one_process_run)
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "finished" and card["measured"]["processes"] == 2
    reference_card = json.loads((one_process_run / "run.json").read_text(encoding="utf-8"))
    assert card["trainable_params"] == reference_card["trainable_params"]  # counted whole, not one rank's shard
    assert not (run / "train.lock").exists()


@RANKS
def test_ctrl_c_stops_both_ranks_at_one_step_and_resume_on_two_or_one_ends_on_the_same_weights(
        tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest, extra: list[str], reference: str) -> None:
    one_process_run = request.getfixturevalue(reference)
    run = tmp_path / "interrupted"
    # The launcher is the process a terminal's Ctrl-C reaches: the ranks run in their own sessions.
    command = _command(tiny_model_dir, run, "--max-steps", "8", "--save-every", "100", "--gpus", "2", *extra)
    stopped_at = interrupt_run(command, run, 2, tmp_path / "stderr.txt", _cpu_ranks())["steps"]
    assert 2 <= stopped_at < 8

    # Resumed on two ranks, and on one process: the data order and the loss normalisation do not depend on the ranks,
    # and a checkpoint has one format, sharded (FSDP) or not.
    on_one = tmp_path / "on-one"
    shutil.copytree(run, on_one)
    for resumed, extra in ((run, ["--gpus", "2"]), (on_one, [])):
        done = subprocess.run([sys.executable, "-m", "falcon_desktop", "train", "--resume", str(resumed), *extra],
                              check=False, env=_cpu_ranks(), capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        assert [r["loss"] for r in _history(resumed)] == pytest.approx(
            [r["loss"] for r in _history(one_process_run)], abs=1e-5)
        _assert_same_adapter(resumed, one_process_run)


def _history_lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------------------------------------ the plan, per GPU
def _plan(model: str, gpu: str, **request):
    from falcon_desktop.hardware import gpu_model
    from falcon_desktop.plan import GpuSpec, PlanRequest, make_plan
    from falcon_desktop.shapes import load_shape

    return make_plan(load_shape(model), GpuSpec.from_table(gpu_model(gpu)), PlanRequest(**request))


def test_ddp_holds_one_gpus_plan_for_its_share_of_the_global_batch() -> None:
    from falcon_desktop.plan_parallel import SCALING_EFFICIENCY

    one = _plan("falcon-7b", "H100 80GB", effective_batch_size=8)
    # One GPU's share as a DDP rank runs it: eager steps (several processes record none, step_graphs.py).
    share = _plan("falcon-7b", "H100 80GB", effective_batch_size=4, cuda_graphs=False)
    two = _plan("falcon-7b", "H100 80GB", effective_batch_size=8, gpus=2)
    assert (two.sharding, two.gpus, two.effective_batch_size) == ("ddp", 2, 8)
    assert two.breakdown == share.breakdown and two.micro_batch_size == share.micro_batch_size  # 4 examples each
    assert two.estimated_tokens_per_second == pytest.approx(
        2 * SCALING_EFFICIENCY["ddp"] * share.estimated_tokens_per_second)
    assert "estimate" in two.reasons["estimated_tokens_per_second"] and "global batch 8" in two.reasons["gpus"]
    assert one.sharding == "none" and "gpus" not in one.reasons


def test_fsdp_shards_weights_adapters_and_optimizer_but_not_activations() -> None:
    from falcon_desktop.plan_memory import COEFFICIENTS
    from falcon_desktop.plan_parallel import fsdp_breakdown

    single = {"weights": 800, "quant_constants": 200, "lora_weights": 40, "gradients": 20, "optimizer": 40,
              "activations": 500, "loss_buffer": 100, "cuda_context": 50, "allocator_slack": 85}
    shard = fsdp_breakdown(single, gpus=4, num_layers=10, c=COEFFICIENTS)
    # 1000 bytes of weights and constants over 10 layers: two layers (200) are gathered whole at a time
    assert shard["weights"] == 200 + 200 and shard["quant_constants"] == 50
    assert (shard["lora_weights"], shard["gradients"], shard["optimizer"]) == (10, 5, 10)
    assert (shard["activations"], shard["loss_buffer"], shard["cuda_context"]) == (500, 100, 50)
    assert shard["allocator_slack"] == round(0.05 * (400 + 50 + 10 + 5 + 10 + 500 + 100))


def test_a_model_too_big_for_one_gpu_is_sharded_and_the_reason_says_why() -> None:
    one = _plan("falcon-40b", "RTX 4090")
    two = _plan("falcon-40b", "RTX 4090", gpus=2)
    assert not one.fits and two.sharding == "fsdp" and "does not fit one GPU" in two.reasons["sharding"]
    assert two.peak_vram_bytes < one.peak_vram_bytes
    forced = _plan("falcon-40b", "H200", gpus=2, sharding="fsdp")  # fits one H200: FSDP only when asked
    assert _plan("falcon-40b", "H200", gpus=2).sharding == "ddp" and forced.sharding == "fsdp"
    assert "forced" in forced.reasons["sharding"]


def test_plan_gpus_flag_and_a_bad_value(capsys) -> None:
    assert main(["plan", "--model", "falcon-7b", "--gpu", "H100 80GB", "--gpus", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["gpus"], plan["sharding"]) == (2, "ddp")
    assert main(["plan", "--model", "falcon-7b", "--gpu", "H100 80GB", "--gpus", "0"]) == 1
    assert "GPUs must be at least 1" in capsys.readouterr().err


def test_fsdp_loads_4_bit_weights_in_bfloat16_storage() -> None:
    from falcon_desktop.model import _quantization_config

    assert _quantization_config(torch.bfloat16, "bfloat16").bnb_4bit_quant_storage == torch.bfloat16
    assert _quantization_config(torch.bfloat16).bnb_4bit_quant_storage == torch.uint8


# ------------------------------------------------------------------------------------- doctor, several GPUs
class _FakeNvml:
    """NVML of a 3-GPU machine where GPUs 0 and 1 share NVLink and GPU 2 hangs off another socket (NVML is absent
    on CI: this is the hardware mocked, not our code)."""

    class NVMLError(Exception):
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 3

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, capability: int) -> int:
        assert capability == 3  # NVML_P2P_CAPS_INDEX_NVLINK
        return 0 if {a, b} == {0, 1} else 4  # NVML_P2P_STATUS_OK, else not supported

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        if (a, b) == (1, 2):
            raise self.NVMLError("not supported")
        return 50 if b == 2 else 10


def test_doctor_names_the_link_of_every_pair_of_gpus() -> None:
    from falcon_desktop.probe_multi_gpu import link_check, read_links
    from falcon_desktop.probe_system import PASS, WARN

    pairs = read_links(_FakeNvml())
    assert pairs == [{"gpus": [0, 1], "nvlink": True, "path": "one PCIe switch"},
                     {"gpus": [0, 2], "nvlink": False, "path": "across CPU sockets"},
                     {"gpus": [1, 2], "nvlink": False, "path": "unknown"}]
    check = link_check(pairs)
    assert check.status == WARN and "GPU 0-1: NVLink" in check.value and "GPU 0-2: PCIe" in check.value
    assert link_check(pairs[:1]).status == PASS


def test_doctor_nccl_row_and_no_rows_below_two_gpus() -> None:
    from falcon_desktop.probe_gpu import GpuInfo
    from falcon_desktop.probe_multi_gpu import multi_gpu_checks, nccl_check
    from falcon_desktop.probe_system import FAIL, PASS

    assert nccl_check(0, "3.0\n").status == PASS
    assert nccl_check(1, "RuntimeError: NCCL error\n").status == FAIL and "NCCL error" in nccl_check(1, "x\nNCCL error").value
    assert "did not finish" in nccl_check(None, "").value
    one = GpuInfo(0, "NVIDIA H200", 141 * 2**30, 140 * 2**30, (9, 0), 700.0, ())
    assert multi_gpu_checks((one,), cuda_usable=True) == [] and multi_gpu_checks((), cuda_usable=False) == []
