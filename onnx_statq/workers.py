"""Run the pass's independent per-weight numerics on a thread pool, results in the order of the inputs.

Threads, not processes: the work is numpy on large arrays, which releases the GIL in its inner loops, and a process
pool would pickle every weight both ways. Every result is collected in input order and nothing is decided by which
item finishes first, so the output is byte-identical to the sequential run whatever the number of workers.

Concurrent encodes hold their temporaries at once (about 9x the weight's bytes for a first encode), so the weights
being worked on may total at most :data:`BYTES_IN_FLIGHT`, except that one weight always runs alone whatever its
size: the peak is that of the sequential run for a model whose largest weight is above that, and grows by at most
about 9x :data:`BYTES_IN_FLIGHT` for smaller ones.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["BYTES_IN_FLIGHT", "MAX_DEFAULT_JOBS", "default_jobs", "ordered_map"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_DEFAULT_JOBS = 8  # the default's cap: per-call Python overhead holds the GIL, so more threads gain less and less
BYTES_IN_FLIGHT = 128 << 20  # weight bytes worked on at once (one larger weight runs alone)


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it), at most :data:`MAX_DEFAULT_JOBS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_JOBS))


class _Budget:
    """Admits an item while the bytes in flight stay within ``limit``; with nothing in flight, any item runs, so a
    weight larger than the limit runs alone instead of never."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


def ordered_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    jobs: int,
    sizes: Sequence[int] | None = None,
    before: Callable[[int, T], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``jobs`` threads, in input order.

    ``sizes`` are the bytes each item's work reads (its weight), for the memory budget; ``before(i, item)`` runs in
    the calling thread before item ``i``'s result is taken (a progress bar need not be thread-safe). With ``jobs``
    1 everything runs in the calling thread, as the pass always did. The first exception, in input order, is raised
    once the items already running have finished; the ones not started are dropped.
    """
    if jobs <= 1 or len(items) <= 1:
        out = []
        for i, item in enumerate(items):
            if before is not None:
                before(i, item)
            out.append(fn(item))
        return out
    budget = _Budget(BYTES_IN_FLIGHT)
    weights = list(sizes) if sizes is not None else [0] * len(items)
    if len(weights) != len(items):
        raise ValueError(f"{len(weights)} sizes for {len(items)} items")

    def run(item: T, nbytes: int) -> R:
        with budget.hold(nbytes):
            return fn(item)

    workers = min(jobs, len(items))
    logger.debug("%d items on %d threads", len(items), workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="statq") as pool:
        futures: list[Future[R]] = [pool.submit(run, x, n) for x, n in zip(items, weights, strict=True)]
        try:
            results = []
            for i, (item, future) in enumerate(zip(items, futures, strict=True)):
                if before is not None:
                    before(i, item)
                results.append(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
