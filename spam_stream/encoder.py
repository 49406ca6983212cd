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
import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .io import InputError
from .scales import COLOR_SCALE
from .kernels.resize import bilinear_gather
from .kernels.qconcat import dequantize_planes, qconcat_cpu, qconcat_torch, quantize_planes
from .kernels.upsample import guided_gather

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
        self.resolution = 1.0  # < 1: inference runs at this fraction of the input size (fast_encoder)
        self.scale1 = nn.Sequential(_conv_bn_relu(COLOR_CHANNELS, width), _conv_bn_relu(width, width))
        self.scale2 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _conv_bn_relu(width, width), _conv_bn_relu(width, width))
        self.scale3 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _conv_bn_relu(width, width), _conv_bn_relu(width, width))
        self.output = nn.Sequential(nn.Conv2d(COLOR_CHANNELS + 3 * width, out_dim - IN_CHANNELS, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole-frame forward: (B, 5, H, W) → (B, out_dim, H, W). Activations grow with H·W (≈ 4·(5·width + 3)
        bytes per pixel at once); :func:`encode_tiled` computes the same learned channels tile by tile."""
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


# --- tiled inference -------------------------------------------------------------------------------------------------
# Receptive field of one output pixel, in full-resolution rows (columns alike). The output conv at row r reads rows
# r±1 of [colour, s1, up(s2), up(s3)]. up(s3) at row r interpolates s3 rows m ≤ floor((r+1.5)/4 - 0.5)+1 ≈ r/4 + 1
# (and ≥ r/4 − 1); s3 row m reads pool2 rows m±2 (two 3×3 convs), pool2 row m reads s2 rows 2m±1, s2 row j reads
# pool1 rows j±2, pool1 row j reads s1 rows 2j±1, s1 row i reads input rows i±2: s3 row m is exact when the input
# holds rows 4m−17 … 4m+17, so a core row range [c0, c1) needs input rows [c0 − 21, c1 + 21). HALO rounds that
# up to the pooling alignment so that tile origins stay multiples of ALIGN (two stride-2 pools) and every pooled
# row of a tile is a pooled row of the whole frame.
ALIGN = 4
HALO = 24
STRIP = 128  # core rows of the output conv's input buffer at once
DEFAULT_MEMORY_BUDGET = 128 * 2**20  # bytes of encoder activations at once (tiles); see tile_for_budget


def _source_rows(dst: torch.Tensor, in_size: int, out_size: int):
    """PyTorch's bilinear (``align_corners=False``, output ``size`` given) source rows of output rows ``dst``:
    (i0, i1, w0, w1) with value = w0·src[i0] + w1·src[i1]; int64, int64, float32, float32 tensors like ``dst``."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((dst.to(torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.to(torch.int64)  # floor (src ≥ 0)
    w1 = src - i0.to(torch.float32)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1.0 - w1, w1


def _window_taps(dst, in_size: int, out_size: int, offset: int, device=None):
    """:func:`_source_rows` of ``dst`` (a tensor, or a range: cached, on ``device``) shifted by ``offset``, with the
    smallest first and the largest second source index as ints."""
    if isinstance(dst, range):
        return _range_taps(dst.start, dst.stop, in_size, out_size, offset,
                           None if device is None else torch.device(device))
    i0, i1, w0, w1 = _source_rows(dst, in_size, out_size)
    i0, i1 = i0 - offset, i1 - offset
    return i0, i1, w0, w1, int(i0.min()), int(i1.max())


@functools.lru_cache(maxsize=2048)
def _range_taps(start: int, stop: int, in_size: int, out_size: int, offset: int, device=None):
    """The taps of output rows ``range(start, stop)``, made once (read-only tensors: shared) and, for a device
    other than the CPU, uploaded once: a video's tiles repeat frame after frame, and each upload of the four taps
    per gather would make the host wait for the GPU."""
    if device is not None and device.type != "cpu":
        i0, i1, w0, w1, lo, hi = _range_taps(start, stop, in_size, out_size, offset)
        return i0.to(device), i1.to(device), w0.to(device), w1.to(device), lo, hi
    return _window_taps(torch.arange(start, stop), in_size, out_size, offset)


def resize_window(src: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, full_in: tuple[int, int],
                  full_out: tuple[int, int], offset: tuple[int, int] = (0, 0), out: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Rows × cols of ``F.interpolate(full, size=full_out, mode="bilinear", align_corners=False)`` where ``full`` is a
    (B, C, *full_in) map of which ``src`` (B, C, h, w) is the window starting at ``offset``; the window must hold every
    source row/column those outputs read. Returns (B, C, len(rows), len(cols)) float32, channels-last, written into
    ``out`` when given (any strides, e.g. a channel slice of a channels-last buffer). ``rows`` and ``cols`` may be
    ``range`` objects: their taps are then computed once and cached (a video's tiles repeat frame after frame)."""
    r0, r1, a0, a1, r_lo, r_hi = _window_taps(rows, full_in[0], full_out[0], offset[0], src.device)
    c0, c1, b0, b1, c_lo, c_hi = _window_taps(cols, full_in[1], full_out[1], offset[1], src.device)
    if min(r_lo, c_lo) < 0 or r_hi >= src.shape[2] or c_hi >= src.shape[3]:
        raise ValueError("resize_window: the window does not hold the source rows/columns these outputs read")
    if out is None:
        out = torch.empty((src.shape[0], src.shape[1], len(rows), len(cols)), dtype=src.dtype, device=src.device,
                          memory_format=torch.channels_last)
    src_nhwc, out_nhwc = src.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)  # contiguous channels for channels-last
    for b in range(src.shape[0]):
        bilinear_gather(src_nhwc[b], r0, r1, a0, a1, c0, c1, b0, b1, out_nhwc[b])
    return out


def tile_bytes_per_pixel(encoder: Encoder) -> tuple[int, int]:
    """Bytes of activations per pixel of a tile, (per input pixel incl. the halo, per pixel of an output strip of
    STRIP core rows): scale 1 holds its input and two conv outputs (3 + 2·width float32 channels; later s1 and the
    coarser scales, ≈ 1.4·width); the output conv's input buffer (3 + 3·width channels) and result (out_dim − 5)
    exist for one strip at a time."""
    w = encoder.width
    return 4 * (2 * w + COLOR_CHANNELS), 4 * (3 * w + COLOR_CHANNELS + encoder.out_dim - IN_CHANNELS)


def tile_bytes(height: int, width: int, tile: tuple[int, int], per_pixel: tuple[int, int]) -> int:
    """Activations of one (rows, cols) core tile of an H×W frame: its input with HALO (clipped at the frame) and one
    output strip (STRIP + 2 rows, cols + 2)."""
    th, tw = min(tile[0], height), min(tile[1], width)
    return (min(height, th + 2 * HALO) * min(width, tw + 2 * HALO) * per_pixel[0]
            + min(th + 2, STRIP + 2) * min(width, tw + 2) * per_pixel[1])


def tile_for_budget(height: int, width: int, encoder: Encoder, memory_budget: int | None = None) -> tuple[int, int]:
    """Core tile (rows, cols) whose activations fit ``memory_budget`` bytes (default DEFAULT_MEMORY_BUDGET): the
    whole frame when it fits, else tiles of a multiple of ALIGN, near-square, balanced over the frame (rows first,
    then the widest columns the budget leaves)."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    per_in, per_core = tile_bytes_per_pixel(encoder)

    def cost(th, tw):
        return tile_bytes(height, width, (th, tw), (per_in, per_core))

    def balance(n, t):  # the same number of tiles as t gives, of equal size (a multiple of ALIGN)
        if t >= n:
            return n
        return -(-(-(-n // -(-n // t))) // ALIGN) * ALIGN

    if cost(height, width) <= budget:
        return height, width
    t = ALIGN
    while cost(t + ALIGN, t + ALIGN) <= budget:
        t += ALIGN
    th = balance(height, t)
    tw = ALIGN
    while tw < width and cost(th, tw + ALIGN) <= budget:
        tw += ALIGN
    return th, balance(width, tw)


def encode_tiled(encoder: Encoder, colour: torch.Tensor, out: torch.Tensor | None = None, tile=None,
                 memory_budget: int | None = None, colour_factor: float = 1.0, skip=None,
                 region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The encoder's learned channels computed tile by tile, equal to the whole-frame forward (float32 rounding).

    Args:
        encoder: an :class:`Encoder` in eval mode (BatchNorm folded or not) on ``colour``'s device.
        colour: (3, H, W) or (1, 3, H, W) float32 colour channels; the encoder sees ``colour · colour_factor`` (each
            tile is scaled as it is cut out, so no frame-sized copy is made).
        out: optional (out_dim − 5, H, W) float32 tensor written in place (e.g. a slice of a feature tensor).
        tile: core tile (rows, cols) or an int; rounded up to a multiple of ALIGN. Default: :func:`tile_for_budget`.
        memory_budget: bytes of activations at once, used when ``tile`` is None.
        skip: optional ``skip(c0, c1, d0, d1) -> bool`` for the core rows c0:c1, columns d0:d1 of each tile: True
            leaves that core of ``out`` as it is (a video reusing the previous frame's features where nothing
            changed).
        region: optional core rows and columns (r0, r1, c0, c1) to compute (r0, c0 multiples of ALIGN): the tiles
            start there instead of at the frame's origin, so a band along the far edge (the rows a moving video
            brought into view) is one tile, not the ends of two; the rest of ``out`` is left as it is.
    Returns:
        (out_dim − 5, H, W) float32: ``out`` when given. Each tile runs on its core plus HALO rows/columns (clipped at
        the image border, where the layers pad exactly as in the whole-frame forward), and only the core is kept.
    """
    if colour.dim() == 3:
        colour = colour[None]
    h, w = colour.shape[-2:]
    if tile is None:
        tile = tile_for_budget(h, w, encoder, memory_budget)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    th, tw = -(-max(1, th) // ALIGN) * ALIGN, -(-max(1, tw) // ALIGN) * ALIGN
    if out is None:
        out = torch.empty((encoder.out_dim - IN_CHANNELS, h, w), dtype=torch.float32, device=colour.device)
    h2, w2 = (h + 1) // 2, (w + 1) // 2  # MaxPool2d(3, 2, padding=1): floor((n + 2 − 3) / 2) + 1
    h4, w4 = (h2 + 1) // 2, (w2 + 1) // 2
    int8 = encoder.__dict__.get("int8") if colour.device.type == "cpu" else None
    if int8 is not None and not _in_int8_range(int8, colour, colour_factor):
        int8 = None  # colours beyond the calibrated input range (saturated, synthetic): the float32 path
    with torch.inference_mode():
        if int8 is not None:  # the quantized twin (see attach_int8); float32_twin(encoder) is the reference
            return _encode_tiled_int8(int8, colour, out, th, tw, colour_factor, skip, region)
        r0, r1, q0, q1 = region if region is not None else (0, h, 0, w)
        if r0 % ALIGN or q0 % ALIGN:
            raise ValueError(f"encode_tiled: the region must start at multiples of {ALIGN}, got {region}")
        for c0 in range(r0, min(h, r1), th):
            c1 = min(h, r1, c0 + th)
            a, b = max(0, c0 - HALO), min(h, c1 + HALO)  # tile input rows (a is a multiple of ALIGN)
            for d0 in range(q0, min(w, q1), tw):
                d1 = min(w, q1, d0 + tw)
                if skip is not None and skip(c0, c1, d0, d1):
                    continue
                e, f = max(0, d0 - HALO), min(w, d1 + HALO)
                ca, cb = max(0, d0 - 1), min(w, d1 + 1)  # columns the output conv reads
                cols = range(ca, cb)
                x = colour[:, :, a:b, e:f].contiguous(memory_format=torch.channels_last)
                if colour_factor != 1.0:
                    x = x * colour_factor
                s1 = encoder.scale1(x)
                s2 = encoder.scale2(s1)
                s3 = encoder.scale3(s2)
                nc = s1.shape[1]
                # the output conv, strip by strip of the core's rows: its input [colour, s1, up(s2), up(s3)] exists
                # for one strip at a time, in one channels-last buffer
                for g0 in range(c0, c1, STRIP):
                    g1 = min(c1, g0 + STRIP)
                    ra, rb = max(0, g0 - 1), min(h, g1 + 1)  # rows the output conv reads
                    rows = range(ra, rb)
                    cat = torch.empty((1, COLOR_CHANNELS + 3 * nc, rb - ra, cb - ca), dtype=x.dtype,
                                      device=x.device, memory_format=torch.channels_last)
                    # (copy_ rather than slice assignment: the op releases the GIL, other pipeline threads run)
                    cat[:, :COLOR_CHANNELS].copy_(x[:, :, ra - a:rb - a, ca - e:cb - e])
                    cat[:, COLOR_CHANNELS:COLOR_CHANNELS + nc].copy_(s1[:, :, ra - a:rb - a, ca - e:cb - e])
                    resize_window(s2, rows, cols, (h2, w2), (h, w), (a // 2, e // 2),
                                  cat[:, COLOR_CHANNELS + nc:-nc])
                    resize_window(s3, rows, cols, (h4, w4), (h, w), (a // 4, e // 4), cat[:, -nc:])
                    y = encoder.output(cat)
                    del cat
                    out[:, g0:g1, d0:d1].copy_(y[0, :, g0 - ra:g1 - ra, d0 - ca:d1 - ca])
                del x, s1, s2, s3
    return out


# --- int8 inference (the CPU default where the quantized engine runs) ------------------------------------------------
# The float32 module above is the reference twin. On a CPU with AVX2 (VNNI where present) oneDNN's int8 convolutions
# run the same network with per-channel int8 weights and uint8 activations (PyTorch's FX post-training quantization,
# activation ranges calibrated on BSDS500 train images: ``benchmarks/calibrate_int8.py`` writes them next to the
# weights as ``<weights>.int8.pt``). Each tile runs the whole quantized network on its core plus HALO (its own bilinear
# mapping, equal to the frame's away from an odd-sized frame edge) and keeps the core.
INT8_ENGINE = "onednn"
INT8_CALIBRATION_SUFFIX = ".int8.pt"


class LearnedChannels(nn.Module):
    """An encoder's learned channels alone: colour (B, 3, H, W) → (B, out_dim − 5, H, W) (what int8 quantizes)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.scale1, self.scale2, self.scale3, self.output = encoder.scale1, encoder.scale2, encoder.scale3, encoder.output

    def forward(self, colour: torch.Tensor) -> torch.Tensor:
        s1 = self.scale1(colour)
        s2 = self.scale2(s1)
        s3 = self.scale3(s2)
        size = s1.shape[-2:]
        s2 = F.interpolate(s2, size=size, mode="bilinear", align_corners=False)
        s3 = F.interpolate(s3, size=size, mode="bilinear", align_corners=False)
        return self.output(torch.cat([colour, s1, s2, s3], 1))


def int8_supported() -> bool:
    """True when this CPU runs oneDNN's int8 convolutions (AVX2 or better); else the float32 path is used."""
    caps = torch.backends.cpu.get_cpu_capability()
    return (INT8_ENGINE in torch.backends.quantized.supported_engines and caps in ("AVX2", "AVX512", "AVX512_BF16")
            or caps.startswith("AVX512"))


def _prepare_int8(encoder: Encoder):
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = INT8_ENGINE
    with warnings.catch_warnings():  # FX quantization's deprecation notices
        warnings.simplefilter("ignore")
        module = LearnedChannels(copy.deepcopy(encoder).cpu().eval()).eval()
        example = (torch.zeros(1, COLOR_CHANNELS, 16, 16),)
        return prepare_fx(module, get_default_qconfig_mapping(INT8_ENGINE), example)


def calibrate_int8(encoder: Encoder, colours) -> dict:
    """Activation ranges of ``encoder`` (as trained, eval mode) over ``colours``, an iterable of (3, H, W) float32
    colour maps as the encoder sees them (Lab · ``input_color_scale``): the observers' state, for
    :func:`quantize_encoder` (``torch.save`` it next to the weights as ``<weights>.int8.pt``)."""
    prepared = _prepare_int8(encoder)
    with torch.no_grad():
        for colour in colours:
            prepared(colour.reshape(1, COLOR_CHANNELS, *colour.shape[-2:]).float())
    return {k: v for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def quantize_encoder(encoder: Encoder, calibration: dict):
    """The int8 twin of ``encoder`` (as trained: BatchNorm is folded here) from :func:`calibrate_int8`'s ranges: a
    module colour (1, 3, h, w) float32 → learned channels (1, out_dim − 5, h, w) float32, on the CPU."""
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepare_int8(encoder)
    missing = [k for k in prepared.state_dict() if "activation_post_process" in k and k not in calibration]
    if missing:
        raise ValueError(f"quantize_encoder: the calibration lacks {len(missing)} activation ranges (another network?)")
    prepared.load_state_dict(calibration, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()


INT8_FORMAT = "spam-stream int8 encoder v2"  # converted int8 weights + their calibration (make_int8_companion)


def weights_fingerprint(encoder: Encoder) -> str:
    """SHA-256 of ``encoder``'s float weights and statistics (as trained): an int8 companion records the one it was
    made from, so a companion left beside retrained weights is not used."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _q_conv_relu(cin: int, cout: int) -> nn.Sequential:
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d

    return nn.Sequential(ConvReLU2d(cin, cout, 3, padding=1))


class Int8LearnedChannels(nn.Module):
    """The int8 twin of :class:`LearnedChannels` built by hand: the modules FX's ``convert_fx`` makes (fused
    conv+ReLU with per-channel int8 weights, uint8 activations), under the same names, so that the converted state
    dict saved by :func:`make_int8_companion` loads into it without FX tracing or conversion (start-up: ≈ 10 ms
    instead of ≈ 3 s). Its forward is the converted graph's: quantize the colour, the three scales, bilinear
    upsampling and concatenation of quantized tensors (in a range that holds all four: :meth:`cover_cat_inputs`),
    the output conv, dequantize."""

    def __init__(self, out_dim: int, width: int):
        super().__init__()
        torch.backends.quantized.engine = INT8_ENGINE  # weights are prepacked for the engine when they load
        self.out_dim, self.width = out_dim, width
        self.scale1 = nn.Sequential(_q_conv_relu(COLOR_CHANNELS, width), _q_conv_relu(width, width))
        self.scale2 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _q_conv_relu(width, width), _q_conv_relu(width, width))
        self.scale3 = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), _q_conv_relu(width, width), _q_conv_relu(width, width))
        self.output = _q_conv_relu(COLOR_CHANNELS + 3 * width, out_dim - IN_CHANNELS)
        self.register_buffer("scale1_0_0_input_scale_0", torch.tensor(1.0))
        self.register_buffer("scale1_0_0_input_zero_point_0", torch.tensor(0, dtype=torch.int64))
        self.cat_qparams = (1.0, 0)  # set by cover_cat_inputs once the weights are loaded
        self.fused_concat = True  # False: torch's quantized upsampling + cat (the reference twin of the numba pass)
        self.fused_io = True  # False: torch's copy, scaling, quantize, dequantize and copy around each tile

    def cover_cat_inputs(self) -> "Int8LearnedChannels":
        """Quantization of the concatenated [colour, s1, up(s2), up(s3)]: the colour's (as FX's graph has it: torch.cat
        of quantized tensors takes its first input's) when its range holds the others', else the union of the
        four ranges, so that a checkpoint whose activations reach beyond its colour range is not clipped there."""
        ranges = [(float(self.scale1_0_0_input_scale_0), int(self.scale1_0_0_input_zero_point_0))]
        ranges += [(float(m.scale), int(m.zero_point)) for m in (self.scale1[1][0], self.scale2[2][0], self.scale3[2][0])]
        lo, hi = min(-z * s for s, z in ranges), max((255 - z) * s for s, z in ranges)
        s0, z0 = ranges[0]
        if -z0 * s0 <= lo and hi <= (255 - z0) * s0:
            self.cat_qparams = (s0, z0)
        else:
            lo = min(lo, 0.0)
            scale = (hi - lo) / 255
            self.cat_qparams = (scale, int(min(255, max(0, round(-lo / scale)))))
        return self

    def forward(self, colour: torch.Tensor) -> torch.Tensor:
        q = torch.quantize_per_tensor(colour, self.scale1_0_0_input_scale_0, self.scale1_0_0_input_zero_point_0,
                                      torch.quint8)
        return self.quantized(q).dequantize()

    def input_qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the quantized colour input."""
        return float(self.scale1_0_0_input_scale_0), int(self.scale1_0_0_input_zero_point_0)

    def quantized(self, q: torch.Tensor) -> torch.Tensor:
        """The network on a quantized colour (1, 3, h, w) quint8 channels-last: the learned channels, quint8."""
        s1 = self.scale1(q)
        s2 = self.scale2(s1)
        s3 = self.scale3(s2)
        size = tuple(s1.shape[-2:])
        if self.fused_concat:  # one numba pass (kernels/qconcat.py) instead of two upsamplings and a cat
            taps = _qconcat_taps(tuple(s2.shape[-2:]), tuple(s3.shape[-2:]), size)
            cat = qconcat_cpu([q, s1, s2, s3], size, *self.cat_qparams, taps)
        else:
            cat = qconcat_torch([q, s1, s2, s3], size, *self.cat_qparams)
        return self.output(cat)


@functools.lru_cache(maxsize=256)
def _qconcat_taps(size2, size3, size):
    """Bilinear source rows and columns (index (2, n), weight (2, n)) of the int8 encoder's s2 and s3 maps at
    ``size`` (:mod:`spam_stream.kernels.qconcat`), cached per shape (a video's tiles repeat)."""
    out = []
    for small in (size2, size3):
        for n_in, n_out in zip(small, size):
            i0, i1, w0, w1 = _source_rows(torch.arange(n_out), int(n_in), int(n_out))
            out.append((torch.stack([i0, i1]).numpy(), torch.stack([w0, w1]).numpy()))
    return tuple(out)


def make_int8_companion(trained: Encoder, colours, path: str | Path | None = None, calibration: dict | None = None
                        ) -> dict:
    """The int8 companion of ``trained`` (eval statistics): calibrated on ``colours`` (:func:`calibrate_int8`; or a
    ready ``calibration``, e.g. that of a companion in the former bare format), converted to int8 (FX, once, here).
    Returns {format, out_dim, width, fingerprint (of ``trained``), state (the converted weights), calibration};
    written to ``path`` (``<weights>.int8.pt``, :data:`INT8_CALIBRATION_SUFFIX`) when given, which
    :func:`attach_int8` loads into :class:`Int8LearnedChannels` without FX."""
    import warnings

    trained = copy.deepcopy(trained).cpu().eval()
    if calibration is None:
        calibration = calibrate_int8(trained, colours)
    converted = quantize_encoder(trained, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        state = {k: v for k, v in converted.state_dict().items()}
    blob = {"format": INT8_FORMAT, "out_dim": trained.out_dim, "width": trained.width, "engine": INT8_ENGINE,
            "fingerprint": weights_fingerprint(trained), "state": state, "calibration": calibration}
    if path is not None:
        torch.save(blob, str(path))
    return blob


INT8_MAX_REL_RMS = 0.05  # int8 learned channels farther than this from float32 (relative RMS): no companion


def int8_error(trained: Encoder, module, colours) -> float:
    """Relative RMS ‖int8 − float32‖ / ‖float32‖ of the learned channels of ``module`` (an int8 twin of ``trained``)
    over ``colours`` ((3, H, W) as the encoder sees them; the int8 input clips beyond its calibrated range)."""
    ref = LearnedChannels(copy.deepcopy(trained).cpu().eval()).eval()
    num = den = 0.0
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for colour in colours:
            x = colour.reshape(1, COLOR_CHANNELS, *colour.shape[-2:]).float().contiguous(
                memory_format=torch.channels_last)
            a, b = module(x), ref(x)
            num += float((a - b).pow(2).sum())
            den += float(b.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


def load_int8(trained: Encoder, blob: dict):
    """The int8 module of a companion ``blob`` (:func:`make_int8_companion`, or a bare calibration: the format before
    it) for ``trained``: the saved converted weights loaded into :class:`Int8LearnedChannels`; when they do not load
    (another torch), its calibration converted by FX (:func:`quantize_encoder`, seconds). None when the companion
    was made from other weights (its fingerprint differs) or is for another architecture."""
    import warnings

    if not isinstance(blob, dict) or blob.get("format") != INT8_FORMAT:
        return quantize_encoder(trained, blob)  # a bare calibration (raises ValueError when it does not fit)
    if (blob.get("out_dim"), blob.get("width")) != (trained.out_dim, trained.width) or \
            blob.get("fingerprint") != weights_fingerprint(trained):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            module = Int8LearnedChannels(trained.out_dim, trained.width)
            module.load_state_dict(blob["state"])
        return module.cover_cat_inputs().eval()
    except Exception:  # a state this torch cannot load: convert again from the calibration
        return quantize_encoder(trained, blob["calibration"])


def attach_int8(inference: Encoder, trained: Encoder, weights: str | Path | None) -> bool:
    """Give the CPU ``inference`` encoder (see :func:`fold_batchnorm`) its int8 twin, built from ``trained`` and the
    companion next to ``weights`` (``<weights>.int8.pt``, :func:`load_int8`), when this CPU runs int8 and such a file
    exists and fits the weights; the environment variable ``SPAM_ENCODER_PRECISION=float32`` keeps the float32 path.
    Returns whether it did."""
    import os
    import warnings

    if os.environ.get("SPAM_ENCODER_PRECISION", "int8").lower() in ("float32", "fp32") or not int8_supported():
        return False
    cal = None if weights is None else Path(str(weights) + INT8_CALIBRATION_SUFFIX)
    if cal is None or not cal.is_file():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module = load_int8(trained, torch.load(cal, map_location="cpu", weights_only=True))
    if module is None:
        warnings.warn(f"{cal} was made from other weights than {weights}: the encoder runs in float32 "
                      f"(benchmarks/calibrate_int8.py writes a new one)", stacklevel=2)
        return False
    inference.__dict__["int8"] = module
    return True


def float32_twin(encoder: Encoder) -> Encoder:
    """``encoder`` without its int8 twin (a shallow copy sharing the weights): the float32 reference path."""
    twin = copy.copy(encoder)
    twin.__dict__ = dict(encoder.__dict__)
    twin.__dict__.pop("int8", None)
    return twin


def _in_int8_range(module, colour: torch.Tensor, colour_factor: float) -> bool:
    """Whether the colour (as the encoder sees it) lies in the int8 twin's calibrated input range, where uint8
    holds it without clipping. The range is that of natural images (BSDS500 train), so that saturated colours
    (synthetic frames, graphics) would clip: such frames take the float32 path."""
    scale = float(module.scale1_0_0_input_scale_0)
    zero = int(module.scale1_0_0_input_zero_point_0)
    lo, hi = (0 - zero) * scale, (255 - zero) * scale
    c_lo, c_hi = torch.aminmax(colour)
    return lo <= float(c_lo) * colour_factor and float(c_hi) * colour_factor <= hi


def _encode_tiled_int8(module, colour, out, th, tw, colour_factor, skip, region):
    import warnings

    with warnings.catch_warnings():  # quantized cat's notice on inputs of different ranges (it requantizes them)
        warnings.simplefilter("ignore", UserWarning)
        return _int8_tiles(module, colour, out, th, tw, colour_factor, skip, region)


def _int8_tiles(module, colour, out, th, tw, colour_factor, skip, region):
    h, w = colour.shape[-2:]
    r0, r1, q0, q1 = region if region is not None else (0, h, 0, w)
    for c0 in range(r0, min(h, r1), th):
        c1 = min(h, r1, c0 + th)
        a, b = max(0, c0 - HALO), min(h, c1 + HALO)
        for d0 in range(q0, min(w, q1), tw):
            d1 = min(w, q1, d0 + tw)
            if skip is not None and skip(c0, c1, d0, d1):
                continue
            e, f = max(0, d0 - HALO), min(w, d1 + HALO)
            # colour planes → quantized tile → feature planes, one numba pass each way (kernels/qconcat.py); an
            # FX-converted module (no ``fused_io``) or fused_io=False: torch's copies, quantize and dequantize
            if getattr(module, "fused_io", False):
                q = quantize_planes(colour[0, :, a:b, e:f], colour_factor, *module.input_qparams())
                dequantize_planes(module.quantized(q), c0 - a, d0 - e, out[:, c0:c1, d0:d1])
                del q
                continue
            x = colour[:, :, a:b, e:f].contiguous(memory_format=torch.channels_last)
            if colour_factor != 1.0:
                x = x * colour_factor
            y = module(x)
            out[:, c0:c1, d0:d1].copy_(y[0, :, c0 - a:c1 - a, d0 - e:d1 - e])
            del x, y
    return out


# Memory model of one frame (bytes above the process's resident baseline), fitted to benchmarks/bench_memory.py's
# per-stage peaks on this project's CPU path (BENCHMARKS.md): seeds and candidates ≈ 8 B/pixel; the feature stage holds
# the (D, H, W) float32 features (Lab written into them in place) and one tile's activations; the cluster stage holds
# the features (read in place by the CPU kernel) and its tables and labels (≈ 50 B/pixel); allocator slack ≈ 20 B/pixel.
SEED_BYTES_PER_PIXEL = 8
CLUSTER_BYTES_PER_PIXEL = 50
SLACK_BYTES_PER_PIXEL = 20


def estimate_frame_bytes(height: int, width: int, n_superpixels: int = 0, n_features: int = 20,
                         tile: tuple[int, int] | None = None, encoder_width: int = 32) -> int:
    """Peak memory of one ``segment()`` of an H×W frame, in bytes above the process's baseline (libraries, weights).

    peak ≈ N·(8 + 20) + max(N·4·D + T, N·(4·D + 50)) + 64·K·D, with N = H·W pixels, D = ``n_features``, K =
    ``n_superpixels`` and T the activations of one encoder tile (:func:`tile_bytes_per_pixel` of a ``tile`` = (rows,
    cols) core plus its HALO; ``tile=None``: no encoder, T = 0). Use :func:`tile_for_budget` for the tile a memory
    budget gives. The features are the one frame-sized float result (Lab written into them, the CPU hard pass reads
    them in place); the 50 B/pixel are the clustering's candidate plan and labels. Fitted on 720p, 1080p and 4K
    frames (D = 20): within ≈ 15 % of the measured peaks (BENCHMARKS.md).
    """
    n, d = int(height) * int(width), int(n_features)
    t = 0
    if tile is not None:
        per_pixel = (4 * (2 * encoder_width + COLOR_CHANNELS), 4 * (3 * encoder_width + COLOR_CHANNELS + d - IN_CHANNELS))
        t = tile_bytes(height, width, tile, per_pixel)
    feature_stage = n * 4 * d + t
    cluster_stage = n * (4 * d + CLUSTER_BYTES_PER_PIXEL)
    return int(n * (SEED_BYTES_PER_PIXEL + SLACK_BYTES_PER_PIXEL) + max(feature_stage, cluster_stage)
               + 64 * int(n_superpixels) * d)


UPSAMPLE_MODES = ("bilinear", "guided")
DEFAULT_UPSAMPLE = "guided"  # the ``--encoder fast`` choice (BENCHMARKS.md, issue 11.3: chosen on BSDS500 val)
DEFAULT_SIGMA = 4.0  # σ of the guided upsampling's colour weight, in CIELab units (ΔE), chosen on BSDS500 val
# half-width of the guided upsampling's tent footprint, in low-resolution samples: 1.5 = 3×3 samples. Support 2
# (4×4) was +0.0005 val ASA but ≈ 80 ms more CPU at 1280×720; 1.5 costs what bilinear upsampling does (BENCHMARKS.md)
DEFAULT_SUPPORT = 1.5
UPSAMPLE_BLOCK_BYTES = 1 << 24  # bytes of output channels upsampled at once (row blocks, ≈ 16 MB as before)


def _source_taps(dst: torch.Tensor, in_size: int, out_size: int, support: float = 1.0):
    """Source rows of output rows ``dst`` under a tent of half-width ``support`` (source samples) centred where
    PyTorch's bilinear mapping (``align_corners=False``) puts them: (idx, wt), (n, len(dst)) int64 / float32 with
    n = ceil(2·support) taps each, weight max(0, 1 − |src − idx| / support), indices clamped to the map (the border
    sample repeats). ``support = 1`` is bilinear (:func:`_source_rows`)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((dst.to(torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    first = torch.floor(src - support).to(torch.int64) + 1
    idx = first[None] + torch.arange(math.ceil(2 * support))[:, None]
    wt = (1.0 - (src[None] - idx.to(torch.float32)).abs() / support).clamp_min(0.0)
    return idx.clamp(0, in_size - 1), wt


def _guided_taps(dst, in_size: int, out_size: int, support: float, offset: int, window: int, device):
    """:func:`_source_taps` of output rows ``dst`` shifted by ``offset`` into a window of ``window`` source rows,
    clamped to it, on ``device``; ValueError when a tap of nonzero weight falls outside the window (taps clamped
    at the whole map's border must be in it; those of zero weight may fall outside). For a ``range`` the result is
    cached (checked, and uploaded to a GPU, once: a video's row blocks repeat)."""
    if isinstance(dst, range):
        return _guided_range_taps(dst.start, dst.stop, in_size, out_size, float(support), offset, window,
                                  torch.device(device))
    idx, wt = _source_taps(dst, in_size, out_size, support)
    idx = idx - offset
    if ((idx < 0) | (idx >= window))[wt > 0].any():
        raise ValueError("guided_window: the window does not hold the source rows/columns these outputs read")
    return idx.clamp(0, window - 1).to(device), wt.to(device)


@functools.lru_cache(maxsize=256)
def _guided_range_taps(start: int, stop: int, in_size: int, out_size: int, support: float, offset: int,
                       window: int, device: torch.device):
    return _guided_taps(torch.arange(start, stop), in_size, out_size, support, offset, window, device)


def guided_window(src: torch.Tensor, small_guide: torch.Tensor, guide: torch.Tensor, rows: torch.Tensor | range,
                  cols: torch.Tensor | range, full_in: tuple[int, int], full_out: tuple[int, int], scale: float,
                  support: float = DEFAULT_SUPPORT, offset: tuple[int, int] = (0, 0),
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows × cols of the guided (joint bilateral) upsampling of a (*full_in, C) map to ``full_out`` (see
    :mod:`spam_stream.kernels.upsample`): ``src`` (h, w, C) float32 (pixel-major) and ``small_guide`` (3, h, w)
    float32 are the window of the low-resolution channels and colour starting at ``offset``, and must hold every
    source row/column those outputs read; ``guide`` (3, len(rows), len(cols)) float32 is the full-resolution colour of
    the outputs; ``scale`` = 1/(2σ²) in the guides' units; ``support`` the tent's half-width in source samples.
    Returns (C, len(rows), len(cols)) float32, written into ``out`` when given (any strides; C' ≤ C channels: the
    first C' are computed, the others are padding). Every output pixel depends only on its own sources, so any cut
    into windows gives the whole map's values."""
    ri, rw = _guided_taps(rows, full_in[0], full_out[0], support, offset[0], src.shape[0], src.device)
    ci, cw = _guided_taps(cols, full_in[1], full_out[1], support, offset[1], src.shape[1], src.device)
    if small_guide.shape[1:] != src.shape[:2] or guide.shape[1:] != (len(rows), len(cols)):
        raise ValueError(f"guided_window: guides {tuple(small_guide.shape)}, {tuple(guide.shape)} do not match the "
                         f"source {tuple(src.shape)} and the {len(rows)}x{len(cols)} outputs")
    if out is None:
        out = torch.empty((src.shape[2], len(rows), len(cols)), dtype=src.dtype, device=src.device)
    if out.shape[0] > src.shape[2]:
        raise ValueError(f"guided_window: {src.shape[2]} source channels for {out.shape[0]} output channels")
    return guided_gather(src, small_guide, guide, ri, rw, ci, cw, scale, out)


def upsample_learned(small: torch.Tensor, size: tuple[int, int], out: torch.Tensor, mode: str = "bilinear",
                     small_colour: torch.Tensor | None = None, colour: torch.Tensor | None = None,
                     scale: float = 0.0, support: float = DEFAULT_SUPPORT,
                     block_bytes: int = UPSAMPLE_BLOCK_BYTES) -> torch.Tensor:
    """Upsample low-resolution channels ``small`` (C, h, w) float32 (any strides; pixel-major memory is read in place
    by "guided", which also accepts trailing zero channels beyond ``out``'s: padding) to ``size`` = (H, W) into
    ``out`` (C', H, W), row block by row block (≈ ``block_bytes`` of output at once). ``mode``: "bilinear"
    (``F.interpolate``, align_corners=False) or "guided" (joint bilateral,
    :func:`guided_window`; needs the low-resolution colour ``small_colour`` (3, h, w), the full-resolution ``colour``
    (3, H, W) in the same units, ``scale`` = 1/(2σ²) in those units and the tent's ``support``; on the CPU with the
    default ``block_bytes`` in one call, its kernel holding one row per thread). Returns ``out``; the result does not
    depend on ``block_bytes``."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    if small.shape[0] < out.shape[0] or (mode == "bilinear" and small.shape[0] != out.shape[0]):
        raise ValueError(f"upsample_learned: {small.shape[0]} source channels for {out.shape[0]} output channels")
    h, w = size
    hr, wr = small.shape[1:]
    cols = range(w)  # ranges: their taps are cached (on the device) from one frame to the next
    block = max(1, int(block_bytes) // (4 * small.shape[0] * w))
    if mode == "guided":
        small_pm = small.permute(1, 2, 0).contiguous()  # no copy when ``small`` is a view of an (h, w, C) buffer
        if small.device.type == "cpu" and block_bytes == UPSAMPLE_BLOCK_BYTES:
            block = h  # the CPU kernel holds one output row per thread: one call (one parallel region) for all
    for r0 in range(0, h, block):
        r1 = min(h, r0 + block)
        rows = range(r0, r1)
        if mode == "bilinear":
            resize_window(small[None], rows, cols, (hr, wr), (h, w), out=out[None, :, r0:r1])
        else:
            guided_window(small_pm, small_colour, colour[:, r0:r1], rows, cols, (hr, wr), (h, w), scale, support,
                          out=out[:, r0:r1])
    return out


def encode_learned(encoder: Encoder, colour: torch.Tensor, out: torch.Tensor | None = None, tile=None,
                   memory_budget: int | None = None, colour_factor: float = 1.0) -> torch.Tensor:
    """The learned channels (out_dim − 5, H, W) float32 of a (3, H, W) colour map, at the encoder's ``resolution``.

    ``encoder.resolution`` (1.0 unless set, e.g. by :func:`fast_encoder`) < 1 runs the encoder on the colour resized to
    round(r·H) × round(r·W) (bilinear; at r = 0.5 a 2×2 mean: r² of the encoder's work) and upsamples its channels
    back row block by row block into ``out``, by ``encoder.upsample``: "bilinear", or "guided" (joint bilateral
    upsampling guided by the full-resolution colour, σ = ``encoder.sigma`` CIELab units, a tent footprint of
    half-width ``encoder.support`` low-resolution samples; :func:`upsample_learned`).
    Arguments as :func:`encode_tiled`.
    """
    r = float(getattr(encoder, "resolution", 1.0))
    h, w = colour.shape[-2:]
    hr, wr = max(1, round(r * h)), max(1, round(r * w))
    if (hr, wr) == (h, w):
        return encode_tiled(encoder, colour, out, tile, memory_budget, colour_factor)
    if out is None:
        out = torch.empty((encoder.out_dim - IN_CHANNELS, h, w), dtype=torch.float32, device=colour.device)
    mode = getattr(encoder, "upsample", "bilinear")
    with torch.inference_mode():
        colour = colour.reshape(3, h, w)
        small_colour = F.interpolate(colour[None], size=(hr, wr), mode="bilinear", align_corners=False)[0]
        c = encoder.out_dim - IN_CHANNELS
        # pixel-major, channels padded to a multiple of 8 with zeros (whole vector lanes in the guided CPU kernel)
        buf = torch.zeros((hr, wr, -(-c // 8) * 8), dtype=torch.float32, device=colour.device)
        small = buf.permute(2, 0, 1)
        encode_tiled(encoder, small_colour, small[:c], tile, memory_budget, colour_factor)
        if mode != "guided":
            small = small[:c]
        scale = 0.0
        if mode == "guided":
            # σ in Lab units → the units of ``colour`` (Lab · λc, with λc = input_color_scale / colour_factor)
            sigma = float(getattr(encoder, "sigma", DEFAULT_SIGMA)) * getattr(encoder, "input_color_scale",
                                                                                COLOR_SCALE) / colour_factor
            scale = 1.0 / (2.0 * sigma * sigma)
        upsample_learned(small, (h, w), out, mode, small_colour, colour, scale,
                         float(getattr(encoder, "support", DEFAULT_SUPPORT)))
    return out


def fast_encoder(encoder: Encoder, resolution: float = 0.5, upsample: str = DEFAULT_UPSAMPLE,
                 sigma: float = DEFAULT_SIGMA, support: float = DEFAULT_SUPPORT) -> Encoder:
    """``encoder`` set to run at ``resolution`` × the input size and upsample its channels back by ``upsample``
    ("bilinear" or "guided", the latter with colour weight σ = ``sigma`` CIELab units over a tent footprint of
    half-width ``support`` low-resolution samples; see :func:`encode_learned`): the ``fast`` option is
    ``fast_encoder(bundled, 0.5)``."""
    if not 0.0 < resolution <= 1.0:
        raise ValueError(f"resolution must be in (0, 1], got {resolution}")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not support >= 1:
        raise ValueError(f"support must be >= 1 (low-resolution samples), got {support}")
    encoder.resolution, encoder.upsample = float(resolution), upsample
    encoder.sigma, encoder.support = float(sigma), float(support)
    return encoder


class EncoderLoadError(InputError, RuntimeError):
    """Encoder weights missing or not a spam-stream checkpoint: an :class:`~spam_stream.io.InputError` (the CLI prints
    its one line, like a missing prior checkpoint) and a RuntimeError (what it was before)."""


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
        enc.weights_path = str(path)  # where an int8 calibration may sit (attach_int8)
    except Exception as exc:  # corrupt file, wrong format, mismatched shapes
        # one line: the first sentence of torch's message (it runs over many lines); the whole cause stays chained
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
        raise EncoderLoadError(f"{path}: not a spam-stream encoder checkpoint ({type(exc).__name__}: {first})") from exc
    return enc.eval(), dict(ckpt.get("meta") or {})
