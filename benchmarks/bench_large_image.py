"""Large images (issue 32): peak memory, time per megapixel against a 1080p frame, CPU/wall, and seams.

1. **Throughput / memory**: a generated RGB tiled TIFF (a mosaic of BSDS500 images, deflate tiles of 512; written
   tile by tile) segmented by ``spam-stream image`` in tiles at one superpixel per ``--superpixel-size`` pixels, in
   a child process running the ``image`` command as a user does (peak resident memory = its ``ru_maxrss``), against a 1080p crop of the same mosaic segmented
   as one frame in another child (same model, same density). Reported: wall, CPU/wall, ms per megapixel, ratio.
2. **Seams**: a BSDS500 test image upscaled (bicubic) to ``--seam-size`` and its first ground truth (nearest),
   segmented with ``--tile-size`` against the whole frame (``tile_size=0``): the fraction of pixels on tile-edge
   lines that are superpixel boundaries vs. on the lines halfway between, K', ASA.

    PYTHONPATH=$PWD python benchmarks/bench_large_image.py --size 40000x40000 --encoder default   # the issue's
    PYTHONPATH=$PWD python benchmarks/bench_large_image.py --size 8000x8000 --seam-size 6000x4000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bsds_images(limit=24):
    from spam_stream.datasets import default_bsds_root

    root = default_bsds_root()
    if root is None:
        sys.exit("BSDS500 not found (SPAM_BSDS_ROOT or ../shared/datasets/bsds500)")
    from PIL import Image

    paths = sorted((root / "data/images/test").glob("*.jpg"))[:limit]
    return [np.asarray(Image.open(p).convert("RGB").resize((480, 320))) for p in paths], root


def mosaic_tile(images, y0, x0, th, tw):
    """Rows y0.., columns x0.. of the mosaic: image (i + j) mod n at cell (i, j) of 320x480 cells."""
    out = np.empty((th, tw, 3), np.uint8)
    n = len(images)
    for y in range(y0 - y0 % 320, y0 + th, 320):
        for x in range(x0 - x0 % 480, x0 + tw, 480):
            img = images[(y // 320 + x // 480) % n]
            a, b = max(y, y0), min(y + 320, y0 + th)
            c, d = max(x, x0), min(x + 480, x0 + tw)
            out[a - y0:b - y0, c - x0:d - x0] = img[a - y:b - y, c - x:d - x]
    return out


def write_mosaic(path, images, h, w, tile=512):
    import tifffile

    def tiles():
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                yield mosaic_tile(images, y, x, tile, tile)

    tifffile.imwrite(path, tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                     bigtiff=True, photometric="rgb")


def write_disc_mask(path, h, w, fraction, factor=16):
    """A uint8 TIFF mask, ``factor`` times smaller than the image (a pyramid level's size): a centred disc covering
    ``fraction`` of it (clipped to the image for fractions above pi/4)."""
    import tifffile

    sh, sw = -(-h // factor), -(-w // factor)
    yy, xx = np.mgrid[:sh, :sw]
    r = np.sqrt(fraction * sh * sw / np.pi)
    tifffile.imwrite(path, (((yy - sh / 2) ** 2 + (xx - sw / 2) ** 2) < r * r).astype(np.uint8), tile=(256, 256))


CHILD = r"""
import json, resource, sys, time
path, px, tile, encoder, out, mask = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
                                      sys.argv[6])
t, c = time.perf_counter(), time.process_time()
if tile < 0:  # the 1080p baseline: one whole frame in a process, timed after one warm-up frame (a steady frame)
    from spam_stream.model import SPAM
    from spam_stream.largeio import open_large
    model = SPAM(encoder=None if encoder == "none" else encoder)
    with open_large(path) as im:
        h, w = im.shape[:2]
        img = im.read(0, h, 0, w)
    k = max(1, round(h * w / px))
    model.segment(img, k)
    t, c = time.perf_counter(), time.process_time()
    k_out = int(model.segment(img, k).max()) + 1
