"""jit.njit: numba's compiler wherever the package runs, on-disk cache or not."""

from __future__ import annotations

import logging
import threading

import pytest

from CAM_Stanford_Cars.accel import jit

needs_numba = pytest.mark.skipif(not jit.HAVE_NUMBA, reason="needs numba")


@pytest.mark.parametrize(
    "n, workers, tasks", [(10, 1, None), (10, 3, None), (10, 2, 8), (3, 8, 32), (1, 4, None), (0, 2, None)]
)
def test_run_in_ranges_covers_every_item_once(n: int, workers: int, tasks: int | None) -> None:
    seen: list[int] = []
    threads: set[int] = set()
    lock = threading.Lock()

    def run(start: int, stop: int) -> None:
        with lock:
            seen.extend(range(start, stop))
            threads.add(threading.get_ident())

    jit.run_in_ranges(run, n, workers, tasks)
    assert sorted(seen) == list(range(n))
    if min(workers, n) <= 1:
        assert threads == {threading.get_ident()}  # one worker: the calling thread does it all
    else:
        assert threading.get_ident() not in threads


@needs_numba
def test_a_function_numba_cannot_cache_is_compiled_without_the_cache(caplog: pytest.LogCaptureFixture) -> None:
    # A function defined in no file has nowhere for its cache, as in a read-only install.
    namespace: dict[str, object] = {}
    exec("def add(a, b):\n    return a + b\n", namespace)
    with caplog.at_level(logging.WARNING, logger=jit.__name__):
        add = jit.njit(cache=True, nogil=True)(namespace["add"])
    assert add(2, 3) == 5 and add.py_func is namespace["add"]  # compiled by numba, not left as Python
    assert "without numba's on-disk cache" in caplog.text and "add" in caplog.text


@needs_numba
def test_bare_and_configured_forms_compile() -> None:
    @jit.njit
    def double(x):  # type: ignore[no-untyped-def]
        return 2 * x

    @jit.njit(cache=True)
    def triple(x):  # type: ignore[no-untyped-def]
        return 3 * x

    assert double(4) == 8 and triple(4) == 12
    assert hasattr(double, "py_func") and hasattr(triple, "py_func")
