"""The pipelined executor: order, bounded memory, errors carried per item, prompt stop."""
import threading
import time

import numpy as np
import pytest

from spam_stream.frame import Frame
from spam_stream.pipelines.executor import Pipeline, PipelineError, Stage, run_sequential


def frames(n, size=0):
    for i in range(n):
        yield Frame(index=i, key=f"f{i}", image=np.zeros(size, np.uint8) if size else None)


def jitter(name):
    rng = np.random.default_rng(abs(hash(name)) % 1000)

    def fn(frame):
        time.sleep(rng.uniform(0, 0.002))
        frame.meta.setdefault("path", []).append(name)
        return frame
    return fn


def test_items_leave_in_input_order_through_every_stage():
    stages = [Stage(s, jitter(s)) for s in ("a", "b", "c")]
    out = list(Pipeline(stages, queue_size=1).run(frames(200)))
    assert [f.index for f in out] == list(range(200))
    assert all(f.meta["path"] == ["a", "b", "c"] and set(f.timings) == {"a", "b", "c"} for f in out)


def test_an_error_is_carried_with_its_item_and_later_stages_skip_it():
    def fail_on_7(frame):
        if frame.index == 7:
            raise ValueError("bad pixels")
        return frame

    calls = []
    writer = Stage("write", lambda f: calls.append((f.index, f.error)) or f, run_on_error=True)
    stages = [Stage("a", fail_on_7), Stage("b", jitter("b")), writer]
    for run in (lambda s: Pipeline(s).run(frames(20)), lambda s: run_sequential(s, frames(20))):
        calls.clear()
        out = list(run(stages))
        assert [f.index for f in out] == list(range(20))
        assert out[7].error == "f7: bad pixels" and "path" not in out[7].meta
        assert all(f.error is None for f in out if f.index != 7)
        assert calls[7] == (7, "f7: bad pixels") and len(calls) == 20


def test_a_failing_source_ends_with_one_error_item():
    def source():
        yield from frames(3)
        raise OSError("disk gone")

    def make_error(index, exc):
        f = Frame(index=index, key="src")
        f.error = f"src: {exc}"
        return f

    out = list(Pipeline([Stage("a", jitter("a"))]).run(source(), make_error))
    assert [f.index for f in out] == [0, 1, 2, 3] and out[-1].error == "src: disk gone"


def test_a_fatal_writer_error_stops_every_stage_promptly():
    produced = []

    def source():
        for f in frames(10_000):
            produced.append(f.index)
            yield f

    def writer(frame):
        if frame.index == 5:
            raise OSError("No space left on device")
        return frame

    t = time.perf_counter()
    with pytest.raises(PipelineError, match="No space left"):
        for _ in Pipeline([Stage("a", jitter("a")), Stage("write", writer, fatal=True)], queue_size=2).run(source()):
            pass
    assert time.perf_counter() - t < 3
    assert len(produced) < 30  # bounded queues: the source did not run ahead
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]


def test_leaving_the_loop_early_stops_all_threads_within_a_second():
    slow = Stage("slow", lambda f: time.sleep(0.05) or f)
    it = Pipeline([slow, Stage("b", jitter("b"))]).run(frames(1000))
    next(it)
    t = time.perf_counter()
    it.close()
    assert time.perf_counter() - t < 1.0
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]


def test_memory_stays_bounded_over_a_long_stream():
    """Queue capacity bounds the frames alive at once, whatever the input length."""
    alive = []
    lock = threading.Lock()
    count = [0]

    class Tracked(Frame):
        def __del__(self):
            with lock:
                count[0] -= 1

    def source():
        for i in range(3000):
            with lock:
                count[0] += 1
                alive.append(count[0])
            yield Tracked(index=i, image=np.zeros((64, 64, 3), np.uint8))

    stages = [Stage(s, jitter(s)) for s in ("a", "b", "c", "d")]
    n = sum(1 for _ in Pipeline(stages, queue_size=2).run(source()))
    assert n == 3000
    assert max(alive) <= (len(stages) + 1) * (2 + 1) + 4


def test_an_interrupt_swallowed_where_it_landed_still_stops_the_pipeline():
    """Python prints and drops a KeyboardInterrupt raised inside a finaliser; the CLI's SIGINT handler also sets
    INTERRUPTED, and the results loop turns that into a KeyboardInterrupt of its own, with every thread stopped."""
    import gc
    import signal

    from spam_stream.pipelines import executor

    class Swallower:  # a finaliser in which the interrupt happens to land
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    executor.interrupt_on_sigint()
    try:
        slow = Stage("slow", lambda f: (time.sleep(0.01), f)[1])
        seen = []
        with pytest.raises(KeyboardInterrupt):
            for item in Pipeline([slow], queue_size=2).run(frames(500)):
                seen.append(item.index)
                if len(seen) == 5:
                    Swallower()  # the interrupt is raised in __del__ and swallowed there ("Exception ignored")
                    gc.collect()
        assert 5 <= len(seen) < 500
        assert not [t for t in threading.enumerate() if t.name.startswith(("source", "stage-"))]
    finally:
        signal.signal(signal.SIGINT, before)
        executor.INTERRUPTED.clear()


