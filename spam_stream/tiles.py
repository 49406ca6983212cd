"""A batch of small images segmented as one frame of B tiles (the superpixel tokenizer's workload: thousands of
224×224 images).

The B images (H, W each) are stacked into one (B·H, W) frame and run through SPAM's per-frame stages once: one
clustering call (one parallel loop on the CPU, one kernel launch per iteration on CUDA) and one connectivity pass
for the whole batch, instead of B calls each paying its fixed costs (on the CPU the batch is cut into frames of
≈ 2^18 pixels, :func:`tiles_per_frame`, so that the clustering passes stay in the cache). Nothing crosses a tile:

* **seeds** — each tile gets the grid seeds of one H×W image; the stacked frame's grid is (B·nh, nw), and pixel
  ``(b·H + y, x)`` falls in cell ``(b·nh + y·nh // H, x·nw // W)`` — exactly its own tile's cell (the grid layout of
  :mod:`spam_stream.kernels.candidates` needs no table);
* **candidates** — each tile is a prior object of its own (``pixel_object`` = ``superpixel_object`` = tile index),
  so the grid neighbours of a tile's edge cells that lie in the next tile are invalid slots, as cells outside the
  image are for one image (same slot order, same tie rule);
* **features** — Lab of the stacked frame in one pass, each tile's own positions, the encoder tile by tile (its
  padding and tiling as for one image), into one (D, B·H, W) buffer (:func:`tile_features`);
* **connectivity** — with the tile map as the prior partition, so no fragment merges across tiles, and the minimum
  fragment size of one tile.

Labels come back per tile, renumbered 0..K'_b-1: equal to segmenting each image alone (the centroid sums are added
in another order across the clustering's parallel chunks, in float64, so a label could only differ on an exact
float tie). Priors are not supported in this mode (each tile would need its own object seeds and candidate table).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from .frame import Frame
from .kernels.candidates import Candidates
from .seeding import Seeds, grid_seeds


def as_tiles(images) -> np.ndarray:
    """A batch as (B, H, W, 3) uint8: from a (B, H, W, 3) array / tensor, or a (B, 3, H, W) tensor (a tensor whose
    dimension 1 is 3 and last is not is read channels-first); float values are taken in [0, 1], grayscale
    (B, H, W) is repeated. ValueError for anything else."""
    from .io import as_rgb

    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dim() == 4 and t.shape[1] == 3 and t.shape[-1] != 3:
            t = t.permute(0, 2, 3, 1)
        arr = t.numpy()
    else:
        arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] < 1:
        raise ValueError(f"expected a batch of images (B, H, W, 3) or a (B, 3, H, W) tensor, got shape {arr.shape}")
    if arr.dtype == np.uint8 and arr.shape[-1] == 3:
        return np.ascontiguousarray(arr)
    return np.stack([as_rgb(a) for a in arr])


CPU_FRAME_PIXELS = 2**18  # pixels per tile frame on the CPU (5 images of 224×224: features stay in cache)


def tiles_per_frame(device, height: int, width: int) -> int:
    """How many H×W images one tile frame takes: the whole batch on a GPU (one launch per iteration); on the CPU
    about :data:`CPU_FRAME_PIXELS` pixels — the clustering passes then read features that stay in the cache (64
    tiles of 224×224 in one frame ran at ≈ 0.6× the images/s of frames of 4–8 tiles on a 2-core VM)."""
    if torch.device(device).type != "cpu":
        return 2**31
    return max(1, CPU_FRAME_PIXELS // (height * width))


def tile_frame(images, n_superpixels: int) -> Frame:
    """The Frame of a batch: ``image`` (B·H, W, 3) uint8, ``meta["tiles"]`` = B. ValueError for K < 1 or > H·W."""
    tiles = as_tiles(images)
    b, h, w = tiles.shape[:3]
    k = int(n_superpixels)
    if k < 1:
        raise ValueError(f"the number of superpixels must be at least 1, got {n_superpixels}")
    if k > h * w:
        raise ValueError(f"{k} superpixels requested but each image has only {h * w} pixels")
    frame = Frame(image=tiles.reshape(b * h, w, 3), n_superpixels=k)
    frame.meta["tiles"] = b
    return frame


@functools.lru_cache(maxsize=4)
def _tile_layout(n_tiles: int, height: int, width: int, n_superpixels: int):
    """Seeds, candidates and the tile map of a batch shape, cached: a stream of batches of one shape reuses the
    candidates' kernel plan (cached on the Candidates object by the CPU kernels)."""
    one = grid_seeds(height, width, n_superpixels)
    nh, nw = one.grid
    k = nh * nw
    tile_of_sp = np.repeat(np.arange(n_tiles, dtype=np.int32), k)
    yx = np.concatenate([one.yx + [b * height, 0] for b in range(n_tiles)])
    init = (one.init_labels[None, :] + (np.arange(n_tiles, dtype=np.int32) * k)[:, None]).reshape(-1)
    seeds = Seeds(yx, tile_of_sp, init.astype(np.int32), (n_tiles * nh, nw))
    tile_map = np.repeat(np.arange(n_tiles, dtype=np.int32), height * width)
    cands = Candidates(n_tiles * height, width, torch.from_numpy(tile_map), torch.from_numpy(tile_of_sp),
                       grid=(n_tiles * nh, nw), row_period=height)  # row subsampling: each tile's own rows
    return seeds, cands, tile_map.reshape(n_tiles * height, width)


def tile_seeds(frame: Frame, device=None):
    """``(seeds, candidates, tile map)`` of a tile frame (see the module docstring); candidates on ``device``."""
    b = frame.meta["tiles"]
    h, w = frame.image.shape[0] // b, frame.image.shape[1]
    seeds, cands, tile_map = _tile_layout(b, h, w, frame.n_superpixels)
    return seeds, (cands if device is None else cands.to(device)), tile_map


