"""User-supplied priors: a label image, an ``.npy`` partition or mask stack, or a folder of them (one per input)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..aggregation import aggregate
from ..io import IMAGE_SUFFIXES, InputError, read_partition
from .base import Prior, Provider, empty_proposals

MASK_SUFFIXES = IMAGE_SUFFIXES | {".npy"}


def read_prior_file(path: str | Path, aggregation: dict | None = None) -> Prior:
    """One prior file → :class:`Prior`.

    - a label image (PNG, TIFF…: each distinct value is one object) or a 2-D integer ``.npy`` (negative = uncertain):
      the partition itself (ids made consecutive), no proposals;
    - a 3-D ``.npy`` stack of binary masks (M, H, W) (bool, or 0/1 integers): aggregated into a partition like SAM's
      proposals (:func:`spam_stream.aggregation.aggregate`, ``aggregation`` = its keyword options); the stack is kept
      as ``proposals``.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: unreadable .npy prior ({exc})") from None
        if arr.ndim == 3:
            if not (arr.dtype == bool or (np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all())):
                raise InputError(f"{path}: a 3-D .npy prior must be a stack of binary masks (M, H, W), "
                                 f"got {arr.dtype} values")
            masks = np.asarray(arr, dtype=bool)
            return Prior(aggregate(masks, **(aggregation or {})), masks)
    partition = read_partition(path)
    _, inv = np.unique(partition, return_inverse=True)  # consecutive ids, -1 kept
    partition = (inv.reshape(partition.shape) - int((partition < 0).any())).astype(np.int32)
    return Prior(partition, empty_proposals(*partition.shape))


class MaskProvider(Provider):
    """Priors read from disk.

    Args:
        path: one prior file (used for every input) or a folder of them. In a folder, the file for an input is the
            one whose stem equals the input's stem (``key``); without a key (or for an int key, a frame index), the
            folder's files are taken in sorted order: the i-th call (or frame i) gets the i-th file.
        aggregation: keyword options of :func:`spam_stream.aggregation.aggregate` for mask stacks.
    """

    name = "masks"

    def __init__(self, path: str | Path, aggregation: dict | None = None):
        self.path = Path(path)
        self.aggregation = aggregation
        self.calls = 0
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES)
            if not self.files:
                raise InputError(f"{self.path}: no prior mask files (label images or .npy) in this folder")
        elif self.path.is_file():
            self.files = None
        else:
            raise InputError(f"{self.path}: prior mask file not found")

    def file_for(self, key=None) -> Path:
        """The prior file for the input named ``key`` (a stem), or frame ``key`` (an int), or the next call's."""
        if self.files is None:
            return self.path
        if isinstance(key, str):
            matches = [p for p in self.files if p.stem == key]
            if not matches:
                raise InputError(f"{self.path}: no prior mask named {key}.* (png, npy…) for input {key}")
            return matches[0]
        index = self.calls if key is None else int(key)
        if index >= len(self.files):
            raise InputError(f"{self.path}: only {len(self.files)} prior mask file(s), none for input #{index + 1}")
        return self.files[index]

    def __call__(self, image: np.ndarray, key=None) -> Prior:
        """Prior of ``image`` (H, W, 3): the partition must have the image's H×W."""
        path = self.file_for(key)
        self.calls += 1
        prior = read_prior_file(path, self.aggregation)
        h, w = np.shape(image)[:2]
        if prior.partition.shape != (h, w):
            ph, pw = prior.partition.shape
            raise InputError(f"prior mask {path} is {pw}x{ph} but the image is {w}x{h}")
        return prior
