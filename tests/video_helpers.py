"""Test videos whose frames carry their own index in a visible pattern, and reading the pattern back."""
from fractions import Fraction

import numpy as np

from helpers import synthetic_image

BITS, BLOCK = 9, 10  # 9 bits (up to 511 frames) as 10x10 blocks along the top of the frame


def index_frame(i, h=67, w=99, static=False):
    """(H, W, 3) uint8: a textured scene (drifting unless ``static``) with frame index ``i`` drawn as black/white
    blocks in the top rows."""
    base = synthetic_image(h + 40, w + 40, seed=3)
    dy, dx = (0, 0) if static else (i % 40, (i // 2) % 40)
    img = base[dy:dy + h, dx:dx + w].copy()
    img[:BLOCK, :BITS * BLOCK] = 0
    for b in range(BITS):
        if (i >> b) & 1:
            img[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255
    return img


def read_index(frame):
    """The index drawn by :func:`index_frame` (block medians: robust to compression and drawn boundaries)."""
    value = 0
    for b in range(BITS):
        block = frame[1:BLOCK - 1, b * BLOCK + 1:(b + 1) * BLOCK - 1].astype(np.float64).mean(-1)
        if np.median(block) > 128:
            value |= 1 << b
    return value


def write_index_video(path, n, rate=Fraction(30000, 1001), h=67, w=99, codec="libx264", fmt=None, static=False):
    """Write ``n`` index frames (``codec="ffv1"`` in ``.mkv``: lossless and odd sizes kept; libx264 pads odd sizes
    to even)."""
    import av

    container = av.open(str(path), "w", format=fmt)
    stream = container.add_stream(codec, rate=rate)
    even = codec == "libx264"  # H.264 4:2:0 needs even sizes; ffv1 (lossless, 4:4:4) keeps odd ones
    stream.width, stream.height = (w + w % 2, h + h % 2) if even else (w, h)
    stream.pix_fmt = "yuv420p" if even else "yuv444p"
    if codec == "libx264":
        stream.options = {"crf": "12", "preset": "veryfast"}
    pad = ((0, h % 2), (0, w % 2), (0, 0)) if even else ((0, 0),) * 3
    encode_frames(container, stream, (np.pad(index_frame(i, h, w, static), pad, mode="edge") for i in range(n)))
    return path


def encode_frames(container, stream, images):
    """Encode (H, W, 3) uint8 ``images`` into ``stream`` with consecutive pts, flush, close the container."""
    import av

    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


TS_PACKET = 188


def write_ts_video(path, n, rate=Fraction(25), h=96, w=128):
    """An MPEG transport stream of ``n`` H.264 index frames without B-frames (decode order = display order), noisy
    enough that every frame spans several 188-byte packets. Returns (path, starts): ``starts[i]`` is the index of
    the packet where frame i's data begins (the video PID's packets with payload_unit_start_indicator set), so a
    test can cut the file at a place whose kind is known: inside a packet, inside a frame's data on a packet
    boundary, or between two frames."""
    import av

    rng = np.random.default_rng(0)
    container = av.open(str(path), "w", format="mpegts")
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": "18", "preset": "veryfast", "bf": "0"}

    def noisy(i):
        img = index_frame(i, h, w)
        noise = rng.integers(-40, 40, img.shape)
        noise[:BLOCK + 2] = 0  # keep the index blocks clean
        return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    encode_frames(container, stream, (noisy(i) for i in range(n)))
    with av.open(str(path)) as c:
        pid = c.streams.video[0].id
    data = path.read_bytes()
    assert len(data) % TS_PACKET == 0
    starts = []
    for k in range(len(data) // TS_PACKET):
        head = data[k * TS_PACKET:k * TS_PACKET + 3]
        assert head[0] == 0x47
        if head[1] & 0x40 and ((head[1] & 0x1F) << 8 | head[2]) == pid:
            starts.append(k)
    assert len(starts) == n, (len(starts), n)
    return path, starts


def decode_all(path):
    """(frames list of (H, W, 3) uint8, average rate) of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.average_rate


VIDEO_BATCH = {"v/clip.mkv": (24, Fraction(30000, 1001)), "v/other.mp4": (16, Fraction(25))}


def make_video_batch(folder):
    """A batch folder of videos for ``spam-stream batch``: ``v/clip.mkv`` (24 lossless frames at 29.97 fps) and
    ``v/other.mp4`` (16 H.264 frames at 25 fps), good, with their (frames, rate) in :data:`VIDEO_BATCH`;
    ``v/broken.mp4`` (not a video) and ``cut.mkv`` (the first half of a 40-frame file: a few frames, then the
    cut). Returns the folder."""
    from pathlib import Path

    folder = Path(folder)
    (folder / "v").mkdir(parents=True, exist_ok=True)
    write_index_video(folder / "v" / "clip.mkv", 24, VIDEO_BATCH["v/clip.mkv"][1], codec="ffv1")
    write_index_video(folder / "v" / "other.mp4", 16, VIDEO_BATCH["v/other.mp4"][1])
    (folder / "v" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    full = write_index_video(folder / "full.mkv", 40, fmt="matroska")
    data = full.read_bytes()
    full.unlink()
    (folder / "cut.mkv").write_bytes(data[:len(data) // 2])
    return folder


def label_frames(folder):
    """{file name: (H, W) uint16 array} of a video's labels folder."""
    from pathlib import Path

    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))}
