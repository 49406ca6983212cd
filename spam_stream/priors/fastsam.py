"""FastSAM prior (ultralytics ``FastSAM``: a YOLOv8-seg network segmenting everything) → aggregated partition.

Nothing is ever downloaded: ``YOLO_OFFLINE=1`` is set before ultralytics is imported, and the checkpoint path is
checked here first (ultralytics would otherwise try to fetch a missing file named like an official asset, e.g.
``FastSAM-s.pt``) and handed over as an absolute path.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..aggregation import aggregate, aggregate_resized, upsample_nearest
from .base import FASTSAM_CHECKPOINTS, Prior, Provider, checkpoint_error


def load_fastsam(checkpoint: str | Path):
    """``ultralytics.FastSAM`` with the weights of ``checkpoint`` (a ``.pt`` file such as FastSAM-s.pt).

    A missing, unreadable or non-ultralytics checkpoint raises a one-line
    :class:`~spam_stream.priors.base.PriorCheckpointError` naming the file.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise checkpoint_error(path, "FastSAM checkpoint not found", FASTSAM_CHECKPOINTS)
    if path.suffix != ".pt":
        raise checkpoint_error(path, "a FastSAM checkpoint is a .pt file", FASTSAM_CHECKPOINTS)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import FastSAM

    try:
        model = FastSAM(str(path.resolve()))
        if getattr(model.model, "task", "segment") != "segment" or model.task != "segment":
            raise TypeError(f"an ultralytics {model.task} model, not a segmentation model")
    except Exception as exc:
        cause = exc.__cause__ or exc  # ultralytics wraps the torch.load error in a long TypeError
        reason = f"{type(cause).__name__}: {' '.join(str(cause).split())[:100]}"
        raise checkpoint_error(path, f"not a loadable FastSAM checkpoint ({reason})", FASTSAM_CHECKPOINTS) from None
    return model


class FastSamProvider(Provider):
    """FastSAM "segment everything" masks → partition.

    By default the masks stay at the network's resolution (its letterboxed input, e.g. 384×640 for a 16:9 frame at
    imgsz 640) and on the model's device: they are ranked by their frame-resolution areas, painted at network
    resolution and only the painted id map is resized to the frame (nearest neighbour) —
    :func:`~spam_stream.aggregation.aggregate_resized`, the same partition as aggregating the masks resized to the
    frame, without the M × H × W stack. On CUDA the whole aggregation runs there and only the (H, W) partition comes
    back to the host.

    Args:
        checkpoint: FastSAM ``.pt`` file (FastSAM-s.pt or FastSAM-x.pt); never downloaded.
        imgsz: inference size, the long side in pixels (FastSAM's default 1024; 640 is ~2× faster on a CPU).
        conf: confidence threshold of the proposals (FastSAM default 0.4).
        iou: NMS IoU threshold (FastSAM default 0.9).
        retina_masks: ultralytics computes every mask at the frame's resolution (sharper edges, but M full-resolution
            masks: ~150 ms more per 1080p frame on an H100 with 100 masks) and they are aggregated as a stack.
        aggregation: keyword options of :func:`spam_stream.aggregation.aggregate`.
        device: "cpu" (or a CUDA device).
    """

    name = "fastsam"

    def __init__(self, checkpoint, imgsz: int = 1024, conf: float = 0.4, iou: float = 0.9,
                 retina_masks: bool = False, aggregation: dict | None = None, device="cpu"):
        self.model = load_fastsam(checkpoint)
        self.options = dict(imgsz=imgsz, conf=conf, iou=iou, retina_masks=retina_masks, device=device, verbose=False)
        self.aggregation = aggregation or {}

    def masks(self, image: np.ndarray) -> torch.Tensor:
        """FastSAM's masks of ``image`` (H, W, 3) uint8 RGB as the network gives them: (M, h, w) bool on the model's
        device — (h, w) = the letterboxed network input, or (H, W) with ``retina_masks``."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # ultralytics takes numpy images in OpenCV's BGR order
        with torch.inference_mode():
            result = self.model.predict(bgr, **self.options)[0]
        if result.masks is None:
            return torch.zeros((0, *image.shape[:2]), dtype=torch.bool)
        return result.masks.data.bool()

    @staticmethod
    def full_resolution(masks: torch.Tensor, shape) -> np.ndarray:
        """:meth:`masks` at the frame's resolution (H, W) (nearest resize of the letterbox content): (M, H, W) bool."""
        if tuple(masks.shape[1:]) != tuple(shape):
            masks = upsample_nearest(masks, shape)
        return masks.cpu().numpy()

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Raw FastSAM masks of ``image`` (H, W, 3) uint8 RGB at its resolution: (M, H, W) bool."""
        return self.full_resolution(self.masks(image), image.shape[:2])

    def partition(self, masks: torch.Tensor, shape) -> np.ndarray:
        """(M, h, w) bool masks from :meth:`masks` → (H, W) int32 partition of the frame ``shape``; CUDA masks are
        aggregated on the GPU, CPU masks by the numba path."""
        with torch.inference_mode():
            if masks.device.type != "cuda":
                masks = masks.numpy()
            if tuple(masks.shape[1:]) == tuple(shape):
                partition = aggregate(masks, **self.aggregation)
            else:
                partition = aggregate_resized(masks, shape, **self.aggregation)
        return partition.cpu().numpy() if isinstance(partition, torch.Tensor) else partition

    def __call__(self, image: np.ndarray, key=None) -> Prior:
        """Prior of ``image`` (H, W, 3) uint8 RGB: its partition; ``proposals`` (M, H, W) bool made on access only."""
        shape = image.shape[:2]
        masks = self.masks(image)
        return Prior(self.partition(masks, shape), lambda: self.full_resolution(masks, shape))
