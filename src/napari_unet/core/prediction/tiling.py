"""Overlap-tile plan for a valid-convolution U-Net.

Every tile starts at an offset (in the mirror-padded image) that is a multiple of ``2**depth``, so
it sees the pooling grid of the whole image, and keeps only its ``step`` x ``step`` share of the
output. Tiled prediction therefore equals whole-image prediction, with no blending.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_MEMORY",
    "mirror_indices",
    "Tile",
    "plan_tiles",
    "padding",
    "auto_tile",
    "largest_step",
    "tile_memory",
    "tiled_multiply_adds",
]

# Peak memory of one tile's forward pass in bytes per input pixel per base channel (float32, batch
# 1): the VmHWM rise of a fresh process over three passes inside keep_freed_memory, as predict
# runs tiles (torch 2.13, CPU, base 16 and 64, inputs 700-2236; bench/bench_predict.py section
# 6): 21-27 after one pass, 24-35 after several (heap fragmentation varies from run to run). The
# live tensors peak at the first up-convolution block at ~23.5 B (all skips ~1.9 x base channels,
# up-conv output 1x, concatenation 2x, block output 1x; 4 B each); the former 24 was that alone.
_BYTES_PER_PIXEL_CHANNEL = 32
DEFAULT_MEMORY = 2 * 1024**3  # memory budget of one tile in bytes
# Each prediction page-faults the memory of its largest tile in afresh (allocator.py hands it back
# when the call ends; later tiles reuse it): 0.2-0.4 ns per byte, the time of 11-26 multiply-adds
# per byte of the estimate above on a 2-core AVX2 CPU (bench section 6). auto_tile charges it, so
# a base-16 network on 2048 x 2048 runs four 1212-px tiles (3.1 s) instead of one 2236-px tile
# (3.5 s) that has 6% fewer multiply-adds; any value in 8-37 picks the same tiles there.
_MULTIPLY_ADDS_PER_FAULTED_BYTE = 20


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


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` of positions ``start..stop-1`` of its mirror extension.

    Position ``p`` (negative or past the end) maps as ``np.pad(..., mode="symmetric")`` does, for
    any pad width: period ``2 * length``, the second half reversed (the padding of tiles).
    """
    p = np.arange(start, stop) % (2 * length)
    return np.where(p < length, p, 2 * length - 1 - p)


def padding(shape: tuple[int, int], tiles: list[Tile], margin: int) -> tuple[tuple[int, int], ...]:
    """``((top, bottom), (left, right))`` mirror padding that every tile's source fits into."""
    return tuple(
        (margin, max(t.source[a].stop for t in tiles) - margin - shape[a]) for a in range(2)
    )


def tiled_multiply_adds(tiles, model) -> int:
    """Multiply-adds of running ``tiles`` (from :func:`plan_tiles`) through ``model``."""
    shapes = Counter(t.input_shape for t in tiles)  # few distinct shapes, maybe many tiles
    return sum(n * model.multiply_adds(*shape) for shape, n in shapes.items())


def tile_memory(model, input_shape: tuple[int, int]) -> int:
    """Estimated peak memory (bytes) of one forward pass on an ``(h, w)`` input (batch 1,
    float32)."""
    return _BYTES_PER_PIXEL_CHANNEL * model.base_channels * math.prod(input_shape)


def largest_step(model, memory: int = DEFAULT_MEMORY) -> int:
    """The largest tile step (px) whose square tile stays within ``memory`` bytes (at least
    ``2**depth``, the smallest step, whatever its memory)."""
    per_pixel = _BYTES_PER_PIXEL_CHANNEL * model.base_channels
    largest_input = max(int(math.sqrt(memory / per_pixel)), model.min_input_size)
    m = model.multiple
    step = max(m, (largest_input - 2 * model.margin) // m * m)
    while step > m and model.input_size(step) > largest_input:
        step -= m
    return step


def auto_tile(shape: tuple[int, int], model, memory: int = DEFAULT_MEMORY) -> int:
    """The tile step (px) with the least work for ``shape`` under a memory budget.

    Work is the multiply-adds of all tiles plus the page faults of one tile's activations (in
    multiply-add equivalents). ``memory`` bounds the activations of one tile in bytes (batch 1,
    float32).
    """
    per_pixel = _BYTES_PER_PIXEL_CHANNEL * model.base_channels
    cap = largest_step(model, memory)
    longest = max(shape)
    candidates = {
        model.multiple * math.ceil(longest / (n * model.multiple))
        for n in range(1, math.ceil(longest / model.multiple) + 1)
    }
    candidates = sorted(s for s in candidates if s <= cap) or [cap]
    # beyond the cheapest few large steps the cost only grows; do not scan tiny tiles
    candidates = candidates[-12:]

    def work(step: int) -> int:
        tiles = plan_tiles(shape, model, step)
        largest = max(math.prod(t.input_shape) for t in tiles)
        faults = _MULTIPLY_ADDS_PER_FAULTED_BYTE * per_pixel * largest
        return tiled_multiply_adds(tiles, model) + faults

    return min(candidates, key=lambda s: (work(s), -s))
