"""Blocks of a large plane: exact prediction windows, cell halos and the normalisation sample.

A block is a :class:`~napari_unet.core.tiling.Tile` of :func:`~napari_unet.core.tiling.plan_tiles`
with a large step: it starts on the network's pooling grid and reads its input (``source``) with
the network margin as halo from the mirror-padded plane, so that its probabilities equal those of
the whole plane. Here that padded input is read from any array that supports slicing (a zarr
array, a TIFF opened as zarr, a memory map) without ever reading the whole plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .image import PERCENTILES, rescale
from .tiling import Tile, padding, plan_tiles

__all__ = [
    "SAMPLE_VALUES",
    "Normalisation",
    "plan_blocks",
    "mirror_indices",
    "read_padded",
    "block_input",
    "cell_window",
    "sample_blocks",
    "estimate_normalisation",
    "predict_block",
]

SAMPLE_VALUES = 2**24
"""Pixels of the normalisation sample: every k-th block (raster order) until this many."""


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation shared by every block of a plane (saved with the result).

    ``lo``/``hi`` are the ``percentiles`` of the sampled pixels, one per channel; ``blocks`` of
    ``total`` blocks were sampled, every ``stride``-th in raster order (``blocks == total``: the
    whole plane, the exact percentiles that :func:`~napari_unet.normalize` computes).
    """

    percentiles: tuple[float, float]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    blocks: int
    total: int
    stride: int

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``(h, w)`` or ``(h, w, C)`` pixels as float32, scaled as the whole plane is."""
        if pixels.ndim == 3:
            shape = (1, 1, -1)
            return rescale(pixels, np.reshape(self.lo, shape), np.reshape(self.hi, shape))
        return rescale(pixels, self.lo[0], self.hi[0])

    def as_dict(self) -> dict:
        """JSON-ready record (stored in the output's metadata)."""
        return {
            "percentiles": list(self.percentiles),
            "lo": list(self.lo),
            "hi": list(self.hi),
            "sampled_blocks": self.blocks,
            "blocks": self.total,
            "stride": self.stride,
        }


def plan_blocks(shape: tuple[int, int], model, block: int) -> list[Tile]:
    """Blocks of about ``block`` px covering an ``(H, W)`` plane, in raster order.

    Exactly the tiles :func:`~napari_unet.core.tiling.plan_tiles` plans for that step: they
    start at multiples of ``model.multiple`` (``2**depth``) and are balanced over each axis.
    """
    return plan_tiles(tuple(shape), model, int(block))


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` of positions ``start..stop-1`` of its mirror extension.

    Position ``p`` (negative or past the end) maps as ``np.pad(..., mode="symmetric")`` does, for
    any pad width: period ``2 * length``, the second half reversed.
    """
    p = np.arange(start, stop) % (2 * length)
    return np.where(p < length, p, 2 * length - 1 - p)


def read_padded(source, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """The window ``[rows) x [cols)`` of ``source``'s mirror extension, reading only the window.

    ``source`` is ``(H, W)`` or ``(H, W, C)``, anything sliceable (zarr, memmap, numpy); the
    window may reach past any border. Returns ``(h, w)`` or ``(h, w, C)`` in ``source``'s dtype.
    """
    iy = mirror_indices(*rows, source.shape[0])
    ix = mirror_indices(*cols, source.shape[1])
    y0, y1, x0, x1 = iy.min(), iy.max() + 1, ix.min(), ix.max() + 1
    part = np.asarray(source[y0:y1, x0:x1])
    return part[np.ix_(iy - y0, ix - x0)]


def block_input(source, shape, block: Tile, sub_tiles: list[Tile], margin: int) -> np.ndarray:
    """Raw ``(h', w'[, C])`` input of ``block``: its padded plane (the block at offset
    ``margin``), large enough for every tile of ``sub_tiles`` (tiles of the block's own plane)."""
    pad = padding(_size(block.inner), sub_tiles, margin)
    (y0, x0) = (s.start - margin for s in block.inner)
    rows = (y0, y0 + margin + _size(block.inner)[0] + pad[0][1])
    cols = (x0, x0 + margin + _size(block.inner)[1] + pad[1][1])
    return read_padded(source, rows, cols)


def _size(region: tuple[slice, slice]) -> tuple[int, int]:
    return tuple(s.stop - s.start for s in region)


def cell_window(region: tuple[slice, slice], halo: int, shape) -> tuple[slice, slice]:
    """``region`` grown by ``halo`` px on each side, clipped to a plane of ``shape``."""
    return tuple(
        slice(max(0, s.start - halo), min(n, s.stop + halo))
        for s, n in zip(region, shape, strict=True)
    )


def sample_blocks(blocks: list[Tile], values: int = SAMPLE_VALUES) -> tuple[list[Tile], int]:
    """Every ``stride``-th block in raster order, ``stride`` the smallest that keeps the sample
    within ``values`` pixels; returns ``(blocks, stride)``."""
    largest = max(math.prod(_size(b.inner)) for b in blocks)
    stride = max(1, math.ceil(len(blocks) / max(1, values // largest)))
    return blocks[::stride], stride


def estimate_normalisation(
    source,
    blocks: list[Tile],
    percentiles: tuple[float, float] = PERCENTILES,
    values: int = SAMPLE_VALUES,
) -> Normalisation:
    """The percentiles of a strided sample of ``blocks`` of ``source`` (see
    :func:`sample_blocks`). When every block is sampled they are the plane's own percentiles,
    so blocks normalise exactly as :func:`~napari_unet.normalize` does the whole plane."""
    chosen, stride = sample_blocks(blocks, values)
    pixels = [np.asarray(source[b.inner]) for b in chosen]
    channels = pixels[0].shape[2] if pixels[0].ndim == 3 else 1
    flat = np.concatenate([p.reshape(-1, channels) for p in pixels])
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    lo, hi = np.percentile(flat, list(percentiles), axis=0)
    return Normalisation(
        percentiles=tuple(float(p) for p in percentiles),
        lo=tuple(float(v) for v in lo),
        hi=tuple(float(v) for v in hi),
        blocks=len(chosen),
        total=len(blocks),
        stride=stride,
    )


def predict_block(
    model, source, block: Tile, norm: Normalisation, *, flips: bool = False, device=None
) -> np.ndarray:
    """``(h, w)`` float32 foreground probability of ``block`` of the plane ``source``.

    Reads only the block's padded input from ``source`` (``(H, W[, C])``, sliceable), scales it
    with ``norm`` and runs it as :func:`~napari_unet.predict` runs a plane (tiles of the
    automatic size inside the block, the same memory budget and model guard). The block and its
    tiles start on the pooling grid, so the result equals the block's region of ``predict``
    on the whole plane with the same normalisation (to float rounding, about 1e-6).
    """
    from . import predict as p  # torch only when a block is predicted
    from .device import resolve_device

    core = _size(block.inner)
    tiles = p._tiles(model, core, None, 1)
    pixels = norm.apply(block_input(source, source.shape[:2], block, tiles, model.margin))
    plan = p._Plan(
        image=pixels,
        shape=core,
        planes=[()],
        tiles=tiles,
        pad=((0, 0), (0, 0)),
        batch_size=1,
        percentiles=None,
        flips=flips,
    )
    return np.asarray(p._assemble(plan, p._guarded(model, plan, resolve_device(device, model))))
