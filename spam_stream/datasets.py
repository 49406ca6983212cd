"""BSDS500 loader and the oracle prior partition built from a ground-truth segmentation.

Expected layout (the official BSR release, ``BSR/BSDS500`` renamed)::

    ROOT/data/images/{train,val,test}/<name>.jpg
    ROOT/data/groundTruth/{train,val,test}/<name>.mat   # MATLAB: 'groundTruth' = 1xM cell of structs with a
                                                        # 'Segmentation' field (H, W), 1-based labels
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy import ndimage

__all__ = ["Sample", "BSDS500", "default_bsds_root", "load_ground_truth", "oracle_partition", "SPLITS"]

SPLITS = ("train", "val", "test")
ENV_VAR = "SPAM_BSDS_ROOT"
_RELATIVE = Path("..") / "shared" / "datasets" / "bsds500"


def _looks_like_bsds(root: Path) -> bool:
    return (root / "data" / "images").is_dir() and (root / "data" / "groundTruth").is_dir()


def default_bsds_root() -> Path | None:
    """Where BSDS500 is, or None.

    Order: the ``SPAM_BSDS_ROOT`` environment variable (returned as given when it is set, even if the folder is
    missing, so that a wrong setting is reported rather than silently replaced); else ``<repo>/../shared/datasets/
    bsds500`` relative to this file's repository, then relative to the current working directory.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    for base in (repo, Path.cwd()):
        cand = (base / _RELATIVE).resolve()
        if _looks_like_bsds(cand):
            return cand
    return None


def load_ground_truth(path: str | Path) -> list[np.ndarray]:
    """All annotators' segmentations of one BSDS500 ``.mat`` file: list of (H, W) int32 arrays, 0-based labels."""
    cells = scipy.io.loadmat(str(path))["groundTruth"]
    out = []
    for cell in cells.ravel():
        seg = cell["Segmentation"][0, 0]  # each cell: a 1x1 struct array
        out.append(np.asarray(seg, dtype=np.int32) - 1)
    return out


@dataclass
class Sample:
    """One BSDS500 image: name (file stem), image (H, W, 3) uint8 RGB, gts: list of (H, W) int32 segmentations
    (0-based labels, one per annotator)."""
    name: str
    image: np.ndarray
    gts: list[np.ndarray] = field(default_factory=list)


class BSDS500:
    """Images and ground truths of one BSDS500 split, sorted by name.

    >>> ds = BSDS500(default_bsds_root(), "test")
    >>> s = ds[0]; s.image.shape, len(s.gts)        # ((321, 481, 3), 5)
    """

    def __init__(self, root: str | Path | None = None, split: str = "test"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if root is None:
            root = default_bsds_root()
        if root is None:
            raise FileNotFoundError(f"BSDS500 not found; set {ENV_VAR} or pass a root")
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / "data" / "images" / split
        self.gt_dir = self.root / "data" / "groundTruth" / split
        if not self.image_dir.is_dir() or not self.gt_dir.is_dir():
            raise FileNotFoundError(f"BSDS500 split {split!r} not found under {self.root} "
                                    f"(expected {self.image_dir} and {self.gt_dir}); set {ENV_VAR}")
        self.names: list[str] = sorted(p.stem for p in self.image_dir.glob("*.jpg")
                                       if (self.gt_dir / f"{p.stem}.mat").is_file())

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Sample:
        name = self.names[i]
        with Image.open(self.image_dir / f"{name}.jpg") as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        gts = load_ground_truth(self.gt_dir / f"{name}.mat")
        for g in gts:
            if g.shape != image.shape[:2]:
                raise ValueError(f"{name}: ground truth {g.shape} does not match image {image.shape[:2]}")
        return Sample(name, image, gts)

    def __repr__(self) -> str:
        return f"BSDS500(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def oracle_partition(gt: np.ndarray, band: int = 1) -> np.ndarray:
    """Prior partition from one ground-truth segmentation (an "oracle" SAM).

    gt: (H, W) integer segmentation. Returns (H, W) int32: object ids 0..M-1 (the gt segments, renumbered
    consecutively after the band is removed, so every id is present) and -1 for uncertain pixels: those within
    ``band`` pixels of a segment boundary, i.e. pixels with a 4-neighbour of another label (band=1), grown by
    ``band - 1`` more 4-connected dilation steps. ``band=0`` keeps every pixel.
    """
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt must be (H, W), got shape {gt.shape}")
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    uncertain = np.zeros(gt.shape, dtype=bool)
    if band > 0:
        dy = gt[1:, :] != gt[:-1, :]
        dx = gt[:, 1:] != gt[:, :-1]
        uncertain[1:, :] |= dy
        uncertain[:-1, :] |= dy
        uncertain[:, 1:] |= dx
        uncertain[:, :-1] |= dx
        if band > 1:
            uncertain = ndimage.binary_dilation(uncertain, structure=ndimage.generate_binary_structure(2, 1),
                                                iterations=band - 1)
    out = np.full(gt.shape, -1, dtype=np.int32)
    keep = ~uncertain
    if keep.any():
        _, ids = np.unique(gt[keep], return_inverse=True)
        out[keep] = ids.astype(np.int32)
    return out
