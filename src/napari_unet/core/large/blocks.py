"""Blocks of a large plane: exact prediction windows, cell halos and the normalisation sample.

A block is a :class:`~napari_unet.core.prediction.tiling.Tile` of
:func:`~napari_unet.core.prediction.tiling.plan_tiles`
with a large step: it starts on the network's pooling grid and reads its input (``source``) with
the network margin as halo from the mirror-padded plane, so that its probabilities equal those of
the whole plane. Here that padded input is read from any array that supports slicing (a zarr
array, a TIFF opened as zarr, a memory map) without ever reading the whole plane.

For a model that works at one cell size, blocks stay on the image's grid (so do their cell
halos, seams and chunks); each block reads the image pixels its resampled window needs, resamples
them, predicts the window (on the pooling grid of the resampled plane, with the network margin in
resampled pixels) and resamples the result back onto the block
(:class:`~napari_unet.core.prediction.scale.Resampling`), so that its probabilities equal those
of :func:`~napari_unet.predict` of the whole image at the same diameter.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from ..image import PERCENTILES, check_finite, rescale, to_grey
from ..prediction.scale import Resampling
from ..prediction.tiling import Tile, mirror_indices, plan_tiles

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_HALO",
    "SAMPLE_VALUES",
    "Normalisation",
    "plan_blocks",
    "mirror_indices",
    "read_padded",
    "cell_window",
    "overlapping",
    "corners",
    "assemble",
    "sample_blocks",
    "estimate_normalisation",
    "predict_block",
    "plane_resampling",
    "central_region",
    "model_source",
    "opened",
    "GreySource",
]

DEFAULT_BLOCK = 1024
"""Output side of a block (px): one task's prediction; its memory is the automatic tile's."""
DEFAULT_HALO = 128
"""Cell halo (px) around a block when labelling: larger than a cell, so cells are whole."""
MIN_BLOCK = 64
"""The smallest block side (px) accepted: a smaller block repeats the network's margin and the
cell halo around too few pixels of its own (a 16-px block reads over 100 times its pixels)."""
SAMPLE_VALUES = 2**24
"""Pixels of the normalisation sample: a lattice of blocks (every ``sy``-th block row, every
``sx``-th block column) of about this many pixels."""


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation shared by every block of a plane (saved with the result).

    ``lo``/``hi`` are the ``percentiles`` of the sampled pixels, one per channel; ``blocks`` of
    ``total`` blocks were sampled, those of every ``stride[0]``-th block row and
    ``stride[1]``-th block column (``blocks == total``: the whole plane, the exact percentiles
    that :func:`~napari_unet.normalize` computes).
    """

    percentiles: tuple[float, float]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    blocks: int
    total: int
    stride: tuple[int, int]

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
            "stride": list(self.stride),
        }


def plan_blocks(shape: tuple[int, int], model, block: int) -> list[Tile]:
    """Blocks of about ``block`` px covering an ``(H, W)`` plane, in raster order.

    Exactly the tiles :func:`~napari_unet.core.prediction.tiling.plan_tiles` plans for that step:
    they start at multiples of ``model.multiple`` (``2**depth``) and are balanced over each axis.
    """
    return plan_tiles(tuple(shape), model, int(block))


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


def _size(region: tuple[slice, slice]) -> tuple[int, int]:
    return tuple(s.stop - s.start for s in region)


def cell_window(region: tuple[slice, slice], halo: int, shape) -> tuple[slice, slice]:
    """``region`` grown by ``halo`` px on each side, clipped to a plane of ``shape``."""
    return tuple(
        slice(max(0, s.start - halo), min(n, s.stop + halo))
        for s, n in zip(region, shape, strict=True)
    )


def overlapping(region: tuple[slice, slice], regions) -> list[int]:
    """Indices of the ``regions`` (``(slice, slice)`` each, or an ``(n, 4)`` int array of
    ``(y0, y1, x0, x1)`` corners, see :func:`corners`) that overlap ``region``; vectorised."""
    c = regions if isinstance(regions, np.ndarray) else corners(regions)
    rows, cols = region
    hit = (c[:, 0] < rows.stop) & (rows.start < c[:, 1])
    hit &= (c[:, 2] < cols.stop) & (cols.start < c[:, 3])
    return np.flatnonzero(hit).tolist()


def corners(regions) -> np.ndarray:
    """``(n, 4)`` int64 ``(y0, y1, x0, x1)`` of ``n`` regions ``(slice, slice)``."""
    return np.array(
        [(r.start, r.stop, c.start, c.stop) for r, c in regions], dtype=np.int64
    ).reshape(-1, 4)


