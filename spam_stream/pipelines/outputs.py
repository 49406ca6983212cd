"""Where batch outputs go: a local folder (as always), or a URI that ``pyarrow.fs`` opens (``s3://bucket/prefix``,
``gs://…``, ``hdfs://…``, ``file:///…``).

A local OUTDIR (a path, or a string without a scheme) is written in place, exactly as before: nothing here is used.

A URI OUTDIR is resolved once (:func:`resolve_outdir`, ``pyarrow.fs.FileSystem.from_uri``; credentials come from the
environment as pyarrow reads them: ``AWS_*`` / ``~/.aws`` / instance roles for S3, ``GOOGLE_APPLICATION_CREDENTIALS``
for GCS, on every machine that writes). Each item is then written exactly as to a local OUTDIR, into a local
**staging** folder (a temporary folder of the process that runs it: one item at a time), and its files are
**uploaded** one by one and deleted from staging (:meth:`RemoteOutputs.upload`): an image's labels then overlay, a
video's label video (or PNGs), overlay and, last, its frames CSV. An output that exists under its final name is
complete:

* on object stores whose objects appear only once their upload completes (S3: PutObject / CompleteMultipartUpload;
  GCS: a finalised upload) a file is written straight to its final name;
* on every other filesystem (local ``file://``, HDFS, fsspec filesystems, …) it is written under a temporary name
  (``.<stem>.<random>.part<suffix>``, the naming of :func:`spam_stream.io.atomic_path`, which resume never counts)
  and moved to its final name.

``--resume`` lists OUTDIR once (one recursive ``get_file_info``: on S3 one request per 1000 objects, not two per
item) and applies the local rules to that listing (:class:`Listing`: files that exist, label PNGs per folder). The
manifest is read and rewritten through the same filesystem (:class:`RemoteManifest`): object stores cannot append,
so this run's lines are kept in memory and the whole manifest (the old lines, then this run's so far) is rewritten
after each video and every 30 s (never more often than every 10× the time one rewrite takes, so rewriting a big
manifest costs at most ~10% of the run), and once at the end in input order, like a local manifest.

pyarrow comes with the ``ray`` extra (Ray Data needs it); the core install imports it only for a URI OUTDIR.
"""
from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath

from ..io import InputError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")  # 2+ letters: C:// is not a scheme
ATOMIC_OBJECT_STORES = frozenset({"s3", "gcs"})  # pyarrow type names whose objects appear only when complete


def is_uri(outdir) -> bool:
    """Whether OUTDIR is a URI (``scheme://…``, a string) rather than a local path."""
    return isinstance(outdir, str) and _SCHEME.match(outdir) is not None


def outdir_argument(text: str):
    """argparse type of OUTDIR: a URI stays a string (``Path`` would fold ``s3://b`` into ``s3:/b``), else a Path."""
    return text if is_uri(text) else Path(text)


def resolve_outdir(outdir):
    """A local OUTDIR as a :class:`~pathlib.Path`; a URI as :class:`RemoteOutputs`; a RemoteOutputs unchanged."""
    if isinstance(outdir, RemoteOutputs):
        return outdir
    return RemoteOutputs(outdir) if is_uri(outdir) else Path(outdir)


def _pyarrow_fs(name: str):
    try:
        import pyarrow.fs
    except ImportError:
        raise InputError(f"OUTDIR {name} needs pyarrow: pip install pyarrow (or 'spam-stream[ray]', which has it)") \
            from None
    return pyarrow.fs


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _base_type(fs) -> str:
    """The pyarrow type name of the filesystem that stores the bytes (through SubTreeFileSystem wrappers)."""
    while getattr(fs, "type_name", None) == "subtree":
        fs = fs.base_fs
    return fs.type_name


