"""Exact overlap-tile prediction as a generator of tiles, and its synchronous wrapper."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .allocator import keep_freed_memory
from .device import resolve_device
from .image import check_finite, normalize, split_channels
from .tiling import Tile, auto_tile, padding, plan_tiles

__all__ = ["TileResult", "predict_tiles", "predict"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileResult:
    """One finished tile.

    Attributes
    ----------
    plane
        Index of the plane in the stack's leading axes (``()`` for a single ``(H, W)`` image).
    region
        ``(slice, slice)`` into the plane that this tile covers.
    probabilities
        ``(h, w)`` float32 foreground probability of ``region``.
    index, total
        Position of this tile (0-based) and number of tiles of the whole call.
    """

    plane: tuple[int, ...]
    region: tuple[slice, slice]
    probabilities: np.ndarray
    index: int
    total: int


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


def predict_tiles(
    model,
    image,
    *,
    tile: int | None = None,
    batch_size: int | None = None,
    device=None,
    percentiles: tuple[float, float] | None = (1.0, 99.8),
    center: tuple[float, float] | None = None,
    flips: bool = False,
) -> Iterator[TileResult]:
    """Predict ``image`` tile by tile; yields a :class:`TileResult` per tile.

    Parameters
    ----------
    model
        A :class:`~napari_unet.UNet`; put in eval mode for the call, its mode restored after.
    image
        ``(H, W)`` of any integer or float dtype, ``(H, W, C)`` with ``C == model.in_channels``,
        or a stack with leading axes ``(..., H, W[, C])`` predicted plane by plane.
    tile
        About the side (px) of the output region one tile covers; rounded to a multiple of
        ``2**depth``. ``None`` picks the size with the least work (multiply-adds and page faults,
        see :func:`~napari_unet.core.tiling.auto_tile`) under a memory budget.
    batch_size
        Tiles of the same size run together; ``None`` means 1 (fastest on CPUs).
    device
        Torch device; ``None`` runs where the model's weights are.
    percentiles
        Per-plane percentile normalisation (see :func:`normalize`); ``None`` feeds the pixels
        as float32 unchanged.
    center
        ``(y, x)`` in plane coordinates: tiles nearest to it come first (what the user looks at).
    flips
        Average each tile's probability over its 8 flips and quarter turns (test-time
        augmentation): 8 times the work, usually more accurate (see the model card).

    Tiles start at multiples of ``2**depth`` in the mirror-padded plane, so the result equals the
    untiled prediction of the whole image (to float rounding, about 1e-6).
    """
    _check_model(model)
    image, stack_shape, plane_shape = _planes(np.asarray(image), model.in_channels)
    if tile is not None and (not isinstance(tile, (int, np.integer)) or tile < 1):
        raise ValueError(f"tile must be a positive number of pixels, got {tile!r}")
    if batch_size is not None and (
        not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    step = int(tile) if tile is not None else auto_tile(plane_shape, model)
    tiles = _order(plan_tiles(plane_shape, model, step), center)
    pad = padding(plane_shape, tiles, model.margin)
    planes = list(np.ndindex(*stack_shape)) if stack_shape else [()]
    total = len(planes) * len(tiles)
    device = resolve_device(device, model)
    log.debug("predicting %d tile(s) of step %d on %s", total, step, device)

    was_training = model.training
    model.eval()
    model.to(device=device, memory_format=torch.channels_last)
    index = itertools.count()
    try:
        with keep_freed_memory(), torch.inference_mode():
            for plane in planes:
                pixels = image[plane]
                if percentiles is not None:
                    pixels = normalize(pixels, *percentiles)
                pixels = pixels.astype(np.float32, copy=False)
                if pixels.ndim == 2:
                    pixels = pixels[..., None]
                padded = np.pad(pixels, (*pad, (0, 0)), mode="symmetric")
                padded = torch.from_numpy(padded).permute(2, 0, 1)  # (C, H, W) channels-last view
                for batch in _batches(tiles, batch_size or 1):
                    inputs = torch.stack([padded[:, t.source[0], t.source[1]] for t in batch])
                    inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
                    fg = _foreground(model, inputs, flips).float().cpu().numpy()
                    for t, probs in zip(batch, fg, strict=True):
                        yield TileResult(
                            plane=plane,
                            region=t.inner,
                            probabilities=np.ascontiguousarray(probs[t.crop]),
                            index=next(index),
                            total=total,
                        )
                # free the plane's arrays inside keep_freed_memory, whose exit trims the heap;
                # freed after it, they would stay resident (~70 MiB for 2048 x 2048)
                del pixels, padded, inputs, fg, probs
    finally:
        model.train(was_training)


def _foreground(model, inputs: torch.Tensor, flips: bool) -> torch.Tensor:
    """``(B, h, w)`` foreground probability of ``(B, C, H, W)`` inputs; with ``flips``, the mean
    over the 8 flips and quarter turns, each mapped back.

    Every tile's input starts on the pooling grid and has a length that is the same modulo
    ``2**depth``, so flipped tiles, which pool from their far end, share one grid too: the tiled
    result still equals the untiled one.
    """
    if not flips:
        return 1.0 - torch.softmax(model(inputs), dim=1)[:, 0]
    total = None
    for turns in range(4):
        for mirror in (False, True):
            x = torch.rot90(inputs, turns, dims=(2, 3))
            if mirror:
                x = x.flip(3)
            logits = model(x.contiguous(memory_format=torch.channels_last))
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


def predict(model, image, *, progress: Callable[[TileResult], None] | None = None, **kwargs):
    """Foreground probability of a whole image or stack.

    Takes the arguments of :func:`predict_tiles`; ``progress`` is called with each finished
    :class:`TileResult`. Returns ``(..., H, W)`` float32 in [0, 1] (the channel axis, if any,
    dropped), equal to the untiled prediction.
    """
    plane_image, has_channels = split_channels(np.asarray(image), model.in_channels)
    shape = plane_image.shape[:-1] if has_channels else plane_image.shape
    out = np.empty(shape, dtype=np.float32)
    for result in predict_tiles(model, image, **kwargs):
        out[result.plane][result.region] = result.probabilities
        if progress is not None:
            progress(result)
    return out