# --- the measured schedule: how the cores are shared (the model, deterministic; see the executor's docstring) ---

from spam_stream.pipelines.executor import StageCost, _partitions, plan_cpu  # noqa: E402


def test_stage_cost_model_is_amdahl_through_the_measurement():
    encoder = StageCost(wall=0.094, cpu=0.155, cores=2)  # the bundled encoder, 481x321, both cores busy
    assert encoder.time(2) == pytest.approx(0.094)  # the measurement itself
    assert encoder.time(1) == pytest.approx(0.155)
    serial = StageCost(wall=0.03, cpu=0.01, cores=2)  # waits (I/O, GIL): as long on any number of threads
    assert serial.time(1) == serial.time(4) == pytest.approx(0.03)
    assert StageCost(0.01, 0.04, 4).time(1) == pytest.approx(0.04)  # fully parallel: the CPU time on one thread


def test_partitions_are_every_cut_into_consecutive_runs():
    from math import comb

    for n in range(1, 7):
        for parts in range(1, n + 1):
            cuts = list(_partitions(n, parts))
            assert len(cuts) == len(set(cuts)) == comb(n - 1, parts - 1)
            assert all(sum(cuts_, ()) == tuple(range(n)) and all(cuts_) for cuts_ in cuts)


def test_a_dominant_parallel_stage_keeps_every_core_with_the_others():
    """The case that made pipelining lose on 2 cores: the encoder gets both cores, as when sequential, and the
    compute stages form one run (sequential with overlapped I/O)."""
    costs = [StageCost(0.0001, 0.0001, 2), StageCost(0.094, 0.155, 2), StageCost(0.025, 0.045, 2),
             StageCost(0.002, 0.002, 2)]  # seeds, features, cluster, connectivity
    plan = plan_cpu(costs, 2, io_work=0.013)
    assert plan.runs == ((0, 1, 2, 3),) and plan.threads == (2,)
    assert plan.period == pytest.approx(sum(c.wall for c in costs))  # = the sequential run's compute time


def test_balanced_serial_stages_get_a_thread_each():
    costs = [StageCost(0.02, 0.02, 2), StageCost(0.02, 0.02, 2), StageCost(0.02, 0.02, 2),
             StageCost(0.02, 0.02, 2)]
    plan = plan_cpu(costs, 2)
    assert plan.runs == ((0, 1), (2, 3)) and plan.threads == (1, 1)
    assert plan.period == pytest.approx(0.04)
    plan = plan_cpu(costs, 4)
    assert len(plan.runs) == 4 and plan.period == pytest.approx(0.02)


def test_a_plan_is_never_modelled_slower_than_one_run_and_uses_at_most_the_cores():
    rng = np.random.default_rng(0)
    for _ in range(300):
        cores = int(rng.integers(1, 9))
        n = int(rng.integers(1, 8))
        costs = []
        for _ in range(n):
            wall = float(rng.exponential(0.05))
            costs.append(StageCost(wall, wall * float(rng.uniform(0.2, cores + 1)), cores))
        io_work = float(rng.exponential(0.01))
        plan = plan_cpu(costs, cores, io_work)
        one = plan_cpu(costs, cores, io_work, margin=0.0)  # margin 0: always the one run
        assert len(one.runs) == 1 and one.threads == (cores,)
        assert plan.period <= one.period + 1e-12
        assert one.period == pytest.approx(max(sum(c.wall for c in costs),  # what a sequential run measures
                                               (sum(c.work for c in costs) + io_work) / cores))
        assert sum(plan.threads) <= cores and min(plan.threads) >= 1 and len(plan.runs) <= cores
        assert sum(plan.runs, ()) == tuple(range(n))
        assert plan.period >= (sum(c.work for c in costs) + io_work) / cores - 1e-12  # never beyond the work


