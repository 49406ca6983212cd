"""Large images: lazy tiled TIFF reading, seam-free tiled segmentation, label TIFFs read back, bad tiles."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import label as cc_label

from spam_stream.largeio import LargeImage, TileError, read_label_tiff, write_label_tiff
from spam_stream.model import SPAM
from spam_stream.tiling import seam_fractions, segment_large


def _picture(h, w, seed=0):
    """Smooth colour blobs plus noise: superpixels follow edges that tile edges do not explain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float64)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(60, 250)
        img += ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None] * rng.uniform(0, 120, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def picture():
    return _picture(1100, 1500)


def test_tiff_window_read_equals_array(tmp_path, picture):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, picture, tile=(256, 256), compression="zlib", bigtiff=True)
    strips = tmp_path / "s.tif"
    tifffile.imwrite(strips, picture, rowsperstrip=64, compression="zlib")
    for p in (path, strips):
        with LargeImage(p) as im:
            assert im.shape == picture.shape
            assert (im.read(300, 777, 250, 1299) == picture[300:777, 250:1299]).all()


def test_tiled_segmentation_seam_free(picture):
    model = SPAM(encoder=None)
    k = picture.shape[0] * picture.shape[1] // 1000
    whole = model.segment(picture, k)
    tiled = model.segment(picture, k, tile_size=256)
    n = int(tiled.max()) + 1
    assert abs(n - (int(whole.max()) + 1)) <= 0.02 * k
    on_edges, halfway = seam_fractions(tiled, 256)
    assert on_edges <= 1.2 * halfway, (on_edges, halfway)
    # every superpixel 4-connected: as many 4-connected regions as labels
    assert cc_label(tiled + 1, connectivity=1, background=0).max() == n


def test_label_tiff_window_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 200_000, (700, 900)).astype(np.int64)  # ids beyond 65535 are normal here
    path = tmp_path / "x_labels.tif"
    write_label_tiff(path, labels, tile=256)
    assert (read_label_tiff(path) == labels).all()
    assert (read_label_tiff(path, (100, 613, 257, 899)) == labels[100:613, 257:899]).all()
    assert not list(tmp_path.glob(".*part*"))


def test_truncated_tiff_names_the_tile(tmp_path, picture):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, picture, tile=(256, 256), compression="zlib")
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tf:
        offsets = tf.pages[0].dataoffsets
    cut = tmp_path / "cut2.tif"
    cut.write_bytes(data[:int(offsets[20]) + 10])  # tile 20 and after are gone (the header is at the start)
    with LargeImage(cut) as im:
        assert (im.read(0, 256, 0, 1500) == picture[:256]).all()  # the tiles before are read
        with pytest.raises(TileError, match="tile 2[0-9]"):
            im.read(0, 1100, 0, 1500)


def test_cli_tiled_tiff(tmp_path, picture):
    from spam_stream.cli import main

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, picture, tile=(256, 256), compression="zlib", bigtiff=True, resolution=(300, 300))
    out = tmp_path / "out"
    assert main(["image", str(path), "-o", str(out), "--tile-size", "512", "--superpixel-size", "2000",
                 "--encoder", "none"]) == 0
    with tifffile.TiffFile(out / "big_labels.tif") as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.dtype == np.uint32 and tf.is_bigtiff
        assert page.tags["XResolution"].value == (300, 1)
    labels = read_label_tiff(out / "big_labels.tif")
    assert labels.shape == picture.shape[:2]
    ids = np.unique(labels)  # the seeds' global numbers: not consecutive
    assert abs(len(ids) - picture.shape[0] * picture.shape[1] / 2000) <= 0.05 * 825
    assert cc_label(np.searchsorted(ids, labels) + 1, connectivity=1, background=0).max() == len(ids)
    assert (out / "big_overlay.png").is_file()


def test_tiff_over_pillow_bomb_limit_is_read(tmp_path, monkeypatch):
    from PIL import Image

    from spam_stream.io import read_image

    img = _picture(300, 400)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, tile=(128, 128), compression="zlib")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse it as a bomb
    assert (read_image(path) == img).all()
    png = tmp_path / "t.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    Image.fromarray(img).save(png)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    from spam_stream.io import InputError

    with pytest.raises(InputError, match="too large"):
        read_image(png)


