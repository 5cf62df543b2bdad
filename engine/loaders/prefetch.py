"""Run a batch producer in a background thread a few items ahead of the training step.

The thread owns the producer (it builds it, runs it, and closes it), so pipelines and worker
processes live and die in one thread; closing the consumer stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(make: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Items of ``make()`` produced ``depth`` ahead in a thread; exceptions reach the consumer."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        producer = None
        try:
            producer = make()
            for item in producer:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failed(error))
        finally:
            close = getattr(producer, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="latent-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
