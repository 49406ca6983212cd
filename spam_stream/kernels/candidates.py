"""Candidate layouts shared by every kernel implementation.

A pixel may join at most 9 superpixels, its *candidates*. Two layouts exist:

* **grid** — superpixels are the cells of an ``nh x nw`` grid over an ``H x W`` image. Pixel ``(y, x)`` lies in cell
  ``(y * nh // H, x * nw // W)``; its 9 candidate slots are that cell and its 8 neighbours in row-major order
  (slot ``s`` is the offset ``(s // 3 - 1, s % 3 - 1)``); slots that fall outside the grid are empty.
* **table** — an explicit ``(N, 9)`` int32 table of superpixel indices, ``-1`` marking an empty slot (used for seeds
  placed inside prior objects, where the nearest seeds are not on a grid).

In both layouts a slot is *valid* when it is not empty and the superpixel belongs to the pixel's prior object, or the
pixel is free (object ``-1``). Every implementation (torch reference, CPU fast path, Triton) follows these rules and
the same tie rule: the argmin picks the lowest valid slot among equal distances; a pixel with no valid slot gets
label ``-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

N_SLOTS = 9


@dataclass
class Candidates:
    """Which superpixels each pixel may join.

    Attributes:
        height, width: image size; pixels are numbered ``p = y * width + x`` (N = height * width).
        pixel_object: (N,) int32 prior object id of each pixel, -1 = free (may join any candidate).
        superpixel_object: (K,) int32 prior object id of each superpixel.
        grid: ``(nh, nw)`` for the grid layout, else None.
        table: (N, 9) int32 candidate superpixel indices (-1 = empty) for the table layout, else None.
        rows, pixel_row, block_y, block_x: optionally, the table's compact form when it was built from one row per
            (block, object) of a separable block grid (object seeds: squares; a tiled image's region: its cells):
            rows (Q, 9) int32; pixel_row (N,) int32 the row of each pixel (``table[p] == rows[pixel_row[p]]``);
            block_y (H,), block_x (W,) int64, non-decreasing, the block row / column of each image row / column.
            The CPU's cell layout reads these. ``table=LAZY`` with them: the (N, 9) table is made from them
            (``rows[pixel_row]``) only when a kernel asks for it (the cell layout never does: 36 bytes a pixel
            saved, e.g. the regions of a tiled image).
        row_period, row_origin: which row phase each image row has under row subsampling
            (:func:`row_phases`): row y is row ``(y % row_period) + row_origin`` of its picture — a batch stacked
            as tiles restarts at every tile (``row_period`` = the tile height), a region of a larger image starts
            at its first row (``row_origin``). Defaults: one picture, from row 0.
    """

    height: int
    width: int
    pixel_object: torch.Tensor
    superpixel_object: torch.Tensor
    grid: tuple[int, int] | None = None
    table: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    pixel_row: torch.Tensor | None = None
    block_y: torch.Tensor | None = None
    block_x: torch.Tensor | None = None
    row_period: int | None = None
    row_origin: int = 0

    def __post_init__(self):
        if self.__dict__.get("_table") is LAZY and (self.rows is None or self.pixel_row is None):
            raise ValueError("a lazy table needs rows and pixel_row")
        if (self.grid is None) == (self.__dict__.get("_table") is None):
            raise ValueError("Candidates need exactly one of grid=(nh, nw) or table=(N, 9)")
        n = self.height * self.width
        if self.pixel_object.shape != (n,):
            raise ValueError(f"pixel_object must have shape ({n},), got {tuple(self.pixel_object.shape)}")
        if self.__dict__.get("_table") is not None and self._table is not LAZY and self.table.shape != (n, N_SLOTS):
            raise ValueError(f"table must have shape ({n}, {N_SLOTS}), got {tuple(self.table.shape)}")
        if self.grid is not None and self.superpixel_object.shape != (self.grid[0] * self.grid[1],):
            raise ValueError("a grid layout needs one superpixel_object entry per cell")

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def n_superpixels(self) -> int:
        return int(self.superpixel_object.shape[0])

    @property
    def device(self) -> torch.device:
        return self.pixel_object.device

    def to(self, device) -> "Candidates":
        """These candidates on ``device``: ``self`` when they are there already (so plans cached on the object by a
        kernel survive, e.g. across the frames of a video that share their candidates)."""
        if torch.device(device) == self.pixel_object.device:
            return self
        table = self.__dict__.get("_table")
        return Candidates(
            self.height, self.width, self.pixel_object.to(device), self.superpixel_object.to(device),
            self.grid, None if table is None else LAZY if table is LAZY else table.to(device),
            None if self.rows is None else self.rows.to(device),
            None if self.pixel_row is None else self.pixel_row.to(device), self.block_y, self.block_x,
            self.row_period, self.row_origin,
        )

    def row_phases(self, stride: int) -> np.ndarray:
        """(H,) int64 the round phase of each image row under row subsampling by ``stride``: rounds r visit the
        rows whose phase is r % stride (the picture's row index mod stride, see ``row_period`` / ``row_origin``)."""
        y = np.arange(self.height, dtype=np.int64)
        if self.row_period:
            y = y % int(self.row_period)
        return (y + int(self.row_origin)) % max(1, int(stride))


LAZY = object()
"""``Candidates(table=LAZY, rows=..., pixel_row=...)``: the table made from its compact form when first read."""


@njit(parallel=True, cache=True, nogil=True)
def _expand_rows(rows, pixel_row, out):
    """out[p, :] = rows[pixel_row[p], :] for every pixel (threads over pixels: 4-5x torch's gather)."""
    for p in prange(pixel_row.shape[0]):
        q = pixel_row[p]
        for j in range(rows.shape[1]):
            out[p, j] = rows[q, j]


def _get_table(self):
    table = self.__dict__.get("_table")
    if table is LAZY:
        if self.rows.device.type == "cpu":
            table = torch.empty((self.pixel_row.shape[0], self.rows.shape[1]), dtype=self.rows.dtype)
            _expand_rows(self.rows.contiguous().numpy(), self.pixel_row.contiguous().numpy(), table.numpy())
        else:
            table = self.rows[self.pixel_row.long()].contiguous()
        self.__dict__["_table"] = table
    return table


def _set_table(self, value):
    self.__dict__["_table"] = value


Candidates.table = property(_get_table, _set_table, doc=Candidates.__doc__ and "(N, 9) int32 table, or None")


def block_size(step: float) -> int:
    """Side b of the blocks whose pixels of one object share a table row (object seeds), for a grid step
    √(H·W/K): a third of it, at least 1 pixel. Shared by the CPU and device candidate tables."""
    return max(1, int(step / 3))


def grid_table(height: int, width: int, nh: int, nw: int, device=None) -> torch.Tensor:
    """The grid layout written out as a table: (N, 9) int32, -1 where a neighbour cell is outside the grid."""
    y = torch.arange(height, device=device).repeat_interleave(width)
    x = torch.arange(width, device=device).repeat(height)
    cy, cx = y * nh // height, x * nw // width
    slots = []
    for s in range(N_SLOTS):
        ny, nx = cy + (s // 3 - 1), cx + (s % 3 - 1)
        inside = (ny >= 0) & (ny < nh) & (nx >= 0) & (nx < nw)
        slots.append(torch.where(inside, ny * nw + nx, torch.full_like(ny, -1)))
    return torch.stack(slots, 1).to(torch.int32)


def candidate_table(c: Candidates) -> torch.Tensor:
    """(N, 9) int32 candidate indices of either layout (-1 = empty)."""
    return c.table if c.table is not None else grid_table(c.height, c.width, *c.grid, device=c.device)


def valid_slots(c: Candidates, table: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 9) bool: the slot holds a superpixel the pixel may join (same prior object, or the pixel is free)."""
    table = candidate_table(c) if table is None else table
    present = table >= 0
    sp_obj = c.superpixel_object[table.clamp(min=0).long()]
    pix_obj = c.pixel_object[:, None]
    return present & ((pix_obj < 0) | (sp_obj == pix_obj))