def test_the_measured_schedule_runs_the_plan_with_io_stages_on_their_own():
    """Two sleeping stages of equal cost on 2 cores: one thread each after the probe; a writer marked io keeps its
    own thread; every item in order, the probe's ones first."""
    stages = [Stage("a", lambda f: time.sleep(0.03) or f), Stage("b", lambda f: time.sleep(0.03) or f),
              Stage("write", jitter("write"), io=True)]
    pipeline = Pipeline(stages, cores=2, probe=3)
    out = list(pipeline.run(frames(12)))
    assert [f.index for f in out] == list(range(12)) and all(f.meta["path"] == ["write"] for f in out)
    assert pipeline.plan == [(("a",), 1), (("b",), 1), (("write",), None)]
    assert set(pipeline.costs) == {"a", "b", "write"}
    short = Pipeline(stages, cores=2, probe=3)  # fewer items than the probe: all of them, sequentially
    assert [f.index for f in short.run(frames(2))] == [0, 1] and short.plan is None
    fused = Pipeline(stages, cores=1)
    assert [f.index for f in fused.run(frames(6))] == list(range(6))
    assert fused.plan == [(("a", "b"), 1), (("write",), None)]


def test_the_probe_keeps_the_pipeline_contract():
    """Errors and ends inside the probe (the first items, run in the consumer's thread) behave as in the threads:
    a failing source ends with one error item, a fatal writer error is raised, an early exit closes the source."""
    def source():
        yield from frames(2)
        raise OSError("disk gone")

    def make_error(index, exc):
        f = Frame(index=index, key="src")
        f.error = f"src: {exc}"
        return f

    out = list(Pipeline([Stage("a", jitter("a"))], probe=3).run(source(), make_error))
    assert [f.index for f in out] == [0, 1, 2] and out[-1].error == "src: disk gone"

    def writer(frame):
        if frame.index == 1:
            raise OSError("No space left on device")
        return frame

    with pytest.raises(PipelineError, match="No space left"):
        list(Pipeline([Stage("a", jitter("a")), Stage("write", writer, fatal=True, io=True)], probe=3)
             .run(frames(10)))

    closed = []

    def tracked():
        try:
            yield from frames(100)
        finally:
            closed.append(True)

    it = Pipeline([Stage("a", jitter("a"))], probe=3).run(tracked())
    next(it)
    it.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]


def test_a_plan_slower_than_one_run_is_dropped_after_the_guard_items():
    """Three stages in the probe, a twice the cost of b and c: the model splits a from (b, c) over 2 cores (with
    equal costs the two splits tie, and a split that kept a and b together would legitimately stay). But stage b is
    slow whenever it runs in another thread than stage a (as OpenMP teams of two threads slow each other down):
    after the guard items the pipeline goes back to one run of the compute stages, where b is fast again (the items
    already in flight finish in the split, which kept feeding meanwhile: enough items that some remain); every
    item in order."""
    last_a = {}

    def a(frame):
        time.sleep(0.02)
        last_a["thread"] = threading.get_ident()
        return frame

    def b(frame):
        time.sleep(0.01 if last_a.get("thread") == threading.get_ident() else 0.1)
        return frame

    stages = [Stage("a", a), Stage("b", b), Stage("c", lambda f: time.sleep(0.01) or f)]
    pipeline = Pipeline(stages, cores=2, probe=3, guard=4)
    out = list(pipeline.run(frames(30)))
    assert [f.index for f in out] == list(range(30))
    assert pipeline.switched and pipeline.plan == [(("a", "b", "c"), 2)]
    assert out[-1].timings["b"] < 0.05  # fast again in the one run

    steady = Pipeline([Stage(s, lambda f: time.sleep(0.02) or f) for s in "abcd"], cores=2, probe=3, guard=4)
    assert [f.index for f in steady.run(frames(12))] == list(range(12))
    assert not steady.switched and len(steady.plan) == 2  # the split is as fast as modelled: it stays


# --- parallel stages: several items in one stage at once (replicas), results in input order ---

from spam_stream.pipelines.executor import plan_replicated  # noqa: E402


def test_a_dominant_parallel_stage_is_replicated_over_the_cores():
    """seeds (serial), features (parallel, most of the work), cluster (serial) on 2 cores: the features run in two
    one-thread replicas between one thread for the stages before and one for those after; the period modelled is
    the work over the cores (the replicas take the core time the serial threads leave)."""
    costs = [StageCost(0.004, 0.004, 2), StageCost(0.034, 0.046, 2), StageCost(0.007, 0.012, 2)]
    plan = plan_replicated(costs, [False, True, False], 2, io_work=0.004)
    assert plan.runs == ((0,), (1,), (2,)) and plan.threads == (1, 1, 1) and plan.replicas == (1, 2, 1)
    assert plan.period == pytest.approx((0.004 + 0.046 + 0.012 + 0.004) / 2)
    assert plan.period < plan_cpu(costs, 2, 0.004, margin=0.0).period  # below the one run's (sequential) period
    assert plan_replicated(costs, [False] * 3, 2) is None  # nothing to replicate
    assert plan_replicated(costs, [False, True, False], 1) is None  # one core: nothing to share
    # on 4 cores, a serial stage longer than the work over the cores bounds the period
    slow = plan_replicated([StageCost(0.05, 0.05, 4), StageCost(0.02, 0.06, 4)], [False, True], 4)
    assert slow.period == pytest.approx(0.05) and slow.replicas == (1, 4)
    # a parallel stage that is not the largest piece (the features without an encoder): no replicas
    assert plan_replicated([StageCost(0.005, 0.005, 2), StageCost(0.001, 0.0013, 2), StageCost(0.008, 0.012, 2)],
                           [False, True, False], 2) is None


