"""Shared test fixtures: offline W&B, the golden-output directory, the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # the frozen backbone is in eval mode on purpose (fss/task.py silences this outside pytest too)
    config.addinivalue_line("filterwarnings", r"ignore:Found \d+ module\(s\) in eval mode")


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach the W&B servers, nor write W&B settings or caches into the home directory."""
    wandb_home = tmp_path_factory.getbasetemp() / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(wandb_home / var.lower()))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``configs/`` lives)."""
    return REPO


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Golden outputs of the reference code: ``$FSS_GOLDEN_DIR``, else ``<repo>/../shared/golden``.

    Skips the requesting test, with the reason, when the directory is absent.
    """
    path = Path(os.environ.get("FSS_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    if not path.is_dir():
        pytest.skip(f"golden directory {path} not found: set FSS_GOLDEN_DIR to the reference outputs")
    return path