def test_openslide_path(tmp_path, picture):
    pytest.importorskip("openslide", reason="the slides extra (openslide-python, openslide-bin) is not installed")
    from spam_stream.largeio import SlideImage

    path = tmp_path / "slide.tif"  # OpenSlide reads a generic tiled TIFF
    tifffile.imwrite(path, picture, tile=(256, 256), compression="zlib")
    with SlideImage(path) as im:
        assert im.shape == picture.shape
        assert (im.read(100, 400, 200, 700) == picture[100:400, 200:700]).all()


@pytest.mark.parametrize("encoder", [None, "default"])
def test_one_tile_equals_the_whole_frame(encoder):
    """The tiled path with one tile (global grid as a candidate table, the model's stages) gives the labels of
    SPAM.segment on the whole frame."""
    img = _picture(321, 481, seed=3)
    model = SPAM(encoder=encoder)
    assert same_partition(segment_large(model, img, 300, 0), model.segment(img, 300))


def same_partition(a, b):
    """Whether two label maps split the pixels the same way (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("tile", [128, 400])
def test_streamed_rows_equal_one_connectivity_pass(picture, tile):
    """iter_bands' rows (connectivity per window, global ids) split the image as one connectivity pass over all
    the tiles' raw labels does, every id is one 4-connected region, and the windows reach past one row of tiles
    when the margin is larger than a tile (tile 128)."""
    from spam_stream.connectivity import enforce_connectivity
    from spam_stream.seeding import grid_shape
    from spam_stream.tiling import halo_for, iter_bands, segment_tile, tile_grid

    img = picture[:700, :900]
    h, w = img.shape[:2]
    model = SPAM(encoder=None)
    k = h * w // 1000
    rows = list(iter_bands(model, img, k, tile))
    assert [y for y, _, _ in rows] == list(range(0, h, tile))
    streamed = np.concatenate([b for _, b, _ in rows]).astype(np.int64)
    assert all(np.array_equal(ids, np.unique(b)) for _, b, ids in rows)
    assert streamed.shape == (h, w)
    grid, halo = grid_shape(h, w, k), halo_for(h, w, k, model)
    raw = np.empty((h, w), np.int64)
    for y0, y1, x0, x1 in tile_grid(h, w, tile):
        raw[y0:y1, x0:x1] = segment_tile(model, lambda a, b, c, d: img[a:b, c:d], (h, w), k, grid,
                                         (y0, y1, x0, x1), halo)
    once = enforce_connectivity(raw, None, max(1, int(model.min_size_factor * h * w / k)))
    assert same_partition(streamed, once)
    ids, first = np.unique(streamed, return_index=True)
    assert cc_label(np.searchsorted(ids, streamed) + 1, connectivity=1, background=0).max() == len(ids)


def test_rows_stream_in_bounded_memory(picture):
    """A row of tiles is final before the image's far rows are read: iter_bands reads only a bounded look-ahead."""
    from spam_stream.seeding import grid_shape
    from spam_stream.tiling import connectivity_margins, halo_for, iter_bands

    h, w = picture.shape[:2]
    k, tile = h * w // 1000, 256
    read_to = []

    class Lazy:
        shape = picture.shape

        def read(self, y0, y1, x0, x1):
            read_to.append(y1)
            return picture[y0:y1, x0:x1]

    my = connectivity_margins(h, w, grid_shape(h, w, k))[0]
    reach = (-(-my // tile) + 1) * tile + halo_for(h, w, k)  # rows clustered ahead of a final row, plus the halo
    for y0, band, _ in iter_bands(SPAM(encoder=None), Lazy(), k, tile, workers=1):
        assert max(read_to) <= y0 + len(band) + reach, (y0, max(read_to))
    assert max(read_to) == h


def _disc_mask(h, w):
    yy, xx = np.mgrid[:h, :w]
    return (yy - h * 0.45) ** 2 + (xx - w * 0.55) ** 2 < (0.42 * min(h, w)) ** 2


@pytest.mark.parametrize("level", [1, 4])
def test_tiled_mask(picture, level):
    """Tiles with a mask (of the image's size, or a pyramid level 4x smaller): 0 exactly outside, every pixel inside
    in a superpixel, each superpixel one 4-connected region, K held inside, ids 1..K'."""
    h, w = picture.shape[:2]
    inside = _disc_mask(h, w)
    mask = inside[::level, ::level] if level > 1 else inside
    if level > 1:
        inside = np.repeat(np.repeat(mask, level, 0), level, 1)[:h, :w]
    k = 600
    labels = SPAM(encoder=None).segment(picture, k, tile_size=256, mask=mask)
    assert ((labels == 0) == ~inside).all()
    n = int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    assert abs(n - k) <= 0.05 * k, n
    assert cc_label(labels, connectivity=1, background=0).max() == n


def test_cli_tiled_tiff_with_a_tiff_mask(tmp_path, picture):
    from spam_stream.cli import main

    h, w = picture.shape[:2]
    inside = _disc_mask(h, w)
    tifffile.imwrite(tmp_path / "big.tif", picture, tile=(256, 256), compression="zlib")
    tifffile.imwrite(tmp_path / "big_mask.tif", inside.astype(np.uint8), tile=(256, 256))
    out = tmp_path / "out"
    assert main(["image", str(tmp_path / "big.tif"), "-o", str(out), "--tile-size", "512", "--superpixel-size",
                 "2000", "--encoder", "none", "--mask", str(tmp_path / "big_mask.tif"), "--start-label", "5"]) == 0
    labels = read_label_tiff(out / "big_labels.tif")
    assert ((labels == 0) == ~inside).all()
    ids = np.unique(labels[inside])
    assert ids.min() >= 5
    assert abs(len(ids) - inside.sum() / 2000) <= 0.05 * inside.sum() / 2000
    assert cc_label(np.searchsorted(np.r_[0, ids], labels), connectivity=1, background=0).max() == len(ids)
    code = main(["image", str(tmp_path / "big.tif"), "-o", str(out), "--tile-size", "512", "--encoder", "none",
                 "--mask", str(tmp_path / "big_mask.tif")[:-4] + "_wrong.npy"])
    assert code == 1


def test_cli_truncated_tiff_keeps_the_rows_before(tmp_path, picture, capsys):
    """A tile that cannot be decoded: one line naming it; the label TIFF keeps the rows of tiles finished before
    it (equal to an intact run's there) and is 0 after."""
    from spam_stream.cli import main

    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, picture, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offsets = tf.pages[0].dataoffsets
    ntx = -(-picture.shape[1] // 128)
    cut = tmp_path / "c.tif"
    cut.write_bytes(path.read_bytes()[:int(offsets[6 * ntx]) + 10])  # rows of tiles 6.. (from y = 768) are gone
    args = ["--tile-size", "256", "--superpixel-size", "2000", "--encoder", "none"]
    assert main(["image", str(path), "-o", str(tmp_path / "whole"), *args]) == 0
    capsys.readouterr()
    assert main(["image", str(cut), "-o", str(tmp_path / "out"), *args]) == 1
    err = capsys.readouterr().err
    assert "c.tif" in err and f"tile {6 * ntx} " in err and "kept in" in err and "Traceback" not in err
    part = read_label_tiff(tmp_path / "out" / "c_labels.tif")
    whole = read_label_tiff(tmp_path / "whole" / "cut_labels.tif")
    done = int((part != 0).any(1).nonzero()[0].max()) + 1  # rows segmented
    assert done % 256 == 0 and 256 <= done <= 768 - 256  # whole rows of tiles, none needing the lost ones
    assert (part[:done] == whole[:done]).all() and (part[done:] == 0).all()


def test_batch_large_unit_manifest_and_resume(tmp_path, picture):
    """In a batch, a TIFF too large for one frame (under --memory-limit) is one unit segmented in tiles: a label
    TIFF, a preview and a 'large' manifest line; a truncated one keeps its rows before the bad tile, is
    'incomplete', and --resume does it again (never trusting its label TIFF) while skipping the complete ones."""
    import json

    from PIL import Image

    from spam_stream.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "big.tif", picture, tile=(128, 128), compression="zlib")
    data = (inputs / "big.tif").read_bytes()
    with tifffile.TiffFile(inputs / "big.tif") as tf:
        offsets = tf.pages[0].dataoffsets
    (inputs / "cut.tif").write_bytes(data[:int(offsets[6 * 12]) + 10])
    Image.fromarray(picture[:200, :300]).save(inputs / "small.png")
    out = tmp_path / "out"
    args = ["batch", str(inputs), "-o", str(out), "--encoder", "none", "--superpixel-size", "1500",
            "--memory-limit", "60"]  # 60 MB: the 1100x1500 frame does not fit, the 200x300 one does
    assert main(args) == 1
    lines = {Path(e["input"]).name: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    big, cut, small = lines["big.tif"], lines["cut.tif"], lines["small.png"]
    assert big["kind"] == "large" and big["status"] == "ok" and big["tiles"] > 1
    labels = read_label_tiff(out / "big_labels.tif")
    assert big["superpixels"] == len(np.unique(labels))
    assert abs(big["superpixels"] - labels.size / 1500) <= 0.05 * labels.size / 1500
    assert cut["kind"] == "large" and cut["status"] == "incomplete" and "tile 72" in cut["error"]
    assert 0 < cut["rows"] < 1100 and (out / "cut_labels.tif").is_file()
    assert small["status"] == "ok" and (out / "small_labels.png").is_file()
    assert abs(len(np.unique(np.asarray(Image.open(out / "small_labels.png")))) - 40) <= 4  # 60000 px / 1500
    stamp, cut_stamp = (out / "big_labels.tif").stat().st_mtime_ns, (out / "cut_labels.tif").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 1  # cut.tif is done again (and is still cut)
    again = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(e["input"]).name for e in again) == ["big.tif", "cut.tif", "small.png"]
    assert (out / "big_labels.tif").stat().st_mtime_ns == stamp  # skipped, not redone
    assert (out / "cut_labels.tif").stat().st_mtime_ns != cut_stamp


def test_cli_tiled_graph_equals_the_whole_maps_graph(tmp_path, picture):
    """--graph with tiles: the graph built row band by row band equals region_graph of the whole label map."""
    from spam_stream.cli import main
    from spam_stream.graph import region_graph

    tifffile.imwrite(tmp_path / "g.tif", picture, tile=(256, 256), compression="zlib")
    out = tmp_path / "out"
    assert main(["image", str(tmp_path / "g.tif"), "-o", str(out), "--tile-size", "384", "--superpixel-size",
                 "1500", "--encoder", "none", "--graph"]) == 0
    labels = read_label_tiff(out / "g_labels.tif")
    whole = region_graph(labels, picture).to_numpy()
    streamed = dict(np.load(out / "g_graph.npz"))
    assert sorted(whole) == sorted(streamed)
    for name, a in whole.items():
        b = streamed[name]
        assert a.shape == b.shape, name
        assert (np.allclose(a, b, atol=1e-3) if a.dtype.kind == "f" else (a == b).all()), name


def test_region_table_is_made_only_when_a_kernel_reads_it(picture):
    """A tiled region's candidates keep their compact form: the D=5 cell layout never makes the (N, 9) table (36
    bytes a pixel); reading ``table`` makes it, equal to rows[pixel_row] and to the candidates' meaning."""
    import torch

    from spam_stream.frame import Frame
    from spam_stream.kernels.candidates import LAZY
    from spam_stream.seeding import grid_shape
    from spam_stream.tiling import region_layout

    h, w = picture.shape[:2]
    k = h * w // 1000
    seeds, cands, _ = region_layout(h, w, grid_shape(h, w, k), (96, 700, 200, 900))
    model = SPAM(encoder=None)
    frame = Frame(key=0, image=np.ascontiguousarray(picture[96:700, 200:900]), n_superpixels=len(seeds))
    frame.seeds, frame.cands = seeds, cands
    model.feature_stage(frame)
    model.cluster_stage(frame)
    assert cands.__dict__["_table"] is LAZY
    table = cands.table
    assert torch.equal(table, cands.rows[cands.pixel_row.long()])
    labels = frame.cluster_labels.ravel()
    assert (table[torch.arange(len(labels)), :] == torch.from_numpy(labels.astype(np.int32))[:, None]).any(1).all()


def test_seam_fraction_over_all_lines_sees_a_seam():
    """seam_fractions(..., "all"): a label map cut along the tile edges (a seam by construction) has every edge
    line on a boundary, the other lines only where its superpixels end."""
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 50, (20, 20))
    labels = np.kron(cells, np.ones((13, 13), np.int64))[:256, :256]  # 13-px superpixels, no relation to 64
    cut = labels + 1000 * ((np.arange(256)[:, None] // 64) * 4 + np.arange(256)[None, :] // 64)
    on, off = seam_fractions(cut, 64, "all")
    assert on == 1.0 and off < 0.2
    on, off = seam_fractions(labels, 64, "all")
    assert on < 0.2 and off < 0.2
