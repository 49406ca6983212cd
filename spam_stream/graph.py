"""Superpixels as graph nodes and tokens: per-superpixel statistics, the region adjacency graph and pooled features.

What users build on superpixels — graph neural networks (superpixels as nodes), superpixel tokenizers for vision
transformers (one pooled embedding per superpixel), region tracking — all start from the same per-superpixel
reductions. Here they run on the labels' device, with no Python loop over superpixels: numba passes over the pixels
for CPU tensors, torch scatter reductions elsewhere (:mod:`spam_stream.kernels.regions`, the two twins); the pooling
of :func:`tokens` is torch on any device, so that it is differentiable:

* :func:`region_graph` — one label map → :class:`RegionGraph`: per node ``area``, ``centroid``, ``bbox``,
  ``mean_rgb``, ``mean_features``, ``object``; per edge (two 4-adjacent superpixels) ``boundary`` and
  ``same_object``; ``to_numpy()``, ``to_pyg()`` (PyTorch Geometric, the optional ``graph`` extra),
  ``to_networkx()``.
* :func:`tokens` — a batch of feature maps (B, C, h, w) and label maps (B, H, W) → padded (B, K_max, C) pooled
  vectors, a mask and the centroids, differentiable with respect to the features.
* :func:`graph_arrays` / :func:`save_graph` — the ``<stem>_graph.npz`` file the CLI writes (``--graph``), for one
  image or every frame of a clip.

Nodes are the label values present in the map, in increasing order (``ids``); gaps in the numbering and any start
value (``start_label``) are allowed. For SPAM's labels (0..K'-1) node ``i`` is label ``i``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


PYG_MISSING = "to_pyg() needs PyTorch Geometric: pip install 'spam-stream[graph]' (or pip install torch_geometric)"


def _as_tensor(array, device=None) -> torch.Tensor:
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()  # torch warns on read-only buffers (e.g. arrays decoded by Pillow or loaded from .mat)
    t = torch.as_tensor(array)
    return t if device is None else t.to(device)


def _resized(features, height: int, width: int, device) -> torch.Tensor:
    """(..., C, h, w) features as float on ``device``, bilinearly resized to (height, width) when they differ
    (``align_corners=False``: pixel centres, as scikit-image's ``resize(order=1)``)."""
    f = _as_tensor(features, device)
    if not f.is_floating_point():
        f = f.float()
    if tuple(f.shape[-2:]) != (height, width):
        squeeze = f.dim() == 3
        f = F.interpolate(f[None] if squeeze else f, size=(height, width), mode="bilinear", align_corners=False)
        f = f[0] if squeeze else f
    return f


@dataclass
class RegionGraph:
    """The region adjacency graph of one label map, with per-superpixel statistics (tensors on the labels' device).

    K nodes (the distinct label values, increasing), E undirected edges.

    Attributes:
        ids: (K,) int64 label value of each node.
        area: (K,) int64 pixels.
        centroid: (K, 2) float32 mean (y, x) of the pixels, in pixels.
        bbox: (K, 4) int64 (y0, x0, y1, x1), end-exclusive (scikit-image's ``regionprops(...).bbox``).
        mean_rgb: (K, 3) float32 mean colour (the image's values, 0..255 for uint8; (K, 1) for a grayscale
            (H, W) image), or None without an image.
        mean_features: (K, C) float32 mean of the feature map (resized to the labels' size), or None.
        object: (K,) int64 prior object of the superpixel: the one object id (≥ 0) its pixels of known object
            carry, -1 when it has none (no prior, or only uncertain pixels) or pixels of several objects (never with
            the prior the labels were made with).
        edges: (E, 2) int64 node indices (i, j), i < j, of 4-adjacent superpixels, sorted.
        boundary: (E,) int64 4-adjacent pixel pairs across the edge.
        same_object: (E,) bool both nodes in the same prior object (``object`` ≥ 0 and equal).
        shape: (H, W) of the label map.
    """

    ids: torch.Tensor
    area: torch.Tensor
    centroid: torch.Tensor
    bbox: torch.Tensor
    mean_rgb: torch.Tensor | None
    mean_features: torch.Tensor | None
    object: torch.Tensor
    edges: torch.Tensor
    boundary: torch.Tensor
    same_object: torch.Tensor
    shape: tuple[int, int]

    @property
    def n_nodes(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The arrays by name (as the attributes; None ones left out): what ``<stem>_graph.npz`` holds."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value.detach().cpu().numpy()
        out["shape"] = np.asarray(self.shape, np.int64)
        return out

    def node_features(self) -> torch.Tensor | None:
        """(K, 3 + C) float32: ``mean_rgb`` then ``mean_features`` (those present), or None when neither is."""
        parts = [t for t in (self.mean_rgb, self.mean_features) if t is not None]
        return torch.cat(parts, 1) if parts else None

    def to_pyg(self):
        """A ``torch_geometric.data.Data``: ``x`` (K, 3 + C) = :meth:`node_features`, ``pos`` (K, 2) = centroid (y, x),
        ``edge_index`` (2, 2E) both directions, ``edge_attr`` (2E, 2) float32 (boundary, same_object), plus
        ``area``, ``bbox``, ``object`` and ``ids`` as node attributes. ImportError (one line) without PyG."""
        try:
            from torch_geometric.data import Data
        except ImportError:
            raise ImportError(PYG_MISSING) from None
        e = self.edges.t()
        attr = torch.stack([self.boundary.float(), self.same_object.float()], 1)
        return Data(x=self.node_features(), pos=self.centroid, edge_index=torch.cat([e, e.flip(0)], 1),
                    edge_attr=torch.cat([attr, attr]), area=self.area, bbox=self.bbox, object=self.object,
                    ids=self.ids, num_nodes=self.n_nodes)

    def to_networkx(self):
        """A ``networkx.Graph`` whose nodes are the label values (``ids``), with the node and edge attributes as
        Python scalars / tuples (a Python loop over nodes and edges: for inspection, not for big batches)."""
        import networkx as nx

        a = self.to_numpy()
        g = nx.Graph()
        for i, label in enumerate(a["ids"].tolist()):
            attrs = {"area": int(a["area"][i]), "centroid": tuple(a["centroid"][i].tolist()),
                     "bbox": tuple(a["bbox"][i].tolist()), "object": int(a["object"][i])}
            if "mean_rgb" in a:
                attrs["mean_rgb"] = tuple(a["mean_rgb"][i].tolist())
            if "mean_features" in a:
                attrs["mean_features"] = a["mean_features"][i]
            g.add_node(label, **attrs)
        ids = a["ids"]
        for (i, j), n, same in zip(a["edges"].tolist(), a["boundary"].tolist(), a["same_object"].tolist()):
            g.add_edge(int(ids[i]), int(ids[j]), boundary=n, same_object=same)
        return g


def region_graph(labels, image=None, features=None, prior=None) -> RegionGraph:
    """The region adjacency graph of ``labels`` with per-superpixel statistics, computed on the labels' device.

    Args:
        labels: (H, W) integer label map (numpy array or tensor; a tensor's device is where everything runs:
            one fused numba scan on the CPU, torch scatter reductions on CUDA, see :mod:`spam_stream.kernels.regions`).
        image: optional (H, W, 3) image (uint8 or float) for ``mean_rgb``.
        features: optional (C, h, w) feature map (e.g. an encoder's output); bilinearly resized to (H, W) when its
            size differs, then averaged per superpixel (``mean_features``).
        prior: optional (H, W) integer prior partition (-1 = uncertain) for ``object`` and ``same_object``.
    Returns:
        :class:`RegionGraph` (shapes and dtypes there).
    """
    from . import kernels  # device dispatch lives there

    lab = _as_tensor(labels)
    if lab.dim() != 2:
        raise ValueError(f"labels must be an (H, W) map, got shape {tuple(lab.shape)}")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.numel() == 0:
        raise ValueError("labels must hold at least one pixel")
    device = lab.device
    h, w = lab.shape
    img = feats = part = None
    if image is not None:
        img = _as_tensor(image, device)
        if img.dim() == 2:
            img = img[:, :, None]
        if img.dim() != 3 or tuple(img.shape[:2]) != (h, w):
            raise ValueError(f"image of shape {tuple(img.shape)} does not match labels of shape {(h, w)}")
        img = img[:, :, :3]
    if features is not None:
        feats = _resized(features, h, w, device)
        if feats.dim() != 3:
            raise ValueError(f"features must be a (C, h, w) map, got shape {tuple(feats.shape)}")
    if prior is not None:
        part = _as_tensor(prior, device)
        if tuple(part.shape) != (h, w) or part.is_floating_point():
            raise ValueError(f"prior of shape {tuple(part.shape)} does not match labels of shape {(h, w)}")
    s = kernels.region_stats(lab, img, feats, part)
    return RegionGraph(**s, shape=(int(h), int(w)))


class GraphRows:
    """The region graph of a label map given row band by row band (a large image segmented in tiles,
    :mod:`spam_stream.pipelines.large`): :meth:`add` each band with its image rows, then :meth:`graph` is the
    :class:`RegionGraph` of the whole map (equal to :func:`region_graph` on it, without a prior) while only per-band
    node and edge tables are held: ≈ K rows, never the (H, W) map."""

    def __init__(self, shape):
        self.shape = (int(shape[0]), int(shape[1]))
        self._nodes, self._edges, self._last = [], [], None

    def add(self, y0: int, labels: np.ndarray, image: np.ndarray | None = None) -> None:
        """Rows ``y0..`` of the map ((h, W) integers) and of the image ((h, W, 3), for ``mean_rgb``), in order."""
        g = region_graph(np.ascontiguousarray(labels), image).to_numpy()
        ids, area = g["ids"], g["area"]
        cy, cx = g["centroid"][:, 0].astype(np.float64) + y0, g["centroid"][:, 1].astype(np.float64)
        bbox = g["bbox"] + np.array([y0, 0, y0, 0])
        rgb = g["mean_rgb"].astype(np.float64) * area[:, None] if "mean_rgb" in g else None
        self._nodes.append((ids, area, cy * area, cx * area, bbox, rgb))
        e = ids[g["edges"]]
        pairs = [(e[:, 0], e[:, 1], g["boundary"])]
        if self._last is not None:  # pairs across the line between the previous band and this one
            a, b = self._last.astype(np.int64), labels[0].astype(np.int64)
            cut = a != b
            lo, hi = np.minimum(a[cut], b[cut]), np.maximum(a[cut], b[cut])
            pairs.append((lo, hi, np.ones(len(lo), np.int64)))
        self._edges.extend(pairs)
        self._last = np.array(labels[-1])

    def graph(self) -> RegionGraph:
        nodes = list(zip(*self._nodes))
        ids_all = np.concatenate(nodes[0])
        ids, inv = np.unique(ids_all, return_inverse=True)
        k = len(ids)
        area_all = np.concatenate(nodes[1])
        area = np.bincount(inv, weights=area_all, minlength=k)
        centroid = np.stack([np.bincount(inv, weights=np.concatenate(nodes[2]), minlength=k) / area,
                             np.bincount(inv, weights=np.concatenate(nodes[3]), minlength=k) / area], 1)
        bb = np.concatenate(nodes[4])
        bbox = np.empty((k, 4), np.int64)
        for j, (fn, init) in enumerate(((np.minimum, np.iinfo(np.int64).max), (np.minimum, np.iinfo(np.int64).max),
                                        (np.maximum, -1), (np.maximum, -1))):
            col = np.full(k, init, np.int64)
            fn.at(col, inv, bb[:, j])
            bbox[:, j] = col
        mean_rgb = None
        if nodes[5][0] is not None:
            rgb = np.concatenate(nodes[5])
            mean_rgb = np.stack([np.bincount(inv, weights=rgb[:, c], minlength=k) for c in range(rgb.shape[1])], 1)
            mean_rgb = torch.from_numpy((mean_rgb / area[:, None]).astype(np.float32))
        a, b, n = (np.concatenate(x) for x in zip(*self._edges))
        ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
        key, inv_e = np.unique(ia * k + ib, return_inverse=True)
        boundary = np.bincount(inv_e, weights=n, minlength=len(key)).astype(np.int64)
        edges = np.stack([key // k, key % k], 1)
        return RegionGraph(ids=torch.from_numpy(ids.astype(np.int64)), area=torch.from_numpy(area.astype(np.int64)),
                           centroid=torch.from_numpy(centroid.astype(np.float32)), bbox=torch.from_numpy(bbox),
                           mean_rgb=mean_rgb, mean_features=None,
                           object=torch.full((k,), -1, dtype=torch.int64), edges=torch.from_numpy(edges),
                           boundary=torch.from_numpy(boundary), same_object=torch.zeros(len(key), dtype=torch.bool),
                           shape=self.shape)


POOL_MATRIX_LIMIT = 2**26  # entries of the (B, K_max, h·w) pooling matrix of low-resolution features (256 MB f32)


class Tokens(NamedTuple):
    """Pooled superpixel vectors of a batch (:func:`tokens`); K_max = the most superpixels of any image.

    tokens: (B, K_max, C) features' dtype, zeros in padding. mask: (B, K_max) bool, True for a real superpixel.
    centroids: (B, K_max, 2) float32 (y, x) in label pixels, zeros in padding. ids: (B, K_max) int64 label value of
    each token (increasing within an image), -1 in padding.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    centroids: torch.Tensor
    ids: torch.Tensor


def tokens(features, labels, reduce: str = "mean") -> Tokens:
    """One vector per superpixel for a batch: the features pooled inside each superpixel (superpixel tokenizers).

    Args:
        features: (B, C, h, w) float tensor (any device), e.g. a ViT's patch embeddings; pooled as if resized
            bilinearly to the labels' (H, W) when its size differs, so a superpixel smaller than a feature cell still
            gets its own vector. "mean" does it without the upsampled copy (a (B, K_max, h·w) weight matrix, one
            batched matmul; while that matrix has ≤ 2^26 entries); "max" upsamples (memory B·C·H·W).
        labels: (B, H, W) integer labels (numpy or tensor; moved to the features' device). Each image's distinct
            values, in increasing order, are its tokens (for SPAM's labels token k is superpixel k).
        reduce: "mean" or "max" over the superpixel's pixels.
    Returns:
        :class:`Tokens` — differentiable with respect to ``features`` (both reductions: index_add / scatter amax).
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    feats = _as_tensor(features)
    if feats.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(feats.shape)}")
    lab = _as_tensor(labels, feats.device)
    if lab.dim() != 3 or lab.shape[0] != feats.shape[0]:
        raise ValueError(f"labels must be (B, H, W) with B = {feats.shape[0]}, got shape {tuple(lab.shape)}")
    from . import kernels  # device dispatch lives there

    b, c = feats.shape[:2]
    h, w = lab.shape[1:]
    device = feats.device
    slot, k_max, ids, area, sums = kernels.token_layout(lab)  # slot: (B·H·W,) row of each pixel in (B·K_max, C)
    n_slots = b * k_max
    fh, fw = feats.shape[2:]
    if reduce == "mean" and (fh, fw) != (h, w) and n_slots * fh * fw <= POOL_MATRIX_LIMIT:
        # low-resolution features: mean of the bilinear upsampling = a (K_max, h·w) weight matrix per image times
        # the features, without the (B, C, H, W) upsampled copy
        weights = kernels.pooling_matrix(slot, b, k_max, h, w, fh, fw).to(feats.dtype)
        pooled = torch.bmm(weights, feats.reshape(b, c, fh * fw).transpose(1, 2)).reshape(n_slots, c)
        pooled = pooled / area.clamp(min=1).to(pooled.dtype)[:, None]
    elif reduce == "mean":
        rows = _resized(feats, h, w, device).permute(0, 2, 3, 1).reshape(-1, c)
        pooled = torch.zeros(n_slots, c, dtype=rows.dtype, device=device).index_add(0, slot, rows)
        pooled = pooled / area.clamp(min=1).to(rows.dtype)[:, None]
    else:
        rows = _resized(feats, h, w, device).permute(0, 2, 3, 1).reshape(-1, c)
        pooled = torch.zeros(n_slots, c, dtype=rows.dtype, device=device).scatter_reduce(
            0, slot[:, None].expand(-1, c), rows, "amax", include_self=False)
    centroids = (sums / area.clamp(min=1)[:, None]).float()
    return Tokens(pooled.view(b, k_max, c), (area > 0).view(b, k_max), centroids.view(b, k_max, 2),
                  ids.view(b, k_max))


NODE_ARRAYS = ("ids", "area", "centroid", "bbox", "mean_rgb", "mean_features", "object")
EDGE_ARRAYS = ("edges", "boundary", "same_object")


def graph_arrays(graphs, frames=None) -> dict[str, np.ndarray]:
    """The arrays of ``<stem>_graph.npz``: one graph's :meth:`RegionGraph.to_numpy`, or several graphs (a clip's
    frames) stacked: node arrays concatenated with a ``frame`` (K_total,) int64 column, edge arrays with an
    ``edge_frame`` (E_total,) column, and ``edges`` shifted so that they index rows of the stacked node arrays (the
    clip is one graph of disjoint frame graphs; a persistent video id's track is every node row with that ``ids``).

    ``graphs``: a RegionGraph or a list of them; ``frames``: their frame numbers (default 0, 1, …; only for a list).
    """
    if isinstance(graphs, RegionGraph):
        return graphs.to_numpy()
    graphs = list(graphs)
    frames = list(range(len(graphs))) if frames is None else [int(f) for f in frames]
    parts = [g.to_numpy() for g in graphs]
    out = {}
    for name in NODE_ARRAYS + EDGE_ARRAYS:
        if parts and all(name in p for p in parts):
            arrays = [p[name] for p in parts]
            if name == "edges":
                offsets = np.cumsum([0] + [len(p["ids"]) for p in parts[:-1]])
                arrays = [a + o for a, o in zip(arrays, offsets)]
            out[name] = np.concatenate(arrays)
    out["frame"] = np.concatenate([np.full(len(p["ids"]), f, np.int64) for p, f in zip(parts, frames)]) \
        if parts else np.zeros(0, np.int64)
    out["edge_frame"] = np.concatenate([np.full(len(p["edges"]), f, np.int64) for p, f in zip(parts, frames)]) \
        if parts else np.zeros(0, np.int64)
    if parts:
        out["shape"] = parts[0]["shape"]
    return out


def save_graph(path, graphs, frames=None) -> None:
    """Write :func:`graph_arrays` to ``path`` (.npz, uncompressed) under a temporary name, then rename it."""
    from .io import atomic_path

    arrays = graph_arrays(graphs, frames)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


__all__ = ["RegionGraph", "region_graph", "GraphRows", "Tokens", "tokens", "graph_arrays", "save_graph", "PYG_MISSING"]
