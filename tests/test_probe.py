"""doctor's checks, branch by branch.

This machine has no NVIDIA driver, so GPU cases fake NVML by replacing `pynvml` functions (the hardware's library),
and a few fake CUDA inside torch; everything of ours runs for real. The real no-GPU path runs end to end too.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from falcon_desktop import paths
from falcon_desktop.pip_commands import python_command
from falcon_desktop.probe import FAIL, PASS, WARN, Check, DoctorReport, detect_gpus, verdict
from falcon_desktop.probe_gpu import GpuInfo, NvmlReport, probe_nvml, read_nvml
from falcon_desktop.probe_system import (
    declared_minimums,
    disk_check,
    free_bytes,
    hf_cache_check,
    long_paths_check,
    package_checks,
    page_file_check,
    parse_minimums,
    python_check,
    ram_check,
    release,
    symlink_check,
    system_checks,
    version_check,
    wsl_check,
)
from falcon_desktop.probe_torch import (
    MSVC_RUNTIME_HINT,
    arch_supported,
    bitsandbytes_checks,
    cuda_build_check,
    driver_check,
    gpu_check,
    gpu_checks,
    native_library_check,
    precision_check,
    round_trip_check,
    torch_build_for,
    torch_checks,
    torch_import_hint,
)

GiB = 2**30


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml maps the code to its subclass, e.g. NVMLError_NotSupported


@dataclass
class FakeGpu:
    name: str
    total: int
    free: int
    capability: tuple[int, int]
    power_milliwatts: int | None  # None: the card answers NotSupported
    compute: list[tuple[int, int | None]] | None = field(default_factory=list)  # None: NotSupported
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    lost: bool = False  # the GPU fell off the bus


RTX_4090 = FakeGpu(
    "NVIDIA GeForce RTX 4090", 24 * GiB, 22 * GiB, (8, 9), 450_000,
    compute=[(4242, int(1.5 * GiB))], graphics=[(77, 300 * 2**20), (4242, None)],
)


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a fake NVML: `fake_nvml(driver, cuda, gpus, ...)` replaces the pynvml functions read_nvml calls."""

    def install(driver="560.94", cuda=12060, gpus=(RTX_4090,), init_error=None, old_process_api=False):
        def init():
            if init_error is not None:
                raise _nvml_error(init_error)

        def by_index(index):
            return gpus[index]

        def memory(gpu):
            if gpu.lost:
                raise _nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
            return SimpleNamespace(total=gpu.total, free=gpu.free, used=gpu.total - gpu.free)

        def power(gpu):
            if gpu.power_milliwatts is None:
                raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return gpu.power_milliwatts

        def processes(kind):
            def read(gpu):
                listed = getattr(gpu, kind)
                if listed is None:
                    raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
                return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in listed]

            return read

        def newest_process_api(gpu):  # what nvidia-ml-py 12+ raises when the driver lacks the _v3 entry point
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not match")

        def process_name(pid):
            names = {4242: r"C:\Program Files\Python311\python.exe", 77: "/usr/lib/xorg/Xorg"}
            if pid not in names:
                raise _nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
            return names[pid]

        replacements = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: driver,
            "nvmlSystemGetCudaDriverVersion": lambda: cuda,
            "nvmlDeviceGetCount": lambda: len(gpus),
            "nvmlDeviceGetHandleByIndex": by_index,
            "nvmlDeviceGetName": lambda gpu: gpu.name,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetCudaComputeCapability": lambda gpu: gpu.capability,
            "nvmlDeviceGetEnforcedPowerLimit": power,
            "nvmlDeviceGetPowerManagementLimit": power,
            "nvmlDeviceGetComputeRunningProcesses": processes("compute"),
            "nvmlDeviceGetComputeRunningProcesses_v2": processes("compute"),
            "nvmlDeviceGetGraphicsRunningProcesses": processes("graphics"),
            "nvmlDeviceGetGraphicsRunningProcesses_v2": processes("graphics"),
            "nvmlSystemGetProcessName": process_name,
        }
        if old_process_api:
            replacements["nvmlDeviceGetComputeRunningProcesses"] = newest_process_api
            replacements["nvmlDeviceGetGraphicsRunningProcesses"] = newest_process_api
        for name, function in replacements.items():
            monkeypatch.setattr(pynvml, name, function)

    return install


