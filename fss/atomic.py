"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every file fss writes that a later step reads back (checkpoints, ``best.json``, ``test_results.json``,
predicted masks) goes through :func:`atomic_write`: the bytes go to a temporary file *beside* the
target (same directory, hence same filesystem, so the final rename is atomic on any filesystem, unlike
a temporary file in ``$TMPDIR`` that must be copied across), the file is flushed and ``fsync``-ed,
then renamed over the target with ``os.replace`` and the directory entry is synced.

If the write fails (full disk, an exception, Ctrl+C) the temporary file is removed and the target is
untouched. A process killed outright (SIGKILL, power loss) cannot clean up; its temporary file, named
``.<target>.<pid>.partial``, is removed by :func:`remove_stale_partials` the next time a file is
written into that directory (the checkpoint writer calls it before every save).

:class:`AtomicCheckpointIO` is Lightning's checkpoint writer with this behaviour; the fss CLI gives it
to every Trainer. Lightning's own writer stages the file in ``$TMPDIR`` and *moves* it, which is a
copy when ``$TMPDIR`` is on another filesystem (a node-local ``/tmp``): a kill during the copy left
a truncated ``last.ckpt`` and a leaked temporary file.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

PARTIAL_SUFFIX = ".partial"
_PARTIAL_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.partial$")


class AtomicWriteError(OSError):
    """Writing a file failed; the previous version of the file (if any) is intact.

    ``errno`` and ``filename`` are those of the failed write; the message says it all.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def partial_path(path: Path) -> Path:
    """The temporary file :func:`atomic_write` uses for ``path`` in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(directory: Path) -> list[Path]:
    """Remove the temporary files of writes killed before they finished (their process is gone).

    Returns the removed paths.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _PARTIAL_RE.match(entry.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        with suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: some filesystems do not support opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, err: OSError) -> AtomicWriteError:
    what = "no space left on the device" if err.errno in (errno.ENOSPC, errno.EDQUOT) else str(err)
    existing = "the previous version is intact" if path.exists() else "nothing was written"
    out = AtomicWriteError(f"cannot write {path}: {what}; {existing}")
    out.errno, out.filename = err.errno or errno.EIO, str(path)
    return out


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Raises:
        AtomicWriteError: (an ``OSError``) when the write fails, naming ``path`` and saying that the
            previous file is intact; the temporary file is removed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, AtomicWriteError):
            raise _write_error(path, err) from err
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing local checkpoints with :func:`atomic_write`.

    ``torch.save`` streams into the temporary file (no second in-memory copy of the checkpoint).
    Remote paths (``s3://...``) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`."
            )
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        remove_stale_partials(target.parent)
        with atomic_write(target) as f:
            torch.save(checkpoint, f)
        return None
