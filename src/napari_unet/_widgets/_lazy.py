"""Predict's lazy route: a large image that is not in memory, region by region in this process.

A layer whose full-resolution data is not in memory (a dask or zarr array, level 0 of a multiscale
layer, a memory map) and would take more than :data:`LAZY_BYTES` to read with its outputs is never
read whole: a :class:`~napari_unet.core.large.regions.PlaneStream` predicts the blocks in view
first (with those their final labels need), the rest on request, and its results go to an on-disk
:class:`LazyOutput` (OME-Zarr pyramids in a folder of their own, removed once both its layers are
gone, or at exit) shown as multiscale layers whose coarser levels are refreshed block by block. For
a model that works at one cell size, each block is resampled to it and back in the core (the
stream's diameter: typed, else resolved in the worker before the first block, which yields the
:class:`~._diameter.Sized` the dock shows), so the layers stay on the image's grid; the cell sizes
left automatic follow that diameter, as on the other routes.
:class:`LazyJobs` keeps a layer's :class:`LazyJob` (its stream, kept while the layer, the model's
weights and the settings stay the same, so 'Predict the rest' goes on where the last run stopped)
and every :class:`LazyOutput` until *its own* layers are gone (a newer job, or the input image
removed, never removes an older job's results). The stream runs in the dock's worker and never
touches a layer.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ..core.large.blocks import DEFAULT_HALO
from . import _runs
from ._diameter import Sized, said, sized_of
from ._layers import MADE, MODEL, OF, add_quietly, free_name, full_resolution

if TYPE_CHECKING:
    import napari

    from ..core.large.regions import PlaneStream
    from ..core.network.model import UNet
    from ._runs import Settings
    from ._worker import Outcome

__all__ = [
    "CELL_HALO",
    "LAZY_BYTES",
    "InPlane",
    "LazyJob",
    "LazyJobs",
    "LazyOutput",
    "LazyRun",
    "goes_lazy",
    "visible_region",
]

LAZY_BYTES = 2**30
"""Data not in memory that would take more than this (bytes, with its float32 probability and
labels) to read is predicted region by region, never read whole; less is read into memory and
predicted as any layer."""
OUTPUT_BYTES = 8 * 4 / 3
"""Bytes per pixel of a :class:`LazyOutput` at most: float32 probability and uint32 labels,
uncompressed, with their pyramids."""
CELL_HALO = DEFAULT_HALO
"""Cell halo (px) of the lazy path: ``segment_large``'s default."""


def goes_lazy(data, shape, read) -> bool:
    """Whether reading ``read`` (the spatial shape of what a run reads: a plane, or the whole
    ``shape``) of ``data`` (full resolution, spatial ``shape`` and maybe channels) with its
    outputs takes more than :data:`LAZY_BYTES`, and ``data`` is not in memory already (a
    dask or zarr array, a memory map)."""
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        return False
    channels = math.prod(data.shape) // max(1, math.prod(shape))
    per_pixel = channels * np.dtype(data.dtype).itemsize + 8  # float32 probability, labels
    return math.prod(read) * per_pixel > LAZY_BYTES


def visible_region(viewer: napari.viewer.Viewer, layer, n_spatial: int, shape) -> tuple:
    """``(rows, cols)`` slices of the plane of ``shape`` that the 2D canvas shows (the box
    around its four corners in data coordinates, clipped to the plane). ValueError in 3D view
    or when none of the plane is in view."""
    if viewer.dims.ndisplay != 2:
        raise ValueError(
            "switch to 2D view to predict the visible region (or use 'Predict the rest')"
        )
    viewer_camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    displayed = list(viewer.dims.displayed)
    half = np.asarray(viewer.canvas.size, float) / (2 * viewer_camera.zoom)
    center = np.asarray(viewer_camera.center[-len(displayed) :], float)
    corners = []
    for signs in itertools.product((-1, 1), repeat=2):  # all four: rotated or sheared too
        point = np.asarray(viewer.dims.point, dtype=float)
        point[displayed] = center + np.asarray(signs) * half
        corners.append(layer.world_to_data(point)[n_spatial - 2 : n_spatial])
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    region = tuple(
        slice(int(max(0, math.floor(a))), int(min(n, math.ceil(b))))
        for a, b, n in zip(lo, hi, shape, strict=True)
    )
    if any(s.start >= s.stop for s in region):
        raise ValueError(
            f"none of '{layer.name}' is in view; pan to the image to predict what is shown"
        )
    return region


