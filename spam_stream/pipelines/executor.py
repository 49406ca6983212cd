"""The pipelined executor: stages run by a pool of worker threads, results in input order.

    source (decode) ──▶ [ pool: as many workers as cores, each takes the oldest ready task ] ──▶ writers ──▶ results

* **The pool (CPU).** A *task* is one item in one stage. A stage marked ``parallel`` keeps no state from one item to
  the next (the encoder, connectivity): any free worker may run it, on several items at once. Any other stage is
  *stateful* (warm clustering, the id tracker): it takes the items strictly in input order, one at a time. Every
  free worker takes the ready task of the *oldest* item (the one nearest the output), so the pool is
  work-conserving: a worker is idle only when no task is ready. There is no probe, no cost model, no plan to be
  wrong: what runs is decided task by task from what is ready now, so a one-time cost (a first frame's
  compilation) or content that changes (a scene cut, motion, a prior every N frames) cannot mislead it.
* **Threads per task.** A task runs with ``cores // busy`` numba and torch threads, ``busy`` being the workers busy
  when it starts (itself included, and the idle ones about to take the other ready tasks): alone it has every core, as in a sequential run; with every worker busy, one
  thread each (the total stays at the cores; numba's and torch's thread counts are per calling thread). A task's
  count is also *live* for SPAM's CPU clustering: each worker has a budget (the cores the other running tasks do
  not hold) that the clustering loop reads before every pass (:mod:`spam_stream.kernels.threads`),
  so an in-order clustering that started beside another task takes the core that task leaves when the other
  workers run out of ready tasks (a cluster-bound video), and gives it back when a task starts beside it.
* **I/O threads.** The source (decoding) has a thread of its own, and so has each ``io`` stage after the last
  compute stage (the writers: encoders that release the GIL), joined by bounded queues.
* **Backpressure.** At most ``window`` items are inside the pool (decoded, not yet handed on), and every queue holds
  at most ``queue_size`` items: memory stays bounded whatever the input length.
* **Order.** Stateful stages see the items in order; the items leave the pool in input order.
* **Errors.** An exception raised by a stage on one item is caught and stored on the item (``item.error``, one line
  naming the item); later stages pass such items through untouched (unless ``run_on_error``), and the consumer sees
  them in order. An exception raised by the *source* iterator becomes one last error item and ends the input.
* **Stopping.** Leaving the results loop early (``break``, an exception in the consumer, Ctrl-C) sets a stop flag;
  every thread polls it at least every ``poll`` seconds (0.1), so all stages stop within a second. A stage marked
  ``fatal=True`` (a writer) stops the whole pipeline when it raises: the error is re-raised to the consumer.
* **Ctrl-C.** Python raises KeyboardInterrupt wherever the main thread happens to be when the signal is handled —
  inside an object's finaliser it is printed and swallowed, and a video would then run to its end as if never
  interrupted. Applications (the CLI) install :func:`interrupt_on_sigint`: the handler also sets :data:`INTERRUPTED`,
  which the results loop checks at every poll and turns into a KeyboardInterrupt of its own.
* **Timing.** Each item's wall time per stage goes into ``item.timings`` (stage functions may add finer entries);
  :attr:`Pipeline.busy` sums each stage's wall time over the run, and :meth:`Pipeline.summary` is one line: the
  policy and each stage's busy fraction (the workers it kept busy on average; above 1: several items at once).
* **Devices.** On CUDA (``schedule="stages"``, always there) each stage has a thread of its own on its own
  ``torch.cuda.Stream``; an item carries a CUDA event recorded after the stage that produced it, and the next
  stage's stream waits on it, so frame t+1's prior overlaps frame t's clustering while the data dependencies hold.
  A stage marked ``io`` (a writer, which reads the frame's host arrays) first waits on the host for that event, so a
  stage may copy results back asynchronously (``non_blocking`` into pinned memory) without a writer reading them
  early.

Items are any objects with ``error`` and ``timings`` attributes (:class:`spam_stream.frame.Frame`).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

_END = object()  # end of input marker, passes through every queue
SCHEDULES = ("pool", "stages")
SCHEDULE_DEFAULT = "pool"  # the schedule of a Pipeline made without one off CUDA (benchmarks compare "stages")


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: the key of this stage's time in ``item.timings``.
        fn: ``fn(item) -> item`` (may return the same object, filled in).
        fatal: an exception here stops the whole pipeline and is re-raised to the consumer (used for writers, where
            a failure such as a full disk concerns every later item); otherwise it is stored on the item.
        run_on_error: also call ``fn`` for items that already carry an error (writers record failures).
        threads: torch / numba threads of this stage's thread in ``schedule="stages"`` (None = leave as is; the
            pool sets each task's threads itself, see the module docstring).
        io: an I/O stage (a writer: encoders that release the GIL): after the last compute stage, a thread of its
            own (see the module docstring).
        parallel: the stage keeps no state from one item to the next, so several items may be in it at once: any
            free worker of the pool may run it (see the module docstring).
    """

    name: str
    fn: Callable
    fatal: bool = False
    run_on_error: bool = False
    threads: int | None = None
    io: bool = False
    parallel: bool = False


