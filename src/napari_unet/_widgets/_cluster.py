"""Predict's cluster route: a layer's file segmented block by block on a dask cluster.

:func:`layer_file` finds the file a layer shows (the cluster's workers read it themselves),
:func:`cluster_job` sends it to :func:`~napari_unet.core.large.distributed.segment_large_steps`
(OME-Zarr labels written atomically), and :class:`ClusterRun` opens the labels as a layer once
complete. :class:`ClusterResults` keeps the temporary folder of a cluster's labels until its
layer is gone. The job runs in the dock's worker and never touches a layer; it resolves the
plane's diameter first (typed, fine-tuned, or estimated on its central region in this process, as
``segment_large`` would) and yields the :class:`~._diameter.Sized` the dock shows, the cell sizes
left automatic following it as on the other routes.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from . import _runs
from ._diameter import Sized, said, sized_of
from ._layers import MADE, MODEL, OF, add_quietly, free_name, full_resolution

if TYPE_CHECKING:
    import napari

    from ..core.network.model import UNet
    from ._runs import Settings
    from ._worker import Outcome

__all__ = ["ClusterResults", "ClusterRun", "cluster_job", "layer_file", "open_labels"]


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


def cluster_job(
    model, info, target: Path, *, workers, scheduler, record: dict, diameter=None, **options
):
    """The worker's generator: segment ``info`` on a cluster (a new LocalCluster of
    ``workers`` or the one at ``scheduler``) into the OME-Zarr labels ``target`` (written
    atomically); yields ``(tasks done, tasks)``, and once the plane's diameter is resolved
    (``diameter``: the typed one, ``None``: automatic) the :class:`~._diameter.Sized` it is
    predicted at; returns the :class:`~napari_unet.core.large.distributed.LargeResult` (its
    ``labels`` is ``target``). Closing it cancels the job and closes a LocalCluster it
    started. ``options``: those of
    :func:`~napari_unet.core.large.distributed.segment_large_steps`."""
    from contextlib import ExitStack
    from dataclasses import replace

    from ..core.formats.zarrio import atomic_folder
    from ..core.large.blocks import model_source, opened, plane_resampling
    from ..core.large.distributed import (
        connect,
        segment_large_steps,
        shared_model,
        torch_threads,
    )

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
        with opened(model_source(info, model.in_channels)) as plane:  # as segment_large would
            grid = plane_resampling(model, plane, diameter)
        yield sized_of(model, grid)
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
                    sample_block=_runs.SAMPLE[0],
                    sample_values=_runs.SAMPLE[1],
                    diameter=grid,
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


@dataclass
class ClusterRun:
    """A job sent to a dask cluster; its labels open as a layer once complete."""

    results: ClusterResults
    image: Image
    target: Path
    temporary: Path | None  # a folder of ours to remove with the layer
    model_label: str = ""
    done: int = 0
    total: int = 0
    dirty: bool = False
    sized: Sized | None = None  # the diameter the job predicts at, once resolved

    @property
    def status(self) -> str:
        return f"task {self.done}/{self.total}" if self.total else "starting the cluster…"

    def apply(self, event) -> None:
        if isinstance(event, Sized):
            self.sized = event
        else:
            self.done, self.total = event

    def refresh(self) -> None:
        pass

    def discard(self) -> None:
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)

    drop = discard  # its image was closed: no labels are opened

    def finish(self, outcome: Outcome) -> str:
        if outcome.error is not None or outcome.cancelled:
            self.discard()
            what = "failed" if outcome.error is not None else "cancelled"
            return f"{what}; nothing written"
        result = outcome.value
        viewer = self.results.viewer
        levels = open_labels(result.labels)
        image, n = self.image, len(self.image.scale)
        layer = Labels(
            levels,
            multiscale=len(levels) > 1,
            name=free_name(viewer, f"{image.name} prediction (cluster)"),
            scale=image.scale[n - 2 :],
            translate=image.translate[n - 2 :],
            units=image.units[n - 2 :],
            metadata={MADE: "prediction (cluster)", OF: image.name, MODEL: self.model_label},
        )
        add_quietly(viewer, layer)
        if self.temporary is not None:
            self.results.keep_until_removed(layer, self.temporary)
        where = "a temporary folder" if self.temporary is not None else str(result.labels)
        text = f"{result.cells} cell(s) in {result.blocks} block(s){said(self.sized)}"
        return f"done: {text}, saved in {where}"


class ClusterResults:
    """The cluster runs of one Predict dock on ``viewer``, and the temporary folders of their
    labels."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.temporary: dict[int, weakref.finalize] = {}  # id of a cluster's labels: cleanup

    def prune(self) -> None:
        """Remove the folders of labels no longer shown (call on every change of the layers)."""
        shown = {id(layer) for layer in self.viewer.layers}
        for key in [k for k in self.temporary if k not in shown]:
            self.temporary.pop(key)()

    def keep_until_removed(self, layer: Labels, folder: Path) -> None:
        """Remove ``folder`` once ``layer`` is gone from the viewer (or at exit)."""
        self.temporary[id(layer)] = weakref.finalize(layer, shutil.rmtree, str(folder), True)

    def start(self, layer: Image, model: UNet, settings: Settings, *, workers, scheduler):
        """``(run, generator)`` that segments ``layer``'s file on a dask cluster (a new
        LocalCluster of ``workers``, or the one at ``scheduler``) into OME-Zarr labels in
        ``settings.folder`` (a temporary folder removed with the layer when None)."""
        from napari_unet.core.large.blocks import DEFAULT_BLOCK, DEFAULT_HALO
        from napari_unet.outputs import model_record

        info = layer_file(layer)
        record = {  # with the diameter used and the options sized by it (segment_large's)
            **model_record(settings.model_label, model),
            "instances_asked": settings.config.options(),
            "diameter_asked": settings.diameter,
            "flips": settings.flips,
            "precision": settings.precision,
        }
        folder, temporary = settings.folder, None
        if folder is None:
            folder = temporary = Path(tempfile.mkdtemp(prefix="napari-unet-"))
        target, n = folder / f"{info.stem}_labels.ome.zarr", 1
        while target.exists():  # never replace a folder the user has
            n += 1
            target = folder / f"{info.stem}_labels-{n}.ome.zarr"
        events = cluster_job(
            model,
            info,
            target,
            workers=workers,
            scheduler=scheduler,
            record=record,
            block=settings.block or DEFAULT_BLOCK,
            halo=DEFAULT_HALO,
            flips=settings.flips,
            instance=settings.config,
            diameter=settings.diameter,
            precision=settings.precision,
        )
        return ClusterRun(self, layer, target, temporary, settings.model_label), events
