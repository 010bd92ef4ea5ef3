"""One CPU-bound job in a forked child while the parent goes on: the second core's share of a command.

Why fork: the job's input (a table of a million rows) reaches the child by fork, copy-on-write, not
by pickling; its result (a hash, say) comes back small. Where fork is unavailable, or unsafe, the job
runs in the parent when its result is asked for - the same result, only later. Fork is unsafe once
Ray runs in this process (the `--engine ray` driver, a Flower simulation): a child forked from its
gRPC threads can hang on their locks.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_JOB: tuple[Callable[..., Any], tuple[Any, ...]] | None = None  # set in the child by fork


def _fork_safe() -> bool:
    """Fork is available and no threaded runtime that fork can deadlock (Ray's gRPC) runs here."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    ray = sys.modules.get("ray")
    return not (ray is not None and callable(getattr(ray, "is_initialized", None)) and ray.is_initialized())


def _hold(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    global _JOB
    _JOB = (fn, args)


def _run() -> Any:
    assert _JOB is not None, "forked job not initialised"
    fn, args = _JOB
    return fn(*args)


class Pending(Generic[T]):
    """`fn(*args)`, computed in a forked child from the moment of `start`; `result()` waits for it
    (and raises what it raised)."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._fn, self._args = fn, args
        self._pool: ProcessPoolExecutor | None = None
        self._future: Future[T] | None = None
        if _fork_safe():
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_hold, initargs=(fn, args))
            self._future = self._pool.submit(_run)

    def result(self) -> T:
        if self._future is None:
            return self._fn(*self._args)
        try:
            return self._future.result()
        finally:
            self.close()

    def close(self) -> None:
        """Wait for the child to end (a job still running is not cut short) and drop the job's
        arguments, so the parent can free them."""
        if self._future is not None:
            self._args = ()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
