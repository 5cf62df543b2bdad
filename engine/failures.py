"""How an expected failure reads: one line naming the file or option and the fix, and the exit status.

`engine` and `bench` pass every exception of a command through ``expected_failure``. The user's to fix, and
so one line on stderr with no traceback: a ``UsageError``; a full disk, a read-only or forbidden folder (an
``OSError``, also when safetensors reports one as ``SafetensorError("... (os error 28)")``, or when a library
raised its own error *from* one); and Ctrl-C, which exits 130 (the shell's status for SIGINT) and says how
to pick the work up again. Anything else is a bug in the engine and keeps its traceback (``--debug`` shows
the traceback of an expected failure too).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UsageError
from engine.output_folder import nearest_folder

INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT
FAILED = 1

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS,)
_FORBIDDEN = (errno.EACCES, errno.EPERM)
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how the Rust of safetensors reports an OS error


@dataclass(frozen=True)
class Failure:
    """What the command prints (after ``<prog> <command>: ``) and the status it exits with."""

    line: str
    status: int


def expected_failure(err: BaseException, resume: str, output: Path | str | None = None) -> Failure | None:
    """The one line of an expected failure, or None for a bug (which keeps its traceback).

    ``resume`` says how the interrupted command picks up its work again; ``output`` is the path named when
    an OS error names none (a failed ``write`` carries no file name): the command's --out.
    """
    if isinstance(err, KeyboardInterrupt):
        return Failure(f"interrupted; {resume}", INTERRUPTED)
    if isinstance(err, UsageError):
        return Failure(f"error: {err}", FAILED)
    code, path, reason = _os_error(err)
    where = path or (str(output) if output is not None else "the output folder")
    if code in _NO_SPACE:
        detail = ", ".join(d for d in (reason, _free_space(where)) if d)
        detail = f" ({detail})" if detail else ""
        return Failure(f"error: no space left on {where}{detail}: free space there or pass --out elsewhere", FAILED)
    if code in _READ_ONLY:
        return Failure(f"error: {where} is on a read-only filesystem: pass --out to a writable folder", FAILED)
    if code in _FORBIDDEN:
        return Failure(
            f"error: {where}: permission denied; make it writable (readable, for an input) or pass --out to a "
            "writable folder",
            FAILED,
        )
    return None


def _os_error(err: BaseException | None) -> tuple[int | None, str | None, str | None]:
    """(errno, file name, reason beyond the errno's own text) of an OS error: the exception itself, or one it
    was raised from."""
    while err is not None:
        if isinstance(err, OSError) and err.errno is not None:
            reason = err.strerror if err.strerror != os.strerror(err.errno) else None
            return err.errno, err.filename, reason
        if found := _OS_ERROR_IN_TEXT.search(str(err)):
            return int(found.group(1)), None, None
        err = err.__cause__
    return None, None, None


def _free_space(where: str) -> str:
    """``N MiB free`` on the disk of ``where`` (its nearest existing folder), or nothing when unknown."""
    try:
        free = shutil.disk_usage(nearest_folder(where)).free
    except OSError:
        return ""
    return f"{free / 2**20:.0f} MiB free"
