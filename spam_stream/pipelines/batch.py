"""Batches of images and videos: input discovery, sharding, resumable outputs and the manifest.

* **Inputs** (:func:`collect_inputs`): files, folders (searched recursively for images and videos), glob patterns
  (``**`` allowed) and text files listing one path per line (``.txt`` / ``.lst``; relative paths are taken from the
  list's folder; ``#`` starts a comment). Each item keeps a relative path, mirrored under the output folder. A file
  with a video suffix (:data:`BATCH_VIDEO_SUFFIXES`: .mp4 .mkv .avi .mov .webm .ts …; a .gif stays an image) is a
  **video**: one unit of work, processed by :func:`~spam_stream.pipelines.video.process_video` (the code path of
  ``spam-stream video``) into its own folder ``OUTDIR/<relative path without suffix>/`` (``<stem>_overlay.mp4``,
  ``<stem>_labels.mkv`` or ``<stem>_labels/NNNNNN.png``, ``<stem>_frames.csv``), with one manifest line.
* **Sharding** (:func:`shard`): ``--shard I/N`` keeps the items whose relative path hashes to I modulo N: N machines
  with the same inputs cover every item exactly once without talking to each other.
* **Resume**: outputs are written under temporary names and renamed, so an output that exists is complete;
  ``resume=True`` skips images whose outputs all exist. A video has many outputs, written one after the other: it
  is skipped only when its manifest line says ok and its outputs are complete (the frames CSV, written last, and
  the overlay exist, and the labels hold as many frames as the line says: label PNGs, or the frames of the
  ``_labels.mkv``). A video about to be (re)done first loses
  what an earlier run left of it, CSV first (:func:`clear_video_outputs`), so a run killed mid-video never leaves
  outputs that pass for complete.
* **Manifest**: ``manifest.jsonl``, one JSON line per item (input, outputs, K', ms per stage, status, error); lines
  are appended as items finish (a killed run keeps what it did) and the file is rewritten once at the end,
  atomically, with one line per item of this run's shard (lines of items skipped by ``resume`` are carried over).
* **OUTDIR** is a local folder, or a URI that ``pyarrow.fs`` opens (``s3://bucket/prefix`` …): then each item is
  written as above into a local staging folder and uploaded file by file, resume checks one listing of OUTDIR,
  and the manifest is read and rewritten through the same filesystem (:mod:`spam_stream.pipelines.outputs`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..frame import Frame
from ..io import IMAGE_SUFFIXES, InputError, atomic_path, read_image, write_labels, write_overlay
from ..labelio import label_frame_count, labels_path
from ..videoio import VIDEO_SUFFIXES
from .executor import Pipeline, Stage, describe, run_sequential, schedule_line
from .outputs import Listing, RemoteManifest, RemoteOutputs, resolve_outdir
from .stages import spam_stages
from .video import VideoOptions, process_video, thread_budget, video_output_paths

LIST_SUFFIXES = {".txt", ".lst"}
BATCH_VIDEO_SUFFIXES = frozenset(VIDEO_SUFFIXES - IMAGE_SUFFIXES)  # a .gif is read as an image, as before
BATCH_SUFFIXES = frozenset(IMAGE_SUFFIXES | BATCH_VIDEO_SUFFIXES)


@dataclass(frozen=True)
class BatchItem:
    """One input: its path and the relative path its outputs are mirrored under."""

    path: Path
    rel: Path

    @property
    def is_video(self) -> bool:
        """A video (by suffix): one unit of work with its own output folder."""
        return self.path.suffix.lower() in BATCH_VIDEO_SUFFIXES

    def video_folder(self, outdir: Path) -> Path:
        """A video's output folder: OUTDIR/<relative path without suffix>/."""
        return Path(outdir) / self.rel.parent / self.rel.stem

    def large_outputs(self, outdir: Path, graph: bool = False) -> dict[str, Path]:
        """A large image's outputs (segmented in tiles, :mod:`spam_stream.pipelines.large`): the label TIFF and
        the preview (and the graph)."""
        base = Path(outdir) / self.rel.parent
        paths = {"labels": base / f"{self.rel.stem}_labels.tif", "overlay": base / f"{self.rel.stem}_overlay.png"}
        if graph:
            paths["graph"] = base / f"{self.rel.stem}_graph.npz"
        return paths

    def outputs(self, outdir: Path, video_options: VideoOptions | None = None) -> dict[str, Path]:
        """Output paths: an image's two PNGs; a video's overlay MP4, labels folder and frames CSV."""
        if self.is_video:
            return video_output_paths(self.video_folder(outdir), self.rel.stem, video_options or VideoOptions())
        base = Path(outdir) / self.rel.parent
        paths = {"labels": base / f"{self.rel.stem}_labels.png", "overlay": base / f"{self.rel.stem}_overlay.png"}
        if video_options is not None and video_options.graph:
            paths["graph"] = base / f"{self.rel.stem}_graph.npz"
        return paths


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if _is_glob(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


OUTSIDE = "_outside"  # where inputs from outside the folder / list / pattern they were found from are mirrored


def safe_relative(path: Path, rel: Path) -> Path:
    """The relative path an item's outputs are mirrored under, never leaving OUTDIR: ``rel`` normalised when it
    stays inside its base (``a/./b`` → ``a/b``); an input named from outside it (a list entry ``../x.jpg`` or an
    absolute path) → ``_outside/<its absolute path without the root>`` (``/data/x.jpg`` →
    ``_outside/data/x.jpg``): no ``..`` and no root in any output path or key, and two such inputs never share a
    name. A symlink found in a folder keeps the link's own place in it."""
    text = os.path.normpath(str(rel))
    parts = Path(text).parts
    if Path(text).is_absolute() or not parts or parts[0] == ".." or text == ".":
        absolute = Path(os.path.normpath(os.path.abspath(path)))
        return Path(OUTSIDE, *absolute.parts[1:])
    return Path(text)


def collect_inputs(specs, suffixes=BATCH_SUFFIXES) -> list[BatchItem]:
    """Expand input specs (files, folders, globs, list files) into items, in a stable sorted order, without
    duplicates. Folders are searched for files with ``suffixes`` (images and videos). A path that does not exist
    stays an item (it fails later, in the manifest), except a glob that matches nothing or an empty folder, which
    raise :class:`InputError`."""
    items: dict[Path, BatchItem] = {}

    def add(path: Path, rel: Path):
        key = path.resolve() if path.exists() else path.absolute()
        items.setdefault(key, BatchItem(path, safe_relative(path, rel)))

    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"{path}: no image files (nor videos) in this folder")
            for p in found:
                add(p, p.relative_to(path))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                p = Path(line)
                full = p if p.is_absolute() else path.parent / p
                rel = p
                if p.is_absolute():  # inside the list's folder: relative to it, like a relative entry
                    try:
                        rel = Path(os.path.normpath(p)).relative_to(os.path.normpath(path.parent.absolute()))
                    except ValueError:
                        pass
                add(full, rel)  # an entry outside the list's folder is mirrored under OUTDIR/_outside/
        elif _is_glob(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"{text}: the pattern matches no file")
            base = _glob_base(text)
            for p in found:
                add(p, p.relative_to(base))
        else:
            add(path, Path(path.name))  # a file named on the command line: its outputs go to OUTDIR/<name>
    return sorted(items.values(), key=lambda it: str(it.rel))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; ValueError otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        hint = f": shards count from 0, so the last of {n} is {n - 1}/{n}" if n >= 1 and i == n else ""
        raise ValueError(f"shard I/N needs 0 <= I < N, got {text!r}{hint}")
    return i, n