# -- NVML --


def test_read_nvml_rtx_4090(fake_nvml):
    fake_nvml()
    report = read_nvml()
    assert report.error is None
    assert report.driver_version == "560.94"
    assert report.cuda_driver_version == (12, 6)
    assert report.gpus == (
        GpuInfo(
            index=0, name="NVIDIA GeForce RTX 4090", total_bytes=24 * GiB, free_bytes=22 * GiB,
            compute_capability=(8, 9), power_limit_watts=450.0,
            # one row per process, the biggest first; WDDM reports no size for pid 4242's graphics side
            processes=("pid 4242 (python.exe): 1.5 GB", "pid 77 (Xorg): 0.3 GB"),
        ),
    )
    assert [check.status for check in gpu_checks(report)] == [PASS]
    assert driver_check(report) == Check("NVIDIA driver", PASS, "560.94, runs CUDA <= 12.6")
    assert torch_build_for(report).tag == "cu128"


def test_read_nvml_old_driver_470(fake_nvml):
    old_card = FakeGpu("Tesla T4", 15 * GiB, 15 * GiB, (7, 5), None, compute=[(999, GiB)], graphics=None)
    # nvidia-ml-py before 11.515 returned bytes; the driver lacks the _v3 process API; T4 reports no power limit.
    fake_nvml(driver=b"470.256.02", cuda=11040, gpus=(old_card,), old_process_api=True)
    report = read_nvml()
    assert report.driver_version == "470.256.02"
    assert report.cuda_driver_version == (11, 4)
    (gpu,) = report.gpus
    assert gpu.power_limit_watts is None
    assert gpu.processes == ("pid 999: 1.0 GB",)  # through the _v2 API; the name lookup answered NotFound
    check = driver_check(report)
    assert check.status == FAIL and "too old" in check.value and "R580+" in check.hint
    assert torch_build_for(report).tag == "cpu"


def test_read_nvml_bytes_names_and_unsupported_process_queries(fake_nvml):
    laptop = FakeGpu(b"NVIDIA GeForce RTX 3060 Laptop GPU", 6 * GiB, 5 * GiB, (8, 6), None, compute=None, graphics=None)
    fake_nvml(driver="551.86", gpus=(laptop,))
    (gpu,) = read_nvml().gpus
    assert gpu.name == "NVIDIA GeForce RTX 3060 Laptop GPU"
    assert gpu.processes == ()
    assert gpu_check(gpu).status == WARN  # 6 GB: too small for 7B QLoRA


def test_read_nvml_lost_gpu_keeps_what_was_read(fake_nvml):
    lost = FakeGpu("NVIDIA RTX A6000", 48 * GiB, 48 * GiB, (8, 6), 300_000, lost=True)
    fake_nvml(driver="580.95.05", cuda=13000, gpus=(RTX_4090, lost))
    report = read_nvml()
    assert [gpu.name for gpu in report.gpus] == ["NVIDIA GeForce RTX 4090"]
    assert report.error_kind == "NVMLError_GpuIsLost" and report.error.startswith("GPU 1: ")
    check = driver_check(report)
    assert check.status == FAIL and "GPU 1" in check.value


@pytest.mark.parametrize(
    ("code", "kind", "hint"),
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVMLError_DriverNotLoaded", "Reboot"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "NVMLError_LibRmVersionMismatch", "Reboot"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "NVMLError_NoPermission", "allowed to use the GPU"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVMLError_Unknown", "Reinstall the NVIDIA driver"),
    ],
)
def test_nvml_init_failures(fake_nvml, code, kind, hint):
    fake_nvml(init_error=code)
    report = read_nvml()
    assert report.error_kind == kind and report.gpus == ()
    check = driver_check(report)
    assert check.status == FAIL and hint in check.hint and check.value
    (gpu_row,) = gpu_checks(report)
    assert gpu_row.status == FAIL and gpu_row.value == "none found" and "NVIDIA GPU" in gpu_row.hint


def test_nvml_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = read_nvml()
    assert report.error_kind == "not_installed"
    assert driver_check(report).hint == f"{PY} -m pip install nvidia-ml-py"


def test_nvml_report_json_round_trip(fake_nvml):
    fake_nvml()
    report = read_nvml()
    assert NvmlReport.from_json(report.to_json()) == report


