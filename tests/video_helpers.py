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


# --- clips that move like real footage: camera pan + small rotation and zoom, a moving object, a scene cut ---

def _scene_images(n=2):
    """``n`` RGB uint8 pictures to film: BSDS500 test images when the data set is there (SPAM_BSDS_ROOT or
    ../shared/datasets/bsds500), else the bundled samples/coffee.jpg and colour-shifted, mirrored copies of it."""
    import os
    from pathlib import Path

    from PIL import Image

    here = Path(__file__).resolve().parent.parent
    root = Path(os.environ.get("SPAM_BSDS_ROOT", here.parent.parent / "shared" / "datasets" / "bsds500"))
    if not root.is_dir():
        root = here.parent / "shared" / "datasets" / "bsds500"
    names = ["100007.jpg", "103006.jpg", "108004.jpg", "120003.jpg"]
    paths = [root / "data" / "images" / "test" / name for name in names]
    if all(p.is_file() for p in paths[:n]):
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths[:n]]
    coffee = np.asarray(Image.open(here / "samples" / "coffee.jpg").convert("RGB"))
    out = [coffee]
    for i in range(1, n):  # a different "scene": mirrored, channels rotated
        out.append(np.ascontiguousarray(np.roll(coffee[:, ::-1] if i % 2 else coffee[::-1], i, axis=-1)))
    return out


def real_motion_frames(n, h=360, w=640, cut=None, seed=0, mark=False):
    """``n`` (h, w, 3) uint8 frames that move like filmed footage, not like a synthetic pan:

    * a camera that pans (a few pixels a frame, slowly changing direction), rotates slightly (up to ±2°) and
      zooms (in by up to 20 % over the first scene and back out),
    * an object with its own motion (a textured patch cut from the picture, moving across the view),
    * a scene cut at frame ``cut`` (default ``n * 3 // 5``; None-equivalent: ``cut >= n``): another picture,
      another camera path,
    * sensor noise (σ 2 levels).

    ``mark``: frame i's index drawn as :func:`index_frame`'s black/white blocks in the top rows (order checks).
    Pictures: :func:`_scene_images`. Deterministic for a given ``seed``."""
    from PIL import Image

    cut = n * 3 // 5 if cut is None else cut
    rng = np.random.default_rng(seed)
    scenes = [Image.fromarray(img) for img in _scene_images(2)]
    patch_src = np.asarray(scenes[1])  # the object: textured, from the other picture
    ph, pw = max(8, h // 5), max(8, w // 6)
    py, px = patch_src.shape[0] // 3, patch_src.shape[1] // 3
    patch = np.asarray(Image.fromarray(patch_src[py:py + patch_src.shape[0] // 3, px:px + patch_src.shape[1] // 3])
                       .resize((pw, ph), Image.BILINEAR))
    yy, xx = np.mgrid[:ph, :pw]
    blob = ((yy - ph / 2) / (ph / 2)) ** 2 + ((xx - pw / 2) / (pw / 2)) ** 2 < 1  # an elliptic object
    frames = []
    for i in range(n):
        scene = 0 if i < cut else 1
        t = i if scene == 0 else i - cut
        span = max(1, (cut if scene == 0 else n - cut) - 1)
        src = scenes[scene]
        sw, sh = src.size
        # the camera: zoom (view = the picture covering the frame at 1.15x..1.35x), rotation, a curved pan
        zoom = 1.15 + 0.2 * np.sin(np.pi * t / span) if scene == 0 else 1.25 - 0.1 * t / span
        angle = np.deg2rad(2.0 * np.sin(2 * np.pi * t / max(8, span)))
        cover = max(w / sw, h / sh) * zoom  # picture pixels → frame pixels
        travel_x = (sw * cover - w) / 2 * 0.8
        travel_y = (sh * cover - h) / 2 * 0.8
        u = t / span
        cx = sw / 2 + (travel_x * (2 * u - 1) if scene == 0 else travel_x * (1 - 2 * u) * 0.7) / cover
        cy = sh / 2 + travel_y * np.sin(np.pi * u + scene) * 0.6 / cover
        # frame (x, y) → picture: centre + R(angle) · ((x, y) - frame centre) / cover (PIL wants that inverse map)
        ca, sa = np.cos(angle) / cover, np.sin(angle) / cover
        a, b = ca, -sa
        d, e = sa, ca
        c = cx - a * w / 2 - b * h / 2
        f = cy - d * w / 2 - e * h / 2
        img = np.array(src.transform((w, h), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR))
        if scene == 0:  # the moving object crosses the view (its own motion, not the camera's)
            oy = int((h - ph) * (0.2 + 0.6 * u))
            ox = int((w - pw) * (1 - u))
            region = img[oy:oy + ph, ox:ox + pw]
            region[blob[:region.shape[0], :region.shape[1]]] = patch[:region.shape[0], :region.shape[1]][
                blob[:region.shape[0], :region.shape[1]]]
        img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
        if mark:
            img[:BLOCK, :BITS * BLOCK] = 0
            for bit in range(BITS):
                if (i >> bit) & 1:
                    img[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255
        frames.append(img)
    return frames


def write_real_clip(path, n, h=360, w=640, rate=Fraction(25), cut=None, seed=0, mark=False, codec="libx264",
                    crf=20):
    """:func:`real_motion_frames` encoded to ``path`` (H.264 ``yuv420p`` at ``crf``, even sizes; or
    ``codec="ffv1"``: lossless, odd sizes kept). Returns ``path``."""
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = w, h
    if codec == "libx264":
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
    else:
        stream.pix_fmt = "yuv444p"
    encode_frames(container, stream, real_motion_frames(n, h, w, cut, seed, mark))
    return path
