"""Fixtures for model tests: the golden outputs of the reference implementations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def golden_dir() -> Path:
    """``$FSS_GOLDEN_DIR``, else ``<repo>/../shared/golden``."""
    return Path(os.environ.get("FSS_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


def load_golden(name: str) -> dict:
    """Load ``name`` from the golden dir, or skip the test with the reason."""
    path = golden_dir() / name
    if not path.is_file():
        pytest.skip(
            f"golden file {path} not found: set FSS_GOLDEN_DIR to the directory with the reference outputs"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def golden_inputs() -> dict:
    """query_img [2,3,400,400], support_imgs [2,3,3,400,400], support_masks [2,3,400,400]."""
    return load_golden("inputs.pt")


@pytest.fixture(scope="session")
def golden_resnet50() -> dict:
    """A random torchvision ResNet-50 state_dict (float16 on disk)."""
    return load_golden("resnet50_random_fp16.pt")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """‖ours − ref‖ / ‖ref‖."""
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
