"""Atomic writes (fss/atomic.py): the old file or the new one, never half; no temporary file left behind.

The kill-during-write case with ``$TMPDIR`` on another filesystem runs a real process in
tests/test_faults.py; here the in-process failures.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fss.atomic import (
    AtomicCheckpointIO,
    AtomicWriteError,
    atomic_write,
    partial_path,
    remove_stale_partials,
    write_text,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "best.json"
    write_text(target, "old\n")
    for failure in (OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(failure) if isinstance(failure, KeyboardInterrupt) else AtomicWriteError):
            with atomic_write(target, "w") as f:
                f.write("new, half")
                raise failure
        assert target.read_text() == "old\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and not partial_path(target).exists()


def test_stale_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.ckpt.{dead_pid}.partial"
    live = tmp_path / f".last.ckpt.{os.getppid()}.partial"  # a running process (pytest's parent)
    other = tmp_path / "notes.partial"  # not one of ours
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_checkpoint_io_writes_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_save = torch.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        seen.append(str(Path(f.name).parent))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "state_dict": {}}, target)
    assert seen == [str(target.parent)]
    assert torch.load(target, weights_only=True)["epoch"] == 1