class RemoteOutputs:
    """A URI OUTDIR: a ``pyarrow.fs`` filesystem and the root folder in it. Paths given to the methods are relative
    to OUTDIR (:class:`~pathlib.Path` or posix strings); :meth:`url` names an output in the manifest.

    ``RemoteOutputs(uri)`` opens the URI (``FileSystem.from_uri``; query options such as ``?region=…`` or
    ``?endpoint_override=…`` are pyarrow's). ``RemoteOutputs(filesystem=fs, root="folder", name="mem://x")`` takes
    an opened filesystem (from Python: any ``pyarrow.fs`` filesystem, e.g. an fsspec one through
    ``PyFileSystem(FSSpecHandler(...))``). ``atomic_objects``: write straight to the final name (default: for the
    object stores of :data:`ATOMIC_OBJECT_STORES`); else a temporary name and a move."""

    def __init__(self, uri: str | None = None, *, filesystem=None, root: str = "", name: str | None = None,
                 atomic_objects: bool | None = None):
        self.uri = uri  # as given: workers reopen it in their own environment (credentials)
        self.name = (name or (uri or "").split("?", 1)[0]).rstrip("/") or "OUTDIR"  # no query in names
        fs_module = _pyarrow_fs(self.name)
        self._types = fs_module
        if filesystem is None:
            try:
                filesystem, root = fs_module.FileSystem.from_uri(uri)
            except Exception as exc:  # an unknown scheme, a bad option, an unreachable store
                raise InputError(f"OUTDIR {self.name}: pyarrow.fs cannot open it: {_one_line(exc)}") from None
        self.fs, self.root = filesystem, str(root).rstrip("/")
        self.atomic_objects = _base_type(self.fs) in ATOMIC_OBJECT_STORES if atomic_objects is None \
            else atomic_objects
        self._made: set[str] = set()

    def __reduce__(self):
        # opened from a URI: reopen it where it lands (that machine's credentials); else ship the filesystem
        if self.uri is not None:
            return (RemoteOutputs, (self.uri,), None)
        return (_rebuild, (self.fs, self.root, self.name, self.atomic_objects))

    def __str__(self) -> str:
        return self.name

    # names
    def path(self, rel) -> str:
        """The filesystem path of ``rel`` (relative to OUTDIR)."""
        rel = PurePosixPath(rel).as_posix()
        if rel in ("", "."):
            return self.root
        return f"{self.root}/{rel}" if self.root else rel

    def url(self, rel) -> str:
        """The manifest's name of ``rel``: ``<OUTDIR URI>/<rel>``."""
        return f"{self.name}/{PurePosixPath(rel).as_posix()}"

    # reading
    def read_text(self, rel) -> str | None:
        """The text of a file of OUTDIR, or None when there is none."""
        path = self.path(rel)
        if self.fs.get_file_info(path).type != self._types.FileType.File:
            return None
        with self.fs.open_input_stream(path, compression=None) as fh:
            return fh.read().decode()

    def listing(self, rel=".") -> Listing:
        """Every file under ``rel`` (recursive), listed once."""
        base = self.path(rel)
        selector = self._types.FileSelector(base, allow_not_found=True, recursive=True)
        prefix = base.strip("/") + "/" if base.strip("/") else ""
        files = [info.path.lstrip("/")[len(prefix):] for info in self.fs.get_file_info(selector)
                 if info.type == self._types.FileType.File]  # (fsspec filesystems answer with a leading /)
        if rel not in (".", ""):
            files = [f"{PurePosixPath(rel).as_posix()}/{f}" for f in files]
        return Listing(files)

    # writing
    def create_root(self) -> None:
        """Check that OUTDIR can be written to (a folder is created on filesystems that have folders); a one-line
        :class:`InputError` otherwise, before any work."""
        try:
            if self.atomic_objects:  # object stores: no folders; the bucket must exist
                bucket = self.root.split("/", 1)[0]
                if bucket and self.fs.get_file_info(bucket).type == self._types.FileType.NotFound:
                    raise InputError(f"OUTDIR {self.name}: bucket {bucket!r} not found")
            else:
                self._mkdir(self.root)
        except OSError as exc:
            raise InputError(f"OUTDIR {self.name}: cannot write there: {_one_line(exc)}") from None

    def _mkdir(self, path: str) -> None:
        if path and path not in self._made and not self.atomic_objects:
            self.fs.create_dir(path, recursive=True)
            self._made.add(path)

    def _put(self, rel, write) -> None:
        """Write a file of OUTDIR with ``write(stream)``, so that it exists under its final name only complete."""
        target = self.path(rel)
        parent, _, leaf = target.rpartition("/")
        self._mkdir(parent)
        if self.atomic_objects:  # S3/GCS: the object appears when its upload completes
            with self.fs.open_output_stream(target, compression=None) as out:
                write(out)
            return
        stem, dot, suffix = leaf.rpartition(".")
        stem, suffix = (stem, dot + suffix) if stem else (leaf, "")
        tmp = f"{parent}/.{stem}.{uuid.uuid4().hex[:12]}.part{suffix}" if parent else \
            f".{stem}.{uuid.uuid4().hex[:12]}.part{suffix}"
        try:
            with self.fs.open_output_stream(tmp, compression=None) as out:
                write(out)
            try:
                self.fs.move(tmp, target)
            except OSError:  # filesystems whose rename does not replace (HDFS): drop the old file, move again
                if self.fs.get_file_info(target).type != self._types.FileType.File:
                    raise
                self.fs.delete_file(target)
                self.fs.move(tmp, target)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except Exception:
                pass
            raise

    def upload(self, local: Path, rel) -> str:
        """Copy the local file ``local`` to ``rel`` in OUTDIR, then delete ``local``; returns :meth:`url`."""
        with open(local, "rb") as src:
            self._put(rel, lambda out: shutil.copyfileobj(src, out, 8 << 20))
        Path(local).unlink()
        return self.url(rel)

    def write_text(self, rel, text: str) -> None:
        data = text.encode()
        self._put(rel, lambda out: out.write(data))

    def delete(self, rels) -> None:
        """Delete files of OUTDIR (relative paths that exist), in the order given."""
        for rel in rels:
            self.fs.delete_file(self.path(rel))

    def clear_video(self, folder, stem: str) -> None:
        """What an earlier run left of a video's outputs in OUTDIR/``folder``, removed before the video is (re)done,
        in the local order (:func:`spam_stream.pipelines.batch.clear_video_outputs`): the frames CSV first (its
        presence marks a finished video), the overlay, the graph, the label video and PNGs, temporary files of this
        stem."""
        folder = PurePosixPath(folder)
        files = self.listing(folder).files
        csv, mp4, mkv = f"{folder / stem}_frames.csv", f"{folder / stem}_overlay.mp4", f"{folder / stem}_labels.mkv"
        graph = f"{folder / stem}_graph.npz"
        labels = f"{folder / stem}_labels/"
        temporary = re.compile(re.escape(f"{folder}/.{stem}_") +
                               r"(frames\.\w+\.part\.csv|overlay\.\w+\.part\.mp4|labels\.\w+\.part\.mkv"
                               r"|graph\.\w+\.part\.npz)$")
        doomed = [p for p in (csv, mp4, mkv, graph) if p in files]
        doomed += sorted(p for p in files if (p.startswith(labels) and "/" not in p[len(labels):]
                                              and p.endswith(".png")) or temporary.match(p))
        self.delete(doomed)


