"""spam-stream batch --engine ray: same outputs as the local engine (images and videos), failures in the manifest,
resume, two nodes and a worker killed mid-job. Skipped when Ray Data is not installed (pip install
'spam-stream[ray]')."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'spam-stream[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'spam-stream[ray]')")

from spam_stream.cli import main  # noqa: E402
from spam_stream.pipelines.ray_engine import size_pool  # noqa: E402

from helpers import synthetic_image  # noqa: E402
from video_helpers import (VIDEO_BATCH, decode_all, label_frames, make_video_batch, read_index,  # noqa: E402
                           write_index_video)

RAY_BIN = Path(sys.executable).parent / "ray"


def make_images(folder: Path, n: int, size=(48, 64)):
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_image(*size, seed=i)).save(sub / f"img{i:03d}.png")


def manifest(out: Path):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def outputs(folder: Path):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.png"))


@pytest.fixture
def local_ray():
    """A local Ray with 2 CPUs in this process (the CLI uses an initialised Ray and leaves it running)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def test_pool_sizing_always_leaves_a_cpu_for_ray_data():
    for cpus in (2, 3, 4, 16, 64):
        for workers in (None, 1, 2, 3, 8, 100):
            n, per = size_pool(cpus, workers)
            assert n >= 1 and 0 < per and n * per <= cpus - 1 + 1e-9, (cpus, workers, n, per)
            if workers is not None:
                assert n == workers
    assert size_pool(2) == (1, 1.0) and size_pool(17) == (16, 1.0) and size_pool(16, 3) == (3, 5.0)
    assert size_pool(9, None, num_gpus_per_worker=1, cluster_gpus=4)[0] == 4
    # GPU actors fit beside their GPUs: a CPU-only head of 32 CPUs + an 8-GPU node of 16 CPUs
    assert size_pool(48, None, 1, 8, gpu_node_cpus=15 / 8) == (8, 1.0)
    assert size_pool(48, 4, 2, 8, gpu_node_cpus=15 / 8) == (4, 3.0)
    assert size_pool(3, 2, 0.5, 1, gpu_node_cpus=2.0) == (2, 1.0)
    with pytest.raises(Exception, match="at least 2"):
        size_pool(1)