def shard(items: list[BatchItem], index: int, count: int) -> list[BatchItem]:
    """The items of shard ``index`` of ``count``: by a hash of the relative path (stable across machines)."""
    if count == 1:
        return list(items)
    return [it for it in items
            if int.from_bytes(hashlib.sha1(str(it.rel).encode()).digest()[:8], "big") % count == index]


def is_complete(item: BatchItem, outdir: Path | Listing, entry: dict | None = None,
                video_options: VideoOptions | None = None) -> bool:
    """Whether ``resume`` may skip the item: an image whose outputs exist (each is written atomically); a video
    whose manifest ``entry`` says ok and whose outputs (for ``video_options``) are complete: the frames CSV (written
    last) and the overlay (when frames were written) exist, and the labels hold the entry's frame count (label PNGs
    in the folder; frames of a local ``_labels.mkv``, counted without decoding; under a URI OUTDIR the label video
    is trusted when it exists under its final name, which it gets only once complete).
    ``outdir``: the local output folder, or the :class:`~spam_stream.pipelines.outputs.Listing` of a URI OUTDIR."""
    if isinstance(outdir, Listing):
        outputs = item.outputs(Path(), video_options)
        is_file, png_count = outdir.is_file, outdir.png_count
    else:
        outputs = item.outputs(outdir, video_options)
        is_file, png_count = Path.is_file, _png_count
    if entry and entry.get("kind") == "large":  # a large image: its manifest line says ok (not incomplete)
        large = item.large_outputs(Path() if isinstance(outdir, Listing) else outdir,
                                   bool(video_options and video_options.graph))
        return entry.get("status") == "ok" and all(is_file(p) for p in large.values())
    if not item.is_video:
        return all(is_file(p) for p in outputs.values())
    if not entry or entry.get("status") != "ok" or entry.get("kind") != "video":
        return False
    frames = entry.get("frames")
    if not isinstance(frames, int) or not is_file(outputs["frames_csv"]):
        return False
    if "overlay" in outputs and frames > 0 and not is_file(outputs["overlay"]):
        return False
    labels = outputs.get("labels")
    if labels is not None and labels.suffix == ".mkv":  # one label video: complete when renamed into place; a local
        if frames > 0 and not is_file(labels):          # one is also checked for its frame count (a cut copy)
            return False
        if frames > 0 and not isinstance(outdir, Listing) and label_frame_count(labels) != frames:
            return False
    elif labels is not None and png_count(labels) != frames:
        return False
    if "graph" in outputs and frames > 0 and not is_file(outputs["graph"]):
        return False
    return True


