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
