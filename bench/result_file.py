"""A benchmark's JSON result, rewritten whole after every measurement.

A run cut at any point (a time limit's SIGINT, a kill, an out-of-memory) leaves a valid file that holds what
was measured and says ``"complete": false``: on a lent GPU with minutes to spare, a part that overruns still
brings its rows back.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import UsageError
from engine.store.manifest import write_json_atomic


def save_json(report: dict, out: Path) -> Path:
    """``report`` at ``out``, written atomically: a reader (or a kill) sees the previous file or this one."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give the JSON file's path, e.g. {out / 'result.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    return out


@contextlib.contextmanager
def recording(report: dict, out: Path) -> Iterator[Callable[[], Path]]:
    """Marks ``report`` incomplete, saves it, yields a ``save()`` to call after each row; on leaving normally
    marks it complete. Leaving by any exception saves what is there, still incomplete, and re-raises."""
    report["complete"] = False
    save = functools.partial(save_json, report, out)
    save()
    try:
        yield save
    except BaseException:
        save()
        raise
    report["complete"] = True
    save()