@pytest.mark.skipif(probe_nvml().driver_version is not None, reason="this machine has an NVIDIA driver")
def test_real_machine_without_nvml_through_the_child_process():
    assert read_nvml().error_kind == "NVMLError_LibraryNotFound"
    report = probe_nvml()
    assert report.error_kind == "NVMLError_LibraryNotFound"
    assert report.gpus == () and report.driver_version is None
    assert detect_gpus() == []


def _shadow_pynvml(directory: Path, source: str, monkeypatch) -> None:
    """Make the child process import `source` as pynvml: a driver that hangs or crashes, which we cannot cause."""
    (directory / "pynvml.py").write_text(source, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(directory))


def test_hung_driver_hits_the_deadline(tmp_path, monkeypatch):
    _shadow_pynvml(tmp_path, "import time\nclass NVMLError(Exception): pass\ndef nvmlInit():\n    time.sleep(60)\n", monkeypatch)
    started = time.monotonic()
    report = probe_nvml(timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert report.error_kind == "timeout" and "within 1 s" in report.error
    check = driver_check(report)
    assert check.status == FAIL and "did not answer" in check.value and "Reboot" in check.hint
    assert detect_gpus(timeout_s=1.0) == []


def test_crashing_probe_is_reported(tmp_path, monkeypatch):
    _shadow_pynvml(tmp_path, "import sys\nsys.stderr.write('Segmentation fault\\n')\nsys.exit(139)\n", monkeypatch)
    report = probe_nvml()
    assert report.error_kind == "crashed" and "Segmentation fault" in report.error
    assert f"Run {PY} -m falcon_desktop.probe_gpu to see" in driver_check(report).hint


# -- GPU rows --


def _gpu(**changes) -> GpuInfo:
    base = dict(
        index=0, name="NVIDIA GeForce RTX 4090", total_bytes=24 * GiB, free_bytes=22 * GiB,
        compute_capability=(8, 9), power_limit_watts=450.0, processes=(),
    )
    return GpuInfo(**(base | changes))


def test_gpu_check_branches():
    healthy = gpu_check(_gpu())
    assert healthy == Check("GPU 0", PASS, "NVIDIA GeForce RTX 4090, 24.0 GB (22.0 GB free), cc 8.9, 450 W")
    busy = gpu_check(_gpu(free_bytes=3 * GiB, processes=("pid 1 (game.exe): 21.0 GB",)))
    assert busy.status == WARN and "pid 1 (game.exe)" in busy.value and "Close" in busy.hint
    small = gpu_check(_gpu(name="GTX 1650", total_bytes=4 * GiB, free_bytes=4 * GiB, compute_capability=(7, 5)))
    assert small.status == WARN and "plan" in small.hint
    kepler = gpu_check(_gpu(name="Tesla K80", compute_capability=(3, 7)))
    assert kepler.status == FAIL


def test_gpu_checks_when_the_driver_sees_none():
    (row,) = gpu_checks(NvmlReport(driver_version="560.94", cuda_driver_version=(12, 6)))
    assert row.status == FAIL and row.value == "the driver sees no GPU"


# -- PyTorch --

NVML_4090 = NvmlReport("560.94", (12, 6), (_gpu(),))
NO_NVML = NvmlReport(error="NVML Shared Library Not Found", error_kind="NVMLError_LibraryNotFound")


@pytest.mark.parametrize(
    ("built", "nvml", "status", "in_hint"),
    [
        (None, NVML_4090, FAIL, "whl/cu128"),  # CPU build on a GPU machine: the command for the right build
        (None, NO_NVML, FAIL, "without one"),
        ("12.8", NO_NVML, FAIL, "without one"),
        ("13.0", NVML_4090, FAIL, "whl/cu128"),  # built for a newer CUDA major than the driver runs
        ("12.8", NVML_4090, WARN, "minor-version"),  # same major, newer minor
        ("12.6", NVML_4090, PASS, ""),
        ("12.8", NvmlReport("580.95.05", (13, 0), (_gpu(),)), PASS, ""),
    ],
)
def test_cuda_build_check(built, nvml, status, in_hint):
    check = cuda_build_check(built, nvml, torch_build_for(nvml))
    assert check.status == status
    assert in_hint in check.hint


@pytest.mark.parametrize(
    ("capability", "arch_list", "supported"),
    [
        ((8, 9), ["sm_75", "sm_80", "sm_86", "sm_90"], True),  # sm_86 binaries run on 8.9
        ((9, 0), ["sm_75", "sm_80", "sm_90"], True),
        ((6, 1), ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], False),  # Pascal on a cu128 wheel
        ((10, 0), ["sm_80", "sm_90"], False),  # no binary for major 10, no PTX
        ((12, 0), ["sm_90", "compute_90"], True),  # PTX JIT
        ((8, 0), ["sm_86"], False),  # binaries need an equal or newer minor
        ((8, 0), [], False),
    ],
)
def test_arch_supported(capability, arch_list, supported):
    assert arch_supported(capability, arch_list) is supported


