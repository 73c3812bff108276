"""Predict's large images: lazy layers region by region in this process, or sent to a cluster.

A layer whose full-resolution data is lazy (a dask or zarr array, level 0 of a multiscale
layer) and larger than :data:`LAZY_PIXELS` is never read whole: a
:class:`~napari_unet.core.regions.PlaneStream` predicts the blocks in view first (with those
their final labels need), the rest on request, and its results go to an on-disk
:class:`LazyOutput` (OME-Zarr pyramids in a temporary folder, removed with its layers or at
exit) shown as multiscale layers whose coarser levels are refreshed block by block.
:func:`cluster_job` sends a layer backed by a file to
:func:`~napari_unet.core.distributed.segment_large_steps` instead. Nothing here runs Qt; the
generators run in the dock's worker and never touch a layer.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ..core.blocks import DEFAULT_BLOCK, DEFAULT_HALO, SAMPLE_VALUES
from ._layers import MADE, OF, add_quietly, free_name

if TYPE_CHECKING:
    import napari

__all__ = [
    "CELL_HALO",
    "LAZY_PIXELS",
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

LAZY_PIXELS = 2**26
"""A lazy plane with more pixels than this (256 MiB as float32) is predicted region by region,
never read whole; a smaller one is read into memory and predicted as any layer."""
SAMPLE = (DEFAULT_BLOCK, SAMPLE_VALUES)
"""Block side and most pixels of the normalisation sample: ``segment_large``'s defaults, so
both normalise alike."""
CELL_HALO = DEFAULT_HALO
"""Cell halo (px) of the lazy path: ``segment_large``'s default."""


def full_resolution(layer):
    """The layer's full-resolution data: level 0 of a multiscale layer, else its data."""
    return layer.data[0] if layer.multiscale else layer.data


def goes_lazy(data, plane_shape) -> bool:
    """Whether ``data`` (full resolution) is lazy and its planes of ``plane_shape`` too large
    to read whole (see :data:`LAZY_PIXELS`)."""
    return not isinstance(data, np.ndarray) and math.prod(plane_shape[-2:]) > LAZY_PIXELS


def visible_region(viewer: napari.viewer.Viewer, layer, n_spatial: int, shape) -> tuple:
    """``(rows, cols)`` slices of the plane of ``shape`` that the canvas shows (clipped to it;
    the whole plane when none of it is in view)."""
    viewer_camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    displayed = list(viewer.dims.displayed)
    half = np.asarray(viewer.canvas.size, float) / (2 * viewer_camera.zoom)
    center = np.asarray(viewer_camera.center[-len(displayed) :], float)
    corners = []
    for sign in (-1, 1):
        point = np.asarray(viewer.dims.point, dtype=float)
        point[displayed] = center + sign * half
        corners.append(layer.world_to_data(point)[n_spatial - 2 : n_spatial])
    lo, hi = np.minimum(*corners), np.maximum(*corners)
    region = tuple(
        slice(int(max(0, math.floor(a))), int(min(n, math.ceil(b))))
        for a, b, n in zip(lo, hi, shape, strict=True)
    )
    if any(s.start >= s.stop for s in region):
        return tuple(slice(0, n) for n in shape)
    return region


def instance_settings(model, threshold: float, min_size: int | None, expand: int) -> dict:
    """Keyword arguments of :func:`~napari_unet.to_instances` as ``napari-unet predict``
    resolves them (cell-size defaults from the model), so blocks label as the CLI does."""
    from napari_unet.cli import instance_options

    args = SimpleNamespace(threshold=threshold, min_size=min_size, expand=expand)
    return instance_options(model, args)