class InPlane:
    """A 2-D array (e.g. a zarr level) seen as plane ``prefix`` of a stack: shape
    ``(1,) * len(prefix) + array.shape``, read through (only what is asked), never copied."""

    def __init__(self, array, prefix: tuple[int, ...]) -> None:
        self.array, self.lead = array, len(prefix)
        self.shape = (1,) * self.lead + tuple(array.shape)
        self.dtype, self.ndim, self.size = array.dtype, len(self.shape), math.prod(self.shape)

    def _split(self, key) -> tuple[tuple, tuple]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = [k is Ellipsis for k in key].index(True)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        return key[: self.lead], key[self.lead :]

    def __getitem__(self, key):
        head, tail = self._split(key)
        values = np.asarray(self.array[tail])
        return values.reshape((1,) * self.lead + values.shape)[head]


class LazyOutput:
    """Probabilities and labels of a :class:`~napari_unet.core.large.regions.PlaneStream` on disk.

    Two OME-Zarr pyramids (an image and labels, chunks of the stream's block size) in a new folder
    ``napari-unet-*`` in ``parent`` (the system's temporary folder by default), shown as a
    multiscale Image (probability, additive, over ``image``) and Labels layer, at plane
    ``prefix`` of a stack ``image`` (the layers' data are :class:`InPlane` levels). The folder is
    removed once both layers are removed from the viewer (whoever else still refers to this
    object), or at exit; after that :attr:`closed` is True and :meth:`write` does nothing.
    OSError, saying how much is needed, when ``parent`` has too little free space.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        image,
        stream,
        n_spatial: int,
        parent=None,
        prefix: tuple[int, ...] = (),
    ) -> None:
        from ..core.formats.zarrio import create_multiscale, levels

        parent = Path(parent or tempfile.gettempdir())
        needed, free = math.prod(stream.shape) * OUTPUT_BYTES, shutil.disk_usage(parent).free
        if needed > free:
            raise OSError(
                f"the results need up to {needed / 1e9:.1f} GB in {parent}, which has "
                f"{free / 1e9:.1f} GB free; choose another folder in 'save labels in'"
            )
        self.viewer = viewer
        self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-", dir=parent))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        shape, chunks = stream.shape, stream.chunks
        self.roots = {
            kind: create_multiscale(
                self.folder / f"{kind}.ome.zarr", shape, chunks, dtype, label=kind == "prediction"
            )
            for kind, dtype in (("probability", np.float32), ("prediction", np.uint32))
        }
        first = n_spatial - 2 - len(prefix)  # the stack axes of the plane, then (y, x)
        scale, translate = np.asarray(image.scale), np.asarray(image.translate, float)
        translate[first : n_spatial - 2] += scale[first : n_spatial - 2] * np.asarray(prefix)
        common = {
            "scale": scale[first:n_spatial],
            "translate": translate[first:n_spatial],
            "units": image.units[first:n_spatial],
        }
        arrays = {
            kind: [InPlane(a, prefix) if prefix else a for a in levels(root)]
            for kind, root in self.roots.items()
        }
        probability = Image(
            arrays["probability"],
            multiscale=len(arrays["probability"]) > 1,
            contrast_limits=(0.0, 1.0),
            colormap="magma",
            blending="additive",
            name=free_name(viewer, f"{image.name} probability (large)"),
            metadata={MADE: "probability (large)", OF: image.name},
            **common,
        )
        self.probability = add_quietly(viewer, probability, index=viewer.layers.index(image) + 1)
        labels = Labels(
            arrays["prediction"],
            multiscale=len(arrays["prediction"]) > 1,
            name=free_name(viewer, f"{image.name} prediction (large)"),
            metadata={MADE: "prediction (large)", OF: image.name},
            **common,
        )
        self.labels = add_quietly(viewer, labels)
        viewer.layers.events.removed.connect(self._on_removed)

    @property
    def shown(self) -> bool:
        """Whether either layer is still in the viewer."""
        return self.labels in self.viewer.layers or self.probability in self.viewer.layers

    @property
    def closed(self) -> bool:
        """Whether the folder is removed (both layers are gone)."""
        return not self._cleanup.alive

    def write(self, kind: str, region: tuple[slice, slice], values: np.ndarray) -> None:
        """Write ``values`` of level-0 ``region`` of ``kind`` and refresh its coarser levels;
        nothing once :attr:`closed` (a run whose layers were removed under it)."""
        from ..core.formats.zarrio import update_levels

        if self.closed:
            return
        root = self.roots[kind]
        root["0"][region] = values
        update_levels(root, region)

    def refresh(self) -> None:
        for layer in (self.labels, self.probability):
            if layer in self.viewer.layers:
                layer.refresh()

    def _on_removed(self, _event=None) -> None:
        if not self.shown:
            self.close()

    def close(self) -> None:
        """Remove the folder (the layers must be gone: they read from it)."""
        if not self.closed:
            self.viewer.layers.events.removed.disconnect(self._on_removed)
            self._cleanup()


@dataclass
class LazyJob:
    """A lazy image predicted region by region: its stream, what it was made with (``key``),
    and its on-disk outputs; kept between runs (visible region, then the rest)."""

    image: Image
    key: tuple
    stream: PlaneStream
    output: LazyOutput


@dataclass
class LazyRun:
    """One run of a :class:`LazyJob` (some of its blocks)."""

    job: LazyJob
    total: int  # blocks this run predicts
    done: int = 0
    dirty: bool = False
    sized: Sized | None = None  # the worker's first event

    @property
    def status(self) -> str:
        return f"block {self.done}/{self.total}"

    def apply(self, event) -> str | None:
        from napari_unet.core.large.regions import BlockProbabilities

        if isinstance(event, Sized):
            self.sized = event
            return None
        output = self.job.output
        if output.closed:
            return "the results' layers were removed; the run stops"
        try:
            if isinstance(event, BlockProbabilities):
                output.write("probability", event.region, event.probabilities)
                self.done += 1
            else:
                output.write("prediction", event.region, event.labels)
        except OSError as err:
            return f"cannot write the results in {output.folder}: {err}"
        self.dirty = True
        return None

    def refresh(self) -> None:
        self.job.output.refresh()

    def finish(self, outcome: Outcome) -> str:
        stream = self.job.stream
        n = len(stream.blocks)
        text = (
            f"{self.done} block(s) predicted, {n - stream.left}/{n} labelled, "
            f"{stream.cells} cell(s)"
        )
        if outcome.error is not None:
            return f"failed; {text} (kept)"
        if outcome.cancelled:
            return f"cancelled; {text} (kept)"
        more = "; 'Predict the rest' for the others" if stream.left else ""
        return f"done: {text}{said(self.sized)}{more}"

    def discard(self) -> None:
        """Nothing: the job and its layers stay for the next run."""

    def drop(self) -> None:
        """Remove the job's layers (its image was closed); their folder goes with them."""
        output = self.job.output
        for layer in (output.labels, output.probability):
            if layer in output.viewer.layers:
                output.viewer.layers.remove(layer)


