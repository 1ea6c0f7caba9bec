"""Running under ``torch.distributed`` (DDP) without deadlocks, hangs or crashes at exit.

The rule every callback and rank-0-only code path follows: **a collective is called by every rank or
by none.** ``trainer.log_dir`` is one (Lightning broadcasts rank 0's directory), so is
``strategy.broadcast``/``barrier``/``reduce`` and a torchmetrics ``compute()``. Code that only rank 0
should run (writing a file, printing) first asks every collective question on all ranks, then
returns early on the others:

.. code-block:: python

    out = run_dir(trainer)          # every rank
    if not trainer.is_global_zero:
        return
    write(out / "x.json")

:func:`run_dir` is the one way fss callbacks find the run directory.

Hangs: a collective that one rank never reaches (a bug, a rank that died, a full disk on one node)
fails after ``ddp_timeout`` seconds (the fss config key; default :data:`DEFAULT_TIMEOUT_S`), set on
the DDP strategy by :func:`apply_timeout`, and :func:`describe_timeout` turns the backend's error
into a message saying what happened and what to do. The same timeout bounds the start: rank 0
waits that long for the other processes to join.

Exit: :func:`shutdown` ends a multi-process command in order: all ranks meet at a barrier, the
process group is destroyed on every rank, and rank 0 waits for the processes it launched. Without
it the gloo process group is destroyed during interpreter shutdown, when rank 0 may already be gone
(it hosts the TCP store), and the C++ runtime can abort with "terminate called without an active
exception" (see docs/reliability.md for the analysis).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path

import pytorch_lightning as pl
import torch.distributed as dist

from fss.errors import FSSError

#: default of the ``ddp_timeout`` config key: seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 600.0


class DistributedFailure(FSSError):
    """A distributed run failed: a collective timed out, another rank died, or the start failed."""


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: ``trainer.log_dir``, else ``trainer.default_root_dir``.

    A collective under DDP (``trainer.log_dir`` broadcasts rank 0's answer): call it on every rank,
    never inside an ``if trainer.is_global_zero`` branch.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def apply_timeout(trainer: pl.Trainer, seconds: float) -> None:
    """Give ``trainer``'s distributed strategy a collective timeout of ``seconds``.

    Must run before the process group starts (i.e. before ``trainer.fit`` & co.). A strategy object
    built by the user with its own ``timeout`` keeps it; strategies without a timeout are left alone.
    """
    if seconds <= 0:
        raise ValueError(f"ddp_timeout must be a positive number of seconds, got {seconds}")
    strategy = trainer.strategy
    if not hasattr(strategy, "_timeout"):
        return
    from lightning_fabric.plugins.collectives.torch_collective import default_pg_timeout

    if strategy._timeout in (None, default_pg_timeout):
        strategy._timeout = datetime.timedelta(seconds=seconds)


def timeout_seconds(trainer: pl.Trainer) -> float | None:
    """The collective timeout of ``trainer``'s strategy in seconds (None when it has none)."""
    timeout = getattr(trainer.strategy, "_timeout", None)
    return timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else None


#: fragments of the errors gloo / NCCL / the TCP store raise when a collective or the store times out
_TIMEOUT_MARKERS = ("timed out", "timeout", "time out")
#: fragments of the errors raised when another rank died in the middle of a collective
_PEER_GONE_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "econnreset")


def describe_timeout(err: BaseException, trainer: pl.Trainer | None = None) -> str | None:
    """A one-paragraph explanation of a distributed failure, or None when ``err`` is not one.

    Recognises a rendezvous that could not reach rank 0, a collective (or the store) that timed
    out, and a peer rank that died in the middle of a collective.
    """
    if not isinstance(err, RuntimeError | OSError):
        return None
    text = str(err).lower()
    distributed_error = isinstance(err, dist.DistError)
    if not distributed_error and not (dist.is_available() and dist.is_initialized()):
        return None
    if trainer is not None and trainer.world_size <= 1 and not distributed_error:
        return None
    if trainer is not None:
        rank = trainer.global_rank
    else:
        rank = (
            dist.get_rank()
            if dist.is_initialized()
            else os.environ.get("RANK", os.environ.get("LOCAL_RANK", "?"))
        )
    seconds = timeout_seconds(trainer) if trainer is not None else None
    if seconds is None:  # gloo and the store say how long they waited: "... waiting 600000ms ..."
        causes, link = [], err
        while link is not None and len(causes) < 10:
            causes.append(str(link))
            link = link.__cause__ or link.__context__
        waited = re.search(r"(\d+)\s*ms", " ".join(causes))
        seconds = int(waited.group(1)) / 1000 if waited else None
    limit = f"{seconds:.0f} s" if seconds is not None else "the timeout"
    if isinstance(err, dist.DistNetworkError) or ("connect" in text and "timed out" in text):
        return (
            f"rank {rank}: could not reach the other processes within ddp_timeout ({limit}) to start the "
            "distributed run: rank 0 did not start, is slow to start, or MASTER_ADDR/MASTER_PORT point "
            "elsewhere. Raise ddp_timeout on a busy machine"
        )
    if any(marker in text for marker in _PEER_GONE_MARKERS):
        return (
            f"rank {rank}: another process of the distributed run died during a collective. Look at its "
            "error above (out of memory, a bad file, a kill); checkpoints/last.ckpt is the end of the last "
            "finished epoch: fix the cause and resume with --ckpt_path .../last.ckpt"
        )
    if any(marker in text for marker in _TIMEOUT_MARKERS):
        return (
            f"rank {rank}: a collective waited longer than ddp_timeout ({limit}) for the other processes: "
            "one of them is stuck, much slower, or died. Look at the other ranks' output; raise ddp_timeout "
            "in the config if a rank legitimately needs longer (e.g. a slow disk). checkpoints/last.ckpt "
            "is the end of the last finished epoch."
        )
    return None


def shutdown(trainer: pl.Trainer | None, wait_s: float = 60.0) -> None:
    """End a multi-process command cleanly: barrier, destroy the process group, reap the launched ranks.

    A no-op in a single process. Every rank must call it (it starts with a barrier), after the
    Lightning entry point (``fit``/``test``/...) returned normally.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    for proc in getattr(launcher, "procs", []) or []:
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
