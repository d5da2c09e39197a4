"""GPU names match the right table entry, never a bigger sibling card."""

from __future__ import annotations

import pytest

from falcon_desktop.errors import UserError
from falcon_desktop.hardware import gpu_model, match_gpu


@pytest.mark.parametrize("name, expected", [
    ("RTX 4090", "RTX 4090"),
    ("4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3060", "RTX 3060"),
    ("RTX 4060 Ti 16GB", "RTX 4060 Ti 16GB"),
])
def test_names_find_their_card(name: str, expected: str) -> None:
    assert gpu_model(name).name == expected


@pytest.mark.parametrize("name", ["RTX 4060", "RTX 3060 Ti"])
def test_a_variant_is_not_taken_for_its_sibling(name: str) -> None:
    """An 8 GB RTX 4060 planned as the 16 GB 4060 Ti would 'fit' and then spill or crash."""
    assert match_gpu(name) is None
    with pytest.raises(UserError, match="Unknown GPU"):
        gpu_model(name)


@pytest.mark.parametrize("capability, dtype", [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 9), "bfloat16"), ((12, 0), "bfloat16"), (None, "bfloat16")])
def test_planner_doctor_and_ask_share_one_bf16_rule(capability, dtype: str) -> None:
    from falcon_desktop.hardware import compute_dtype_for_capability, has_bf16
    from falcon_desktop.plan import GpuSpec, compute_dtype_for
    from falcon_desktop.probe_system import PASS
    from falcon_desktop.probe_torch import precision_check

    assert compute_dtype_for_capability(capability) == dtype
    gpu = GpuSpec("card", 16 * 1024**3, capability, None, None, "--vram")
    assert compute_dtype_for(gpu)[0] == dtype  # the plan's choice
    if capability is not None:
        assert has_bf16(capability) == (dtype == "bfloat16")
        assert (precision_check(capability).status == PASS) == (dtype == "bfloat16")  # doctor's row
