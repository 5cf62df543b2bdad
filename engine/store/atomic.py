"""Stores appear and are replaced whole: built beside their final path, then renamed into place.

Readers and other workers see no store or a whole one, never half a skeleton; when several workers
race to create one, the first rename wins and the others discard their copy. A store is replaced
(``--overwrite``) only once its successor is complete: the successor is encoded in ``staging_path``,
where a killed run resumes, and swapped in by two renames under a lock, so the old store stays
usable until the new one is whole.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path


def create_by_rename(path: Path, build: Callable[[Path], None]) -> bool:
    """Run ``build`` on a temporary sibling of ``path``, rename it to ``path``; False if ``path`` appeared first."""
    remove_stale_builds(path)
    tmp = path.with_name(f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.exists():
            raise  # the build failed (a full disk, a read-only folder): nothing of it is left
        return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def remove_stale_builds(path: Path) -> None:
    """Delete skeletons of ``path`` whose builder died (killed while building): they are this host's, and their
    pid is gone. Another host's, or a live worker's, are left to their builder."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{path.name}.creating-*"):
        owner = tmp.name.rsplit(".creating-", 1)[1]
        builder_host, _, pid = owner.rpartition("-")  # "HOST-PID"; a bare PID from engines before the host was named
        if builder_host in ("", host) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def staging_path(path: Path) -> Path:
    """Where the replacement of the store at ``path`` is encoded (the same for every run of a command)."""
    return path.with_name(f".{path.name}.replacement")


def swap_in(path: Path, staging: Path) -> bool:
    """Replace the store at ``path`` by the complete one at ``staging``; False if another worker did it first.

    A kill between the two renames leaves ``path`` absent and ``staging`` whole: the next run of the
    same command finds it complete and finishes the swap.
    """
    parent = os.open(path.parent, os.O_RDONLY)  # the lock: the directory both names live in, no lock file left over
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        if not staging.exists():
            return False
        if path.exists():
            os.rename(path, path.with_name(f".{path.name}.replaced-{os.getpid()}"))
        os.rename(staging, path)
    finally:
        os.close(parent)
    remove_replaced(path)
    return True


def remove_replaced(path: Path) -> None:
    """Delete what earlier swaps of ``path`` moved away (a kill may have left some). A ``path`` that was a symlink
    was moved as the link: the link goes, never what it pointed to."""
    for old in path.parent.glob(f".{path.name}.replaced-*"):
        if old.is_symlink() or not old.is_dir():
            old.unlink(missing_ok=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