def tile_features(model, frame: Frame) -> torch.Tensor:
    """(D, B·H, W) float32 features of a tile frame on the model's device, in the layout the device's kernels read;
    each tile's equal to that image's own features.

    Lab of the whole stacked frame in one pass (pixelwise, so each tile's equals its image's), the position rows
    rewritten per tile (the same float32 products ``f32(y)·f32(s)``), the encoder tile by tile (its zero padding at
    each image's border): on the CPU with the numba Lab kernel into the CPU kernels' channel planes, on a resident
    (CUDA) frame with the torch twin after one upload of the whole batch (as ``pixel_features_torch``). Another
    device without a resident frame: the model's feature stage on each tile."""
    from . import kernels
    from .color import lab_yx_features
    from .encoder import encode_learned
    from .features import COLOR_SCALE, position_scale
    from .kernels.features import lab_yx_torch, upload_image

    b = frame.meta["tiles"]
    h, w = frame.image.shape[0] // b, frame.image.shape[1]
    d, device = model.n_features, model.device
    s = position_scale(h, w, frame.n_superpixels, model.compactness)
    budget = model.memory_budget
    if kernels.resident_frame(device):  # (D, H, W) view of an (H, W, D) buffer, as pixel_features_torch
        img = upload_image(frame.image, device)
        out = torch.empty((b * h, w, d), dtype=torch.float32, device=img.device).permute(2, 0, 1)
        lab_yx_torch(img, model.color_scale, s, out=out[:5])
        budget = None  # the encoder's activation budget as kernels.resident_features picks it
        if model.encoder is not None and torch.device(device).type == "cuda":
            budget = torch.cuda.mem_get_info(torch.device(device))[0] // 4
    elif torch.device(device).type == "cpu":
        out = kernels.empty_features(b * h, w, d, device)
        lab_yx_features(frame.image, model.color_scale, s, out=out[:5].numpy())
    else:
        out = kernels.empty_features(b * h, w, d, device)
        for i in range(b):
            one = Frame(image=frame.image[i * h:(i + 1) * h], n_superpixels=frame.n_superpixels)
            out[:, i * h:(i + 1) * h] = model.feature_stage(one).features
        return out
    rows = torch.arange(h, dtype=torch.float32) * torch.tensor(s, dtype=torch.float32)  # as the kernels: f32(y)·f32(s)
    out[3] = rows.repeat(b).to(out.device)[:, None]
    if model.encoder is not None:
        factor = getattr(model.encoder, "input_color_scale", COLOR_SCALE) / model.color_scale
        for i in range(b):
            sl = slice(i * h, (i + 1) * h)
            encode_learned(model.encoder, out[:3, sl], out[5:, sl], None, budget, factor)
    return out


@numba.njit(cache=True, nogil=True)
def _cell_sums(planes, n_cols, n_pixels, init, k):
    """Per-cell float32 sums of (D, n_cols) channel planes, pixel after pixel (the order of torch's ``index_add``)
    and pixel counts."""
    d_count = planes.shape[0] // n_cols
    sums = np.zeros((k, d_count), np.float32)
    counts = np.zeros(k, np.int64)
    for p in range(n_pixels):
        c = init[p]
        counts[c] += 1
        for d in range(d_count):
            sums[c, d] += planes[d * n_cols + p]
    return sums, counts


def tile_initial_centroids(frame: Frame) -> torch.Tensor | None:
    """The starting centroids of a CPU tile frame: each grid cell's mean feature, as
    :func:`spam_stream.clustering.initial_centroids` computes them (float32 sums in pixel order, then one float32
    division), in one numba pass over the channel planes instead of torch's index_add over a strided view. None
    when the features are not in the CPU kernels' layout or a cell is empty (clustering then computes them)."""
    from .kernels.cpu import _channel_rows

    lanes = _channel_rows(frame.features.reshape(frame.features.shape[0], -1).t())
    if lanes is None:
        return None
    planes, n_cols = lanes
    init = frame.seeds.init_labels
    sums, counts = _cell_sums(planes, n_cols, init.shape[0], init, len(frame.seeds))
    if (counts == 0).any():
        return None
    return torch.from_numpy(sums / counts.astype(np.float32)[:, None])


def split_tiles(labels: np.ndarray, n_tiles: int) -> np.ndarray:
    """(B·H, W) labels numbered over the stacked frame → (B, H, W) int32, each tile's labels 0..K'_b-1 (a tile's
    superpixels are a contiguous range: connectivity numbers them in raster order and none crosses a tile)."""
    tiles = labels.reshape(n_tiles, -1, labels.shape[1])
    first = tiles.reshape(n_tiles, -1).min(1)
    return (tiles - first[:, None, None]).astype(np.int32)


def segment_tiles(model, images, n_superpixels: int, prior=None, density=None, attention=None,
                  attention_ratio: float = 2.5, focus=None) -> np.ndarray:
    """(B, H, W) int32 labels of a batch (any form :func:`as_tiles` takes), each image's 0..K'_b-1: the model's
    stages (``run_stages``) on tile frames of :func:`tiles_per_frame` images. ``prior``, ``attention``, ``focus``
    must be None (ValueError otherwise: one line)."""
    tiles = as_tiles(images)
    step = tiles_per_frame(model.device, *tiles.shape[1:3])
    parts = []
    for i in range(0, len(tiles), step):
        frame = tile_frame(tiles[i:i + step], n_superpixels)
        frame.prior, frame.density = prior, density
        model.run_stages(frame, attention, attention_ratio, focus)
        parts.append(split_tiles(frame.labels, frame.meta["tiles"]))
    return np.concatenate(parts)