class LazyJobs:
    """The lazy jobs of one Predict dock on ``viewer``, and their outputs."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.jobs: dict[int, LazyJob] = {}  # id of an image layer: its lazy job
        self.outputs: list[LazyOutput] = []  # every lazy output whose layers are shown

    def prune(self) -> None:
        """Forget what the viewer's layers no longer need (call on every change of them)."""
        layers = self.viewer.layers
        for key, job in list(self.jobs.items()):
            if job.image not in layers or not job.output.shown:
                del self.jobs[key]
        for output in [out for out in self.outputs if not out.shown]:
            self.outputs.remove(output)
            output.close()

    def can_go_on(self, layer) -> bool:
        """Whether ``layer`` has a lazy job with blocks left ('Predict the rest')."""
        job = self.jobs.get(id(layer))
        return job is not None and job.stream.left > 0

    def start(
        self,
        layer: Image,
        model: UNet,
        shape: tuple[int, ...],
        prefix: tuple[int, ...] | None,
        center: tuple[float, float],
        settings: Settings,
        *,
        rest: bool,
    ):
        """``(run, generator)`` of ``layer``'s :class:`LazyJob` (made, or kept from an earlier
        run with the same weights and settings) over the blocks in view and those their labels
        need (``rest``: over all blocks left), nearest to ``center`` first. ``shape``: the
        spatial shape; ``prefix``: the index of the plane of a stack (None: all planes,
        refused). ValueError / OSError, saying why, when it cannot start."""
        from napari_unet.core.large.regions import PlaneStream
        from napari_unet.core.prediction.tiling import auto_tile
        from napari_unet.outputs import model_sha256

        data = full_resolution(layer)
        if prefix is None:
            raise ValueError(
                f"'{layer.name}' is too large to read whole; predict it a plane at a time "
                "('current plane')"
            )
        if prefix:
            data = _lazy_plane(data, prefix)
        plane_shape = shape[len(prefix) :]
        if tuple(data.shape[:2]) != tuple(plane_shape):
            raise ValueError(
                f"'{layer.name}' has its channels first (shape {data.shape}); a large image is "
                "predicted from (y, x) or (y, x, channels) planes"
            )
        step = settings.block or auto_tile(plane_shape, model)
        # the options asked (sizes None: automatic) and the typed diameter make the sizes
        instance = tuple(sorted(settings.config.options().items()))
        key = (model_sha256(model), prefix, step, settings.flips, instance, settings.diameter)
        key += (settings.precision,)
        visible = None
        if not rest:  # before any layer is made: a view that shows nothing is refused
            visible = visible_region(self.viewer, layer, len(shape), plane_shape)
        job = self.jobs.get(id(layer))
        if job is None or job.key != key or not job.output.shown:
            stream = PlaneStream(
                model,
                data,
                step=step,
                halo=CELL_HALO,
                instance=settings.config,
                flips=settings.flips,
                sample_block=_runs.SAMPLE[0],
                sample_values=_runs.SAMPLE[1],
                diameter=settings.diameter,
                precision=settings.precision,
            )
            output = LazyOutput(self.viewer, layer, stream, len(shape), settings.folder, prefix)
            for made in (output.labels, output.probability):
                made.metadata[MODEL] = settings.model_label
            self.outputs.append(output)
            job = self.jobs[id(layer)] = LazyJob(layer, key, stream, output)
        stream = job.stream
        if rest:
            order = stream.by_distance(range(len(stream.blocks)), center)
        else:
            seen = stream.overlapping(visible)
            order = stream.by_distance(seen, center)
            order += stream.by_distance(stream.needed(seen) - set(seen), center)
        todo = [i for i in order if i not in stream.predicted]
        return LazyRun(job, total=len(todo)), _lazy_job(stream, todo)


def _lazy_job(stream: PlaneStream, todo: list[int]):
    """The worker's generator: the :class:`~._diameter.Sized` the plane is predicted at (its
    diameter resolved first, maybe estimated, and the sizes with it), then the stream's events
    for the blocks ``todo``."""
    stream.prepare()
    yield sized_of(stream.model, stream.resampling)
    yield from stream.run(todo)


def _lazy_plane(data, prefix: tuple[int, ...]):
    """Plane ``prefix`` of the lazy stack ``data`` (dask, zarr, a memory map), still lazy."""
    import dask.array as da

    stack = data if isinstance(data, da.Array) else da.from_array(data)
    return stack[prefix]