def _png_count(folder: Path) -> int:
    """Label PNGs in a local folder (temporary ``.…`` names not counted)."""
    return len([p for p in folder.glob("*.png") if not p.name.startswith(".")]) if folder.is_dir() else 0


def output_names(item: BatchItem, outdir, video_options: VideoOptions | None = None) -> dict[str, str]:
    """The manifest's ``outputs`` of an item: local paths, or URLs under a URI OUTDIR (a RemoteOutputs)."""
    if isinstance(outdir, RemoteOutputs):
        return {k: outdir.url(v) for k, v in item.outputs(Path(), video_options).items()}
    return {k: str(v) for k, v in item.outputs(outdir, video_options).items()}


def clear_video_outputs(item: BatchItem, outdir: Path) -> None:
    """Remove what an earlier run left of a video's outputs before it is (re)done: the frames CSV first (its
    presence is what marks a finished video), then the overlay, the labels (video or PNGs, whichever format) and
    temporary files of this video's stem. Other files in the folder are left alone."""
    folder, stem = item.video_folder(outdir), item.rel.stem
    if not folder.is_dir():
        return
    paths = video_output_paths(folder, stem, VideoOptions(graph=True))
    pngs = labels_path(folder, stem, "png")
    doomed = [paths["frames_csv"], paths["overlay"], paths["graph"], labels_path(folder, stem, "ffv1")]
    doomed += folder.glob(f".{stem}_graph.*.part.npz")
    doomed += folder.glob(f".{stem}_frames.*.part.csv")
    doomed += folder.glob(f".{stem}_overlay.*.part.mp4")
    doomed += folder.glob(f".{stem}_labels.*.part.mkv")
    if pngs.is_dir():  # labels of either format: an earlier run may have used the other one
        doomed += pngs.glob("*.png")
    for p in doomed:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def video_entry(model, item: BatchItem, outdir: Path, n_superpixels: int = 400,
                video_options: VideoOptions | None = None, *, color="auto", pipelined: bool = True,
                on_frame=None, remote: RemoteOutputs | None = None, **options) -> dict:
    """Process one video of a batch (both engines): clear what an earlier run left, run
    :func:`~spam_stream.pipelines.video.process_video` into the item's folder, and return its manifest entry.

    The entry: ``input``, ``kind`` ("video"), ``outputs`` (those that exist), ``frames`` (written), ``fps`` and
    ``rate`` (the input's frame rate, float and exact fraction), ``ms`` (per stage, summed over the frames; ``total``
    the wall time), ``status`` ("ok", or "failed" when the video could not be opened or a frame failed: a damaged or
    cut file keeps the frames before the damage, as ``spam-stream video`` does) and ``error`` (one line).
    ``options``: attention, attention_ratio, focus. ``on_frame(frame, message)``: each finished frame.
    ``remote``: a URI OUTDIR; ``outdir`` is then a local staging folder: what an earlier run left of the video in
    the URI OUTDIR is cleared first (CSV first), the outputs are written to staging, then uploaded (label PNGs,
    overlay, frames CSV last; :func:`upload_video`) and named by URL; an upload failure is the video's error."""
    video_options = video_options or VideoOptions()
    t = time.perf_counter()
    entry = {"input": str(item.path), "kind": "video", "outputs": {}, "frames": 0, "fps": None, "rate": None}
    try:
        if remote is not None:
            remote.clear_video(item.video_folder(Path()), item.rel.stem)
        clear_video_outputs(item, outdir)
        result = process_video(model, item.path, item.video_folder(outdir), n_superpixels, video_options,
                               stem=item.rel.stem, pipelined=pipelined, color=color, on_frame=on_frame, **options)
        error = result.error
        entry.update(outputs={k: str(v) for k, v in result.outputs.items()}, frames=result.written,
                     fps=round(float(result.rate), 6), rate=str(result.rate),
                     ms={k: round(1e3 * v, 2) for k, v in result.timings.items()})
        if remote is not None:
            try:
                entry["outputs"] = upload_video(remote, Path(outdir), result.outputs)
            except OSError as exc:
                entry["outputs"], error = {}, f"{item.path}: upload to {remote}: {describe(exc)}"
    except Exception as exc:  # not a readable video, K too large for its frames, ...: one failed line
        message = describe(exc)
        error = message if message.startswith(str(item.path)) else f"{item.path}: {message}"
        entry["ms"] = {}
    entry["ms"]["total"] = round(1e3 * (time.perf_counter() - t), 2)
    entry.update(status="failed" if error else "ok", error=error)
    return entry