def _rebuild(fs, root, name, atomic_objects):
    return RemoteOutputs(filesystem=fs, root=root, name=name, atomic_objects=atomic_objects)


class Listing:
    """The files under a URI OUTDIR at one moment (relative posix paths): what ``--resume`` checks."""

    def __init__(self, files):
        self.files = set(files)
        self._pngs: dict[str, int] = {}
        for f in self.files:
            folder, _, leaf = f.rpartition("/")
            if leaf.endswith(".png") and not leaf.startswith("."):
                self._pngs[folder] = self._pngs.get(folder, 0) + 1

    def is_file(self, rel) -> bool:
        return PurePosixPath(rel).as_posix() in self.files

    def png_count(self, rel) -> int:
        """Label PNGs directly in folder ``rel`` (temporary ``.…`` names not counted)."""
        return self._pngs.get(PurePosixPath(rel).as_posix(), 0)


class RemoteManifest:
    """The manifest of a URI OUTDIR (see the module docstring): :meth:`record` each entry, :meth:`close` at the end.

    Between rewrites a killed run loses its last lines: images are still skipped by ``--resume`` (their outputs
    exist), a video without its line is redone."""

    EVERY_S = 30.0

    def __init__(self, remote: RemoteOutputs, name: str):
        self.remote, self.name = remote, name
        old = remote.read_text(name) or ""
        self.old = [line for line in old.splitlines() if line.strip()]
        self.lines: list[str] = []
        self.every, self.last, self.cost = self.EVERY_S, time.monotonic(), 0.0

    def record(self, entry: dict) -> None:
        self.lines.append(json.dumps(entry))
        since = time.monotonic() - self.last
        if since >= self.every or (entry.get("kind") == "video" and since >= 10 * self.cost):
            try:
                self._write(self.old + self.lines)
            except OSError:  # best effort: the final rewrite reports a store that cannot be written
                self.last = time.monotonic()

    def close(self, entries: list[dict]) -> None:
        """The final manifest: ``entries`` (carried, then this run's), one line each; a one-line
        :class:`InputError` when it cannot be written."""
        try:
            self._write([json.dumps(e) for e in entries])
        except OSError as exc:
            raise InputError(f"{self.remote.url(self.name)}: cannot write the manifest: {_one_line(exc)}") from None

    def _write(self, lines: list[str]) -> None:
        t = time.monotonic()
        self.remote.write_text(self.name, "".join(line + "\n" for line in lines))
        self.last = time.monotonic()
        self.cost = self.last - t
        self.every = max(self.EVERY_S, 10 * self.cost)  # rewrites cost at most ~10% of the run