def test_precision_check():
    assert precision_check((9, 0)) == Check("Precision", PASS, "bf16 (compute capability 9.0)")
    turing = precision_check((7, 5))
    assert turing.status == WARN and turing.value.startswith("fp16")
    assert precision_check(None).status == WARN


# Every repair names this environment's interpreter, quoted (tests run on POSIX: shlex.quote).
PY = python_command([])


def _by_name(rows: list[Check]) -> dict[str, Check]:
    return {row.name: row for row in rows}


def test_torch_checks_real_cpu_build_on_a_gpu_machine():
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    rows = _by_name(torch_checks(NVML_4090, "2.4", torch_build_for(NVML_4090)))
    assert rows["PyTorch"].status == PASS
    assert rows["PyTorch CUDA build"] == Check(
        "PyTorch CUDA build", FAIL, "CPU-only build",
        f"Install the CUDA build: {PY} -m pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128",
    )
    assert rows["CUDA available"].value == "no: CPU-only build"
    assert rows["Precision"].status == WARN


def test_torch_checks_when_the_driver_hangs():
    pytest.importorskip("torch")
    hung = NvmlReport(error="NVML did not answer within 5 s (a hung driver?)", error_kind="timeout")
    rows = _by_name(torch_checks(hung, "2.4", torch_build_for(hung)))
    assert rows["CUDA available"].value.startswith("not tried")


def test_torch_checks_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    (row,) = torch_checks(NO_NVML, "2.4", torch_build_for(NO_NVML))
    assert row.name == "PyTorch" and row.status == FAIL and "whl/cpu" in row.hint


@pytest.fixture
def fake_cuda(monkeypatch):
    """Fake the CUDA side of torch (absent here): a CUDA build that sees one GPU of `capability`."""
    torch = pytest.importorskip("torch")

    def install(capability=None, arch_list=("sm_75", "sm_80", "sm_86", "sm_90"), driver_warning=None):
        def is_available():
            if driver_warning:
                warnings.warn(driver_warning, UserWarning)
            return capability is not None

        monkeypatch.setattr(torch.version, "cuda", "12.8")
        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))

    return install


def test_torch_checks_with_a_working_gpu(fake_cuda):
    fake_cuda(capability=(8, 9))
    rows = _by_name(torch_checks(NVML_4090, "2.4", torch_build_for(NVML_4090)))
    assert rows["CUDA available"] == Check(
        "CUDA available", PASS, "yes: 1 device(s), cuda:0 = NVIDIA GeForce RTX 4090"
    )
    assert rows["Precision"].value == "bf16 (compute capability 8.9)"


def test_torch_checks_build_without_kernels_for_the_gpu(fake_cuda):
    fake_cuda(capability=(6, 1))
    pascal = NvmlReport("560.94", (12, 6), (_gpu(name="GTX 1080", compute_capability=(6, 1)),))
    row = _by_name(torch_checks(pascal, "2.4", torch_build_for(pascal)))["CUDA available"]
    assert row.status == FAIL and "no kernels for compute capability 6.1" in row.value and "whl/cu126" in row.hint


def test_torch_checks_reports_torchs_driver_warning(fake_cuda):
    fake_cuda(driver_warning="CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).")
    row = _by_name(torch_checks(NVML_4090, "2.4", torch_build_for(NVML_4090)))["CUDA available"]
    assert row.status == FAIL and "driver on your system is too old" in row.value and "Update" in row.hint


# -- bitsandbytes --