class PipelineError(RuntimeError):
    """A fatal stage failed; the message names the stage and the item."""


INTERRUPTED = threading.Event()  # set by the SIGINT handler of interrupt_on_sigint


def interrupt_on_sigint() -> None:
    """Install a SIGINT handler (main thread only) that sets :data:`INTERRUPTED` and raises KeyboardInterrupt, so
    that an interrupt swallowed where it landed (a finaliser) still stops every pipeline at its next poll."""
    import signal

    def handler(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    signal.signal(signal.SIGINT, handler)


def describe(exc: BaseException) -> str:
    """A one-line description of an exception."""
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def cpu_thread_budget(n_busy_stages: int, cores: int | None = None) -> int:
    """Threads per busy stage when ``n_busy_stages`` compute stages share ``cores`` (default: this machine's); the
    split of ``schedule="stages"``."""
    if cores is None:
        cores = cpu_cores()
    return max(1, cores // max(1, n_busy_stages))


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)




class _Slot:
    """One item inside the pool: ``pos`` stages done, ``busy`` while a worker runs one of its stages."""

    __slots__ = ("item", "pos", "busy")

    def __init__(self, item):
        self.item, self.pos, self.busy = item, 0, False


def _set_threads(n: int | None, torch_too: bool = False) -> None:
    """This thread's numba thread count (and torch's: OpenMP's count is per calling thread)."""
    if n is None:
        return
    if torch_too:
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != n:
            torch.set_num_threads(int(n))
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # per calling thread
    except Exception:  # pragma: no cover - numba missing or not initialised
        pass


class Pipeline:
    """Stages run by a pool of workers (CPU) or a thread per stage (CUDA). ``for item in Pipeline(stages).run(src)``

    Args:
        stages: the stages in order.
        queue_size: capacity of each queue between threads (≥ 1).
        device: a torch device; on CUDA each stage gets a thread and a stream of its own (see the module docstring).
        poll: seconds between checks of the stop flag.
        schedule: "pool" (the default off CUDA, see the module docstring) or "stages" (one thread per stage, each
            with its own ``threads``; always on CUDA).
        cores: the cores to share (default: those this process may use); also the number of workers.
        window: items inside the pool at once (default: twice the workers plus two, at most what
            ``(stages + 1) × (queue_size + 1)`` allows).
    """

    def __init__(self, stages: list[Stage], queue_size: int = 2, device=None, poll: float = 0.1,
                 schedule: str | None = None, cores: int | None = None, window: int | None = None):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        schedule = schedule or SCHEDULE_DEFAULT
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")
        self.stages, self.queue_size, self.poll = list(stages), max(1, int(queue_size)), poll
        self.cuda = device is not None and str(device).startswith("cuda")
        self.device = device
        self.schedule = "stages" if self.cuda else schedule
        self.cores = max(1, int(cores or cpu_cores()))
        n_compute = max((i + 1 for i, s in enumerate(self.stages) if not s.io), default=0)
        self._pooled, self._tail = self.stages[:n_compute], self.stages[n_compute:]
        bound = max(1, (len(self.stages) + 1) * (self.queue_size + 1) - self.queue_size * (len(self._tail) + 2))
        self.window = max(1, int(window)) if window else max(min(2 * self.cores + 2, bound), min(self.cores + 1,
                                                                                               bound))
        self.busy: dict[str, float] = {}  # stage → seconds of wall time spent in it, summed over the workers
        self.peak: dict[str, int] = {}  # stage → most items inside it at once
        self.wall = 0.0  # seconds from the start of run() to its end
        self._stop = threading.Event()
        self._fatal: list[BaseException] = []

    # -- what ran, in one line -----------------------------------------------------------------------------------
    def policy(self) -> str:
        if self.schedule == "stages":
            return f"one thread per stage ({'CUDA streams' if self.cuda else 'CPU'})"
        anyw = [s.name for s in self._pooled if s.parallel]
        order = [s.name for s in self._pooled if not s.parallel]
        io = ["decode"] + [s.name for s in self._tail]
        return (f"pool of {self.cores} worker(s), oldest ready frame first"
                + (f"; {', '.join(anyw)} on any worker" if anyw else "")
                + (f"; {' → '.join(order)} in frame order" if order else "")
                + f"; I/O threads: {', '.join(io)}")

    def summary(self) -> str:
        """One line: the policy, then each stage's busy fraction (its seconds of work over the run's wall time: the
        workers it kept busy on average)."""
        return schedule_line(self.policy(), self.busy, self.wall)

    # -- queue helpers that never block longer than ``poll`` without checking the stop flag
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=self.poll)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set() and not INTERRUPTED.is_set():
            try:
                return q.get(timeout=self.poll)
            except queue.Empty:
                continue
        return _END

    def _feed(self, it: Iterator, out: queue.Queue, make_error: Callable | None) -> None:
        """Put the items of ``it`` on ``out``, then the end marker; the source is closed once it is exhausted or
        failed, or when the pipeline stops."""
        index, done = 0, False
        try:
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    done = True
                    break
                if not self._put(out, item):
                    return
                index += 1
        except BaseException as exc:  # a source that fails (a damaged video) ends the input with one error item
            done = True
            if make_error is not None:
                self._put(out, make_error(index, exc))
            else:
                self._fatal.append(exc)
                self._stop.set()
        finally:
            if done or self._stop.is_set():
                _close(it)
            self._source_closed = True
            self._put(out, _END)

    def _work(self, group: list[Stage], threads: int | None, inq: queue.Queue, outq: queue.Queue) -> None:
        """One thread: each item through the ``group``'s stages in turn (a stage of ``schedule="stages"``, or an
        I/O stage after the pool)."""
        _set_threads(threads, torch_too=not self.cuda)
        stream = self._stream()
        while True:
            item = self._get(inq)
            if item is _END:
                self._put(outq, _END)
                return
            item = self._process(group, item, stream)
            if item is None or not self._put(outq, item):
                return

    # -- the pool ----------------------------------------------------------------------------------------------
    def _admit(self, inq: queue.Queue) -> None:
        """Move the decoded items into the pool while it holds fewer than ``window`` (the pool's source side)."""
        while not self._stop.is_set():
            with self._cond:
                while len(self._slots) >= self.window and not self._stop.is_set():
                    self._cond.wait(self.poll)
            item = self._get(inq)
            with self._cond:
                if item is _END:
                    self._ended = True
                    self._cond.notify_all()
                    return
                self._slots.append(_Slot(item))
                self._cond.notify_all()

    def _ready(self):
        """The ready tasks, oldest item first: (slot, stage index) pairs (call with the lock held)."""
        n = len(self._pooled)
        for position, slot in enumerate(self._slots):
            if slot.busy or slot.pos >= n:
                continue
            stage = self._pooled[slot.pos]
            if stage.parallel or self._in_order[slot.pos] == self._first + position:
                yield slot, slot.pos

    def _worker(self) -> None:
        """One of the pool's workers: the oldest ready task, with ``cores // busy workers`` threads, again (busy:
        the running tasks, this one and the other ready ones that idle workers are about to take)."""
        threads = None
        budget = _share_budget()  # this worker's live thread count, for a task that reads it between passes
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set() or (self._ended and not self._slots):
                        _share_budget(None)
                        return
                    ready = self._ready()
                    task = next(ready, None)
                    if task is not None:
                        break
                    self._cond.wait(self.poll)
                slot, s = task
                slot.busy = True
                self._running += 1
                stage = self._pooled[s]
                self._inside[stage.name] = self._inside.get(stage.name, 0) + 1
                self.peak[stage.name] = max(self.peak.get(stage.name, 0), self._inside[stage.name])
                # the workers busy once the other ready tasks are taken too (those starting at the same moment)
                others = sum(1 for _ in zip(range(self.cores - self._running), ready))
                want = max(1, self.cores // (self._running + others))
                self._wants[id(budget)] = (budget, want)
                self._rebudget()
            if want != threads:
                _set_threads(want, torch_too=True)
                threads = want
            t = time.perf_counter()
            item = self._process([stage], slot.item, None)
            elapsed = time.perf_counter() - t
            with self._cond:
                self._running -= 1
                self._wants.pop(id(budget), None)
                self._rebudget()  # the running tasks may take the core this one leaves
                self._inside[stage.name] -= 1
                self.busy[stage.name] = self.busy.get(stage.name, 0.0) + elapsed
                if item is None:  # a fatal stage failed: stopping
                    self._cond.notify_all()
                    return
                slot.item, slot.busy = item, False
                slot.pos += 1
                if not stage.parallel:
                    self._in_order[s] += 1
                self._cond.notify_all()

    def _rebudget(self) -> None:
        """Each running task's live thread count (call with the lock held): the cores the other running tasks
        do not hold (their threads as set when they started), at least 1. A clustering reads it before each pass
        (:mod:`spam_stream.kernels.threads`), so a long in-order task takes a core that falls idle
        (the other workers out of ready tasks) instead of keeping the one thread it started with."""
        total = sum(want for _, want in self._wants.values())
        for budget, want in self._wants.values():
            budget[0] = max(1, self.cores - (total - want))

    def _collect(self, outq: queue.Queue) -> None:
        """Hand the pool's finished items on in input order (the pool's output side), then the end marker."""
        n = len(self._pooled)
        while True:
            with self._cond:
                while not self._stop.is_set():
                    if self._slots and self._slots[0].pos >= n and not self._slots[0].busy:
                        break
                    if self._ended and not self._slots:
                        break
                    self._cond.wait(self.poll)
                if self._stop.is_set():
                    return
                if not self._slots:
                    break
                item = self._slots[0].item
            if not self._put(outq, item):
                return
            with self._cond:
                self._slots.popleft()
                self._first += 1
                self._cond.notify_all()
        self._put(outq, _END)

    def _threads_for(self, it: Iterator, make_error: Callable | None):
        """The threads of a run and the queue the results come out of."""
        feed = queue.Queue(self.queue_size)
        threads = [threading.Thread(target=self._feed, args=(it, feed, make_error), name="source", daemon=True)]
        if self.schedule == "stages":
            groups, q = [[s] for s in self.stages], feed
        else:
            self._cond = threading.Condition()
            self._slots: deque[_Slot] = deque()
            self._first, self._ended, self._running = 0, False, 0
            self._in_order = [0] * len(self._pooled)  # items each stage has taken in order (stateful stages)
            self._inside: dict[str, int] = {}
            self._wants: dict[int, tuple] = {}  # running tasks: their worker's live budget and starting threads
            q = queue.Queue(self.queue_size)
            threads.append(threading.Thread(target=self._admit, args=(feed,), name="stage-pool-admit", daemon=True))
            threads += [threading.Thread(target=self._worker, name=f"stage-pool-{w}", daemon=True)
                        for w in range(self.cores)]
            threads.append(threading.Thread(target=self._collect, args=(q,), name="stage-pool-collect",
                                            daemon=True))
            groups = [[s] for s in self._tail]
        for stages in groups:
            out = queue.Queue(self.queue_size)
            threads.append(threading.Thread(target=self._timed_work, args=(stages, q, out),
                                            name=f"stage-{'+'.join(s.name for s in stages)}", daemon=True))
            q = out
        return threads, q

    def _timed_work(self, stages: list[Stage], inq: queue.Queue, outq: queue.Queue) -> None:
        self._work(stages, stages[0].threads if self.schedule == "stages" else None, inq, outq)

    def run(self, source: Iterable, make_error: Callable | None = None) -> Iterator:
        """Items of ``source`` after every stage, in input order.

        ``make_error(index, exc)`` turns an exception of the source iterator into an error item (else the exception
        is re-raised to the consumer after the items before it). Closing the iterator early stops every thread.
        """
        self._stop.clear()
        self._fatal.clear()
        self.busy, self.peak = {s.name: 0.0 for s in self.stages}, {}
        self._source_closed = False
        start = time.perf_counter()
        it = iter(source)
        torch_before = _torch_threads()
        threads = []
        try:
            threads, results = self._threads_for(it, make_error)
            for t in threads:
                t.start()
            while True:
                item = self._get(results)
                if INTERRUPTED.is_set():  # an interrupt the main thread swallowed elsewhere (see the module doc)
                    raise KeyboardInterrupt
                if item is _END:
                    break
                if self.cuda and "cuda_event" in item.meta:
                    item.meta.pop("cuda_event").synchronize()
                yield item
        finally:
            self._stop.set()
            for t in threads:
                if t.ident is not None:  # an interrupt can land while the threads are being started
                    t.join(timeout=5.0)
            if not self._source_closed:
                _close(it)  # (a no-op when the source thread closed it)
            _set_torch_threads(torch_before)
            self.wall = time.perf_counter() - start
        if self._fatal:
            raise self._fatal[0]

    def _stream(self):
        if not self.cuda:
            return None
        import torch

        return torch.cuda.Stream(device=self.device)

    def _process(self, group: list[Stage], item, stream):
        """``item`` through the ``group``'s stages; None when a fatal stage failed (the pipeline is stopping)."""
        for stage in group:
            if item.error is not None and not stage.run_on_error:
                continue
            t, before = time.perf_counter(), item.timings.get(stage.name)
            try:
                if stream is not None and stage.io:  # a writer reads host arrays: the frame's work must be
                    event = item.meta.pop("cuda_event", None)  # done, not merely queued (an async copy back)
                    if event is not None:
                        event.synchronize()
                    item = stage.fn(item)
                elif stream is not None:
                    item = self._run_on_stream(stage, item, stream)
                else:
                    item = stage.fn(item)
            except Exception as exc:
                if stage.fatal:
                    self._fatal.append(PipelineError(f"{stage.name} failed on {_name(item)}: {describe(exc)}"))
                    self._fatal[-1].__cause__ = exc
                    self._stop.set()
                    return None
                item.error = f"{_name(item)}: {describe(exc)}"
                item.meta["traceback"] = traceback.format_exc()
            elapsed = time.perf_counter() - t
            _record(item, stage.name, before, elapsed)
            if stage not in self._pooled or self.schedule == "stages":
                self.busy[stage.name] = self.busy.get(stage.name, 0.0) + elapsed
        return item

    def _run_on_stream(self, stage: Stage, item, stream):
        import torch

        event = item.meta.pop("cuda_event", None)
        if event is not None:
            stream.wait_event(event)
        with torch.cuda.stream(stream):
            item = stage.fn(item)
            done = torch.cuda.Event()
            done.record(stream)
        item.meta["cuda_event"] = done
        return item

    def stop(self) -> None:
        """Ask every stage to stop (from any thread)."""
        self._stop.set()


def _share_budget(budget=True):
    """This thread's live thread budget for SPAM's CPU clustering (a (1,) int64 array, returned; None: off)."""
    import numpy as np

    array = np.zeros(1, np.int64) if budget is True else None
    try:
        from ..kernels.threads import set_thread_budget
    except Exception:  # pragma: no cover - the kernels need numba
        return array
    set_thread_budget(array)
    return array


def _close(it) -> None:
    """Close a generator source (a video decoder) now, in this thread, so that its files and codec threads are
    released now rather than by the garbage collector during interpreter shutdown."""
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # never imported here just for this
    return torch.get_num_threads() if torch is not None else None


def _set_torch_threads(n: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and n is not None and n != torch.get_num_threads():
        torch.set_num_threads(int(n))


def schedule_line(policy: str, busy: dict[str, float], wall: float, cpu: float | None = None) -> str:
    """One line: the ``policy``, each stage's busy fraction (``busy`` seconds over ``wall``: the workers it kept
    busy on average) and the process's CPU time over the wall time when given."""
    wall = max(wall, 1e-9)
    parts = ", ".join(f"{name} {seconds / wall:.2f}" for name, seconds in busy.items())
    tail = f" | CPU/wall {cpu / wall:.2f}" if cpu is not None else ""
    return f"schedule: {policy} | busy: {parts}{tail}"


def _record(item, name: str, before, elapsed: float) -> None:
    """The stage's wall time into ``item.timings[name]``, unless the stage timed itself (SPAM's stage methods do,
    with ``Frame.timed``): then its own, finer figure stays (a skipped warm-start step may record 0)."""
    if item.timings.get(name) == before:
        item.timings[name] = (before or 0.0) + elapsed


def _name(item) -> str:
    key = getattr(item, "key", None)
    return str(key) if key is not None else f"item {getattr(item, 'index', '?')}"


def run_sequential(stages: list[Stage], source: Iterable, make_error: Callable | None = None) -> Iterator:
    """The same stages one item at a time in the calling thread (the baseline the pipeline is measured against);
    each stage's process CPU time goes into ``item.meta["cpu"]``."""
    it, index = iter(source), 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            if make_error is None:
                raise
            item = make_error(index, exc)
            for stage in stages:
                if stage.run_on_error:
                    stage.fn(item)
            yield item
            return
        index += 1
        for stage in stages:
            if item.error is not None and not stage.run_on_error:
                continue
            t, cpu, before = time.perf_counter(), time.process_time(), item.timings.get(stage.name)
            try:
                item = stage.fn(item)
            except Exception as exc:
                if stage.fatal:
                    raise PipelineError(f"{stage.name} failed on {_name(item)}: {describe(exc)}") from exc
                item.error = f"{_name(item)}: {describe(exc)}"
            _record(item, stage.name, before, time.perf_counter() - t)
            # one stage at a time: the process's CPU time is this stage's (all its threads)
            item.meta.setdefault("cpu", {})[stage.name] = time.process_time() - cpu
        yield item
