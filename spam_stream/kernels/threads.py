"""A live thread count for the CPU clustering loops (:mod:`.cpu`, :mod:`.cells`).

numba's thread count is per calling thread and is read when a parallel region starts. The executor's pool
(:mod:`spam_stream.pipelines.executor`) gives each worker thread a *budget*, a (1,) int64 array that it rewrites
while a task runs (the cores the other running tasks do not hold); the clustering loops read it before every pass
and call ``numba.set_num_threads`` with it, so a long in-order clustering takes a core that falls idle mid-call.
The loops add their chunks in chunk order whatever the threads, so no result depends on it.
"""
from __future__ import annotations

import threading
import warnings

import numba
import numpy as np
from numba.core.errors import NumbaWarning

# the loops switch threads in a short object-mode block (numba.set_num_threads called in nopython code would make
# them uncachable: a compile in every process); numba warns, when compiling, that such a block holds the GIL
warnings.filterwarnings("ignore", message="Code running in object mode won't allow parallel", category=NumbaWarning)

_LOCAL = threading.local()
NO_BUDGET = np.zeros(1, np.int64)  # 0: leave the thread's count as set


def set_thread_budget(budget: np.ndarray | None) -> None:
    """Give this thread's clustering a live thread count: ``budget`` (1,) int64 that another thread may rewrite
    while the clustering runs; None: off (the thread's numba count, as set)."""
    _LOCAL.budget = budget


def thread_budget() -> np.ndarray | None:
    """This thread's budget array, or None."""
    return getattr(_LOCAL, "budget", None)


def run_with_budget(kernel, *args):
    """``kernel(*args, budget)`` with this thread's budget (:data:`NO_BUDGET` when none); the thread's numba count
    is restored afterwards (a kernel that followed the budget leaves it changed)."""
    budget = thread_budget()
    if budget is None:
        return kernel(*args, NO_BUDGET)
    threads = numba.get_num_threads()
    try:
        return kernel(*args, budget)
    finally:
        numba.set_num_threads(threads)


def apply_threads(n) -> None:
    """numba threads of this thread's next parallel regions: ``n`` (within numba's pool). Called by the clustering
    loops, in an object-mode block, when their budget changes."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
