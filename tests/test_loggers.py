"""W&B without a server falls back to offline logging with a warning, fast; never touching the network.

The "server" is a closed port on this machine (``WANDB_BASE_URL=http://127.0.0.1:<free port>``): the
connection is refused at once, exactly what an unreachable server looks like to the probe.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from fss.cli import main
from fss.loggers import wandb_offline_reason

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> str:
    """Online mode with an API key, the server a closed local port."""
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(sys, "argv", ["fss"])
    return url


def test_the_probe_says_why_and_answers_fast(no_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.monotonic()
    reason = wandb_offline_reason()
    assert reason is not None and "unreachable" in reason and no_server.removeprefix("http://") in reason
    assert time.monotonic() - start < 6
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline_reason() is None  # offline anyway: nothing to check
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc either
    assert "no W&B API key" in wandb_offline_reason()


@pytest.mark.slow
def test_an_online_logger_without_server_logs_offline(no_server: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.warns(
        UserWarning,
        match=r"W&B: the W&B server .* is unreachable .*; logging offline to .*WANDB_MODE=offline",
    ):
        code = main(["fit", "--config", DEMO, "--trainer.logger.init_args.offline", "false",
                     "--data.init_args.img_size", "32", "--data.init_args.batch_size", "2",
                     "--data.init_args.train_episodes", "2", "--data.init_args.val_episodes", "2",
                     "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0",
                     "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
                     "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert code is None
    assert list((tmp_path / "wandb").glob("offline-run-*")), "the run was not kept offline"
    assert time.monotonic() - start < 120
