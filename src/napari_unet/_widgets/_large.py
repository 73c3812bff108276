"""Predict's large images: lazy layers region by region in this process, or sent to a cluster.

A layer whose full-resolution data is not in memory (a dask or zarr array, level 0 of a
multiscale layer, a memory map) and would take more than :data:`LAZY_BYTES` to read with its
outputs is never read whole: a :class:`~napari_unet.core.large.regions.PlaneStream` predicts the
blocks in view first (with those their final labels need), the rest on request, and its
results go to an on-disk :class:`LazyOutput` (OME-Zarr pyramids in a folder of their own,
removed once both its layers are gone, or at exit) shown as multiscale layers whose coarser
levels are refreshed block by block. :func:`cluster_job` sends a layer backed by a file to
:func:`~napari_unet.core.large.distributed.segment_large_steps` instead. The dock's controller of
both is :mod:`._large_jobs`. Nothing here runs Qt; the generators run in the dock's worker and
never touch a layer.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ..core.large.blocks import DEFAULT_BLOCK, DEFAULT_HALO, SAMPLE_VALUES
from ._layers import MADE, OF, add_quietly, free_name

if TYPE_CHECKING:
    import napari

__all__ = [
    "CELL_HALO",
    "LAZY_BYTES",
    "InPlane",
    "SAMPLE",
    "LazyOutput",
    "cluster_job",
    "full_resolution",
    "goes_lazy",
    "instance_settings",
    "layer_file",
    "open_labels",
    "visible_region",
]

LAZY_BYTES = 2**30
"""Data not in memory that would take more than this (bytes, with its float32 probability and
labels) to read is predicted region by region, never read whole; less is read into memory and
predicted as any layer."""
SAMPLE = (DEFAULT_BLOCK, SAMPLE_VALUES)
"""Block side and most pixels of the normalisation sample, for the lazy and the cluster route
alike: ``segment_large``'s (and so the CLI's) defaults, whatever the tile size."""
OUTPUT_BYTES = 8 * 4 / 3
"""Bytes per pixel of a :class:`LazyOutput` at most: float32 probability and uint32 labels,
uncompressed, with their pyramids."""
CELL_HALO = DEFAULT_HALO
"""Cell halo (px) of the lazy path: ``segment_large``'s default."""


def full_resolution(layer):
    """The layer's full-resolution data: level 0 of a multiscale layer, else its data."""
    return layer.data[0] if layer.multiscale else layer.data


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


def instance_settings(model, threshold: float, min_size: int | None, expand: int) -> dict:
    """Keyword arguments of :func:`~napari_unet.to_instances` as ``napari-unet predict``
    resolves them (cell-size defaults from the model), so blocks label as the CLI does."""
    from napari_unet.cli import instance_options

    args = SimpleNamespace(threshold=threshold, min_size=min_size, expand=expand)
    return instance_options(model, args)


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
        from ..core.formats.zarrio import create_labels, levels

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
            kind: create_labels(
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


# ------------------------------------------------------------------------------- the cluster
def layer_file(layer):
    """The :class:`~napari_unet.core.formats.zarrio.ImageFile` of the plane a cluster's workers
    read for ``layer``: the file it was opened from, or the zarr array on disk behind its data.
    ValueError, saying what is expected, for anything else (e.g. an array in memory, or a
    layer that shows something else than its file holds: one channel of it, changed data)."""
    from ..core.formats.zarrio import ImageFile, inspect_image
    from ..core.image import MAX_CHANNELS

    data = full_resolution(layer)
    path = getattr(layer.source, "path", None)
    if path:
        info = inspect_image(path)
        shown = tuple(data.shape)
        while len(shown) > 2 and shown[0] == 1:  # singleton axes the file's plane drops
            shown = shown[1:]
        if shown != tuple(info.shape):
            raise ValueError(
                f"'{layer.name}' shows data of shape {tuple(data.shape)} but its file "
                f"{Path(info.path).name} holds a plane of shape {tuple(info.shape)}; cluster "
                "workers read the file, so run on 'this process' to predict what is shown"
            )
    elif type(data).__module__.startswith("zarr") and hasattr(getattr(data, "store", 0), "root"):
        if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] <= MAX_CHANNELS)):
            raise ValueError(
                f"'{layer.name}' has shape {data.shape}; a cluster takes one (y, x) plane, "
                f"with or without up to {MAX_CHANNELS} channels last"
            )
        info = ImageFile(
            str(data.store.root),
            "zarr",
            tuple(data.shape),
            np.dtype(data.dtype),
            component=data.path,
            index=(None,) * data.ndim,
            channel=2 if data.ndim == 3 else None,
        )
    else:
        raise ValueError(
            f"'{layer.name}' has no file napari-unet can find (not opened from a file, and not "
            "a zarr array on disk), so cluster workers cannot read it; open it from a TIFF, "
            "zarr or OME-Zarr file, or run on 'this process'"
        )
    if info.kind == "other":
        raise ValueError(
            f"'{layer.name}' comes from {Path(info.path).name}, which cannot be read a block at "
            "a time; convert it to TIFF or OME-Zarr, or run on 'this process'"
        )
    return info


def cluster_job(model, info, target: Path, *, workers, scheduler, record: dict, **options):
    """The worker's generator: segment ``info`` on a cluster (a new LocalCluster of
    ``workers`` or the one at ``scheduler``) into the OME-Zarr labels ``target`` (written
    atomically); yields ``(tasks done, tasks)``, returns the
    :class:`~napari_unet.core.large.distributed.LargeResult` (its ``labels`` is ``target``).
    Closing it cancels the job and closes a LocalCluster it started. ``options``: those of
    :func:`~napari_unet.core.large.distributed.segment_large_steps`."""
    from contextlib import ExitStack
    from dataclasses import replace

    from .._batch import torch_threads
    from ..core.formats.zarrio import atomic_folder
    from ..core.large.distributed import connect, segment_large_steps, shared_model

    yield 0, 0
    with ExitStack() as stack:
        try:
            client = stack.enter_context(connect(workers=workers, scheduler=scheduler, timeout=10))
        except (OSError, TimeoutError) as err:
            if scheduler is None:
                raise ValueError(
                    f"could not start a local cluster of {workers} worker(s): {err}"
                ) from None
            raise ValueError(
                f"cannot reach the dask scheduler at {scheduler!r} ({err}); expected the address "
                "of a running scheduler, e.g. tcp://host:8786"
            ) from None
        threads = torch_threads(workers)
        name = stack.enter_context(
            shared_model(client, model, threads, unregister=scheduler is not None)
        )
        yield 0, 0
        with atomic_folder(target) as tmp:
            try:
                result = yield from segment_large_steps(
                    client,
                    name,
                    model,
                    info,
                    tmp,
                    pixel_size=info.pixel_size,
                    metadata={**record, "input": info.path},
                    sample_block=SAMPLE[0],
                    sample_values=SAMPLE[1],
                    **options,
                )
            except FileNotFoundError as err:
                if scheduler is None:
                    raise
                raise FileNotFoundError(
                    f"{err}; every worker of the cluster at {scheduler} must see {info.path} "
                    "at that path"
                ) from None
    return replace(result, labels=target)


def open_labels(path: Path) -> list:
    """The levels of the OME-Zarr label image at ``path`` (zarr arrays, read lazily)."""
    import zarr

    from ..core.formats.zarrio import levels

    return levels(zarr.open_group(str(path), mode="r"))
