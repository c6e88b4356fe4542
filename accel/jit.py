"""numba where it is installed (``HAVE_NUMBA``), an ``njit`` that works wherever the package does, and threads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

try:
    import numba
except ImportError:
    numba = None
HAVE_NUMBA = numba is not None

__all__ = ["HAVE_NUMBA", "njit", "run_in_ranges"]


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit``, bare or with options; without numba the function stays plain Python. Where numba can
    write its cache nowhere (it then refuses ``cache=True``), the function is compiled uncached, with a warning."""
    if len(args) == 1 and callable(args[0]) and not options:
        return njit()(args[0])

    def decorate(func: Callable[..., Any]) -> Any:
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
    """Call ``run(start, stop)`` over ``[0, n)`` cut into ``tasks`` near-equal ranges on ``workers`` threads
    (compiled kernels release the GIL); one worker runs it all in the calling thread."""
    workers = max(1, min(workers, n))
    if workers == 1:
        run(0, n)
        return
    tasks = min(n, max(workers, tasks or workers))
    bounds = [n * k // tasks for k in range(tasks + 1)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, bounds[:-1], bounds[1:]))
