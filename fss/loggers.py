"""Loggers that survive interruptions and a missing network.

* :class:`CSVLogger`: Lightning's CSVLogger that can continue the ``metrics.csv`` of a resumed run.
  Lightning's deletes an existing ``metrics.csv`` when it opens a version directory that is not
  empty; with ``resume_ckpt`` this one keeps the rows of the epochs the checkpoint finished and drops
  those of the epoch that was interrupted (they are logged again when it is redone).
* :func:`wandb_offline_reason`: whether an online W&B logger can work here. Without a reachable
  server (or without an API key) ``wandb.init`` blocks for about two minutes and then fails with a
  long trace; the fss CLI asks this first and falls back to offline logging with a warning (the run
  is kept in ``<dir>/wandb/offline-run-*``; ``wandb sync`` uploads it later).
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger

from fss.atomic import write_text

#: seconds the W&B server probe waits for a TCP connection
WANDB_PROBE_TIMEOUT_S = 5.0


class CSVLogger(LightningCSVLogger):
    """Lightning's :class:`~pytorch_lightning.loggers.CSVLogger`, plus continuing a resumed run's file.

    Args:
        resume_ckpt: the checkpoint a resumed fit starts from. When the version directory already
            has a ``metrics.csv``, its rows of the epochs before the checkpoint's epoch (rows without
            an epoch: of the steps up to its global step) are kept and the others dropped. ``None``:
            Lightning's behaviour (an existing ``metrics.csv`` is replaced).
        Other arguments: as Lightning's CSVLogger.
    """

    def __init__(self, *args: Any, resume_ckpt: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_ckpt = resume_ckpt

    @property
    def experiment(self) -> Any:
        if self._experiment is not None or self.resume_ckpt is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept: list[dict[str, str]] = []
        fields: list[str] = []
        if path.is_file():
            fields, kept = _rows_before(path, self.resume_ckpt)
        writer = super().experiment  # removes the old metrics.csv
        if kept:
            buffer = io.StringIO()
            out = csv.DictWriter(buffer, fieldnames=fields)
            out.writeheader()
            out.writerows(kept)
            write_text(path, buffer.getvalue())
            writer.metrics_keys = list(fields)
        return writer


def _rows_before(path: Path, ckpt_path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of ``path`` logged before the checkpoint's epoch (see :class:`CSVLogger`)."""
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)

    def keep(row: dict[str, str]) -> bool:
        if row.get("epoch") not in (None, ""):
            return int(float(row["epoch"])) < epoch
        return row.get("step") not in (None, "") and int(float(row["step"])) <= step

    return fields, [row for row in rows if keep(row)]


# ------------------------------------------------------------------------------------------ W&B
def _wandb_server() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "api.wandb.ai", port


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline_reason(timeout_s: float = WANDB_PROBE_TIMEOUT_S) -> str | None:
    """Why an online W&B run cannot start here (``None``: it can, or W&B is offline/disabled anyway).

    Checks, in at most ``timeout_s`` seconds and without sending anything, that an API key is
    configured and that a TCP connection to the W&B server (``$WANDB_BASE_URL``) opens.
    """
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return None
    host, port = _wandb_server()
    if not _has_api_key(host):
        return f"no W&B API key for {host} (run `wandb login` or set WANDB_API_KEY)"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"the W&B server {host}:{port} is unreachable ({err.strerror or err})"
