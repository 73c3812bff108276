"""Overlap-tile plan for a valid-convolution U-Net.

Every tile starts at an offset (in the mirror-padded image) that is a multiple of ``2**depth``, so
it sees the pooling grid of the whole image, and keeps only its ``step`` x ``step`` share of the
output. Tiled prediction therefore equals whole-image prediction, with no blending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Tile", "plan_tiles", "padding", "auto_tile", "tiled_multiply_adds"]

# Peak activation memory of one tile, in bytes per input pixel per base channel (measured with
# torch 2.13 on the CPU, float32, batch 1; see bench/bench_predict.py).
_BYTES_PER_PIXEL_CHANNEL = 24
DEFAULT_MEMORY = 2 * 1024**3  # activation budget of one tile in bytes


@dataclass(frozen=True)
class Tile:
    """One tile of a plane.

    ``inner`` is the part of the image plane whose prediction this tile provides (a tuple of two
    slices); ``source`` is the network input in the padded plane (the image sits at offset
    ``margin`` there); ``crop`` is the part of the network output that maps onto ``inner``.
    """

    inner: tuple[slice, slice]
    source: tuple[slice, slice]
    crop: tuple[slice, slice]

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(s.stop - s.start for s in self.source)


def _axis_plan(length: int, step: int, model) -> list[tuple[int, int, int]]:
    """``(start, keep, input_side)`` per tile along one axis of ``length`` pixels."""
    m = model.multiple
    step = max(m, step // m * m)
    n = math.ceil(length / step)
    step = m * math.ceil(length / (n * m))  # balance the tiles; still a multiple of 2**depth
    plan = []
    for start in range(0, length, step):
        keep = min(step, length - start)
        plan.append((start, keep, model.input_size(keep)))
    return plan


def plan_tiles(shape: tuple[int, int], model, step: int | tuple[int, int]) -> list[Tile]:
    """Tiles covering an ``(H, W)`` plane with a nominal output side ``step`` (px) per tile.

    ``step`` is rounded down to a multiple of ``2**depth`` and then balanced so that the tiles of
    an axis share its length evenly (less overhang past the image).
    """
    steps = (step, step) if isinstance(step, int) else step
    if min(shape) < 1:
        raise ValueError(f"cannot tile an empty plane of shape {shape}")
    ys, xs = (_axis_plan(n, s, model) for n, s in zip(shape, steps, strict=True))
    tiles = []
    for y0, hy, iy in ys:
        for x0, hx, ix in xs:
            tiles.append(
                Tile(
                    inner=(slice(y0, y0 + hy), slice(x0, x0 + hx)),
                    source=(slice(y0, y0 + iy), slice(x0, x0 + ix)),
                    crop=(slice(0, hy), slice(0, hx)),
                )
            )
    return tiles


def padding(shape: tuple[int, int], tiles: list[Tile], margin: int) -> tuple[tuple[int, int], ...]:
    """``((top, bottom), (left, right))`` mirror padding that every tile's source fits into."""
    return tuple(
        (margin, max(t.source[a].stop for t in tiles) - margin - shape[a]) for a in range(2)
    )


def tiled_multiply_adds(shape: tuple[int, int], model, step: int) -> int:
    """Multiply-adds of predicting an ``(H, W)`` plane with tiles of nominal side ``step``."""
    return sum(model.multiply_adds(*t.input_shape) for t in plan_tiles(shape, model, step))


def auto_tile(shape: tuple[int, int], model, memory: int = DEFAULT_MEMORY) -> int:
    """The tile step (px) with the fewest multiply-adds for ``shape`` under a memory budget.

    ``memory`` bounds the activations of one tile in bytes (batch 1, float32).
    """
    per_pixel = _BYTES_PER_PIXEL_CHANNEL * model.base_channels
    largest_input = max(int(math.sqrt(memory / per_pixel)), model.min_input_size)
    largest_step = max(model.multiple, largest_input - 2 * model.margin)
    longest = max(shape)
    candidates = {
        model.multiple * math.ceil(longest / (n * model.multiple))
        for n in range(1, math.ceil(longest / model.multiple) + 1)
    }
    candidates = sorted(s for s in candidates if s <= largest_step) or [largest_step]
    # beyond the cheapest few large steps the cost only grows; do not scan tiny tiles
    candidates = candidates[-12:]
    return min(candidates, key=lambda s: (tiled_multiply_adds(shape, model, s), -s))
