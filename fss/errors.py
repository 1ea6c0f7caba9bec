"""One clear message per failure: what the ``fss`` commands print instead of a stack trace.

A failure the user can fix (a bad option value, a missing file or dataset root, an unknown name, a
corrupt image or checkpoint, a full disk, a distributed run that timed out) ends the command with
one or two lines on stderr — the option or path, what was expected, the fix — and exit status 1
(2 for command-line parsing errors, as argparse does). Anything else is a bug in fss or a library,
and keeps its stack trace. ``FSS_DEBUG=1`` re-raises every error with its full trace.

:func:`user_message` decides which is which and finds the message (the outermost error of the
``__cause__`` chain that fss raised, else the innermost one: a ``ValueError`` raised inside a data
module's ``__init__`` is reported with its own text, not jsonargparse's wrapper around it). :func:`condense_parser_error` shortens
jsonargparse's nested parser messages to the failing key and the reason.
"""

from __future__ import annotations

import errno
import os
import re

#: environment variable that turns the short messages off (full stack traces)
DEBUG_ENV = "FSS_DEBUG"


class FSSError(ValueError):
    """An error whose message is complete for the user: what is wrong, where, and the fix."""


def debug_enabled() -> bool:
    """``True`` when ``FSS_DEBUG`` is set to anything but empty or ``0``."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes, outermost first (explicit ``__cause__`` links, else ``__context__``)."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return out


def _is_user_error(err: BaseException) -> bool:
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    if isinstance(err, FSSError | MisconfigurationException):
        return True
    if type(err).__module__.split(".")[0] == "fss" and isinstance(err, Exception):
        return True  # fss's own error classes exist to carry a message for the user
    if isinstance(err, OSError):
        # missing / unreadable files and full disks; other OS errors (e.g. a broken pipe) are bugs
        return isinstance(
            err, FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError
        ) or (
            err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOENT)
            or type(err).__name__ in ("DatasetFileError", "DatasetLayoutError", "AtomicWriteError")
        )
    # bad option values: a ValueError raised by fss's own checks or jsonargparse's type checks (a
    # ValueError from deep inside torch or numpy is more likely a bug and keeps its trace)
    return isinstance(err, ValueError) and _raised_in(err, ("fss", "jsonargparse"))


def _raised_in(err: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in one of ``packages``."""
    tb = err.__traceback__
    if tb is None:
        return True  # raised and caught without a trace (e.g. re-created): trust the type
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in packages


def user_message(err: BaseException, trainer: object | None = None) -> str | None:
    """The message to print for ``err``, or ``None`` when it is a bug (keep the stack trace)."""
    from fss.distributed import describe_timeout

    chain = error_chain(err)
    # fss's own message when it wrapped the error (e.g. "cannot write X: no space left ...")
    ours = [link for link in chain if _is_user_error(link) and _raised_in(link, ("fss",))]
    # else a distributed failure, else the innermost user error (jsonargparse wraps a data
    # module's ValueError in its own)
    if not ours:
        for link in chain:
            described = describe_timeout(link, trainer)  # type: ignore[arg-type]
            if described is not None:
                return described
    for link in ours[:1] or reversed(chain):
        if _is_user_error(link):
            text = _without_worker_trace(str(link).strip()) or type(link).__name__
            if isinstance(link, OSError) and link.filename and str(link.filename) not in text:
                text = f"{link.filename}: {text}"
            if "gpu" in text.lower() and "backend" in text.lower():
                text += " (this machine has no usable GPU: add --trainer.accelerator cpu)"
            return text
    return None


def _without_worker_trace(text: str) -> str:
    """The original message of an error re-raised by a DataLoader worker (which embeds its traceback)."""
    header = "Original Traceback (most recent call last):"
    if header not in text:
        return text
    # the last traceback of the embedded text (a chained error prints its cause's first)
    lines = text.split(header, 1)[1].split("Traceback (most recent call last):")[-1].splitlines()
    start = next((i for i, line in enumerate(lines) if line and not line[0].isspace()), None)
    if start is None:
        return text
    message = "\n".join(lines[start:]).strip()
    return re.sub(r"^[\w.]+(Error|Exception|Exit): ", "", message)


_PARSER_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "- Expected a <class 'NoneType'>",
    "Expected a <class 'NoneType'>",
)


def _unknown_name(reason: str) -> str | None:
    """For an option that takes a registered name or a class (``model.net``/``backbone``/``masking``):
    ``unknown name 'xx': choose one of a, b, c, or give a class_path``; None for other reasons."""
    choices = re.search(r"Expected a typing\.Literal\[(.*?)\]", reason)
    value = re.search(r"Expected a dot import path string: (\S+)", reason)
    if not (choices and value):
        return None
    names = ", ".join(name.strip().strip("'\"") for name in choices.group(1).split(","))
    return (
        f"unknown name {value.group(1)!r}: choose one of {names}, or give a class with "
        "class_path/init_args (docs/design.md)"
    )


def condense_parser_error(message: str) -> str:
    """jsonargparse's nested parser error reduced to ``key.sub: reason`` (one line when possible).

    ``Parser key "data": ... Problem with given class_path 'fss.data.X': Parser key "shot": Expected a
    <class 'int'>. Got value: abc`` becomes ``data.shot (fss.data.X): Expected a <class 'int'>. Got
    value: abc``.
    """
    keys: list[str] = []
    class_path = None
    reasons: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or any(line.startswith(noise) for noise in _PARSER_NOISE):
            continue
        key = re.fullmatch(r'Parser key "(.+?)":(.*)', line)
        if key:
            keys.append(key.group(1))
            if key.group(2).strip():
                reasons.append(key.group(2).strip())
            continue
        problem = re.fullmatch(r"Problem with given class_path '(.+?)':(.*)", line)
        if problem:
            class_path = problem.group(1)
            if problem.group(2).strip():
                reasons.append(problem.group(2).strip())
            continue
        reasons.append(line)
    if not reasons:
        return message.strip()
    where = ".".join(dict.fromkeys(keys))
    named = _unknown_name(" ".join(reasons))
    if named:
        return f"{where}: {named}" if where else named
    if class_path:
        where = f"{where} ({class_path})" if where else class_path
    reason = " ".join(reasons)
    return f"{where}: {reason}" if where else reason