def large_unit(model, item: BatchItem, n_superpixels: int, superpixel_size: int | None = None) -> bool:
    """Whether an image item is a large unit: a TIFF or whole-slide file whose whole frame would not fit the
    memory limit (:func:`spam_stream.pipelines.large.tiles_for`); it is then segmented in tiles
    (:func:`large_entry`), not decoded whole. An unreadable file is not (it fails as an image does)."""
    from ..largeio import is_large_format, open_large
    from .large import superpixel_count, tiles_for

    if item.is_video or not is_large_format(item.path) or not item.path.is_file():
        return False
    try:
        with open_large(item.path) as image:
            h, w = image.shape[:2]
            return tiles_for(model, image, superpixel_count(h, w, h * w, n_superpixels, superpixel_size), None) > 0
    except InputError:
        return False


def large_entry(model, item: BatchItem, outdir: Path, n_superpixels: int = 400, *,
                superpixel_size: int | None = None, start_label: int = 0, color="auto", progress=None,
                remote: RemoteOutputs | None = None, graph: bool = False, tiles=None) -> dict:
    """Process one large image of a batch (both engines) with :func:`spam_stream.pipelines.large.process_large`
    and return its manifest line: ``kind`` "large", ``outputs`` (label TIFF, preview), ``superpixels``,
    ``tiles``, ``rows`` (finished), ``ms`` (``total``), ``status`` ("ok"; "incomplete" when a tile could not be
    read: the rows before it are kept and ``--resume`` does the image again; "failed") and ``error``.
    ``remote``: a URI OUTDIR; ``outdir`` is then a staging folder, the outputs are uploaded (labels, then preview).
    ``tiles(path)``: where the tiles are clustered, a factory of :func:`spam_stream.tiling.iter_bands`' ``submit``
    (the Ray engine's :class:`~spam_stream.pipelines.ray_engine.RayTiles`; default this process); an object
    with a ``workers`` set adds the line's ``tile_workers`` (the processes that clustered its tiles)."""
    from ..largeio import open_large
    from .large import process_large, superpixel_count, tiles_for

    t = time.perf_counter()
    entry = {"input": str(item.path), "kind": "large", "outputs": {}, "superpixels": None, "tiles": 0}
    error, status = None, "failed"
    try:
        outputs = item.large_outputs(outdir, graph)
        outputs["labels"].parent.mkdir(parents=True, exist_ok=True)
        with open_large(item.path) as image:
            h, w = image.shape[:2]
            k = superpixel_count(h, w, h * w, n_superpixels, superpixel_size)
            if k > h * w:
                raise InputError(f"{k} superpixels requested but the image has only {h * w} pixels")
            tile = tiles_for(model, image, k, None) or max(h, w)
            submit = None if tiles is None else tiles(item.path)
            result = process_large(model, image, outputs["labels"], outputs["overlay"], k, tile,
                                   start_label=start_label, color=color, progress=progress,
                                   graph_path=outputs.get("graph"), submit=submit)
            if submit is not None and hasattr(submit, "workers"):
                entry["tile_workers"] = len(submit.workers)
        error, status = result.error, result.status
        entry.update(outputs={k: str(v) for k, v in result.outputs.items()}, superpixels=result.superpixels,
                     tiles=result.tiles, rows=result.rows)
        if remote is not None:
            try:
                entry["outputs"] = {key: remote.upload(path, item.large_outputs(Path(), graph)[key])
                                    for key, path in result.outputs.items()}
            except OSError as exc:
                entry["outputs"], error, status = {}, f"{item.path}: upload to {remote}: {describe(exc)}", "failed"
    except Exception as exc:  # unreadable, K too large, a full disk, ...: one failed line
        message = describe(exc) if not isinstance(exc, (InputError, ValueError)) else str(exc)
        error = message if message.startswith(str(item.path)) else f"{item.path}: {message}"
        status = "failed"
    entry["ms"] = {"total": round(1e3 * (time.perf_counter() - t), 2)}
    entry.update(status=status, error=error)
    return entry


