"""Exact overlap-tile prediction as a generator of tiles, and its synchronous wrapper.

For a model that says the cell size it works at, the image is resampled once so its cells have
that size (:class:`~napari_unet.core.prediction.scale.Resampling`), tiles are planned and
predicted exactly in the resampled image, and each :class:`TileResult` says where it lies on
the image's grid; :func:`predict` resamples the assembled probabilities back.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..image import PERCENTILES, check_finite, normalize, split_channels
from ..network.device import resolve_device
from ..network.guard import PREDICTING, using
from ..network.precision import autocast, dtype_name, resolve_precision
from .allocator import keep_freed_memory, trim_freed_memory
from .diameter import DiameterEstimate, search_diameter
from .instances import Probabilities
from .scale import (
    Resampling,
    model_diameter,
    rescale_image,
    scale_factor,
    sized_cells,
    tuned_diameter,
)
from .tiling import (
    DEFAULT_MEMORY,
    Tile,
    auto_tile,
    largest_step,
    padding,
    plan_tiles,
    tile_memory,
    tiled_multiply_adds,
)

__all__ = [
    "TileResult",
    "predict_tiles",
    "predict",
    "predict_window",
    "estimate_diameter",
    "resolve_diameter",
    "resampling_for",
    "cells_in_use",
    "instance_options",
]

log = logging.getLogger(__name__)

GIVEN, TUNED, ESTIMATED = "given", "the model's fine-tuning", "estimated"
"""Where :func:`resolve_diameter`'s diameter came from."""
_SLOW = 3  # a requested tile with this many times the work of the automatic one gets a warning


@dataclass(frozen=True)
class TileResult:
    """One finished tile.

    Attributes
    ----------
    plane
        Index of the plane in the stack's leading axes (``()`` for a single ``(H, W)`` image).
    region
        ``(slice, slice)`` into the predicted plane that this tile covers: the ``grid.shape``
        ``(H', W')`` resampled plane (the image's own ``(H, W)`` when not resampled).
    probabilities
        ``(h, w)`` float32 foreground probability of ``region``.
    index, total
        Position of this tile (0-based) and number of tiles of the whole call.
    grid
        How the image's planes were resampled (the same for every tile of a call): its factor,
        both grids, the diameter used and where it came from. ``grid.image_region(region)`` is
        the part of the image's ``(H, W)`` plane the tile covers (its pixel centres), and
        ``grid.to_image`` takes assembled ``(..., H', W')`` probabilities onto the image's grid.
    """

    plane: tuple[int, ...]
    region: tuple[slice, slice]
    probabilities: np.ndarray
    index: int
    total: int
    grid: Resampling | None = None

    @property
    def image_region(self) -> tuple[slice, slice]:
        """``(slice, slice)`` of the image's ``(H, W)`` plane that this tile covers."""
        return self.region if self.grid is None else self.grid.image_region(self.region)