def assemble(window: tuple[slice, slice], regions, parts) -> np.ndarray:
    """``(h, w)`` float32 of the plane's ``window`` from ``parts`` (arrays of the plane's
    ``regions``, ``(slice, slice)`` each, that together cover it)."""
    out = np.empty([s.stop - s.start for s in window], np.float32)
    for region, part in zip(regions, parts, strict=True):
        rows = slice(max(region[0].start, window[0].start), min(region[0].stop, window[0].stop))
        cols = slice(max(region[1].start, window[1].start), min(region[1].stop, window[1].stop))
        out[
            rows.start - window[0].start : rows.stop - window[0].start,
            cols.start - window[1].start : cols.stop - window[1].start,
        ] = part[
            rows.start - region[0].start : rows.stop - region[0].start,
            cols.start - region[1].start : cols.stop - region[1].start,
        ]
    return out


def sample_blocks(
    blocks: list[Tile], values: int = SAMPLE_VALUES
) -> tuple[list[Tile], tuple[int, int]]:
    """A lattice of ``blocks`` (from :func:`plan_blocks`) of at most about ``values`` pixels.

    The blocks of every ``sy``-th block row and every ``sx``-th block column, ``sy * sx`` the
    smallest stride that keeps the sample within ``values`` pixels, split as evenly as the
    grid allows: the sample spreads over the plane in both directions (a stride in raster
    order would hit the same columns whenever it divides the number of block columns). Returns
    ``(blocks, (sy, sx))``; ``(1, 1)`` samples every block.
    """
    rows = sorted({b.inner[0].start for b in blocks})
    cols = sorted({b.inner[1].start for b in blocks})
    largest = max(math.prod(_size(b.inner)) for b in blocks)
    stride = max(1, math.ceil(len(blocks) / max(1, values // largest)))
    sy = min(len(rows), math.ceil(math.sqrt(stride)))
    sx = min(len(cols), math.ceil(stride / sy))
    sy = min(len(rows), math.ceil(stride / sx))
    chosen = [
        b
        for b in blocks
        if rows.index(b.inner[0].start) % sy == 0 and cols.index(b.inner[1].start) % sx == 0
    ]
    return chosen, (sy, sx)


def estimate_normalisation(
    source,
    blocks: list[Tile],
    percentiles: tuple[float, float] = PERCENTILES,
    values: int = SAMPLE_VALUES,
) -> Normalisation:
    """The percentiles of a lattice sample of ``blocks`` of ``source`` (see
    :func:`sample_blocks`). When every block is sampled they are the plane's own percentiles,
    so blocks normalise exactly as :func:`~napari_unet.normalize` does the whole plane."""
    chosen, stride = sample_blocks(blocks, values)
    pixels = [np.asarray(source[b.inner]) for b in chosen]
    for b, p in zip(chosen, pixels, strict=True):  # before any model runs, not blamed on it
        check_finite(p, f"the image's block at (y, x) = {tuple(s.start for s in b.inner)}")
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
    model,
    source,
    block: Tile,
    norm: Normalisation,
    *,
    flips: bool = False,
    device=None,
    resampling: Resampling | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """``(h, w)`` float32 foreground probability of ``block`` of the plane ``source``.

    Reads only the block's input with the network margin (and the tiles' overhang) from
    ``source`` (``(H, W[, C])``, sliceable), scales it with ``norm`` and predicts it with
    :func:`~napari_unet.core.prediction.predict.predict_window` (tiles of the automatic size inside
    the block, the same memory budget and model guard as :func:`~napari_unet.predict`). The block
    and its tiles start on the pooling grid, so the result equals the block's region of
    ``predict`` on the whole plane with the same normalisation and ``precision`` (``"auto"``,
    ``"fp32"`` or ``"bf16"``, resolved where the block runs; to float rounding, about 1e-6 in
    float32).

    With a ``resampling`` of the plane (``plane == source.shape[:2]``), the window predicted is
    the part of the resampled ``(H', W')`` plane that the block's pixels are interpolated from
    (:meth:`~napari_unet.core.prediction.scale.Resampling.needed`), started on the resampled
    plane's pooling grid and read with the network margin in resampled pixels, mirrored at the
    resampled plane's border; the image pixels it is resampled from (that halo over the factor,
    rounded up, plus the reach of the anti-aliasing filter when shrinking) are read and
    normalised with ``norm`` (percentiles of the original image), resampled
    (:meth:`~napari_unet.core.prediction.scale.Resampling.window`), predicted, and the result is
    resampled back onto the block. It equals the block's region of ``predict(model, image,
    diameter=resampling.diameter)`` (to float rounding, about 1e-5).
    """
    from ..prediction.predict import predict_window  # torch only when a block is predicted

    (y0, x0) = (s.start for s in block.inner)
    if resampling is None or not resampling.resampled:

        def read(rows, cols):
            window = read_padded(
                source, (y0 + rows[0], y0 + rows[1]), (x0 + cols[0], x0 + cols[1])
            )
            check_finite(window, f"the image around its block at (y, x) = {(y0, x0)}")
            return norm.apply(window)

        return predict_window(
            model, read, _size(block.inner), flips=flips, device=device, precision=precision
        )

    grid = resampling
    needed = grid.needed(block.inner)
    m = model.multiple
    origin = tuple(s.start // m * m for s in needed)  # on the resampled plane's pooling grid
    shape = tuple(s.stop - o for s, o in zip(needed, origin, strict=True))

    def read_image(rows: slice, cols: slice) -> np.ndarray:
        window = np.asarray(source[rows, cols])
        check_finite(window, f"the image around its block at (y, x) = {(y0, x0)}")
        return norm.apply(window)

    def read_resampled(rows, cols):
        rows = (origin[0] + rows[0], origin[0] + rows[1])
        cols = (origin[1] + cols[0], origin[1] + cols[1])
        return grid.window(read_image, rows, cols)

    probs = predict_window(
        model, read_resampled, shape, flips=flips, device=device, precision=precision
    )
    return grid.back(probs, origin, block.inner)


def central_region(shape, side: int) -> tuple[slice, slice]:
    """The central ``side x side`` region of an ``(H, W)`` plane (all of it where smaller)."""
    h, w = (min(int(n), side) for n in shape[:2])
    top, left = (int(shape[0]) - h) // 2, (int(shape[1]) - w) // 2
    return slice(top, top + h), slice(left, left + w)


ESTIMATE_SIDE = 5120
"""Side (px) of the central region of a large plane its cell diameter is estimated on: the
largest window the scale search reads (640 px at the model's size, shrunk up to 8x)."""


def plane_resampling(
    model, source, diameter: float | None = None, *, device=None, precision: str = "auto"
) -> Resampling:
    """How a large ``(H, W[, C])`` plane ``source`` (sliceable, the model's channels) is resampled
    for ``model``, as :func:`~napari_unet.predict` resolves it: ``diameter`` as given, the cells
    the model was fine-tuned on, or (a model trained at one size, not fine-tuned) estimated on
    the plane's central :data:`ESTIMATE_SIDE` px (only that region is read); a model that says
    no size predicts it as it comes. The choice is logged in one line. ValueError for a diameter
    too far from the model's, or given to a model that says no size. ``precision``: the
    estimate's, as :func:`~napari_unet.predict` takes it."""
    import logging

    from ..prediction.predict import ESTIMATED, GIVEN, resampling_for, resolve_diameter
    from ..prediction.scale import model_diameter, tuned_diameter

    log = logging.getLogger("napari_unet")
    plane = tuple(int(n) for n in source.shape[:2])
    source_of = GIVEN
    if diameter is None and model_diameter(model) is not None and tuned_diameter(model) is None:
        region = central_region(plane, ESTIMATE_SIDE)
        sample = np.asarray(source[region])
        diameter, source_of = resolve_diameter(model, sample, device=device, precision=precision)
        where = f" on its central {sample.shape[0]} x {sample.shape[1]} px"
    elif diameter is None:
        diameter, source_of = resolve_diameter(model, None)
        where = ""
    else:
        where = ""
    grid = resampling_for(model, plane, diameter, source_of)
    if grid.diameter is None:
        log.info("cell diameter: none (the image as it comes)")
    else:
        how = "estimated" + where if source_of == ESTIMATED else source_of
        log.info(
            "cell diameter %.1f px (%s): resampled by %.3g to %d x %d px",
            grid.diameter,
            how,
            grid.factor,
            *grid.shape,
        )
    return grid


def model_source(source, in_channels: int):
    """``source`` as a model of ``in_channels`` channels reads it: an RGB(A) plane seen as grey
    (:func:`~napari_unet.to_grey`) for a one-channel model, else ``source`` itself.

    ``source`` is ``(H, W[, C])``: an array, or anything with an ``open()`` context giving one
    (opened where it is read). Raises ValueError, before any work, for channels that do not
    fit the model.
    """
    channels = source.shape[2] if len(source.shape) == 3 else 1
    if channels == in_channels:
        return source
    if in_channels == 1 and channels in (3, 4):
        return GreySource(source)
    raise ValueError(
        f"image of shape {tuple(source.shape)} has {channels} channel(s) but the model takes "
        f"{in_channels}" + (" (RGB or RGBA become grey)" if in_channels == 1 else "")
    )


def opened(source):
    """A context giving the ``(H, W[, C])`` array of ``source`` (its ``open()``, or itself
    when it is sliceable already: a zarr array's ``open`` is no such context)."""
    if hasattr(source, "open") and not hasattr(source, "__getitem__"):
        return source.open()
    return nullcontext(source)


@dataclass(frozen=True)
class GreySource:
    """An RGB(A) ``source`` seen as an ``(H, W)`` float32 grey plane, read region by region."""

    source: object

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape[:2])

    @contextmanager
    def open(self):
        with opened(self.source) as plane:
            yield _GreyPlane(plane)


class _GreyPlane:
    dtype = np.dtype(np.float32)

    def __init__(self, plane):
        self.plane, self.shape = plane, tuple(plane.shape[:2])

    def __getitem__(self, region) -> np.ndarray:
        return to_grey(np.asarray(self.plane[region]))
