"""fss/distributed.py in one process: the clean shutdown and the messages for distributed failures.

(Two real processes run in tests/test_ddp.py.)
"""

from __future__ import annotations

import datetime
import os
import types
from pathlib import Path

import torch
import torch.distributed as dist

from fss.distributed import describe_timeout, shutdown


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_shutdown_leaves_no_process_group_thread_alive(tmp_path: Path) -> None:
    """The abort at exit came from gloo threads still alive when the interpreter finalizes
    (docs/reliability.md): after shutdown() none is left."""
    before = _native_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    tensor = torch.ones(4)
    dist.all_reduce(tensor)
    dist.broadcast_object_list(["version_0"], src=0)  # what trainer.log_dir does
    assert _native_threads() > before  # gloo's worker and transport threads
    shutdown(None)
    assert not dist.is_initialized()
    assert _native_threads() == before
    shutdown(None)  # a no-op without a process group


def test_describe_timeout_names_the_rank_the_limit_and_the_fix() -> None:
    trainer = types.SimpleNamespace(
        world_size=2, global_rank=1, strategy=types.SimpleNamespace(_timeout=datetime.timedelta(seconds=60))
    )
    message = describe_timeout(dist.DistBackendError("Application timeout caused pair closure"), trainer)
    assert message.startswith("rank 1: a collective waited longer than ddp_timeout (60 s)")
    assert "raise ddp_timeout" in message and "last.ckpt" in message
    gone = describe_timeout(dist.DistBackendError("Connection closed by peer [127.0.0.1]:1234"), trainer)
    assert gone.startswith("rank 1: another process of the distributed run died during a collective")
    start = describe_timeout(dist.DistNetworkError("The client socket has timed out after 60000ms"), trainer)
    assert start.startswith("rank 1: could not reach the other processes within ddp_timeout (60 s)")
    # not distributed: not explained here
    assert describe_timeout(RuntimeError("timed out"), types.SimpleNamespace(world_size=1)) is None
    assert describe_timeout(ValueError("timeout"), trainer) is None
