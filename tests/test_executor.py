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