def test_ray_engine_equals_local_engine_and_resumes(tmp_path, local_ray, capsys):
    src = tmp_path / "src"
    make_images(src, 19)
    (src / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 30)
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = [str(src), "-k", "20"]
    assert main(["batch", *args, "-o", str(local)]) == 1
    assert main(["batch", *args, "-o", str(remote), "--engine", "ray", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "processed 20 image(s)" in err and "corrupt.png" in err

    assert outputs(remote) == outputs(local) and len(outputs(local)) == 2 * 19
    for rel in outputs(local):  # labels and overlays, bit for bit
        np.testing.assert_array_equal(np.asarray(Image.open(remote / rel)), np.asarray(Image.open(local / rel)))
    ours, theirs = manifest(remote), manifest(local)
    assert [e["input"] for e in ours] == [e["input"] for e in theirs]  # same lines, same (input) order
    for a, b in zip(ours, theirs):
        assert (a["status"], a["outputs"], a["superpixels"], a["error"]) == \
               (b["status"], {k: v.replace(str(local), str(remote)) for k, v in b["outputs"].items()},
                b["superpixels"], b["error"])
        assert a["node"] == ray.get_runtime_context().get_node_id()  # one node here
    failed = [e for e in ours if e["status"] == "failed"]
    assert len(failed) == 1 and Path(failed[0]["input"]).name == "corrupt.png"

    # --resume: the failed input is retried, complete items are not; once the bad file is gone, nothing is left to
    # do: no work, no Ray job, exit 0 (the retry of failures is the local engine's plan_batch, tested there)
    stamps = {p: p.stat().st_mtime_ns for p in remote.rglob("*.png")}
    time.sleep(0.05)
    (src / "b" / "corrupt.png").unlink()
    assert main(["batch", *args, "-o", str(remote), "--engine", "ray", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "processed 0 image(s)" in err and "resumed: 19 image(s)" in err
    assert {p: p.stat().st_mtime_ns for p in remote.rglob("*.png")} == stamps
    assert [e["status"] for e in manifest(remote)] == ["ok"] * 19


def test_ray_engine_runs_each_video_as_one_task_like_the_local_engine(tmp_path, local_ray, capsys):
    """2 good videos, a cut one, a broken one and 2 images: the same outputs and manifest lines as the local engine
    (labels bit-identical, every frame in order at the input's rate); --resume redoes a half-written video only."""
    src = make_video_batch(tmp_path / "src")
    make_images(src, 2)
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = [str(src), "-k", "16", "--encoder", "none", "--labels-format", "png"]
    assert main(["batch", *args, "-o", str(local)]) == 1
    assert main(["batch", *args, "-o", str(remote), "--engine", "ray", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "processed 2 image(s) and 4 video(s)" in err and "broken.mp4" in err and "cut.mkv" in err

    assert outputs(remote) == outputs(local)  # every label PNG of every frame, and the image outputs
    for rel in outputs(local):
        if rel.parent.name.endswith("_labels"):  # video frames: the labels, bit for bit
            np.testing.assert_array_equal(np.asarray(Image.open(remote / rel)), np.asarray(Image.open(local / rel)))
    ours, theirs = manifest(remote), manifest(local)
    assert [e["input"] for e in ours] == [e["input"] for e in theirs]
    for a, b in zip(ours, theirs):
        keys = ("status", "error", "kind", "frames", "rate", "fps", "superpixels")
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
        assert a["outputs"] == {k: v.replace(str(local), str(remote)) for k, v in b["outputs"].items()}
        assert a["node"] == ray.get_runtime_context().get_node_id()
    for rel, (n, rate) in VIDEO_BATCH.items():
        stem = Path(rel).stem
        frames, got = decode_all(remote / "v" / stem / f"{stem}_overlay.mp4")
        assert got == rate and [read_index(f) for f in frames] == list(range(n))
    assert [Path(e["input"]).name for e in ours if e["status"] == "failed"] == ["cut.mkv", "broken.mp4"]

    # --resume after a kill mid-video (no frames CSV, a few label PNGs, a temporary overlay), the bad inputs gone:
    # that video alone is redone, identically
    clip = remote / "v" / "clip"
    (clip / "clip_frames.csv").unlink()
    for i in range(8, 24):
        (clip / "clip_labels" / f"{i:06d}.png").unlink()
    (clip / ".clip_overlay.0123456789ab.part.mp4").write_bytes(b"half an mp4")
    (src / "v" / "broken.mp4").unlink()
    (src / "cut.mkv").unlink()
    others = {p: p.stat().st_mtime_ns for p in remote.rglob("*.png") if not p.is_relative_to(clip)}
    time.sleep(0.05)
    assert main(["batch", *args, "-o", str(remote), "--engine", "ray", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "processed 0 image(s) and 1 video(s)" in err and "resumed: 2 image(s) and 1 video(s)" in err
    assert {p: p.stat().st_mtime_ns for p in others} == others
    redone, reference = label_frames(clip / "clip_labels"), label_frames(local / "v" / "clip" / "clip_labels")
    assert list(redone) == list(reference)
    for name in reference:
        np.testing.assert_array_equal(redone[name], reference[name])
    assert (clip / "clip_frames.csv").is_file() and not list(clip.glob(".*part*"))
    assert [e["status"] for e in manifest(remote)] == ["ok"] * 4
    # and once everything is complete: no work, no Ray job
    assert main(["batch", *args, "-o", str(remote), "--engine", "ray", "--resume"]) == 0
    assert "processed 0 image(s) in this run" in capsys.readouterr().err


def test_ray_engine_writes_to_a_uri_outdir(tmp_path, local_ray, capsys):
    """OUTDIR as a file:// URI (pyarrow's LocalFileSystem, the API of S3): each actor stages an item and uploads
    it; same outputs and manifest lines as the local engine into a local folder; --resume does no work."""
    src = tmp_path / "src"
    make_images(src, 4)
    (src / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 30)
    write_index_video(src / "clip.mkv", 6, codec="ffv1")
    local, remote = tmp_path / "local", tmp_path / "ray"
    uri = remote.as_uri()
    args = [str(src), "-k", "16", "--encoder", "none", "--labels-format", "png"]
    assert main(["batch", *args, "-o", str(local)]) == 1
    assert main(["batch", *args, "-o", uri, "--engine", "ray", "--workers", "2"]) == 1
    assert "processed 5 image(s) and 1 video(s)" in capsys.readouterr().err

    assert outputs(remote) == outputs(local) and len(outputs(local)) == 2 * 4 + 6
    for rel in outputs(local):
        if "labels" in str(rel):  # image and video labels, bit for bit
            assert (remote / rel).read_bytes() == (local / rel).read_bytes()
    assert (remote / "clip" / "clip_frames.csv").is_file() and (remote / "clip" / "clip_overlay.mp4").is_file()
    ours, theirs = manifest(remote), manifest(local)
    assert [e["input"] for e in ours] == [e["input"] for e in theirs]
    for a, b in zip(ours, theirs):
        assert (a["status"], a["error"], a.get("frames")) == (b["status"], b["error"], b.get("frames"))
        assert a["outputs"] == {k: v.replace(str(local), uri) for k, v in b["outputs"].items()}
    assert [Path(e["input"]).name for e in ours if e["status"] == "failed"] == ["corrupt.png"]
    assert not [p for p in remote.rglob("*") if ".part" in p.name]

    (src / "b" / "corrupt.png").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in remote.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}
    time.sleep(0.05)
    assert main(["batch", *args, "-o", uri, "--engine", "ray", "--resume"]) == 0
    assert "processed 0 image(s) in this run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [e["status"] for e in manifest(remote)] == ["ok"] * 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_env():
    """Environment of the test cluster's processes: no inherited address; token authentication off (ray 2.60's
    ``ray start`` turns it on, and a driver given an explicit address does not send the token)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _ray_node(args, tmp_path, name):
    """``ray start ... --block`` in the foreground: terminating this process stops the node it started."""
    log = open(tmp_path / f"{name}.log", "w")
    env = _cluster_env()
    return subprocess.Popen([str(RAY_BIN), "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_nodes(address, n, timeout=90):
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True,
                             env=_cluster_env())
        if res.returncode == 0 and res.stdout.strip().isdigit() and int(res.stdout.strip()) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {n} nodes")


@pytest.mark.skipif(os.environ.get("SPAM_STREAM_SLOW_TESTS") != "1",
                    reason="two Ray nodes take 1-3 minutes on 2 cores: set SPAM_STREAM_SLOW_TESTS=1 to run it")
def test_two_nodes_and_a_worker_killed_mid_job(tmp_path):
    """A head and a second node (``ray start --address``) on this machine, 1 CPU each; the job runs 2 half-CPU
    actors, one per node (Ray Data spreads actors); one actor process is SIGKILLed once it has finished an item: Ray
    restarts it and retries its items, and every output ends up complete, once."""
    if ray.is_initialized():
        ray.shutdown()
    src = tmp_path / "src"
    n_images = 40
    make_images(src, n_images, size=(120, 160))
    out = tmp_path / "out"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard",
                      "false"], tmp_path, "head")
    worker = None
    try:
        _wait_for_nodes(address, 1)
        worker = _ray_node(["--address", address, "--node-ip-address", "127.0.0.1"], tmp_path, "worker")
        _wait_for_nodes(address, 2)
        cmd = [sys.executable, "-m", "spam_stream.cli", "batch", str(src), "-o", str(out), "-k", "60",
               "--engine", "ray", "--address", address, "--workers", "2"]
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "w"),
                               env=_cluster_env())
        killed, lines_at_kill = None, None
        deadline = time.time() + 240
        while time.time() < deadline and job.poll() is None:  # kill one actor once it has finished an item
            log = out / "manifest.jsonl"
            entries = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
            if entries:
                killed, lines_at_kill = entries[0]["pid"], len(entries)
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.05)
        assert killed is not None, (tmp_path / "job.log").read_text()[-2000:]
        assert job.wait(300) == 0, (tmp_path / "job.log").read_text()[-2000:]
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # ray start --head wrote it
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    assert lines_at_kill < n_images, "the kill should land mid-job"
    entries = manifest(out)
    assert sorted(Path(e["input"]).name for e in entries) == sorted(f"img{i:03d}.png" for i in range(n_images))
    assert all(e["status"] == "ok" for e in entries)
    assert len({e["node"] for e in entries}) == 2, "both nodes ran items"
    assert any(e["pid"] != killed for e in entries)
    labels = sorted(p.relative_to(out) for p in out.rglob("*_labels.png"))
    assert len(labels) == n_images and len(list(out.rglob("*_overlay.png"))) == n_images  # each output once
    finals = [p for p in out.rglob("*") if p.is_file() and ".part" not in p.name]  # a killed write may leave a .part
    assert len(finals) == 2 * n_images + 1  # outputs + manifest, nothing else
    for e in entries:  # complete, readable
        assert np.asarray(Image.open(e["outputs"]["labels"])).max() + 1 == e["superpixels"]


def _actor_processes(root_pid: int):
    """Processes below ``root_pid`` that run a SpamWorker actor (Ray names its worker processes after the actor)."""
    import psutil

    found = []
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in children:
        try:
            if "SpamWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_worker_killed_in_the_middle_of_a_video_redoes_it_from_its_first_frame(tmp_path):
    """issue 21.6: the actor running a video is SIGKILLed after it wrote some of the video's label PNGs (and before
    its frames CSV): Ray restarts the actor and retries the task, which clears what the killed attempt left and
    redoes the video from frame 0. The manifest has one ok line for it, every output is complete and in order."""
    if ray.is_initialized():
        ray.shutdown()
    n = 300
    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "clip.mkv", n, codec="ffv1", h=120, w=160)
    out = tmp_path / "out"
    labels_dir = out / "clip" / "clip_labels"
    cmd = [sys.executable, "-m", "spam_stream.cli", "batch", str(src), "-o", str(out), "-k", "24", "--encoder",
           "none", "--engine", "ray", "--labels-format", "png"]  # one file per frame: progress is visible
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "w"),
                           env=_cluster_env(), start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and job.poll() is None:
            written = len(list(labels_dir.glob("0*.png"))) if labels_dir.is_dir() else 0
            if written >= 3:
                actors = _actor_processes(job.pid)
                if actors:
                    killed = actors[0].pid
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.02)
        assert killed is not None, (tmp_path / "job.log").read_text()[-2000:]
        assert not (out / "clip" / "clip_frames.csv").exists(), "the kill should land mid-video"
        assert job.wait(300) == 0, (tmp_path / "job.log").read_text()[-2000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    entries = manifest(out)
    assert len(entries) == 1 and entries[0]["status"] == "ok" and entries[0]["frames"] == n
    assert entries[0]["pid"] != killed  # the retry ran in the restarted actor
    pngs = sorted(labels_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(n)]
    rows = (out / "clip" / "clip_frames.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(n))  # redone from its first frame, each frame once
    frames, _ = decode_all(out / "clip" / "clip_overlay.mp4")
    assert [read_index(f) for f in frames] == list(range(n))
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def test_ray_engine_spreads_a_large_images_tiles_over_the_workers(tmp_path, local_ray, capsys):
    """A TIFF too large for one frame is segmented in tiles that Ray runs as tasks on its workers (more than one
    worker process on a 2-CPU local cluster), while the driver runs the connectivity windows: its label TIFF equals
    the local engine's, and its manifest line says how many worker processes clustered its tiles."""
    import tifffile

    from spam_stream.largeio import read_label_tiff

    rng = np.random.default_rng(0)
    picture = np.repeat(np.repeat(rng.integers(0, 255, (44, 60, 3), dtype=np.uint8), 25, 0), 25, 1)
    picture = np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255).astype(np.uint8)  # 1100x1500
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "big.tif", picture, tile=(128, 128), compression="zlib")
    Image.fromarray(picture[:120, :160]).save(inputs / "small.png")
    args = ["batch", str(inputs), "--encoder", "none", "--superpixel-size", "1500", "--memory-limit", "60"]
    assert main(args + ["-o", str(tmp_path / "local")]) == 0
    assert main(args + ["-o", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    lines = {Path(e["input"]).name: e for e in manifest(tmp_path / "ray")}
    big = lines["big.tif"]
    assert big["kind"] == "large" and big["status"] == "ok" and big["tiles"] > 2
    assert big["tile_workers"] >= 2
    assert lines["small.png"]["status"] == "ok"
    assert np.array_equal(read_label_tiff(tmp_path / "ray" / "big_labels.tif"),
                          read_label_tiff(tmp_path / "local" / "big_labels.tif"))