def test_bitsandbytes_real_cpu_round_trip():
    pytest.importorskip("bitsandbytes")
    rows = _by_name(bitsandbytes_checks("0.46", "cpu"))
    assert rows["bitsandbytes"].status == PASS
    assert rows["4-bit round trip"].status == PASS
    error = float(rows["4-bit round trip"].value.rsplit(" ", 1)[-1].rstrip("%")) / 100
    assert 0.05 < error < 0.15  # NF4 on N(0, 1): ~9%


def test_bitsandbytes_round_trip_failure_is_a_row():
    pytest.importorskip("bitsandbytes")
    row = _by_name(bitsandbytes_checks("0.46", "meta"))["4-bit round trip"]  # no data on "meta": it must fail
    assert row.status == FAIL and row.value.startswith("failed on meta: ")


def test_bitsandbytes_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    (row,) = bitsandbytes_checks("0.46", "cpu")
    assert row.name == "bitsandbytes" and row.status == FAIL and "cannot be imported" in row.value


def test_native_library_check():
    cextension = pytest.importorskip("bitsandbytes.cextension")
    loaded = cextension.lib
    if getattr(type(loaded), "compiled_with_cuda", False):
        pytest.skip("bitsandbytes loaded its CUDA library here")
    assert native_library_check(loaded, "cpu").status == PASS
    assert "(CPU)" in native_library_check(loaded, "cpu").value
    on_gpu = native_library_check(loaded, "cuda:0")
    assert on_gpu.status == FAIL and "although CUDA is available" in on_gpu.value
    missing = cextension.ErrorHandlerMockBNBNativeLibrary("libcudart.so.13: cannot open shared object file")
    assert native_library_check(missing, "cpu").status == WARN
    failed = native_library_check(missing, "cuda:0")
    assert failed.status == FAIL and "libcudart" in failed.value


@pytest.mark.parametrize(
    ("error", "status"), [(0.091, PASS), (0.9, FAIL), (math.nan, FAIL), (None, FAIL)]
)
def test_round_trip_check(error, status):
    assert round_trip_check("cuda:0", error, "RuntimeError").status == status


# -- packages --


def test_parse_minimums():
    assert parse_minimums(
        ["torch>=2.4", "nvidia-ml-py>=12.535", "Foo_Bar[extra]>=1.2,<2", 'pytest>=8; extra == "test"', "rich"]
    ) == {"torch": "2.4", "nvidia-ml-py": "12.535", "foo-bar": "1.2"}


def test_declared_minimums_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    minimums = declared_minimums()
    if not minimums:
        pytest.skip("falcon-desktop is not installed as a distribution")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert minimums == parse_minimums(pyproject["project"]["dependencies"])
    assert {"transformers", "peft", "accelerate", "datasets", "torch", "bitsandbytes"} <= set(minimums)


@pytest.mark.parametrize(
    ("installed", "minimum", "status"),
    [("5.23.0", "5.0", PASS), ("5", "5.0", PASS), ("4.57.1", "5.0", FAIL), (None, "5.0", FAIL), ("5.1", None, WARN)],
)
def test_version_check(installed, minimum, status):
    check = version_check("transformers", installed, minimum)
    assert check.status == status
    if installed is None or status == FAIL:
        assert f"{PY} -m pip install 'transformers>=5.0'" in check.hint


def test_release():
    assert release("2.13.0+cpu") == (2, 13)
    assert release("0.50.2.dev0") == (0, 50, 2)
    assert release("5.0") == release("5") == (5,)


def test_package_checks_real():
    rows = package_checks({"transformers": "5.0", "peft": "0.17", "accelerate": "1.0", "datasets": "999"})
    assert [row.name for row in rows] == ["transformers", "peft", "accelerate", "datasets"]
    assert [row.status for row in rows] == [PASS, PASS, PASS, FAIL]


# -- the machine --


def test_python_check():
    assert python_check((3, 11, 7), 64) == Check("Python", PASS, "3.11.7, 64-bit")
    assert python_check((3, 11, 7), 32).status == FAIL


def test_ram_and_page_file():
    assert ram_check(32 * GiB, 20 * GiB).status == PASS
    assert ram_check(8 * GiB, 2 * GiB).status == WARN
    assert page_file_check(32 * GiB, 8 * GiB).status == PASS
    low = page_file_check(16 * GiB, 2 * GiB)
    assert low.status == WARN and "Virtual memory" in low.hint