class LazyOutput:
    """Probabilities and labels of a :class:`~napari_unet.core.regions.PlaneStream` on disk.

    Two OME-Zarr pyramids (chunks of the stream's block size) in a temporary folder, shown as
    a multiscale Image (probability, additive, over ``image``) and Labels layer; the folder
    is removed when both layers are removed from the viewer, or at exit.
    """

    def __init__(self, viewer: napari.viewer.Viewer, image, stream, n_spatial: int) -> None:
        from ..core.zarrio import create_labels

        self.viewer = viewer
        self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        shape, chunks = stream.shape, stream.chunks
        self.roots = {
            kind: create_labels(self.folder / f"{kind}.ome.zarr", shape, chunks, dtype)
            for kind, dtype in (("probability", np.float32), ("prediction", np.uint32))
        }
        common = {
            "scale": image.scale[n_spatial - 2 : n_spatial],
            "translate": image.translate[n_spatial - 2 : n_spatial],
            "units": image.units[n_spatial - 2 : n_spatial],
        }
        levels = {kind: self._levels(kind) for kind in self.roots}
        probability = Image(
            levels["probability"],
            multiscale=len(levels["probability"]) > 1,
            contrast_limits=(0.0, 1.0),
            colormap="magma",
            blending="additive",
            name=free_name(viewer, f"{image.name} probability (large)"),
            metadata={MADE: "probability (large)", OF: image.name},
            **common,
        )
        self.probability = add_quietly(viewer, probability, index=viewer.layers.index(image) + 1)
        labels = Labels(
            levels["prediction"],
            multiscale=len(levels["prediction"]) > 1,
            name=free_name(viewer, f"{image.name} prediction (large)"),
            metadata={MADE: "prediction (large)", OF: image.name},
            **common,
        )
        self.labels = add_quietly(viewer, labels)
        viewer.layers.events.removed.connect(self._on_removed)

    def _levels(self, kind: str) -> list:
        root = self.roots[kind]
        return [root[str(level)] for level in range(len(root.attrs["multiscales"][0]["datasets"]))]

    @property
    def shown(self) -> bool:
        """Whether either layer is still in the viewer."""
        return self.labels in self.viewer.layers or self.probability in self.viewer.layers

    def write(self, kind: str, region: tuple[slice, slice], values: np.ndarray) -> None:
        """Write ``values`` of level-0 ``region`` of ``kind`` and refresh its coarser levels."""
        from ..core.zarrio import write_level

        root = self.roots[kind]
        root["0"][region] = values
        for level in range(1, len(root.attrs["multiscales"][0]["datasets"])):
            f = 2**level
            shape = root[str(level)].shape
            scaled = tuple(
                slice(-(-s.start // f), min(-(-s.stop // f), n))
                for s, n in zip(region, shape, strict=True)
            )
            if all(s.start < s.stop for s in scaled):
                write_level(root, level, scaled)

    def refresh(self) -> None:
        for layer in (self.labels, self.probability):
            if layer in self.viewer.layers:
                layer.refresh()

    def _on_removed(self, _event=None) -> None:
        if not self.shown:
            self.close()

    def close(self) -> None:
        """Remove the folder (the layers must be gone: they read from it)."""
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        self._cleanup()


# ------------------------------------------------------------------------------- the cluster
def layer_file(layer):
    """The :class:`~napari_unet.core.zarrio.ImageFile` of the plane a cluster's workers read
    for ``layer``: the file it was opened from, or the zarr array on disk behind its data.
    ValueError, saying what is expected, for anything else (e.g. an array in memory)."""
    from ..core.zarrio import ImageFile, inspect_image

    data = full_resolution(layer)
    path = getattr(layer.source, "path", None)
    if path:
        info = inspect_image(path)
    elif type(data).__module__.startswith("zarr") and hasattr(getattr(data, "store", 0), "root"):
        if data.ndim != 2 and not (layer.rgb and data.ndim == 3):
            raise ValueError(
                f"'{layer.name}' has shape {data.shape}; a cluster takes one (y, x) plane, "
                "with or without colour channels"
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
            f"'{layer.name}' is held in memory with no file behind it, so cluster workers "
            "cannot read it; open it from a TIFF, zarr or OME-Zarr file, or run on "
            "'this process'"
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
    :class:`~napari_unet.core.distributed.LargeResult` (its ``labels`` is ``target``).
    Closing it cancels the job and closes a LocalCluster it started. ``options``: those of
    :func:`~napari_unet.core.distributed.segment_large_steps`."""
    from contextlib import ExitStack
    from dataclasses import replace

    from .._batch import _torch_threads
    from ..core.distributed import connect, segment_large_steps, share_model
    from ..core.zarrio import atomic_folder

    yield 0, 0
    with ExitStack() as stack:
        try:
            client = stack.enter_context(connect(workers=workers, scheduler=scheduler, timeout=10))
        except (OSError, TimeoutError) as err:
            raise ValueError(
                f"cannot reach the dask scheduler at {scheduler!r} ({err}); expected the address "
                "of a running scheduler, e.g. tcp://host:8786"
            ) from None
        name = share_model(client, model, torch_threads=_torch_threads(workers))
        yield 0, 0
        with atomic_folder(target) as tmp:
            result = yield from segment_large_steps(
                client,
                name,
                model,
                info,
                tmp,
                pixel_size=info.pixel_size,
                metadata={**record, "input": info.path},
                **options,
            )
    return replace(result, labels=target)


def open_labels(path: Path) -> list:
    """The levels of the OME-Zarr label image at ``path`` (zarr arrays, read lazily)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    datasets = root.attrs["multiscales"][0]["datasets"]
    return [root[d["path"]] for d in datasets]
