"""The pipelined executor: stages in threads joined by bounded queues, results in input order.

    source ──▶ [stage 1] ──q──▶ [stage 2] ──q──▶ … ──▶ results (in input order)

* **Backpressure.** Every queue holds at most ``queue_size`` items, so memory stays bounded whatever the input
  length: a slow stage stalls the ones before it.
* **Order.** Each thread (one stage, or a run of consecutive stages, see below) takes items first-in first-out, so
  items leave in the order they came (a stage may keep state from one item to the next: a video's previous frame).
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
  frame t's clustering while the data dependencies hold. A stage marked ``io`` (a writer, which reads the frame's
  host arrays) first waits on the host for that event, so a stage may copy results back asynchronously
  (``non_blocking`` into pinned memory) without a writer reading them early.
* **Cores by measured cost (CPU).** One thread per stage, each given ``cores / busy stages`` threads, starves the
  stage that needs the cores (the encoder: 94 ms per 481×321 frame on both cores of the development machine, 155 ms
  on one) and made a pipelined run *slower* than a sequential one (0.85× on an idle 2-core machine). With
  ``schedule="measured"`` (the default off CUDA) the executor measures before it decides:

  1. *Probe.* The first ``probe`` items (2) run one at a time in the consumer's thread with every core, as
     :func:`run_sequential` does; for the items after the first (the first pays JIT compilation and cold starts)
     each stage's wall time ``w`` and process CPU time ``c`` are recorded.
  2. *Model.* A stage's single-thread work is ``a = max(w, min(c, cores · w))`` (CPU time beyond that belongs to
     other threads of the process); Amdahl's law splits it into a serial part ``s`` and a parallel part ``p`` with
     ``s + p = a`` and ``s + p / cores = w``, so its time on ``t`` threads is ``s + p / t`` (:class:`StageCost`).
     Few probe items: a stage whose cost varies from item to item (``--prior-every N``: the prior runs on one
     frame in N) is planned from the items the probe saw; the guard below catches a plan that loses.
  3. *Plan* (:func:`plan_cpu`). The compute stages (those not marked ``io``) are cut into at most ``cores`` runs of
     consecutive stages; each run is one thread that does its stages in turn, and the cores are dealt out to the
     runs (each one thread, then one more at a time to the run that is slowest). A plan's period is the slowest
     run's time, and never less than the total work over the cores. The plan with one run holding every compute
     stage on all cores is *sequential with overlapped I/O*: the source (decoding) and each ``io`` stage (writers)
     still have threads of their own, so its period is the sequential run's minus the I/O, whatever the stages
     cost. Another plan is taken only when the model says it is at least 10% faster (``margin``): the one-run
     plan is the safe choice, its period measured rather than modelled.
     *Replicas* (:func:`plan_replicated`). A stage marked ``parallel`` keeps no state between items (the
     encoder: a video's warm features are planned before it and assembled after it, in order), so items need
     not wait for one another there. The costliest run of consecutive parallel stages may run in ``cores``
     one-thread replicas that take the items in turn — several frames at once, the results put back in input
     order — with one thread for the stages before it and one for those after. Stateful stages then overlap
     with it, and the replicas soak up whatever core time the serial threads leave: the cores stay busy (on 2
     cores, the bundled encoder's frames: ≈ 0.95 of the time, where one run on both cores is busy ≈ 0.65; a
     stage's intra-op threads wait at every barrier, replicas do not). Its modelled period is the work over
     the cores, or the slowest serial thread's time when that is longer; taken when not above the one run's
     nor the best plan of runs (no 10% margin: the work it models is CPU time measured on every core, which
     overstates what one thread does — at 1280×720 it models 3% and gains 15%; the guard still drops it when it
     measures slower than sequential).
  4. *Run.* The remaining items go through the planned threads; each thread sets its own numba and torch thread
     counts (torch's is per thread once a thread has used it); the consumer's count is restored at the end.
  5. *Guard.* A plan of several compute threads rests on the model (OpenMP teams or the GIL can make threads
     slower together than the model says): ``guard`` items (8) are timed, after the first ones, which come as
     its threads fill (one per compute thread, 2 at least: two one-thread encoder replicas deliver their first
     frames late, then two at once), and when its measured period is longer than the sequential run's (every
     stage's time per item, as the probe measured it) the source stops feeding it, the items in flight finish,
     and the rest goes through the one run (``Pipeline.switched``). The source keeps feeding while the guard
     measures, so a plan that stays never drains. So a plan never stays slower than ``--sequential``. (Against
     the one run's modelled period instead, a few percent of frame-to-frame variation between the probe's items
     and the guard's dropped good plans; timing the fill too dropped good replicated plans.)

  So a stage that dominates (the encoder, a FastSAM prior) keeps every core, as in a sequential run — or, when it
  keeps no state (the encoder), runs on several frames at once — and the rest of the pipeline overlaps with it;
  stages of balanced serial cost (``--encoder none``) get a thread each. ``Pipeline.plan`` records the choice
  (stage names and threads of each run), ``Pipeline.replicas`` the replicated runs and ``Pipeline.costs`` the
  measurements. ``schedule="stages"`` keeps one thread per stage with each stage's own ``threads``. For
  comparisons (benchmarks on an idle machine) the probe's plan can be forced: ``"fused"`` (always the one run),
  ``"split"`` (the best plan of several runs, even when modelled slower), ``"oversubscribed"`` (that plan with
  every run on all cores, the OS sharing them) and ``"replicated"`` (the replicas, when a stage is parallel);
  the ``SPAM_SCHEDULE`` environment variable sets the default.

Items are any objects with ``error`` and ``timings`` attributes (:class:`spam_stream.frame.Frame`).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

_END = object()  # end of input marker, passes through every queue
GUARD_SKIP = 2  # items of a new plan not timed by the guard (its threads are filling): at least, or one per thread
SCHEDULES = ("measured", "stages", "fused", "split", "oversubscribed", "replicated")


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
        parallel: the stage keeps no state from one item to the next, so several items may be in it at once: the
            measured schedule may run it in several threads (replicas) that take items in turn, their results put
            back in order (see the module docstring).
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


@dataclass(frozen=True)
class StageCost:
    """What one stage costs per item, measured on ``cores`` cores: ``wall`` and process ``cpu`` seconds.

    ``work`` = max(wall, cpu) is its single-thread time (CPU time beyond ``cores × wall`` belongs to other
    threads of the process, e.g. a video encoder's, and is not counted); :meth:`time` its modelled time on ``t``
    threads, ``serial + parallel / t`` (Amdahl), exact at ``t = cores`` by construction."""

    wall: float
    cpu: float
    cores: int

    @property
    def work(self) -> float:
        return max(self.wall, min(self.cpu, self.cores * self.wall), 0.0)

    @property
    def parallel(self) -> float:
        if self.cores <= 1:
            return 0.0
        return min(self.work, max(0.0, (self.work - self.wall) * self.cores / (self.cores - 1)))

    def time(self, threads: int) -> float:
        parallel = self.parallel
        return self.work - parallel + parallel / max(1, threads)


@dataclass(frozen=True)
class CpuPlan:
    """The measured schedule's choice: ``runs`` of consecutive compute stage indices, ``threads`` per run, and the
    modelled ``period`` (seconds per item) — see the module docstring."""

    runs: tuple[tuple[int, ...], ...]
    threads: tuple[int, ...]
    period: float
    replicas: tuple[int, ...] = ()  # threads running each run's items side by side (empty: one each)


def _partitions(n: int, parts: int):
    """Every way to cut range(n) into ``parts`` runs of consecutive indices."""
    if parts == 1:
        yield (tuple(range(n)),)
        return
    for first in range(1, n - parts + 2):
        for rest in _partitions(n - first, parts - 1):
            yield (tuple(range(first)),) + tuple(tuple(i + first for i in run) for run in rest)


def _deal(costs: list[StageCost], runs, cores: int) -> tuple[tuple[int, ...], float]:
    """Threads for each run (one each, then one more at a time to the slowest) and the slowest run's time."""
    threads = [1] * len(runs)

    def run_time(g):
        return sum(costs[i].time(threads[g]) for i in runs[g])

    for _ in range(cores - len(runs)):
        g = max(range(len(runs)), key=run_time)
        threads[g] += 1
    return tuple(threads), max(run_time(g) for g in range(len(runs)))


def plan_cpu(costs: list[StageCost], cores: int, io_work: float = 0.0, margin: float = 0.9,
             max_enumerate: int = 10) -> CpuPlan:
    """The runs of consecutive compute stages and their threads with the shortest modelled period (see the module
    docstring); a plan of several runs only when its period is below ``margin`` × the one-run plan's.

    ``costs``: the compute stages' costs, in pipeline order; ``io_work``: single-thread seconds per item of the
    stages that always have their own threads (source, writers), which compete for the same ``cores``. More than
    ``max_enumerate`` stages: only one run, or one run per stage, are compared."""
    n, cores = len(costs), max(1, int(cores))
    if n == 0:
        return CpuPlan((), (), 0.0)
    floor = (sum(c.work for c in costs) + io_work) / cores  # no plan beats the work spread over every core

    def candidate(runs):
        threads, slowest = _deal(costs, runs, cores)
        return CpuPlan(runs, threads, max(slowest, floor))

    one = candidate((tuple(range(n)),))
    if cores == 1 or n == 1:
        return one
    if n <= max_enumerate:
        plans = [candidate(runs) for parts in range(2, min(cores, n) + 1) for runs in _partitions(n, parts)]
    else:
        plans = [candidate(tuple((i,) for i in range(n)))] if n <= cores else []
    best = min(plans, key=lambda p: (p.period, len(p.runs)), default=one)
    return best if best.period < margin * one.period else one


class _Order:
    """The replicas of one parallel group share this: ``take`` numbers the items as they are taken (the input
    order), :meth:`give` hands results on in that order (a result that is early waits for those before it)."""

    def __init__(self):
        self.take = threading.Lock()
        self.taken, self.ended = 0, False
        self._lock = threading.Lock()
        self._next = 0
        self._done: dict[int, object] = {}

    def give(self, number: int, item, put: Callable, outq: queue.Queue) -> bool:
        with self._lock:
            self._done[number] = item
            while self._next in self._done:
                if not put(outq, self._done.pop(self._next)):
                    return False
                self._next += 1
        return True


def plan_replicated(costs: list[StageCost], parallel: list[bool], cores: int, io_work: float = 0.0,
                    dominant_only: bool = True) -> CpuPlan | None:
    """The plan that runs the costliest run of consecutive ``parallel`` compute stages in ``cores`` replicas of one
    thread each (several items at once) and the stages before and after it as one thread each; None without a
    parallel stage, or (``dominant_only``) when the stages before or after it cost more than it does. Its modelled
    period: the slowest single thread, and never less than the work over the cores (the replicas take whatever core
    time the other threads leave, so the cores stay busy)."""
    n, cores = len(costs), max(1, int(cores))
    spans, start = [], None
    for i in range(n + 1):
        if i < n and parallel[i]:
            start = i if start is None else start
        elif start is not None:
            spans.append(tuple(range(start, i)))
            start = None
    if not spans or cores == 1:
        return None
    span = max(spans, key=lambda run: sum(costs[i].work for i in run))
    before, after = tuple(range(span[0])), tuple(range(span[-1] + 1, n))
    work = [sum(costs[i].work for i in run) for run in (before, span, after)]
    if dominant_only and work[1] < max(work[0], work[2]):
        return None  # replicas are for the stage that dominates; a split into runs serves the others
    runs = tuple(run for run in (before, span, after) if run)
    threads = (1,) * len(runs)
    replicas = tuple(cores if run == span else 1 for run in runs)
    floor = (sum(work) + io_work) / cores
    return CpuPlan(runs, threads, max(work[0], work[2], work[1] / cores, floor), replicas)


def _set_threads(n: int | None, torch_too: bool = False) -> None:
    """This thread's numba thread count (and torch's, whose count is per thread once a thread has used it)."""
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
    """Stages joined by bounded queues. ``for item in Pipeline(stages).run(source): ...``

    Args:
        stages: the stages in order.
        queue_size: capacity of each queue between threads (≥ 1): at most about
            ``(len(stages) + 1) * (queue_size + 1)`` items are alive at once.
        device: a torch device; on CUDA each stage gets its own stream (see the module docstring).
        poll: seconds between checks of the stop flag.
        schedule: "measured" (off CUDA: probe the first items, then threads by measured cost, see the module
            docstring), "stages" (one thread per stage, each with its own ``threads``; always on CUDA), or a forced
            plan after the probe: "fused", "split", "oversubscribed", "replicated". Default: ``$SPAM_SCHEDULE`` or
            "measured".
        probe: items run one at a time to measure the stages (the first one is not measured).
        cores: the cores to plan for (default: those this process may use).
        guard: items a plan of several compute threads runs before it is checked against the sequential run's
            period (0: never checked; see the module docstring).
    """

    def __init__(self, stages: list[Stage], queue_size: int = 2, device=None, poll: float = 0.1,
                 schedule: str | None = None, probe: int = 2, cores: int | None = None, guard: int = 8):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        schedule = schedule or os.environ.get("SPAM_SCHEDULE") or "measured"
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")
        self.stages, self.queue_size, self.poll = list(stages), max(1, int(queue_size)), poll
        self.cuda = device is not None and str(device).startswith("cuda")
        self.device = device
        self.schedule = "stages" if self.cuda else schedule
        self.probe, self.cores, self.guard = max(0, int(probe)), cores or cpu_cores(), max(0, int(guard))
        self.plan: list[tuple[tuple[str, ...], int | None]] | None = None  # (stage names, threads) per thread
        self.replicas: dict[tuple[str, ...], int] = {}  # stage names → threads running them side by side
        self.costs: dict[str, StageCost] = {}
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

    def _feed(self, it: Iterator, out: queue.Queue, make_error: Callable | None, index: int,
              cut: threading.Event | None = None) -> None:
        """Put the items of ``it`` (none once ``cut`` is set) on ``out``, then the end marker;
        the source is closed (and ``self._source_done`` set) once it is exhausted or failed, or when the pipeline
        stops."""
        try:
            while not (cut is not None and cut.is_set()):
                try:
                    item = next(it)
                except StopIteration:
                    self._source_done = True
                    break
                if not self._put(out, item):
                    return
                index += 1
        except BaseException as exc:  # a source that fails (a damaged video) ends the input with one error item
            self._source_done = True
            if make_error is not None:
                self._put(out, make_error(index, exc))
            else:
                self._fatal.append(exc)
                self._stop.set()
        finally:
            if self._source_done or self._stop.is_set():
                _close(it)
            self._put(out, _END)

    def _work(self, group: list[Stage], threads: int | None, inq: queue.Queue, outq: queue.Queue) -> None:
        """One thread: each item through the ``group``'s stages in turn (one stage, or a run of the measured plan)."""
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

    def _replica(self, group: list[Stage], threads: int | None, inq: queue.Queue, outq: queue.Queue,
                 order: "_Order") -> None:
        """One of several threads running the same ``group`` of parallel stages: each takes the next item (numbered
        as it is taken), and :class:`_Order` hands the results on in that order. The end marker is numbered like
        an item, so it leaves after every item taken before it, and put back for the other replicas."""
        _set_threads(threads, torch_too=not self.cuda)
        stream = self._stream()
        while True:
            with order.take:  # numbered in the order taken: the input order
                if order.ended:
                    return
                item = self._get(inq)
                number = order.taken
                order.taken += 1
                if item is _END:
                    order.ended = True
            if item is _END:
                self._put(inq, _END)  # for the other replicas (they return at once: ``ended``)
                order.give(number, _END, self._put, outq)
                return
            item = self._process(group, item, stream)
            if item is None or not order.give(number, item, self._put, outq):
                self._stop.set()  # a fatal error, or stopped: the items after this number could never leave
                return

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
            _record(item, stage.name, before, time.perf_counter() - t)
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

    def _probe(self, it: Iterator, make_error: Callable | None, ended: list) -> Iterator:
        """The first ``probe`` items one at a time in this thread with every core (:func:`run_sequential`'s
        loop), each stage's wall and CPU time summed over the items after the first into ``self._measured``."""
        with _threads_everywhere(self.cores):
            for position, item in enumerate(_sequential(self.stages, it, make_error, ended, limit=self.probe)):
                if position > 0:
                    for name, (wall, cpu) in item.meta.pop("_probe", {}).items():
                        w, c, n = self._measured.get(name, (0.0, 0.0, 0))
                        self._measured[name] = (w + wall, c + cpu, n + 1)
                else:
                    item.meta.pop("_probe", None)
                yield item
                if INTERRUPTED.is_set():
                    raise KeyboardInterrupt

    def _make_plan(self, force: str | None = None) -> list[tuple[list[Stage], int | None, int]]:
        """The threads of the run after the probe: (stages, threads, replicas) per group of threads, in pipeline
        order (``force``: a schedule other than ``self.schedule``)."""
        schedule = force or self.schedule
        if schedule == "stages":
            groups = [([stage], stage.threads, 1) for stage in self.stages]
        else:
            self.costs = {name: StageCost(w / n, c / n, self.cores) for name, (w, c, n) in self._measured.items()}
            compute = [i for i, s in enumerate(self.stages) if not s.io]
            missing = StageCost(0.0, 0.0, self.cores)  # a stage no measured item reached (all failed earlier)
            costs = [self.costs.get(self.stages[i].name, missing) for i in compute]
            io_work = sum(self.costs.get(s.name, missing).work for s in self.stages if s.io)
            margin = {"fused": 0.0, "split": float("inf"), "oversubscribed": float("inf")}.get(schedule, 0.9)
            plan = plan_cpu(costs, self.cores, io_work, margin)
            self._one_run_period = plan_cpu(costs, self.cores, io_work, 0.0).period
            self._sequential_period = sum(cost.wall for cost in self.costs.values())
            if schedule == "oversubscribed":
                plan = CpuPlan(plan.runs, (self.cores,) * len(plan.runs), plan.period)
            if schedule in ("measured", "replicated"):
                replicated = plan_replicated(costs, [self.stages[i].parallel for i in compute], self.cores, io_work,
                                             dominant_only=schedule != "replicated")
                # no 10 % margin here: the model overstates the replicas' work (CPU time measured on every core,
                # where one thread does the same for less), and the guard still drops them if they lose
                if replicated is not None and (schedule == "replicated" or (
                        replicated.period <= self._one_run_period and replicated.period <= plan.period)):
                    plan = replicated
            replicas = plan.replicas or (1,) * len(plan.runs)
            owner = {compute[i]: (r, plan.threads[r], replicas[r]) for r, run in enumerate(plan.runs) for i in run}
            groups, last = [], None
            for i, stage in enumerate(self.stages):
                key = owner.get(i, ("io", i, 1))
                if key == last and not stage.io:
                    groups[-1][0].append(stage)
                else:
                    groups.append(([stage], None if stage.io else key[1], key[2]))
                last = key
            torch_threads = max((t for _, t, r in groups if t is not None and r == 1), default=None)
            _set_torch_threads(torch_threads)
        self.plan = [(tuple(s.name for s in stages), threads) for stages, threads, _ in groups]
        self.replicas = {tuple(s.name for s in stages): r for stages, _, r in groups if r > 1}
        return groups

    def run(self, source: Iterable, make_error: Callable | None = None) -> Iterator:
        """Items of ``source`` after every stage, in input order.

        ``make_error(index, exc)`` turns an exception of the source iterator into an error item (else the exception
        is re-raised to the consumer after the items before it). Closing the iterator early stops every thread.
        """
        self._stop.clear()
        self._fatal.clear()
        self._measured: dict[str, tuple[float, float, int]] = {}
        self._source_done, self._threads, self.switched = False, [], False
        it = iter(source)
        torch_before = _torch_threads()
        try:
            index, ended = 0, []
            if self.schedule != "stages" and self.probe:
                for item in self._probe(it, make_error, ended):
                    index += 1
                    yield item
                if ended:  # the source ran out (or failed) during the probe
                    return
            groups = self._make_plan()
            compute_threads = sum((t is not None) * r for _, t, r in groups)
            if self.schedule == "measured" and self.guard and compute_threads > 1:
                # several compute threads rest on the model: time them over ``guard`` items (after the first
                # ones, which come as the new threads fill: one per compute thread, ``GUARD_SKIP`` at least — two
                # replicas of a one-thread encoder deliver their first frames late, then two at once), and go
                # back to the one run on every core if they are slower than the sequential run (every stage's
                # time per item, measured by the probe) — the source stops feeding them, the items in flight
                # finish, the rest goes through the one run
                stamps, cut, seen = [], threading.Event(), 0
                skip = max(GUARD_SKIP, compute_threads)
                for item in self._threaded(it, groups, make_error, index, cut=cut):
                    index, seen = index + 1, seen + 1
                    if seen > skip and len(stamps) < self.guard:
                        stamps.append(time.perf_counter())
                        if (len(stamps) == self.guard > 2
                                and (stamps[-1] - stamps[0]) / (len(stamps) - 1) > self._sequential_period):
                            cut.set()
                    yield item
                if not cut.is_set() or self._source_done or self._fatal or self._stop.is_set():
                    return
                groups, self.switched = self._make_plan("fused"), True
            yield from self._threaded(it, groups, make_error, index)
        finally:
            self._stop.set()
            for t in self._threads:
                if t.ident is not None:  # an interrupt can land while a plan's threads are being started
                    t.join(timeout=5.0)
            if not self._threads or not self._source_done:
                _close(it)  # (a no-op when a source thread closed it)
            _set_torch_threads(torch_before)
        if self._fatal:
            raise self._fatal[0]

    def _threaded(self, it: Iterator, groups, make_error: Callable | None, index: int,
                  cut: threading.Event | None = None) -> Iterator:
        """Items of ``it`` (none taken once ``cut`` is set) through the threads of ``groups``,
        in order; the threads have ended when this returns."""
        queues = [queue.Queue(self.queue_size) for _ in range(len(groups) + 1)]
        threads = [threading.Thread(target=self._feed, args=(it, queues[0], make_error, index, cut),
                                    name="source", daemon=True)]
        for i, (stages, n, replicas) in enumerate(groups):
            name = f"stage-{'+'.join(s.name for s in stages)}"
            if replicas > 1:
                order = _Order()
                threads += [threading.Thread(target=self._replica, args=(stages, n, queues[i], queues[i + 1], order),
                                             name=f"{name}-{r}", daemon=True) for r in range(replicas)]
            else:
                threads.append(threading.Thread(target=self._work, args=(stages, n, queues[i], queues[i + 1]),
                                                name=name, daemon=True))
        self._threads += threads
        for t in threads:
            t.start()
        while True:
            item = self._get(queues[-1])
            if INTERRUPTED.is_set():  # an interrupt the main thread swallowed elsewhere (see the module doc)
                raise KeyboardInterrupt
            if item is _END:
                break
            if self.cuda and "cuda_event" in item.meta:
                item.meta.pop("cuda_event").synchronize()
            yield item
        for t in threads:  # the end marker went through every thread: they are returning
            t.join(timeout=5.0)

    def stop(self) -> None:
        """Ask every stage to stop (from any thread)."""
        self._stop.set()


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


@contextmanager
def _threads_everywhere(cores: int):
    """Every core for numba (this thread) and torch while the probe runs, as in a sequential run."""
    try:
        import numba

        numba_before = numba.get_num_threads()
    except Exception:  # pragma: no cover - numba missing
        numba_before = None
    torch_before = _torch_threads()
    _set_threads(cores)
    _set_torch_threads(cores)
    try:
        yield
    finally:
        _set_threads(numba_before)
        _set_torch_threads(torch_before)


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
    yield from _sequential(stages, iter(source), make_error, [])


def _sequential(stages: list[Stage], it: Iterator, make_error: Callable | None, ended: list,
                limit: int | None = None) -> Iterator:
    """Items of ``it`` (at most ``limit``) through ``stages`` one at a time in this thread; each stage's process
    CPU time goes into ``item.meta["cpu"]`` (with a ``limit``, the probe's, also (wall, CPU) into
    ``item.meta["_probe"]``). Appends to ``ended`` when the source is exhausted or failed."""
    index = 0
    while limit is None or index < limit:
        try:
            item = next(it)
        except StopIteration:
            ended.append(True)
            return
        except Exception as exc:
            ended.append(True)
            if make_error is None:
                raise
            item = make_error(index, exc)
            for stage in stages:
                if stage.run_on_error:
                    stage.fn(item)
            yield item
            return
        index += 1
        probe = {}
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
            wall = time.perf_counter() - t
            _record(item, stage.name, before, wall)
            # one stage at a time: the process's CPU time is this stage's (all its threads), for the CPU bound
            item.meta.setdefault("cpu", {})[stage.name] = time.process_time() - cpu
            probe[stage.name] = (wall, item.meta["cpu"][stage.name])
        if limit is not None:
            item.meta["_probe"] = probe
        yield item