def test_disk_check(tmp_path):
    runs = tmp_path / "not" / "created" / "yet"
    assert free_bytes(runs) > 0  # measured at the nearest existing folder
    assert disk_check("Disk (runs)", runs, 100 * 10**9, "why").status == PASS
    assert disk_check("Disk (runs)", runs, 10 * 10**9, "why").status == WARN
    assert disk_check("Disk (runs)", runs, 10**8, "why").status == FAIL
    read_only = disk_check("Disk (runs)", runs, 100 * 10**9, "why", writable=False)
    assert read_only.status == FAIL and "FALCON_DESKTOP_HOME" in read_only.hint


def test_hf_cache_check(tmp_path):
    assert hf_cache_check(tmp_path, offline=False, writable=True).status == PASS
    offline = hf_cache_check(tmp_path, offline=True, writable=True)
    assert offline.status == WARN and "HF_HUB_OFFLINE" in offline.value
    assert hf_cache_check(tmp_path, offline=False, writable=False).status == FAIL


@pytest.mark.skipif(sys.platform == "win32", reason="Windows needs Developer Mode for symlinks")
def test_symlink_check(tmp_path):
    assert symlink_check(tmp_path / "hub").status == PASS
    assert not list(tmp_path.iterdir())  # the probe cleaned up after itself
    a_file = tmp_path / "file"
    a_file.write_text("", encoding="utf-8")
    assert symlink_check(a_file).status == WARN  # no folder to try in


def test_long_paths_check():
    assert long_paths_check(1).status == PASS
    assert long_paths_check(0).status == WARN
    assert long_paths_check(None).status == WARN


@pytest.mark.parametrize(
    ("kernel", "cache", "status"),
    [
        ("6.8.0-45-generic", "/home/me/.cache/huggingface/hub", PASS),
        ("5.15.153.1-microsoft-standard-WSL2", "/home/me/.cache/huggingface/hub", PASS),
        ("5.15.153.1-microsoft-standard-WSL2", "/mnt/c/Users/me/.cache/huggingface/hub", WARN),
        ("4.4.0-19041-Microsoft", "/home/me/.cache/huggingface/hub", FAIL),  # WSL 1
    ],
)
def test_wsl_check(kernel, cache, status):
    assert wsl_check(kernel, Path(cache)).status == status


