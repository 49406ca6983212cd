"""The pipelined executor: stages in threads joined by bounded queues, results in input order.

    source ──▶ [stage 1] ──q──▶ [stage 2] ──q──▶ … ──▶ results (in input order)

* **Backpressure.** Every queue holds at most ``queue_size`` items, so memory stays bounded whatever the input
  length: a slow stage stalls the ones before it.
* **Order.** Each stage is one thread that takes items first-in first-out, so items leave in the order they came
  (a stage may keep state from one item to the next: a video's previous frame).
* **Errors.** An exception raised by a stage on one item is caught and stored on the item (``item.error``, one line
  naming the item); later stages pass such items through untouched, and the consumer sees them in order. An
  exception raised by the *source* iterator becomes one last error item and ends the input.
* **Stopping.** Leaving the results loop early (``break``, an exception in the consumer, Ctrl-C) sets a stop flag;
  every thread polls it at least every ``poll`` seconds (0.1), so all stages stop within a second. A stage marked
  ``fatal=True`` (a writer) stops the whole pipeline when it raises: the error is re-raised to the consumer.
* **Ctrl-C.** Python raises KeyboardInterrupt wherever the main thread happens to be when the signal is handled —
  inside an object's finaliser it is printed and swallowed, and a video would then run to its end as if never
  interrupted. Applications (the CLI) install :func:`interrupt_on_sigint`: the handler also sets :data:`INTERRUPTED`,
  which the results loop checks at every poll and turns into a KeyboardInterrupt of its own.
* **Timing.** Each item's wall time per stage goes into ``item.timings`` (stage functions may add finer entries).
* **Devices.** On CUDA each stage thread runs on its own ``torch.cuda.Stream``; an item carries a CUDA event
  recorded after the stage that produced it, and the next stage's stream waits on it, so frame t+1's prior overlaps
  frame t's clustering while the data dependencies hold. On a CPU, :func:`cpu_thread_budget` splits the cores
  between the stages' torch and numba thread pools.

Items are any objects with ``error`` and ``timings`` attributes (:class:`spam_stream.frame.Frame`).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

_END = object()  # end of input marker, passes through every queue


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: the key of this stage's time in ``item.timings``.
        fn: ``fn(item) -> item`` (may return the same object, filled in).
        fatal: an exception here stops the whole pipeline and is re-raised to the consumer (used for writers, where
            a failure such as a full disk concerns every later item); otherwise it is stored on the item.
        run_on_error: also call ``fn`` for items that already carry an error (writers record failures).
        threads: torch / numba threads this stage may use on a CPU (None = leave as is).
        io: an I/O stage (a writer: encoders that release the GIL): always a thread of its own, never given compute
            threads nor merged with other stages by the measured schedule (see the module docstring).
    """

    name: str
    fn: Callable
    fatal: bool = False
    run_on_error: bool = False
    threads: int | None = None
    io: bool = False


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
    """Threads per busy stage when ``n_busy_stages`` compute stages share ``cores`` (default: this machine's)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_busy_stages))


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # per calling thread
    except Exception:  # pragma: no cover - numba missing or not initialised
        pass


class Pipeline:
    """Stages joined by bounded queues. ``for item in Pipeline(stages).run(source): ...``

    Args:
        stages: the stages in order.
        queue_size: capacity of each queue between stages (≥ 1): at most about
            ``(len(stages) + 1) * (queue_size + 1)`` items are alive at once.
        device: a torch device; on CUDA each stage gets its own stream (see the module docstring).
        poll: seconds between checks of the stop flag.
    """

    def __init__(self, stages: list[Stage], queue_size: int = 2, device=None, poll: float = 0.1):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages, self.queue_size, self.poll = list(stages), max(1, int(queue_size)), poll
        self.cuda = device is not None and str(device).startswith("cuda")
        self.device = device
        self._stop = threading.Event()
        self._fatal: list[BaseException] = []

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

    def _feed(self, source: Iterable, out: queue.Queue, make_error: Callable | None) -> None:
        index = 0
        it = iter(source)
        try:
            for item in it:
                if not self._put(out, item):
                    return
                index += 1
        except BaseException as exc:  # a source that fails (a damaged video) ends the input with one error item
            if make_error is not None:
                self._put(out, make_error(index, exc))
            else:
                self._fatal.append(exc)
                self._stop.set()
        finally:
            # a generator source (a video decoder) is closed here, in its own thread, so that its files and codec
            # threads are released now rather than by the garbage collector during interpreter shutdown
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass
            self._put(out, _END)

    def _work(self, stage: Stage, inq: queue.Queue, outq: queue.Queue) -> None:
        _set_threads(stage.threads)
        stream = None
        if self.cuda:
            import torch

            stream = torch.cuda.Stream(device=self.device)
        while True:
            item = self._get(inq)
            if item is _END:
                self._put(outq, _END)
                return
            if item.error is None or stage.run_on_error:
                t, before = time.perf_counter(), item.timings.get(stage.name)
                try:
                    if stream is not None:
                        item = self._run_on_stream(stage, item, stream)
                    else:
                        item = stage.fn(item)
                except Exception as exc:
                    if stage.fatal:
                        self._fatal.append(PipelineError(f"{stage.name} failed on {_name(item)}: {describe(exc)}"))
                        self._fatal[-1].__cause__ = exc
                        self._stop.set()
                        return
                    item.error = f"{_name(item)}: {describe(exc)}"
                    item.meta["traceback"] = traceback.format_exc()
                _record(item, stage.name, before, time.perf_counter() - t)
            if not self._put(outq, item):
                return

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

    def run(self, source: Iterable, make_error: Callable | None = None) -> Iterator:
        """Items of ``source`` after every stage, in input order.

        ``make_error(index, exc)`` turns an exception of the source iterator into an error item (else the exception
        is re-raised to the consumer after the items before it). Closing the iterator early stops every thread.
        """
        self._stop.clear()
        self._fatal.clear()
        queues = [queue.Queue(self.queue_size) for _ in range(len(self.stages) + 1)]
        threads = [threading.Thread(target=self._feed, args=(source, queues[0], make_error), name="source",
                                    daemon=True)]
        for i, stage in enumerate(self.stages):
            threads.append(threading.Thread(target=self._work, args=(stage, queues[i], queues[i + 1]),
                                            name=f"stage-{stage.name}", daemon=True))
        for t in threads:
            t.start()
        try:
            while True:
                item = self._get(queues[-1])
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
                t.join(timeout=5.0)
        if self._fatal:
            raise self._fatal[0]

    def stop(self) -> None:
        """Ask every stage to stop (from any thread)."""
        self._stop.set()


def _record(item, name: str, before, elapsed: float) -> None:
    """The stage's wall time into ``item.timings[name]``, unless the stage timed itself (SPAM's stage methods do,
    with ``Frame.timed``): then its own, finer figure stays (a skipped warm-start step may record 0)."""
    if item.timings.get(name) == before:
        item.timings[name] = (before or 0.0) + elapsed


def _name(item) -> str:
    key = getattr(item, "key", None)
    return str(key) if key is not None else f"item {getattr(item, 'index', '?')}"


def run_sequential(stages: list[Stage], source: Iterable, make_error: Callable | None = None) -> Iterator:
    """The same stages one item at a time in the calling thread (the baseline the pipeline is measured against)."""
    index = 0
    it = iter(source)
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
            # one stage at a time: the process's CPU time is this stage's (all its threads), for the CPU bound
            item.meta.setdefault("cpu", {})[stage.name] = time.process_time() - cpu
        yield item
