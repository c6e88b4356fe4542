"""numba where it is installed: ``HAVE_NUMBA``, an ``njit`` that works wherever the package does,
and :func:`run_in_ranges`, which spreads a compiled kernel's batch over plain threads.

The compiled kernels (the localisation sweep, the overlay kernel) ask numba for an on-disk cache
(``cache=True``), so a new process loads them instead of compiling them again. numba refuses such
a function outright when it can write its cache nowhere, beside the source nor in the user's
cache folder (a read-only install with no writable home); this ``njit`` then compiles it
without the cache. Without numba it leaves the function as plain Python.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

try:
    import numba

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "njit", "run_in_ranges"]

_F = TypeVar("_F", bound=Callable[..., Any])


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit``, used bare (``@njit``) or with options (``@njit(cache=True, nogil=True)``).

    Where ``cache=True`` cannot be honoured the function is compiled without the cache (and a
    warning says so); without numba it is returned as it is.
    """
    if len(args) == 1 and callable(args[0]) and not options:
        return njit()(args[0])

    def decorate(func: _F) -> _F:
        if not HAVE_NUMBA:
            return func
        try:
            return numba.njit(**options)(func)
        except RuntimeError as err:  # "cannot cache function ...: no locator available"
            if not options.get("cache"):
                raise
            logger.warning("%s; compiling %s without numba's on-disk cache", err, func.__qualname__)
            return numba.njit(**{**options, "cache": False})(func)

    return decorate


def run_in_ranges(run: Callable[[int, int], None], n: int, workers: int, tasks: int | None = None) -> None:
    """Call ``run(start, stop)`` over ``[0, n)`` cut into ``tasks`` near-equal ranges, on ``workers`` threads.

    Compiled kernels release the GIL (``nogil=True``), so plain threads share a batch with no
    extra compilation. More tasks than workers let a thread slowed by other load on its core hand
    its share to the others. One worker runs the whole range in the calling thread.

    Args:
        run: Processes items ``start:stop``.
        n: Number of items.
        workers: Threads to use, at most ``n``.
        tasks: Ranges to cut ``[0, n)`` into (at most ``n``); default one per worker.
    """
    workers = max(1, min(workers, n))
    if workers == 1:
        run(0, n)
        return
    tasks = min(n, max(workers, tasks or workers))
    bounds = [n * k // tasks for k in range(tasks + 1)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(run, bounds[:-1], bounds[1:]):
            pass
