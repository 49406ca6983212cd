"""Adaptive density modes (paper §3.3): more superpixels in objects of interest, fewer elsewhere, K kept.

Both modes produce per-object seed density factors (indexed by the prior partition's object ids) that
:func:`spam_stream.seeding.allocate_seeds` applies before rebalancing the total to K.

- **Visual attention**: a saliency map (H, W) in [0, 1]; an object whose mean saliency is above ``threshold`` (0.1)
  is foreground and gets ``r`` (2.5) times the seeds per pixel of the background objects.
  The default saliency is the *spectral residual* of Hou & Zhang (CVPR 2007): the paper uses DINO attention, but
  that needs ViT weights that cannot be downloaded here, whereas the spectral residual needs no weights at all, costs
  one FFT of a 64-pixel-wide thumbnail (about a millisecond) and marks the regions that stand out from the image's
  average spectrum. DINO attention stays available (:class:`DinoSaliency`) when the user has timm and a weights file.
- **User-driven**: points (x, y, factor) — the object under each point gets its density multiplied by ``factor``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.transform import resize

FOREGROUND_RATIO = 2.5
SALIENCY_THRESHOLD = 0.1


def _normalise(saliency: np.ndarray) -> np.ndarray:
    lo, hi = float(saliency.min()), float(saliency.max())
    return ((saliency - lo) / (hi - lo) if hi > lo else np.zeros_like(saliency)).astype(np.float32)


def spectral_residual_saliency(image: np.ndarray, width: int = 64, sigma: float = 2.5) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) of ``image`` (H, W, 3) uint8: (H, W) float32 in [0, 1].

    The grey image is shrunk to ``width`` pixels wide; the saliency is |IFFT(exp(R + iφ))|² where φ is the phase and
    R = log|F| − (3×3 mean of log|F|) is the spectral residual, smoothed by a Gaussian (``sigma`` thumbnail pixels),
    resized back to H×W and scaled to [0, 1].
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    gray = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    small_w = min(width, w)
    small = resize(gray, (max(1, round(h * small_w / w)), small_w), anti_aliasing=True)
    spectrum = np.fft.fft2(small)
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, size=3, mode="nearest")
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = ndimage.gaussian_filter(saliency, sigma)
    return _normalise(resize(saliency, (h, w), order=1))


class DinoSaliency:
    """DINO self-attention saliency (the paper's choice): mean over heads of the [CLS] token's attention to the
    patches in the last block of a DINO ViT, upsampled to (H, W) float32 in [0, 1].

    Needs timm (not a dependency of spam-stream: ``pip install timm``) and a DINO ViT state_dict file, e.g. the
    official ``dino_deitsmall16_pretrain.pth`` (https://github.com/facebookresearch/dino) for ``arch`` =
    "vit_small_patch16_224". Nothing is downloaded.
    """

    def __init__(self, weights: str | Path, arch: str = "vit_small_patch16_224", size: int = 448):
        try:
            import timm
        except ImportError:
            raise ImportError("DINO saliency needs timm (pip install timm); without it use the default "
                              "spectral-residual saliency") from None
        import torch

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DINO weights file not found (nothing is downloaded)")
        # 224-px positional embeddings as trained, interpolated to the input's patch grid at run time
        self.model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        missing = self.model.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise RuntimeError(f"{path}: not {arch} weights (missing {', '.join(missing[:3])}…)")
        self.model.eval()
        self.size = size
        attn = self.model.blocks[-1].attn
        attn.fused_attn = False  # the explicit softmax path, so that attn_drop sees the attention matrix
        self._captured = []
        attn.attn_drop.register_forward_hook(lambda module, args, out: self._captured.append(out))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        h, w = image.shape[:2]
        patch = self.model.patch_embed.patch_size[0]
        scale = self.size / max(h, w)
        th, tw = max(patch, round(h * scale / patch) * patch), max(patch, round(w * scale / patch) * patch)
        x = resize(image, (th, tw), anti_aliasing=True).astype(np.float32)
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        self._captured.clear()
        with torch.inference_mode():
            self.model(torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0))
        attn = self._captured[-1][0, :, 0, -(th // patch) * (tw // patch):]  # heads × patches, [CLS] row
        cls_map = attn.mean(0).reshape(th // patch, tw // patch).numpy()
        return _normalise(resize(cls_map, (h, w), order=1))


def object_means(partition: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (H, W) over each object of ``partition`` (H, W) int (ids 0..n-1, -1 ignored): (n,) float64."""
    known = partition >= 0
    n = int(partition.max()) + 1 if known.any() else 0
    sums = np.bincount(partition[known], weights=values[known], minlength=n)
    counts = np.bincount(partition[known], minlength=n)
    return sums / np.maximum(counts, 1)


def attention_density(partition: np.ndarray, saliency: np.ndarray, r: float = FOREGROUND_RATIO,
                      threshold: float = SALIENCY_THRESHOLD) -> np.ndarray:
    """Visual-attention density factors: (n_objects,) float64, ``r`` for foreground objects, 1 for background.

    Args:
        partition: (H, W) int prior partition (ids 0..n-1, -1 = uncertain).
        saliency: (H, W) float saliency; min-max normalised to [0, 1] here.
        r: seeds-per-pixel ratio of foreground to background objects (paper: 2.5).
        threshold: an object is foreground when its mean normalised saliency is above this (paper: 0.1).
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.shape != partition.shape:
        raise ValueError(f"saliency map {saliency.shape} does not match the partition {partition.shape}")
    foreground = object_means(partition, _normalise(saliency)) > threshold
    return np.where(foreground, float(r), 1.0)


def focus_density(partition: np.ndarray, points, base=None) -> np.ndarray:
    """User-driven density factors: (n_objects,) float64.

    Args:
        partition: (H, W) int prior partition (ids 0..n-1, -1 = uncertain).
        points: iterable of (x, y, factor): column, row (pixels) and a factor > 0 (2 = twice the superpixels per
            pixel, 0.5 = half). A point on an uncertain pixel selects the nearest object.
        base: optional (n_objects,) factors to start from (e.g. :func:`attention_density`'s); default all ones.
    """
    h, w = partition.shape
    n = int(partition.max()) + 1
    density = np.ones(n) if base is None else np.array(base, dtype=np.float64)
    nearest = None
    for x, y, factor in points:
        x, y, factor = int(round(x)), int(round(y)), float(factor)
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"focus point ({x}, {y}) is outside the {w}x{h} image")
        if not factor > 0:
            raise ValueError(f"focus factor must be > 0, got {factor}")
        obj = partition[y, x]
        if obj < 0:
            if nearest is None:
                nearest = ndimage.distance_transform_edt(partition < 0, return_distances=False, return_indices=True)
            obj = partition[nearest[0][y, x], nearest[1][y, x]]
        density[obj] *= factor
    return density


def saliency_map(image: np.ndarray, attention="saliency") -> np.ndarray:
    """(H, W) float saliency of ``image`` for ``attention``: "saliency" (spectral residual), a callable
    image → (H, W) map (e.g. :class:`DinoSaliency`), or an (H, W) array used as is."""
    if isinstance(attention, str):
        if attention != "saliency":
            raise ValueError(f"unknown attention mode {attention!r}: expected 'saliency', a callable or a map")
        return spectral_residual_saliency(image)
    if callable(attention):
        return np.asarray(attention(image))
    return np.asarray(attention)
