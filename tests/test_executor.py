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


# --- the pool: stateless stages on any worker, several items at once; stateful ones in order ---


def test_stateful_stages_take_items_one_at_a_time_in_order_while_the_pool_overlaps_them():
    """Two stateful stages of equal cost (sleeps) on 2 workers: each sees the items in input order, never two at
    once, and the two overlap (item t+1 in a while item t is in b): well under the sequential time."""
    seen = {"a": [], "b": []}
    inside = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}
    lock = threading.Lock()

    def stage(name):
        def fn(frame):
            with lock:
                inside[name] += 1
                most[name] = max(most[name], inside[name])
                seen[name].append(frame.index)
            time.sleep(0.03)
            with lock:
                inside[name] -= 1
            return frame
        return fn

    pipeline = Pipeline([Stage("a", stage("a")), Stage("b", stage("b")), Stage("write", jitter("write"), io=True)],
                        cores=2)
    t = time.perf_counter()
    out = list(pipeline.run(frames(16)))
    wall = time.perf_counter() - t
    assert [f.index for f in out] == list(range(16)) and all(f.meta["path"] == ["write"] for f in out)
    assert seen == {"a": list(range(16)), "b": list(range(16))} and most == {"a": 1, "b": 1}
    assert pipeline.peak["a"] == pipeline.peak["b"] == 1
    assert wall < 16 * 0.06 * 0.8  # overlapped (sequential: 0.96 s; the pool ≈ 0.5 s)


def test_a_task_alone_has_every_core_and_busy_workers_share_them():
    """A task's numba threads: every core when it is the only one running (as sequential), one each when both
    workers are busy (the total stays at the cores)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    counts = {}

    def record(name, delay):
        def fn(frame):
            counts.setdefault(name, []).append(numba.get_num_threads())
            time.sleep(delay)
            return frame
        return fn

    # one stateful stage: a single task ready at a time, so it runs alone
    list(Pipeline([Stage("alone", record("alone", 0.002))], cores=2).run(frames(6)))
    assert set(counts["alone"]) == {2}
    # a parallel stage with items waiting: both workers busy, one thread each (after the first task)
    list(Pipeline([Stage("both", record("both", 0.02), parallel=True)], cores=2).run(frames(12)))
    assert counts["both"].count(1) >= 8


def test_the_summary_names_the_policy_and_every_stage():
    stages = [Stage("prior", jitter("prior")), Stage("features", lambda f: time.sleep(0.01) or f, parallel=True),
              Stage("ids", jitter("ids")), Stage("write", jitter("write"), io=True)]
    pipeline = Pipeline(stages, cores=2)
    list(pipeline.run(frames(20)))
    line = pipeline.summary()
    assert "\n" not in line and "pool of 2 worker(s)" in line and "features on any worker" in line
    assert "prior → ids in frame order" in line and "I/O threads: decode, write" in line
    assert all(f"{name} " in line.split("busy:")[1] for name in ("prior", "features", "ids", "write"))
    assert pipeline.peak["features"] == 2  # two items inside the parallel stage at once
    assert 0 < pipeline.busy["features"] <= 2 * pipeline.wall


def test_a_parallel_stage_runs_items_side_by_side_and_they_keep_the_order():
    """A parallel stage whose time varies from item to item: two items are inside it at the
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
    pipeline = Pipeline(stages, cores=2)
    out = list(pipeline.run(frames(40)))
    assert [f.index for f in out] == list(range(40))
    assert pipeline.peak["par"] == 2 and most[0] == 2
    assert seen == [i for i in range(40) if i != 13]  # the stateful stage after it saw them in order
    assert out[13].error == "f13: bad tile" and all(f.error is None for f in out if f.index != 13)
    assert all(f.meta["path"] == ["a", "write"] for f in out)


def test_a_parallel_stage_stops_promptly_and_a_fatal_error_in_it_is_raised():
    stages = [Stage("par", lambda f: time.sleep(0.005) or f, parallel=True), Stage("b", jitter("b"))]
    pipeline = Pipeline(stages, cores=2)
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

    failing = Pipeline([Stage("par", fatal, parallel=True, fatal=True), Stage("b", jitter("b"))], cores=2)
    got = []
    with pytest.raises(PipelineError, match="par failed on f9: disk full"):
        for frame in failing.run(frames(50)):
            got.append(frame.index)
    assert got == list(range(len(got))) and len(got) <= 9


def test_an_interrupt_while_the_threads_start_stops_cleanly(monkeypatch):
    """Ctrl-C can land between two thread starts: the pipeline raises KeyboardInterrupt, joins only the threads
    that started (joining one that never did raises RuntimeError), and no stage thread is left."""
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
        list(Pipeline(stages, cores=2).run(frames(50)))
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-") or t.name == "source"]


def test_an_in_order_task_takes_a_core_that_falls_idle_while_it_runs():
    """The live thread budget a clustering reads between its passes: a long in-order task that started beside a
    parallel one (one thread each) is raised to every core once the other worker has nothing left to do, and
    lowered again when a task starts beside it."""
    from spam_stream.kernels.threads import thread_budget

    seen = []

    def slow(frame):
        budget = thread_budget()
        start = int(budget[0])
        time.sleep(0.15)  # the parallel tasks (all admitted at once) are long done by now
        seen.append((start, int(budget[0])))
        return frame

    items = list(Pipeline([Stage("quick", jitter("quick"), parallel=True), Stage("slow", slow)],
                          cores=2).run(frames(4)))
    assert [f.index for f in items] == [0, 1, 2, 3]
    assert [late for _, late in seen] == [2, 2, 2, 2]

    budgets = {}

    def watch(frame):
        time.sleep(0.05)
        budgets.setdefault(frame.index, []).append(int(thread_budget()[0]))
        time.sleep(0.1)
        budgets[frame.index].append(int(thread_budget()[0]))
        return frame

    def busy(frame):  # a second in-order stage: starts beside `watch` of the frame before
        time.sleep(0.08)
        return frame

    list(Pipeline([Stage("watch", watch), Stage("busy", busy)], cores=2).run(frames(3)))
    assert any(1 in b for b in budgets.values())  # lowered while `busy` ran beside it
    assert budgets[2][-1] == 2  # the last frame's watch: nothing beside it at its end
