"""A large plane predicted region by region in this process, in any order, never read whole.

:class:`PlaneStream` holds what has been done of one plane between runs: each run predicts the
blocks it is given (:func:`~napari_unet.core.large.blocks.predict_block`, one shared
:class:`~napari_unet.core.large.blocks.Normalisation` estimated once from the same lattice sample
as :func:`~napari_unet.core.large.distributed.segment_large`'s whatever the block sizes, so every
block's probabilities equal ``segment_large``'s and ``predict``'s), yields them one by one, and
labels cells with the seam rule of :mod:`~napari_unet.core.large.seams` as soon as a block's
neighbourhood is predicted: a block's window (its core grown by the cell halo) is labelled once
every block it overlaps is predicted, and a block's labels are final once every window that
reaches into it is labelled. Ids are unique: the cells a window owns get the next free ids when
it is labelled. Only the probabilities and owned cells still needed by an unfinished neighbour
stay in memory.

For a model that works at one cell size, the plane's diameter is resolved once, on the first run
(:func:`~napari_unet.core.large.blocks.plane_resampling`: given, fine-tuned, or estimated on the
plane's central region), and every block is resampled, predicted and resampled back on its own
(:func:`~napari_unet.core.large.blocks.predict_block`): blocks, halos and labels stay on the
image's grid, and equal ``predict`` at that diameter; the cell sizes left open follow it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .blocks import (
    DEFAULT_BLOCK,
    DEFAULT_HALO,
    SAMPLE_VALUES,
    assemble,
    cell_window,
    corners,
    estimate_normalisation,
    model_source,
    opened,
    overlapping,
    plan_blocks,
    plane_resampling,
    predict_block,
)
from .seams import final_ids, owned_cells, paint

__all__ = ["BlockProbabilities", "BlockLabels", "PlaneStream"]


@dataclass(frozen=True)
class BlockProbabilities:
    """``(h, w)`` float32 foreground ``probabilities`` of ``region`` (block ``index``)."""

    index: int
    region: tuple[slice, slice]
    probabilities: np.ndarray


@dataclass(frozen=True)
class BlockLabels:
    """Final ``(h, w)`` uint32 instance ``labels`` of ``region`` (block ``index``)."""

    index: int
    region: tuple[slice, slice]
    labels: np.ndarray


class PlaneStream:
    """Prediction and instance labelling of one ``(H, W[, C])`` plane, block by block.

    Parameters
    ----------
    model
        A :class:`~napari_unet.UNet` (every run predicts with it); RGB(A) planes are seen as
        grey by a one-channel model.
    source
        The plane: anything sliceable (a dask or zarr array, a memory map), read a block with
        its margin at a time.
    step
        Block side (px, on the pooling grid as tiles are): a run yields once per block.
    halo
        Cell halo (px): larger than a cell, so cells are whole across blocks.
    instance
        Keyword arguments of :func:`~napari_unet.to_instances` (or an
        :class:`~napari_unet.InstanceConfig`); ``min_size`` and ``min_core`` left ``None`` or
        absent are sized by the plane's diameter once it is resolved, as ``predict``'s result
        sizes them (:func:`~napari_unet.core.prediction.predict.instance_options`).
    flips
        Average the 8 flips and quarter turns (see :func:`~napari_unet.predict`).
    precision
        ``"auto"``, ``"fp32"`` or ``"bf16"``: the network's arithmetic (see
        :func:`~napari_unet.predict`), resolved for the device of each run.
    sample_block, sample_values
        Block side of the normalisation sample's lattice, independent of ``step`` (the
        defaults are ``segment_large``'s), and its most pixels (see
        :func:`~napari_unet.core.large.blocks.sample_blocks`).
    diameter
        Median diameter (px) of the plane's cells, for a model that says its cell size;
        ``None`` resolves it on the first run as :func:`~napari_unet.predict` does (the model's
        fine-tuned cells, else an estimate on the plane's central region, else as it comes).

    Attributes
    ----------
    order
        The blocks predicted so far, in the order they were predicted.
    resampling
        The plane's :class:`~napari_unet.core.prediction.scale.Resampling` (its diameter and
        where it came from), once resolved (:meth:`prepare`); ``None`` before.
    instance
        The keyword arguments :func:`~napari_unet.to_instances` is given, sized by the
        plane's diameter once it is resolved; ``None`` before.
    """

    def __init__(
        self,
        model,
        source,
        *,
        step: int,
        halo: int = DEFAULT_HALO,
        instance: dict | None = None,
        flips: bool = False,
        sample_block: int = DEFAULT_BLOCK,
        sample_values: int = SAMPLE_VALUES,
        diameter: float | None = None,
        precision: str = "auto",
    ) -> None:
        from ..network.precision import check_precision

        self.model = model
        self.precision = check_precision(precision)
        self.source = model_source(source, model.in_channels)
        self.diameter = diameter
        self.resampling = None
        self._asked = instance
        self.instance: dict | None = None
        if diameter is not None:  # checked now (ValueError out of range); nothing is read
            self._resolved(plane_resampling(model, self.source, diameter))
        self.shape = tuple(int(n) for n in source.shape[:2])
        self.blocks = plan_blocks(self.shape, model, step)
        self.cores = [b.inner for b in self.blocks]
        self._corners = corners(self.cores)
        windows = [cell_window(core, halo, self.shape) for core in self.cores]
        self.windows = windows
        # window j overlaps core k <=> block k's probabilities are read to label window j
        # <=> window j's cells are painted into core k: one neighbourhood serves both ways
        self._near = [self.overlapping(w) for w in windows]
        self._sample = plan_blocks(self.shape, model, sample_block)
        self._sample_values = sample_values
        self.flips = flips
        self.norm = None
        self.predicted: set[int] = set()
        self.order: list[int] = []
        self.painted: set[int] = set()
        self.cells = 0  # ids handed out so far
        self.cut = 0  # cells that reach past their window (larger than the halo)
        self._labelled: set[int] = set()
        self._offsets = np.zeros(len(self.blocks), np.uint64)
        self._probs: dict[int, np.ndarray] = {}
        self._owned: dict[int, np.ndarray] = {}

    def _resolved(self, grid) -> None:
        """Keep the plane's resampling ``grid``, and size the cells by its diameter."""
        from ..prediction.predict import instance_options

        self.resampling = grid
        self.instance = instance_options(self._asked, self.model, grid.diameter, grid.source)

    def prepare(self, device=None) -> None:
        """Estimate the normalisation (reading its sample) and resolve the diameter (maybe
        estimating it on the plane's central region), unless done already; the first
        :meth:`run` does it too. Slow: call it where the runs go (a worker thread)."""
        if self.norm is not None and self.resampling is not None:
            return
        with opened(self.source) as plane:
            self._prepare(plane, device)

    def _prepare(self, plane, device) -> None:
        if self.norm is None:
            self.norm = estimate_normalisation(plane, self._sample, values=self._sample_values)
        if self.resampling is None:
            grid = plane_resampling(
                self.model, plane, self.diameter, device=device, precision=self.precision
            )
            self._resolved(grid)

    @property
    def chunks(self) -> tuple[int, int]:
        """``(h, w)`` of the first block: every block of an axis but the last has its size."""
        return tuple(s.stop - s.start for s in self.cores[0])

    def overlapping(self, region: tuple[slice, slice]) -> list[int]:
        """Indices of the blocks whose core overlaps ``region`` (plane coordinates)."""
        return overlapping(region, self._corners)

    def needed(self, indices: Iterable[int]) -> set[int]:
        """The blocks to predict so that the labels of blocks ``indices`` are final."""
        windows = {j for k in indices for j in self._near[k]}
        return {i for j in windows for i in self._near[j]}

    def by_distance(self, indices: Iterable[int], center: tuple[float, float]) -> list[int]:
        """``indices`` nearest to ``center`` (``(y, x)``) first."""

        def distance(i: int) -> float:
            (rows, cols) = self.cores[i]
            cy, cx = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2
            return (cy - center[0]) ** 2 + (cx - center[1]) ** 2

        return sorted(indices, key=lambda i: (distance(i), i))

    @property
    def left(self) -> int:
        """Blocks whose labels are not final yet."""
        return len(self.blocks) - len(self.painted)

    def run(
        self, indices: Iterable[int], device=None
    ) -> Iterator[BlockProbabilities | BlockLabels]:
        """Predict the blocks ``indices`` not predicted yet, in that order; yields each one's
        :class:`BlockProbabilities`, and the :class:`BlockLabels` of every block whose labels
        became final. The first run prepares the stream (:meth:`prepare`) unless done. Closed
        between two yields, the stream stays consistent: a later run goes on from there."""
        with opened(self.source) as plane:
            self._prepare(plane, device)
            for i in sorted(self.predicted):  # a run closed before labelling its last block
                yield from self._label_around(i)
            for i in indices:
                if i in self.predicted:
                    continue
                block = self.blocks[i]
                probs = predict_block(
                    self.model,
                    plane,
                    block,
                    self.norm,
                    flips=self.flips,
                    device=device,
                    resampling=self.resampling,
                    precision=self.precision,
                )
                self._probs[i] = probs
                self.predicted.add(i)
                self.order.append(i)
                yield BlockProbabilities(i, self.cores[i], probs)
                yield from self._label_around(i)

    def _label_around(self, i: int) -> Iterator[BlockLabels]:
        """Label the windows that block ``i`` completed; yield the cores they completed."""
        for j in self._near[i]:
            if j not in self._labelled and self.predicted.issuperset(self._near[j]):
                self._label(j)
        for j in self._near[i]:
            for k in self._near[j] if j in self._labelled else ():
                if k not in self.painted and self._labelled.issuperset(self._near[k]):
                    pieces = [(p, self.windows[p], self._owned[p]) for p in self._near[k]]
                    ids = final_ids(paint(self.cores[k], pieces), self._offsets, np.uint32)
                    self.painted.add(k)
                    self._forget(k)
                    yield BlockLabels(k, self.cores[k], ids)

    def _label(self, j: int) -> None:
        """Label window ``j`` (every block it overlaps is predicted); its cells get the next
        free ids."""
        from ..prediction.instances import to_instances

        near = self._near[j]
        cores, probs = [self.cores[i] for i in near], [self._probs[i] for i in near]
        prob = assemble(self.windows[j], cores, probs)
        owned, n, cut = owned_cells(
            to_instances(prob, **self.instance), self.windows[j], self.cores[j], self.shape
        )
        self._owned[j] = owned
        self._offsets[j] = self.cells
        self.cells += n
        self.cut += cut
        self._labelled.add(j)
        for i in near:  # probabilities no window still needs
            if self._labelled.issuperset(self._near[i]):
                self._probs.pop(i, None)

    def _forget(self, k: int) -> None:
        """Drop the owned cells of the windows whose every core is painted (``k`` just was)."""
        for j in self._near[k]:
            if self.painted.issuperset(self._near[j]):
                self._owned.pop(j, None)