def _check_model(model) -> None:
    for attr in ("in_channels", "multiple", "margin", "input_size"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a napari_unet.UNet, got {type(model).__name__}")


def _planes(image: np.ndarray, in_channels: int):
    """Validated image, its stack shape (leading axes) and its plane shape (H, W)."""
    image, has_channels = split_channels(image, in_channels)
    spatial = image.shape[:-1] if has_channels else image.shape
    if len(spatial) < 2:
        raise ValueError(f"image has shape {image.shape}; expected (H, W) or a stack (..., H, W)")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(f"image has dtype {image.dtype}; expected integer or float pixels")
    if np.iscomplexobj(image):
        raise ValueError("image is complex; expected real-valued pixels")
    check_finite(image)
    return image, spatial[:-2], spatial[-2:]


def _order(tiles: list[Tile], center: tuple[float, float] | None) -> list[Tile]:
    if center is None:
        return tiles

    def distance(t: Tile) -> float:
        cy = (t.inner[0].start + t.inner[0].stop) / 2
        cx = (t.inner[1].start + t.inner[1].stop) / 2
        return (cy - center[0]) ** 2 + (cx - center[1]) ** 2

    return sorted(tiles, key=distance)


@dataclass(frozen=True)
class _Plan:
    """A checked prediction: the ``(..., H, W[, C])`` image, the ``(..., H, W)`` shape of its
    result, its planes and tiles."""

    image: np.ndarray
    shape: tuple[int, ...]
    planes: list[tuple[int, ...]]
    tiles: list[Tile]
    pad: tuple[tuple[int, int], ...]
    batch_size: int
    percentiles: tuple[float, float] | None
    flips: bool
    grid: Resampling | None = None
    precision: str = "fp32"  # resolved: "fp32", "bf16" or "fp16"

    @property
    def total(self) -> int:
        return len(self.planes) * len(self.tiles)


def _tiles(model, plane_shape, tile, batch_size: int) -> list[Tile]:
    """The tiles for ``tile`` (``None``: the automatic step) under the memory budget of one
    batch; logs a warning when a requested step is made smaller or will be slow."""
    budget = DEFAULT_MEMORY // batch_size
    best = auto_tile(plane_shape, model, budget)
    if tile is None:
        return plan_tiles(plane_shape, model, best)
    tiles = plan_tiles(plane_shape, model, int(tile))
    memory = max(tile_memory(model, t.input_shape) for t in tiles)
    if memory > budget:
        cap = largest_step(model, budget)
        log.warning(
            "tile %d px needs about %.2f GiB per tile, over the budget of %.2f GiB (batch of "
            "%d); using tile %d px instead (the result is the same)",
            tile,
            memory / 2**30,
            budget / 2**30,
            batch_size,
            cap,
        )
        return plan_tiles(plane_shape, model, cap)
    slowdown = tiled_multiply_adds(tiles, model) / tiled_multiply_adds(
        plan_tiles(plane_shape, model, best), model
    )
    if slowdown > _SLOW:
        log.warning(
            "tile %d px does %.0fx the work of the automatic tile (%d px) and will be that much "
            "slower; pass tile=None (the result is the same)",
            tile,
            slowdown,
            best,
        )
    return tiles


def _check_sizes(tile, batch_size) -> None:
    if tile is not None and (
        not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 1
    ):
        raise ValueError(f"tile must be a positive number of pixels, got {tile!r}")
    if batch_size is not None and (
        not isinstance(batch_size, (int, np.integer))
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _plan(
    model, image, tile, batch_size, percentiles, center, flips, grid=None, precision="fp32"
) -> _Plan:
    _check_model(model)
    _check_sizes(tile, batch_size)
    image, stack_shape, plane_shape = _planes(np.asarray(image), model.in_channels)
    batch_size = int(batch_size or 1)
    tiles = _order(_tiles(model, plane_shape, tile, batch_size), center)
    return _Plan(
        image=image,
        shape=(*stack_shape, *plane_shape),
        planes=list(np.ndindex(*stack_shape)) if stack_shape else [()],
        tiles=tiles,
        pad=padding(plane_shape, tiles, model.margin),
        batch_size=batch_size,
        percentiles=percentiles,
        flips=flips,
        grid=grid or Resampling.of(plane_shape),
        precision=precision,
    )


def _sized_plan(
    model, image, tile, batch_size, percentiles, center, flips, diameter, device, precision
) -> _Plan:
    """The plan of :func:`predict_tiles`: the image checked, its diameter resolved, its planes
    normalised (their own percentiles) and resampled to the model's cell size; ``device`` a
    resolved one, ``precision`` resolved for it (:func:`resolve_precision`)."""
    _check_model(model)
    _check_sizes(tile, batch_size)
    image, stack_shape, plane_shape = _planes(np.asarray(image), model.in_channels)
    source = GIVEN
    if diameter is None:
        diameter, source = resolve_diameter(model, image, device=device, precision=precision)
    grid = resampling_for(model, plane_shape, diameter, source)
    factor = grid.factor
    if factor != 1.0:
        channels = image.ndim > len(stack_shape) + 2
        if percentiles is not None:  # the image's own percentiles, as blocks normalise
            image = _normalised(image, stack_shape, percentiles)
        image = rescale_image(image, factor, channels)
        percentiles = None
        if center is not None:
            center = grid.to_resampled(center)
    return _plan(model, image, tile, batch_size, percentiles, center, flips, grid, precision)


def _normalised(image: np.ndarray, stack_shape, percentiles) -> np.ndarray:
    """``(..., H, W[, C])`` float32: each plane normalised by its own ``percentiles``."""
    out = np.empty(image.shape, np.float32)
    for plane in np.ndindex(*stack_shape) if stack_shape else [()]:
        out[plane] = normalize(image[plane], *percentiles)
    return out


def predict_tiles(
    model,
    image,
    *,
    tile: int | None = None,
    batch_size: int | None = None,
    device=None,
    percentiles: tuple[float, float] | None = PERCENTILES,
    center: tuple[float, float] | None = None,
    flips: bool = False,
    diameter: float | None = None,
    precision: str = "auto",
) -> Iterator[TileResult]:
    """Predict ``image`` tile by tile, with its cells at the model's size; yields a
    :class:`TileResult` per tile.

    Parameters
    ----------
    model
        A :class:`~napari_unet.UNet`. While the generator runs it is in eval mode on ``device``;
        when it ends (or is closed) the model is back on its device, memory format and mode.
    image
        ``(H, W)`` of any integer or float dtype, ``(H, W, C)`` with ``C == model.in_channels``,
        or a stack with leading axes ``(..., H, W[, C])`` predicted plane by plane.
    tile
        About the side (px, of the resampled plane) of the output region one tile covers;
        rounded to a multiple of
        ``2**depth``, then balanced over the plane. ``None`` picks the size with the least work
        (multiply-adds and page faults, see :func:`~napari_unet.core.prediction.tiling.auto_tile`)
        under a memory budget (``tiling.DEFAULT_MEMORY`` per batch). A tile over that budget is
        made smaller, and a tile much slower than the automatic one is run as asked, each with a
        logged warning; the result is the same for every tile size.
    batch_size
        Tiles of the same size run together; ``None`` means 1 (fastest on CPUs).
    device
        Torch device; ``None`` runs where the model's weights are.
    percentiles
        Per-plane percentile normalisation (see :func:`normalize`) of the image's own planes
        (before any resampling, as the blocks of a large image are normalised); ``None`` feeds
        the pixels as float32 unchanged.
    center
        ``(y, x)`` in the image's plane coordinates: tiles nearest to it come first (what the
        user looks at).
    flips
        Average each tile's probability over its 8 flips and quarter turns (test-time
        augmentation): 8 times the work, usually more accurate (see the model card).
    diameter
        The median diameter (px) of the image's cells: the planes are resampled by
        ``model diameter / diameter`` (see :mod:`~napari_unet.core.prediction.scale`) before
        the network sees them, and tiles are planned and predicted exactly in the resampled
        ``(H', W')`` planes. ``None`` resolves it as :func:`resolve_diameter` does (the cells
        the model was fine-tuned on; for a model trained at one size but not fine-tuned, an
        estimate of the middle plane, made by this call before it returns; for a model that
        says neither, the image as it comes). A diameter for a model that does not say its
        own cell size raises ValueError.
    precision
        ``"auto"`` (bfloat16 where the device computes it natively, else float32; see
        :func:`~napari_unet.core.network.precision.resolve_precision`), ``"fp32"`` or
        ``"bf16"``: the arithmetic of the network's convolutions (weights stay float32,
        probabilities come out float32). Logged with the tiles. ValueError for another value.

    Returns
    -------
    Iterator[TileResult]
        A generator; the arguments are checked (ValueError, TypeError), the diameter resolved
        and the image resampled before it is returned. Each tile's ``region`` is in the
        predicted (resampled) plane, and its ``grid`` says how to place it on the image's
        (see :class:`TileResult`).

    Notes
    -----
    Tiles start at multiples of ``2**depth`` in the mirror-padded (resampled) plane, so the
    result equals the untiled prediction of the whole (resampled) image: in float32 to float
    rounding (about 1e-6, within 1e-5); in bfloat16, whose convolutions round to 8 bits of
    mantissa in an order that depends on the tile size, to about 1e-2 (see the tests).

    Predictions may share a model, also from several threads; a prediction that starts while
    another thread fine-tunes the model, or on another device than a running prediction,
    raises RuntimeError (see :mod:`napari_unet.core.network.guard`). Between tiles the generator
    holds no thread state (inference mode is on only while a batch computes), so it can be paused,
    abandoned or closed from any thread; of the process-wide allocator settings (see
    :mod:`~napari_unet.core.prediction.allocator`) only glibc's trim threshold stays raised between
    the tiles of a plane, so that the next tile reuses the memory of the last, and comes back with
    the memory when the plane or the generator ends, or it is closed.
    """
    device = resolve_device(device, model)
    precision = resolve_precision(precision, device)
    plan = _sized_plan(
        model, image, tile, batch_size, percentiles, center, flips, diameter, device, precision
    )
    return _start(model, plan, device)


def _start(model, plan: _Plan, device: torch.device) -> Iterator[TileResult]:
    """Log the tiles that will run, and return the generator that runs them."""
    rows, cols = (max(t.inner[a].stop - t.inner[a].start for t in plan.tiles) for a in (0, 1))
    log.info(
        "predicting %d tile(s) of up to %d x %d px on %s in %s",
        plan.total,
        rows,
        cols,
        device,
        dtype_name(plan.precision),
    )
    return _guarded(model, plan, device)


def _guarded(model, plan: _Plan, device: torch.device) -> Iterator[TileResult]:
    with using(model, PREDICTING, device):
        yield from _results(model, plan, device)


def _results(model, plan: _Plan, device) -> Iterator[TileResult]:
    """The tiles of ``plan``; ``model`` must be in eval mode on ``device`` (see
    :func:`~napari_unet.core.network.guard.using`). Inference mode and the allocator setting are on
    only while a batch computes, never across a ``yield``, but for glibc's trim threshold between
    the batches of a plane (see :func:`_batch`)."""
    index = itertools.count()
    try:
        for plane in plan.planes:
            padded = _padded(plan, plane)
            batches = list(_batches(plan.tiles, plan.batch_size))
            for i, batch in enumerate(batches):
                # the heap keeps the activations from batch to batch; trimmed once per plane
                probabilities = _batch(model, padded, batch, device, plan, i == len(batches) - 1)
                for t, probs in zip(batch, probabilities, strict=True):
                    yield TileResult(
                        plane=plane,
                        region=t.inner,
                        probabilities=probs,
                        index=next(index),
                        total=plan.total,
                        grid=plan.grid,
                    )
    finally:
        trim_freed_memory()  # also when closed before the end of a plane


def _padded(plan: _Plan, plane: tuple[int, ...]) -> torch.Tensor:
    """``(C, H', W')`` float32 (a channels-last view): one plane, normalised, mirror-padded."""
    pixels = plan.image[plane]
    if plan.percentiles is not None:
        pixels = normalize(pixels, *plan.percentiles)
    pixels = pixels.astype(np.float32, copy=False)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    padded = np.pad(pixels, (*plan.pad, (0, 0)), mode="symmetric")
    return torch.from_numpy(padded).permute(2, 0, 1)


def _batch(model, padded, batch: list[Tile], device, plan: _Plan, trim: bool) -> list[np.ndarray]:
    """The ``(h, w)`` float32 foreground probability of each tile of ``batch``, computed in
    inference mode, at ``plan.precision`` and in :func:`keep_freed_memory` (``trim``: give its
    memory back after; else it stays for the next batch)."""
    with keep_freed_memory(trim=trim), torch.inference_mode():
        inputs = torch.stack([padded[:, t.source[0], t.source[1]] for t in batch])
        inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(plan.precision, device):
            fg = _foreground(model, inputs, plan.flips).cpu().numpy()
        crops = [np.ascontiguousarray(p[t.crop]) for t, p in zip(batch, fg, strict=True)]
        del inputs, fg  # inside: the heap keeps their memory for the next batch
    return crops


def _foreground(model, inputs: torch.Tensor, flips: bool) -> torch.Tensor:
    """``(B, h, w)`` float32 foreground probability of ``(B, C, H, W)`` inputs (softmax of the
    logits cast to float32, whatever the autocast); with ``flips``, the mean over the 8 flips and
    quarter turns, each mapped back.

    Every tile's input starts on the pooling grid and has a length that is the same modulo
    ``2**depth``, so flipped tiles, which pool from their far end, share one grid too: the tiled
    result still equals the untiled one.
    """
    if not flips:
        return 1.0 - torch.softmax(model(inputs).float(), dim=1)[:, 0]
    total = None
    for turns in range(4):
        for mirror in (False, True):
            x = torch.rot90(inputs, turns, dims=(2, 3))
            if mirror:
                x = x.flip(3)
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
            fg = 1.0 - torch.softmax(logits, dim=1)[:, 0]
            if mirror:
                fg = fg.flip(2)
            fg = torch.rot90(fg, -turns, dims=(1, 2))
            total = fg if total is None else total + fg
    return total / 8


def _batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Consecutive runs of at most ``batch_size`` tiles with the same input shape."""
    for _, run in itertools.groupby(tiles, key=lambda t: t.input_shape):
        run = list(run)
        for i in range(0, len(run), batch_size):
            yield run[i : i + batch_size]


def predict(
    model,
    image,
    *,
    tile: int | None = None,
    batch_size: int | None = None,
    device=None,
    percentiles: tuple[float, float] | None = PERCENTILES,
    center: tuple[float, float] | None = None,
    flips: bool = False,
    diameter: float | None = None,
    precision: str = "auto",
    progress: Callable[[TileResult], None] | None = None,
) -> np.ndarray:
    """Foreground probability of a whole image or stack, with its cells at the model's size.

    Runs :func:`predict_tiles` with the same arguments; ``progress`` is called with each
    finished :class:`TileResult`. ``diameter`` is the median diameter (px) of the image's
    cells: the image is resampled by ``model diameter / diameter`` (see
    :mod:`~napari_unet.core.prediction.scale`) before the network sees it, and the
    probabilities are resampled back onto the image's grid (tiles are exact in the resampled
    image; ``tile`` is in its pixels, ``center`` in the image's).
    ``None`` means the diameter of the cells the model was fine-tuned on; for a model trained at
    one size but not fine-tuned, :func:`estimate_diameter` of the image (of its middle plane for
    a stack); for a model that says neither, the image as it comes. A diameter for a model that
    does not say its own cell size raises ValueError. ``precision`` (``"auto"``, ``"fp32"`` or
    ``"bf16"``) is the arithmetic of the network, as :func:`predict_tiles` takes it.

    Returns ``(..., H, W)`` float32 in [0, 1] (the channel axis, if any, dropped), equal to the
    untiled prediction (within 1e-5 in float32), as
    :class:`~napari_unet.core.prediction.instances.Probabilities` carrying the size of the
    image's cells at the diameter used (:func:`cells_in_use`: a given or estimated diameter, else
    ``model.metadata["cells"]``) for :func:`~napari_unet.to_instances`.
    """
    device = resolve_device(device, model)
    precision = resolve_precision(precision, device)
    plan = _sized_plan(
        model, image, tile, batch_size, percentiles, center, flips, diameter, device, precision
    )
    out = _assemble(plan, _start(model, plan, device), progress)
    grid = plan.grid
    return Probabilities(grid.to_image(out), cells_in_use(model, grid.diameter, grid.source))


def estimate_diameter(model, image, *, device=None, precision="auto") -> DiameterEstimate:
    """The median cell diameter (px) of one ``(H, W)`` or ``(H, W, C)`` image, estimated by a
    scale search with ``model`` (see :mod:`~napari_unet.core.prediction.diameter`), which must
    say the diameter it works at (``model.metadata["diameter"]``); ValueError otherwise or when no
    cells are found at any size. ``precision`` as :func:`predict` takes it."""
    known = _trained_size(model)
    if known is None:
        raise ValueError(
            "this model does not say what cell size it works at, so it cannot estimate one; "
            "give the cell diameter, or use a model trained at one size"
        )
    image, has_channels = split_channels(np.asarray(image), model.in_channels)
    if image.ndim != 2 + has_channels:
        raise ValueError(f"estimate the diameter of one plane (H, W), got shape {image.shape}")
    device = resolve_device(device, model)
    precision = resolve_precision(precision, device)

    def predictor(window: np.ndarray) -> np.ndarray:
        plan = _plan(model, window, None, None, PERCENTILES, None, False, precision=precision)
        return _assemble(plan, _start(model, plan, device))

    estimate = search_diameter(image, known, predictor)
    log.info("estimated cell diameter: %.1f px (%d cells)", estimate.diameter, estimate.cells)
    return estimate


def resolve_diameter(
    model, image, diameter: float | None = None, *, device=None, precision="auto"
) -> tuple[float | None, str | None]:
    """``(diameter, source)``: the cells' diameter (px) to predict ``image`` at and where it
    came from: ``diameter`` as given (``GIVEN``), the model's fine-tuning (``TUNED``), or
    :func:`estimate_diameter` of the middle plane for a model trained at one size but not
    fine-tuned (``ESTIMATED``); ``(None, None)`` for the image as it comes (a model that says
    no size, or an estimate that found no cell: logged). What :func:`predict` uses, and the
    CLI and the Predict dock report; ``precision`` is the estimate's (see :func:`predict`)."""
    if diameter is not None:
        return float(diameter), GIVEN
    if tuned_diameter(model) is not None:
        return tuned_diameter(model), TUNED
    if _trained_size(model) is None:
        return None, None
    try:
        plane = _middle_plane(model, image)
        estimate = estimate_diameter(model, plane, device=device, precision=precision)
        return estimate.diameter, ESTIMATED
    except ValueError as err:
        log.warning("%s: predicting the image as it comes", err)
        return None, None


def resampling_for(model, plane, diameter: float | None, source: str | None = GIVEN) -> Resampling:
    """The :class:`~napari_unet.core.prediction.scale.Resampling` of ``(..., H, W)`` planes
    ``plane`` for ``model`` when their cells are ``diameter`` px across (from ``source``, see
    :func:`resolve_diameter`); ``None``: the cells the model was fine-tuned on, else the image
    as it comes. ValueError for a diameter too far from the model's, or for a model that says
    no size."""
    factor = _factor(model, diameter)
    if diameter is None:
        diameter, source = tuned_diameter(model), TUNED
    return Resampling.of(plane, factor, diameter, source if diameter is not None else None)


def cells_in_use(model, diameter: float | None, source: str | None) -> dict | None:
    """What :func:`~napari_unet.to_instances` reads of the cells of an image predicted at
    ``(diameter, source)`` (from :func:`resolve_diameter`): a disc of a given or estimated
    diameter (:func:`~napari_unet.core.prediction.scale.sized_cells`), else the cells the model
    was fine-tuned on (``model.metadata["cells"]``; ``None`` when it says nothing). The one rule
    by which every route sizes its cells: :func:`predict`'s result carries it, and
    :func:`instance_options` sizes blocks and batch jobs by it."""
    if diameter is None or source not in (GIVEN, ESTIMATED):
        return (getattr(model, "metadata", None) or {}).get("cells")
    return sized_cells(diameter)


def instance_options(config, model, diameter: float | None, source: str | None) -> dict:
    """:func:`~napari_unet.to_instances`' keyword arguments for a prediction at
    ``(diameter, source)`` (from :func:`resolve_diameter`, or a
    :class:`~napari_unet.core.prediction.scale.Resampling`'s): those of ``config`` (an
    :class:`~napari_unet.InstanceConfig`, or a dict of keyword arguments; ``None``: the
    defaults) with ``min_size`` and ``min_core`` left ``None`` (or absent) sized by
    :func:`cells_in_use`, as :func:`predict`'s result sizes them, so that plain arrays (blocks,
    a worker's probabilities) label as in-process prediction at that diameter does."""
    from .instances import InstanceConfig, size_defaults

    if isinstance(config, InstanceConfig):
        options = config.options()
    else:
        options = {**InstanceConfig().options(), **(config or {})}
    size, core = size_defaults(cells_in_use(model, diameter, source))
    if options.get("min_size") is None:
        options["min_size"] = size
    if options.get("min_core") is None:
        options["min_core"] = core
    return options


def _trained_size(model) -> float | None:
    """``model.metadata["diameter"]``: the cell diameter a model was trained at, or ``None``."""
    diameter = (getattr(model, "metadata", None) or {}).get("diameter")
    return None if diameter is None else float(diameter)


def _middle_plane(model, image) -> np.ndarray:
    """The middle plane ``(H, W[, C])`` of an image or stack."""
    image, has_channels = split_channels(np.asarray(image), model.in_channels)
    while image.ndim > 2 + has_channels:
        image = image[image.shape[0] // 2]
    return image


def _factor(model, diameter: float | None) -> float:
    """How much to enlarge the image for ``model`` when its cells are ``diameter`` px across
    (``None``: those it was fine-tuned on, else 1)."""
    known = model_diameter(model)
    if diameter is None:
        diameter = tuned_diameter(model)
        if diameter is None:
            return 1.0
    if known is None:
        raise ValueError(
            f"this model does not say what cell size it works at, so a cell diameter "
            f"({diameter!r}) cannot be used; predict without one, or fine-tune the model first"
        )
    return scale_factor(known, diameter)


def predict_window(
    model,
    read: Callable[[tuple[int, int], tuple[int, int]], np.ndarray],
    shape,
    *,
    flips: bool = False,
    device=None,
    precision: str = "auto",
) -> np.ndarray:
    """Foreground probability of an ``(h, w)`` region of a larger plane, reading only its input.

    ``read(rows, cols)`` returns the normalised ``(len(rows), len(cols)[, C])`` float32 pixels
    of ``[rows) x [cols)`` (``(start, stop)`` relative to the region, reaching past it by the
    network margin and the tiles' overhang, mirrored where the plane ends). The region is
    tiled as :func:`predict` tiles a plane of that size (automatic tile, same memory budget,
    same model guard); when it starts on the pooling grid of the plane, the result equals the
    region of :func:`predict` of the whole plane with the same normalisation and ``precision``
    (``"auto"``, ``"fp32"`` or ``"bf16"``, resolved for ``device`` here, where the window runs)
    to float rounding (within 1e-5 in float32). Returns ``(h, w)`` float32.
    """
    _check_model(model)
    device = resolve_device(device, model)
    precision = resolve_precision(precision, device)
    shape = tuple(int(n) for n in shape)
    tiles = _tiles(model, shape, None, 1)
    (top, bottom), (left, right) = padding(shape, tiles, model.margin)
    pixels = read((-top, shape[0] + bottom), (-left, shape[1] + right))
    plan = _Plan(
        image=pixels,
        shape=shape,
        planes=[()],
        tiles=tiles,
        pad=((0, 0), (0, 0)),  # read with its padding
        batch_size=1,
        percentiles=None,
        flips=flips,
        precision=precision,
    )
    return _assemble(plan, _guarded(model, plan, device))


def predict_held(model, image, device: torch.device, precision: str = "fp32") -> np.ndarray:
    """:func:`predict` with the default settings for a task that holds ``model`` already
    (fine-tuning's validation, at its resolved ``precision``): ``(H, W)`` float32 foreground
    probability; leaves the model in eval mode."""
    plan = _plan(model, image, None, None, PERCENTILES, None, False, precision=precision)
    model.eval()
    return _assemble(plan, _results(model, plan, device))


def _assemble(plan: _Plan, tiles: Iterator[TileResult], progress=None) -> np.ndarray:
    out = np.empty(plan.shape, dtype=np.float32)
    for result in tiles:
        out[result.plane][result.region] = result.probabilities
        if progress is not None:
            progress(result)
    return out