else:  # the command a user runs, the whole process timed (start-up, reading, writing included)
    from spam_stream.cli import main
    argv = ["image", path, "-o", out, "--superpixel-size", str(px), "--encoder", encoder]
    if tile:
        argv += ["--tile-size", str(tile)]
    if mask:
        argv += ["--mask", mask]
    assert main(argv) == 0
    import tifffile
    with tifffile.TiffFile(path) as tf:
        h, w = tf.pages[0].shape[:2]
    k, k_out = max(1, round(h * w / px)), -1
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mpx": h * w / 1e6, "k": k, "k_out": k_out, "tile": tile}))
"""


def count_ids(path, rows=2048):
    """Distinct superpixel ids of a label TIFF, read a band of rows at a time (bounded memory)."""
    import tifffile

    from spam_stream.largeio import read_label_tiff

    with tifffile.TiffFile(path) as tf:
        h, w = tf.pages[0].shape[:2]
    ids = np.zeros(0, np.int64)
    for y in range(0, h, rows):
        ids = np.union1d(ids, np.unique(read_label_tiff(path, (y, min(h, y + rows), 0, w))))
    return len(ids)


def child(path, px, tile, encoder, out, mask=""):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(px), str(tile), encoder, str(out), str(mask)],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def seams(root, size, tile, encoder, px):
    from PIL import Image

    from spam_stream.datasets import load_ground_truth
    from spam_stream.metrics import asa
    from spam_stream.model import SPAM
    from spam_stream.tiling import seam_fractions

    w, h = size
    name = "100007"
    img = np.asarray(Image.open(root / f"data/images/test/{name}.jpg").convert("RGB").resize((w, h), Image.BICUBIC))
    gt = load_ground_truth(root / f"data/groundTruth/test/{name}.mat")[0]
    gt = np.asarray(Image.fromarray(gt.astype(np.int32)).resize((w, h), Image.NEAREST))
    model = SPAM(encoder=None if encoder == "none" else encoder)
    k = h * w // px
    rows = []
    for t in (tile, 0):
        t0 = time.perf_counter()
        labels = model.segment(img, k, tile_size=t)
        dt = time.perf_counter() - t0
        edge, half = seam_fractions(labels, tile)
        _, every = seam_fractions(labels, tile, "all")
        rows.append((t, dt, int(labels.max()) + 1, edge, half, every, asa(labels, gt)))
    return k, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="8000x8000", help="WxH of the generated mosaic TIFF")
    ap.add_argument("--superpixel-size", type=int, default=1000)
    ap.add_argument("--tile-size", type=int, default=0, help="tiles of the big run (0: from the memory limit)")
    ap.add_argument("--encoder", default="default", help="default, fast or none (D=5)")
    ap.add_argument("--seam-size", default="6000x4000", help="WxH of the seam test ('' to skip)")
    ap.add_argument("--seam-tile", type=int, default=1024)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--input", help="an existing RGB TIFF instead of generating the mosaic (e.g. a kept 40000^2)")
    ap.add_argument("--mask-fraction", type=float, default=0.0,
                    help="also run with a centred disc mask covering this fraction of the image (0: no masked run)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    args = ap.parse_args()
    images, root = bsds_images()
    print(f"load average before: {os.getloadavg()}")
    if not args.skip_big:
        with tempfile.TemporaryDirectory(prefix="bench-large-", dir=args.tmp) as tmp:
            hd = Path(tmp) / "hd.tif"
            write_mosaic(hd, images, 1080, 1920)
            if args.input:
                big = Path(args.input)
                import tifffile

                with tifffile.TiffFile(big) as tf:
                    h, w = tf.pages[0].shape[:2]
            else:
                w, h = (int(v) for v in args.size.lower().split("x"))
                big = Path(tmp) / "mosaic.tif"
                t = time.perf_counter()
                write_mosaic(big, images, h, w)
                print(f"generated {w}x{h} mosaic TIFF ({big.stat().st_size / 2**20:.0f} MB) in "
                      f"{time.perf_counter() - t:.0f} s")
            runs = [("1080p frame (whole)", child(hd, args.superpixel_size, -1, args.encoder, Path(tmp) / "hd"))]
            masks = [("", f"{w}x{h} tiled")]
            if args.mask_fraction:
                mask = Path(tmp) / "mask.tif"
                write_disc_mask(mask, h, w, args.mask_fraction)
                masks.append((mask, f"{w}x{h} tiled, disc mask ({args.mask_fraction:.0%} of it, a level 16x "
                                    "smaller)"))
            for mask, name in masks:
                r = child(big, args.superpixel_size, args.tile_size, args.encoder, Path(tmp) / "out", mask)
                out = Path(tmp) / "out" / f"{big.stem}_labels.tif"
                if out.is_file():
                    r["k_out"] = count_ids(out) - (1 if mask else 0)  # 0 is the outside
                    if mask:
                        r["k"] = round(r["k"] * args.mask_fraction)
                        r["mpx_inside"] = r["mpx"] * args.mask_fraction
                    out.unlink()
                else:  # the command found that the whole frame fits the memory limit: one frame, a PNG
                    from PIL import Image

                    r["k_out"], r["tile"] = len(np.unique(np.asarray(Image.open(out.with_suffix(".png"))))), 0
                runs.append((name, r))
        base = runs[0][1]
        print("\n| run | Mpx | tile | K | K' | wall s | CPU/wall | ms/Mpx | / 1080p | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, r in runs:
            per = 1e3 * r["wall"] / r["mpx"]
            print(f"| {name} | {r['mpx']:.1f} | {r['tile'] if r['tile'] >= 0 else '-'} | {r['k']} | {r['k_out']} | "
                  f"{r['wall']:.1f} | {r['cpu'] / r['wall']:.2f} | {per:.0f} | "
                  f"{per / (1e3 * base['wall'] / base['mpx']):.2f} | {r['rss_mb']:.0f} |")
        if len(runs) > 2:
            print(f"\nmasked / unmasked wall time: {runs[2][1]['wall'] / runs[1][1]['wall']:.2f} "
                  f"(the mask covers {args.mask_fraction:.0%})")
    if args.seam_size:
        w, h = (int(v) for v in args.seam_size.lower().split("x"))
        k, rows = seams(root, (w, h), args.seam_tile, args.encoder, args.superpixel_size)
        print(f"\nseams at {w}x{h}, K={k} (BSDS 100007 upscaled, ground truth nearest):")
        print("| tile | wall s | K' | boundary on tile-edge lines | halfway lines | ratio | all other lines | ratio "
              "| ASA |")
        print("|---|---|---|---|---|---|---|---|---|")
        for t, dt, kk, edge, half, every, a in rows:
            print(f"| {t or 'whole'} | {dt:.1f} | {kk} | {edge:.4f} | {half:.4f} | {edge / max(half, 1e-9):.2f} | "
                  f"{every:.4f} | {edge / every:.2f} | {a:.4f} |")
        print("(the 'whole' row measures the same lines on the untiled run: what the grid alone puts there)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