def test_replicas_run_items_side_by_side_and_keep_the_order():
    """A parallel stage whose time varies from item to item, forced into replicas: two items are inside it at the
    same moment, and every item leaves in input order through the serial stages after it; an error stays with its
    item."""
    inside, most = [0], [0]
    lock = threading.Lock()
    rng = np.random.default_rng(3)
    delays = rng.uniform(0.0, 0.02, 40)

    def par(frame):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(delays[frame.index])
        with lock:
            inside[0] -= 1
        if frame.index == 13:
            raise ValueError("bad tile")
        return frame

    seen = []
    stages = [Stage("a", jitter("a")), Stage("par", par, parallel=True),
              Stage("b", lambda f: seen.append(f.index) or f), Stage("write", jitter("write"), io=True,
                                                                     run_on_error=True)]
    pipeline = Pipeline(stages, cores=2, probe=2, schedule="replicated")
    out = list(pipeline.run(frames(40)))
    assert [f.index for f in out] == list(range(40))
    assert pipeline.replicas == {("par",): 2} and most[0] == 2
    assert seen == [i for i in range(40) if i != 13]  # the stage after the replicas saw them in order
    assert out[13].error == "f13: bad tile" and all(f.error is None for f in out if f.index != 13)
    assert all(f.meta["path"] == ["a", "write"] for f in out)


def test_replicas_stop_promptly_and_a_fatal_error_in_them_is_raised():
    stages = [Stage("par", lambda f: time.sleep(0.005) or f, parallel=True), Stage("b", jitter("b"))]
    pipeline = Pipeline(stages, cores=2, probe=1, schedule="replicated")
    it = pipeline.run(frames(10_000))
    for i, frame in enumerate(it):
        if i == 20:
            break
    it.close()
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]

    def fatal(frame):
        if frame.index == 9:
            raise OSError("disk full")
        return frame

    failing = Pipeline([Stage("par", fatal, parallel=True, fatal=True), Stage("b", jitter("b"))], cores=2, probe=1,
                       schedule="replicated")
    got = []
    with pytest.raises(PipelineError, match="par failed on f9: disk full"):
        for frame in failing.run(frames(50)):
            got.append(frame.index)
    assert got == list(range(len(got))) and len(got) <= 9


def test_the_measured_schedule_replicates_a_dominant_parallel_stage():
    """Stage costs like a video frame's with the bundled encoder (a parallel features stage ≈ 70 % of the work, as
    one thread sleeping): after the probe the measured schedule picks the replicas, and they stay (faster)."""
    stages = [Stage("seeds", lambda f: time.sleep(0.004) or f),
              Stage("features", lambda f: time.sleep(0.03) or f, parallel=True),
              Stage("cluster", lambda f: time.sleep(0.008) or f)]
    pipeline = Pipeline(stages, cores=2, probe=3, guard=4)
    t = time.perf_counter()
    out = list(pipeline.run(frames(40)))
    wall = time.perf_counter() - t
    assert [f.index for f in out] == list(range(40))
    assert pipeline.replicas == {("features",): 2} and not pipeline.switched
    assert wall < 40 * 0.042 * 0.8  # well below the sequential time (sleeps overlap)


def test_an_interrupt_while_a_plan_starts_its_threads_stops_cleanly(monkeypatch):
    """Ctrl-C can land between two thread starts (a plan beginning after the probe or the guard): the pipeline
    raises KeyboardInterrupt, joins only the threads that started (joining one that never did raised
    RuntimeError), and no stage thread is left."""
    from spam_stream.pipelines import executor

    started = [0]

    class Thread(threading.Thread):
        def start(self):
            started[0] += 1
            if started[0] == 3:
                raise KeyboardInterrupt
            super().start()

    monkeypatch.setattr(executor.threading, "Thread", Thread)
    stages = [Stage("a", lambda f: time.sleep(0.002) or f), Stage("par", jitter("par"), parallel=True),
              Stage("b", jitter("b"))]
    with pytest.raises(KeyboardInterrupt):
        list(Pipeline(stages, cores=2, probe=1, schedule="replicated").run(frames(50)))
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]
