"""The SSN feature encoder E: a small CNN that adds D−5 learned channels to the 5 scaled Lab + yx channels.

Architecture (SSN, Jampani et al. 2018): three scales of conv-BN-ReLU (``width`` channels, two convs per scale,
max-pool between scales), the coarser scales upsampled bilinearly, concatenated with the input and the first scale,
then a final 3x3 conv + ReLU to ``out_dim − 5`` channels; the output is ``[input (5), learned (out_dim − 5)]``.

One deliberate difference from SSN: the convolutions see the 3 colour channels only, not the yx channels. Absolute
positions would make the learned channels depend on where a pixel sits, and the position range differs between
training crops and full images; colour-only input keeps the learned features translation-invariant.

Weights files are written by :meth:`Encoder.save` (``torch.save`` of a dict with ``state_dict`` and the
hyper-parameters) and read by :func:`load_encoder`.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IN_CHANNELS = 5  # [L, a, b, y, x]
COLOR_CHANNELS = 3


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """SSN encoder. Input (B, 5, H, W) float32 scaled features; output (B, out_dim, H, W) float32."""

    def __init__(self, out_dim: int = 20, width: int = 64):
        super().__init__()
        if out_dim <= IN_CHANNELS:
            raise ValueError(f"an encoder needs out_dim > {IN_CHANNELS}; use encoder=None for D=5")
        self.out_dim, self.width = out_dim, width
        self.scale1 = nn.Sequential(_conv_bn_relu(COLOR_CHANNELS, width), _conv_bn_relu(width, width))
        self.scale2 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _conv_bn_relu(width, width), _conv_bn_relu(width, width))
        self.scale3 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _conv_bn_relu(width, width), _conv_bn_relu(width, width))
        self.output = nn.Sequential(nn.Conv2d(COLOR_CHANNELS + 3 * width, out_dim - IN_CHANNELS, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = x[:, :COLOR_CHANNELS]
        s1 = self.scale1(colour)
        s2 = self.scale2(s1)
        s3 = self.scale3(s2)
        size = s1.shape[-2:]
        s2 = F.interpolate(s2, size=size, mode="bilinear", align_corners=False)
        s3 = F.interpolate(s3, size=size, mode="bilinear", align_corners=False)
        learned = self.output(torch.cat([colour, s1, s2, s3], 1))
        return torch.cat([x, learned], 1)

    def save(self, path: str | Path, **meta) -> None:
        """Write the weights and hyper-parameters (plus any ``meta``, e.g. the training scales) to ``path``."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save({"state_dict": state, "out_dim": self.out_dim, "width": self.width, "meta": meta}, path)


def fold_batchnorm(encoder: Encoder) -> Encoder:
    """An inference copy with every BatchNorm folded into the preceding conv (eval statistics), channels-last."""
    enc = copy.deepcopy(encoder).eval()
    for module in enc.modules():
        if isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], nn.BatchNorm2d):
            module[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return enc.to(memory_format=torch.channels_last)


class EncoderLoadError(RuntimeError):
    pass


def load_encoder(path: str | Path) -> tuple[Encoder, dict]:
    """Read an encoder written by :meth:`Encoder.save`. Returns (encoder in eval mode, meta dict).

    Raises EncoderLoadError naming the file when it is missing or not an encoder checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderLoadError(f"encoder weights not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        enc = Encoder(out_dim=int(ckpt["out_dim"]), width=int(ckpt["width"]))
        enc.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # corrupt file, wrong format, mismatched shapes
        raise EncoderLoadError(f"{path}: not a spam-stream encoder checkpoint ({type(exc).__name__}: {exc})") from exc
    return enc.eval(), dict(ckpt.get("meta") or {})