def test_system_checks_real(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rows = _by_name(system_checks())
    assert rows["HF cache"].status == WARN  # conftest turns offline mode on
    assert str(tmp_path / "hub") in rows["Disk (HF cache)"].value
    assert str(paths.runs_dir()) in rows["Disk (runs)"].value
    assert ("Long paths" in rows) == ("Page file" in rows) == (sys.platform == "win32")
    assert ("WSL" in rows) == sys.platform.startswith("linux")


# -- verdict --

HEALTHY = (
    Check("CUDA available", PASS, "yes"),
    Check("4-bit round trip", PASS, "NF4"),
    Check("Precision", PASS, "bf16"),
)


def _replace(rows: tuple[Check, ...], name: str, status: str) -> tuple[Check, ...]:
    return tuple(Check(row.name, status, row.value) if row.name == name else row for row in rows)


def test_verdict():
    gpus = (_gpu(),)
    assert verdict(HEALTHY, gpus) == "QLoRA fine-tune of 7B models: yes, 22.0 GB free on NVIDIA GeForce RTX 4090 (bf16)"
    assert verdict(_replace(HEALTHY, "Precision", WARN), gpus).endswith("(fp16)")
    no = "QLoRA fine-tune of 7B models: no: {} - `falcon-desktop plan` and the CPU demo still work"
    assert verdict(HEALTHY, ()) == no.format("no CUDA GPU")
    assert verdict(_replace(HEALTHY, "CUDA available", FAIL), gpus) == no.format("PyTorch cannot use the GPU")
    assert verdict(_replace(HEALTHY, "4-bit round trip", FAIL), gpus) == no.format(
        "bitsandbytes cannot quantize on the GPU"
    )
    assert verdict(HEALTHY, (_gpu(free_bytes=3 * GiB),)) == no.format("3.0 GB VRAM free, ~7.0 GB needed")
    assert verdict((*HEALTHY, Check("transformers", FAIL, "4.57")), gpus) == no.format("fix transformers")


def test_doctor_report_json_and_exit_status():
    report = DoctorReport(checks=HEALTHY, gpus=(_gpu(),), verdict="v")
    assert report.ok
    payload = report.to_json()
    assert payload["checks"][0] == {"name": "CUDA available", "status": "PASS", "value": "yes", "hint": ""}
    assert payload["gpus"][0]["compute_capability"] == [8, 9]
    assert not DoctorReport(checks=(*HEALTHY, Check("GPU", FAIL, "none")), gpus=(), verdict="v").ok


def test_probe_module_does_not_import_torch():
    import subprocess

    code = "import sys, falcon_desktop.probe; print('torch' in sys.modules, 'pynvml' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_bitsandbytes_check_does_not_import_the_compiler():
    """bitsandbytes' import-time torch.compile wrappers pull in inductor (seconds); the doctor defers them."""
    import subprocess

    code = ("import sys, torch\n"
            "compile_function = torch.compile\n"
            "from falcon_desktop.probe_torch import bitsandbytes_checks\n"
            "rows = bitsandbytes_checks(None, 'cpu')\n"
            "assert [r.name for r in rows] == ['bitsandbytes', 'bitsandbytes library', '4-bit round trip'], rows\n"
            "assert rows[-1].status == 'PASS', rows\n"
            "assert 'torch._inductor.compile_fx' not in sys.modules\n"
            "assert torch.compile is compile_function\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- repair hints: each is a command that, pasted as is, fixes that row and nothing else --


def test_bitsandbytes_repair_keeps_torch():
    # --force-reinstall without --no-deps re-resolves torch from PyPI (on Windows the CPU build): never that.
    from importlib import metadata

    version = metadata.version("bitsandbytes")
    expected = f"Reinstall bitsandbytes: {PY} -m pip install --force-reinstall --no-deps bitsandbytes=={version}"
    assert round_trip_check("cpu", None, "boom").hint == expected
    assert round_trip_check("cpu", float("nan")).hint == expected
    assert native_library_check(SimpleNamespace(_lib=None, error_msg="no lib"), "cuda:0").hint == expected


def test_bitsandbytes_import_failure_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    (row,) = bitsandbytes_checks("0.46", "cpu")
    assert row.hint.startswith(f"Reinstall bitsandbytes: {PY} -m pip install --force-reinstall --no-deps bitsandbytes==")


def test_torch_import_failure_hints(monkeypatch):
    build = torch_build_for(NVML_4090)
    switch = f"{PY} -m pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128"
    repair = f"{PY} -m pip install --force-reinstall --no-deps torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128"
    assert build.command() == switch and build.repair_command() == repair
    assert torch_import_hint(OSError("[WinError 126] The specified module could not be found. c10.dll"), build) == (
        MSVC_RUNTIME_HINT
    )
    assert "vc_redist.x64.exe" in MSVC_RUNTIME_HINT
    # torch's distribution is installed here, so a broken import gets its files rewritten, nothing else.
    assert torch_import_hint(ImportError("undefined symbol: foo"), build) == f"Reinstall its files: {repair}"
    monkeypatch.setattr("falcon_desktop.probe_torch.installed_version", lambda name: None)
    assert torch_import_hint(ImportError("No module named 'torch'"), build) == f"Install it: {switch}"


def test_old_driver_hint_names_the_build_it_runs():
    old = NvmlReport("550.54", (12, 4), (_gpu(),))
    check = cuda_build_check("13.0", old, torch_build_for(old))
    assert check.status == FAIL
    assert check.hint == (
        "Update the NVIDIA driver, or install the build this driver runs: "
        f"{PY} -m pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128"
    )


def test_package_hints_install_only_that_package():
    assert version_check("peft", None, "0.17").hint == f"Install it: {PY} -m pip install 'peft>=0.17'"
    assert version_check("peft", "0.10", "0.17").hint == f"Upgrade: {PY} -m pip install 'peft>=0.17'"
    assert version_check("peft", "0.10", None).hint.endswith(f"{PY} -m pip install -e .")
    assert "3.10-3.14" in python_check((3, 12, 1), 32).hint