def upload_video(remote: RemoteOutputs, staging: Path, outputs: dict[str, Path]) -> dict[str, str]:
    """Upload a video's outputs from the staging folder (paths under ``staging``, as :func:`process_video` returns
    them) to the same relative paths in OUTDIR: the label video (or PNGs in frame order), the overlay, the frames
    CSV last (its
    presence marks a finished video). Returns the manifest's ``outputs`` (URLs, in the order given)."""
    rel = {key: path.relative_to(staging) for key, path in outputs.items()}
    if "labels" in outputs and outputs["labels"].is_file():  # one label video
        remote.upload(outputs["labels"], rel["labels"])
    elif "labels" in outputs:
        for png in sorted(p for p in outputs["labels"].glob("*.png") if not p.name.startswith(".")):
            remote.upload(png, rel["labels"] / png.name)
    for key in ("overlay", "graph", "frames_csv"):
        if key in outputs:
            remote.upload(outputs[key], rel[key])
    return {key: remote.url(path) for key, path in rel.items()}


def parse_manifest(text: str) -> dict[str, dict]:
    """Entries of a manifest's text by input path (the last line of an input wins); a broken line (a killed run's
    last one) is ignored."""
    entries = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            entries[entry["input"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return entries


def read_manifest(path: Path) -> dict[str, dict]:
    """Entries of an existing manifest by input path; a broken line (a killed run's last one) is ignored."""
    return parse_manifest(path.read_text()) if path.is_file() else {}


class BatchWriter:
    """Writer stage of a batch: the two image outputs of each good item, a manifest entry for every item.

    ``manifest_name=None``: keep the entries in ``self.entries`` only, write no manifest (a Ray worker: the driver
    writes the manifest from the entries it gets back).

    ``remote``: a URI OUTDIR (:class:`~spam_stream.pipelines.outputs.RemoteOutputs`): ``outdir`` is then a local
    staging folder (None: this writer only records entries, the Ray driver); each item's outputs are written there,
    uploaded (labels, then overlay) and deleted, and named by URL; an upload failure is the item's error. The
    manifest goes to OUTDIR through :class:`~spam_stream.pipelines.outputs.RemoteManifest`.

    ``options`` (:class:`~spam_stream.pipelines.video.VideoOptions`): ``graph`` adds each image's
    ``<stem>_graph.npz`` (:func:`spam_stream.graph.region_graph`), ``start_label`` is added to the labels written."""

    def __init__(self, outdir: Path | None, color="auto", manifest_name: str | None = "manifest.jsonl",
                 remote: RemoteOutputs | None = None, options: VideoOptions | None = None):
        self.outdir = None if outdir is None else Path(outdir)
        self.options = options or VideoOptions()
        self.color = color
        self.remote = remote
        self.entries: list[dict] = []
        self.manifest, self._log, self._remote_log = None, None, None
        if manifest_name is not None and remote is not None:
            self._remote_log = RemoteManifest(remote, manifest_name)
        elif manifest_name is not None:
            self.manifest = self.outdir / manifest_name
            self._log = open(self.manifest, "a")

    def __call__(self, frame: Frame) -> Frame:
        item: BatchItem = frame.meta["item"]
        t = time.perf_counter()
        outputs = item.outputs(self.outdir, self.options)
        entry = {"input": str(item.path), "outputs": output_names(item, self.remote or self.outdir, self.options)}
        if frame.error is None:
            outputs["labels"].parent.mkdir(parents=True, exist_ok=True)
            try:
                start = self.options.start_label
                labels = frame.labels + start if start else frame.labels
                write_labels(outputs["labels"], labels)
                write_overlay(outputs["overlay"], frame.image, frame.labels, self.color)
                if "graph" in outputs:
                    from ..graph import region_graph, save_graph

                    save_graph(outputs["graph"], region_graph(labels, frame.image, prior=frame.partition))
            except ValueError as exc:  # e.g. more labels than a uint16 PNG holds
                frame.error = f"{item.path}: {exc}"
            if self.remote is not None and frame.error is None:
                try:  # labels, then overlay (then graph): an item counts as done once all exist
                    for key, rel in item.outputs(Path(), self.options).items():
                        self.remote.upload(outputs[key], rel)
                except OSError as exc:
                    frame.error = f"{item.path}: upload to {self.remote}: {describe(exc)}"
        frame.timings["write"] = time.perf_counter() - t
        entry.update({"superpixels": None if frame.error else int(frame.labels.max()) + 1,
                      "ms": {k: round(1e3 * v, 2) for k, v in frame.timings.items()},
                      "status": "failed" if frame.error else "ok", "error": frame.error})
        if frame.error:
            entry["outputs"] = {}
        self.record(entry)
        frame.image = frame.labels if frame.error is None else None  # keep labels, drop the image
        return frame

    def record(self, entry: dict) -> None:
        """Keep one item's manifest entry (and append its line to the manifest at once, when there is one)."""
        self.entries.append(entry)
        if self._log is not None:
            self._log.write(json.dumps(entry) + "\n")
            self._log.flush()
        elif self._remote_log is not None:
            self._remote_log.record(entry)

    def close(self, carried: list[dict]) -> None:
        """Rewrite the manifest atomically: ``carried`` entries (skipped items) then this run's, one line each."""
        if self._remote_log is not None:
            self._remote_log.close(carried + self.entries)
            return
        if self._log is None:
            return
        self._log.close()
        with atomic_path(self.manifest) as tmp:
            with open(tmp, "w") as fh:
                for entry in carried + self.entries:
                    fh.write(json.dumps(entry) + "\n")


def batch_frames(model, items: list[BatchItem], n_superpixels: int = 400, *, attention=None,
                 attention_ratio: float = 2.5, focus=None, pipelined: bool = True, queue_size: int = 2,
                 extra_stages=(), schedule: list | None = None, superpixel_size: int | None = None):
    """Segment each item (decoded in the source thread): yields finished frames in input order, ``meta["item"]``
    naming the item; failures (missing, unreadable, wrong size) carry ``frame.error``. ``schedule``: a list that
    gets the run's schedule line at the end (:func:`~.executor.schedule_line`). ``superpixel_size``: K of each
    image is its pixels / this, instead of ``n_superpixels``."""

    def source():
        for index, item in enumerate(items):
            frame = Frame(index=index, key=item.path.stem, n_superpixels=n_superpixels)
            frame.meta["item"] = item
            t = time.perf_counter()
            try:
                image = read_image(item.path)
                if superpixel_size is not None:  # one superpixel per superpixel_size pixels of this image
                    frame.n_superpixels = max(1, round(image.shape[0] * image.shape[1] / superpixel_size))
                checked = model.frame(image, frame.n_superpixels, key=item.path.stem, index=index)
                frame.image = checked.image
            except Exception as exc:  # whatever one file does, it is that file's failed line, never the batch's end
                message = str(exc) if isinstance(exc, (InputError, ValueError)) else describe(exc)
                frame.error = message if message.startswith(str(item.path)) else f"{item.path}: {message}"
            frame.timings["decode"] = time.perf_counter() - t
            yield frame

    with thread_budget(model, pipelined) as threads:
        stages = spam_stages(model, attention=attention, attention_ratio=attention_ratio, focus=focus,
                             threads=threads)
        for stage in stages:
            stage.fn = _naming_errors(stage.fn)
        stages += list(extra_stages)
        t, cpu, busy = time.perf_counter(), time.process_time(), {}
        if pipelined:
            pipeline = Pipeline(stages, queue_size=queue_size, device=model.device)
            policy = pipeline.policy()
            frames = pipeline.run(source())
        else:
            policy, frames = "sequential (one image at a time, every stage on every core)", run_sequential(stages,
                                                                                                        source())
        for frame in frames:
            for name, seconds in frame.timings.items():
                busy[name] = busy.get(name, 0.0) + seconds
            yield frame
        if schedule is not None:
            schedule.append(schedule_line(policy, busy, time.perf_counter() - t, time.process_time() - cpu))


def array_frames(model, images_or_paths, n_superpixels: int = 400, *, attention=None, attention_ratio: float = 2.5,
                 focus=None, pipelined: bool = True, queue_size: int = 2, fixed_prior=None):
    """Segment arrays and/or image paths: yields finished frames in input order (``frame.error`` for failures)."""

    def source():
        for index, obj in enumerate(images_or_paths):
            is_path = isinstance(obj, (str, Path))
            key = Path(obj).stem if is_path else index
            frame = Frame(index=index, key=key, n_superpixels=n_superpixels, prior=fixed_prior)
            t = time.perf_counter()
            try:
                image = read_image(obj) if is_path else obj
                frame.image = model.frame(image, n_superpixels, key=key, index=index).image
            except Exception as exc:  # one bad item is its own error, the rest go on
                message = str(exc) if isinstance(exc, (InputError, ValueError)) else describe(exc)
                frame.error = message if is_path and message.startswith(str(obj)) else f"{key}: {message}"
            frame.timings["decode"] = time.perf_counter() - t
            yield frame

    with thread_budget(model, pipelined) as threads:
        stages = spam_stages(model, attention=attention, attention_ratio=attention_ratio, focus=focus,
                             threads=threads)
        if pipelined:
            yield from Pipeline(stages, queue_size=queue_size, device=model.device).run(source())
        else:
            yield from run_sequential(stages, source())


def _naming_errors(fn):
    """Stage errors name the input file (not just its stem)."""

    def wrapped(frame):
        try:
            return fn(frame)
        except (InputError, ValueError) as exc:
            path = frame.meta["item"].path
            message = str(exc)
            raise InputError(message if message.startswith(str(path)) else f"{path}: {message}") from None

    return wrapped


def _check_video_folders(items: list[BatchItem]) -> None:
    """Two videos whose outputs would share a folder (``clip.mp4`` and ``clip.mkv`` side by side): a one-line error
    before any work, rather than one overwriting the other."""
    seen: dict[Path, BatchItem] = {}
    for item in items:
        if item.is_video:
            key = item.rel.parent / item.rel.stem
            if key in seen:
                raise InputError(f"{seen[key].path} and {item.path} would both write to OUTDIR/{key}/: "
                                 "rename one, or give them in separate jobs")
            seen[key] = item


def plan_batch(inputs, outdir, *, resume: bool = False, shard_spec: tuple[int, int] = (0, 1),
               video_options: VideoOptions | None = None):
    """What a batch job (any engine) does: ``(items, todo, carried, manifest_name)``: this shard's items, those to
    process, the manifest entries carried over for the items ``resume`` skips (complete outputs; for a video also
    an ok manifest line, see :func:`is_complete`), and the manifest's file name. Creates ``outdir``.

    ``outdir``: a local folder, or a URI OUTDIR (a ``scheme://`` string or a RemoteOutputs, see
    :func:`~spam_stream.pipelines.outputs.resolve_outdir`): its manifest is read through its filesystem and, with
    ``resume``, its files are listed once."""
    outdir = resolve_outdir(outdir)
    remote = outdir if isinstance(outdir, RemoteOutputs) else None
    if remote is None:
        outdir.mkdir(parents=True, exist_ok=True)
    else:
        remote.create_root()
    everything = collect_inputs(inputs)
    _check_video_folders(everything)
    items = shard(everything, *shard_spec)
    manifest_name = "manifest.jsonl" if shard_spec[1] == 1 else f"manifest-{shard_spec[0]}-of-{shard_spec[1]}.jsonl"
    if remote is None:
        old, present = read_manifest(outdir / manifest_name), outdir
    else:
        old = parse_manifest(remote.read_text(manifest_name) or "")
        present = remote.listing() if resume else None
    carried, todo = [], []
    for item in items:
        if resume and is_complete(item, present, old.get(str(item.path)), video_options):
            carried.append(old.get(str(item.path)) or {"input": str(item.path), "status": "ok", "error": None,
                                                        "outputs": output_names(item, outdir)})
        else:
            todo.append(item)
    return items, todo, carried, manifest_name


def run_batch(model, inputs, outdir, n_superpixels: int = 400, *, resume: bool = False,
              shard_spec: tuple[int, int] = (0, 1), color="auto", pipelined: bool = True, progress=None,
              video_options: VideoOptions | None = None, on_video_frame=None, on_video=None, on_start=None,
              schedule: list | None = None, **options):
    """The ``spam-stream batch`` job: returns (entries of this run, skipped items' carried entries, number of
    items). The images run through one pipeline, then each large image in tiles (:func:`large_entry`; a TIFF or
    slide too large for one frame), then each video through its own (:func:`video_entry`); the manifest lines are
    appended as items finish and rewritten in input order at the end. ``superpixel_size`` (in ``options``): one
    superpixel per that many pixels of each image, instead of ``n_superpixels``.

    ``on_start(n)``: called once the plan is known, with the number of items this run processes (a progress bar's
    total); ``progress``: optional callable invoked with each finished image frame (a progress bar);
    ``on_video_frame(item, frame)``: each finished frame of a video; ``on_video(entry)``: each finished video or large image;
    ``schedule``: a list that gets the images' schedule line (policy, each stage's busy fraction).
    ``outdir``: a local folder, or a URI OUTDIR (``s3://…``: each item is written to a local staging folder, a
    temporary folder removed at the end, then uploaded; see :mod:`spam_stream.pipelines.outputs`)."""
    outdir = resolve_outdir(outdir)
    remote = outdir if isinstance(outdir, RemoteOutputs) else None
    items, todo, carried, manifest_name = plan_batch(inputs, outdir, resume=resume, shard_spec=shard_spec,
                                                     video_options=video_options)
    superpixel_size = options.pop("superpixel_size", None)
    large = [it for it in todo if large_unit(model, it, n_superpixels, superpixel_size)]
    images = [it for it in todo if not it.is_video and it not in large]
    videos = [it for it in todo if it.is_video]
    if on_start is not None:
        on_start(len(todo))
    staging = None if remote is None else Path(tempfile.mkdtemp(prefix="spam-stream-staging-"))
    target = outdir if remote is None else staging
    writer = BatchWriter(target, color, manifest_name, remote=remote, options=video_options)
    stage = Stage("write", writer, fatal=True, run_on_error=True, io=True)
    try:
        if images or not videos:
            for frame in batch_frames(model, images, n_superpixels, pipelined=pipelined, extra_stages=[stage],
                                      schedule=schedule if images else None, superpixel_size=superpixel_size,
                                      **options):
                if progress is not None:
                    progress(frame)
        for item in large:
            entry = large_entry(model, item, target, n_superpixels, superpixel_size=superpixel_size,
                                start_label=(video_options or VideoOptions()).start_label, color=color,
                                remote=remote, graph=(video_options or VideoOptions()).graph)
            writer.record(entry)
            if on_video is not None:
                on_video(entry)
        for item in videos:
            def each_frame(frame, message, item=item):
                if on_video_frame is not None:
                    on_video_frame(item, frame)

            entry = video_entry(model, item, target, n_superpixels, video_options, color=color, pipelined=pipelined,
                                on_frame=each_frame, remote=remote, **options)
            writer.record(entry)
            if on_video is not None:
                on_video(entry)
    finally:
        order = {str(it.path): i for i, it in enumerate(todo)}
        writer.entries.sort(key=lambda e: order.get(e["input"], len(order)))
        try:
            writer.close(carried)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
    return writer.entries, carried, len(items)
