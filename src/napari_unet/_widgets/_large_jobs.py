"""Predict's controller of large images: lazy layers block by block, and cluster jobs.

:class:`LargeImages` keeps what a large image's runs leave between runs: a lazy layer's
:class:`LazyJob` (its stream, kept while the layer, the model's weights and the settings stay
the same, so 'Predict the rest' goes on where the last run stopped), every
:class:`~._large.LazyOutput` until *its own* layers are gone (a newer job, or the input image
removed, never removes an older job's results), and the temporary folder of a cluster's labels
until its layer is gone. It makes each run (:class:`LazyRun`, :class:`ClusterRun`: the record
and the worker's generator), applies its events on the main thread, and says how it ended.
It adds layers to the viewer but never touches a widget.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari.layers import Image, Labels

from . import _large
from ._large import LazyOutput, cluster_job, full_resolution, layer_file, open_labels
from ._layers import MADE, OF, add_quietly, free_name

if TYPE_CHECKING:
    import napari

    from ..core.large.regions import PlaneStream
    from ..core.network.model import UNet
    from ._worker import Outcome

__all__ = ["ClusterRun", "LargeImages", "LazyJob", "LazyRun", "Settings"]


@dataclass(frozen=True)
class Settings:
    """The dock's choices a large run uses."""

    instance: dict  # keyword arguments of to_instances
    tile: int  # block side; 0: automatic
    flips: bool
    folder: Path | None  # "save labels in"; None: the system's temporary folder
    model_label: str  # how the model is recorded with a cluster's labels


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

    @property
    def status(self) -> str:
        return f"block {self.done}/{self.total}"

    def refresh(self) -> None:
        self.job.output.refresh()


@dataclass
class ClusterRun:
    """A job sent to a dask cluster; its labels open as a layer once complete."""

    image: Image
    target: Path
    temporary: Path | None  # a folder of ours to remove with the layer
    done: int = 0
    total: int = 0
    dirty: bool = False

    @property
    def status(self) -> str:
        return f"task {self.done}/{self.total}" if self.total else "starting the cluster…"

    def refresh(self) -> None:
        pass


class LargeImages:
    """The large-image runs of one Predict dock on ``viewer``."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.jobs: dict[int, LazyJob] = {}  # id of an image layer: its lazy job
        self.outputs: list[LazyOutput] = []  # every lazy output whose layers are shown
        self.temporary: dict[int, weakref.finalize] = {}  # id of a cluster's labels: cleanup

    def prune(self) -> None:
        """Forget what the viewer's layers no longer need (call on every change of them)."""
        layers = self.viewer.layers
        for key, job in list(self.jobs.items()):
            if job.image not in layers or not job.output.shown:
                del self.jobs[key]
        for output in [out for out in self.outputs if not out.shown]:
            self.outputs.remove(output)
            output.close()
        shown = {id(layer) for layer in layers}
        for key in [k for k in self.temporary if k not in shown]:
            self.temporary.pop(key)()

    def can_go_on(self, layer) -> bool:
        """Whether ``layer`` has a lazy job with blocks left ('Predict the rest')."""
        job = self.jobs.get(id(layer))
        return job is not None and job.stream.left > 0

    # ------------------------------------------------------------------------ lazy layers
    def lazy(
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
        from napari_unet._batch import model_sha256
        from napari_unet.core.large.regions import PlaneStream
        from napari_unet.core.prediction.tiling import auto_tile

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
        step = settings.tile or auto_tile(plane_shape, model)
        instance = tuple(sorted(settings.instance.items()))
        key = (model_sha256(model), prefix, step, settings.flips, instance)
        visible = None
        if not rest:  # before any layer is made: a view that shows nothing is refused
            visible = _large.visible_region(self.viewer, layer, len(shape), plane_shape)
        job = self.jobs.get(id(layer))
        if job is None or job.key != key or not job.output.shown:
            stream = PlaneStream(
                model,
                data,
                step=step,
                halo=_large.CELL_HALO,
                instance=settings.instance,
                flips=settings.flips,
                sample_block=_large.SAMPLE[0],
                sample_values=_large.SAMPLE[1],
            )
            output = LazyOutput(self.viewer, layer, stream, len(shape), settings.folder, prefix)
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
        return LazyRun(job, total=len(todo)), stream.run(todo)

    # ---------------------------------------------------------------------------- cluster
    def cluster(self, layer: Image, model: UNet, settings: Settings, *, workers, scheduler):
        """``(run, generator)`` that segments ``layer``'s file on a dask cluster (a new
        LocalCluster of ``workers``, or the one at ``scheduler``) into OME-Zarr labels in
        ``settings.folder`` (a temporary folder removed with the layer when None)."""
        from napari_unet._batch import model_record
        from napari_unet.core.large.blocks import DEFAULT_BLOCK, DEFAULT_HALO

        info = layer_file(layer)
        record = {
            **model_record(settings.model_label, model),
            "instances": settings.instance,
            "flips": settings.flips,
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
            block=settings.tile or DEFAULT_BLOCK,
            halo=DEFAULT_HALO,
            flips=settings.flips,
            instance=settings.instance,
        )
        return ClusterRun(layer, target, temporary), events

    # ------------------------------------------------------------------- main-thread side
    def apply(self, run: LazyRun | ClusterRun, event) -> str | None:
        """Apply one event of ``run`` (main thread); a message when the run must stop (its
        results were removed, or cannot be written), else None."""
        from napari_unet.core.large.regions import BlockProbabilities

        if isinstance(run, ClusterRun):
            run.done, run.total = event
            return None
        output = run.job.output
        if output.closed:
            return "the results' layers were removed; the run stops"
        try:
            if isinstance(event, BlockProbabilities):
                output.write("probability", event.region, event.probabilities)
                run.done += 1
            else:
                output.write("prediction", event.region, event.labels)
        except OSError as err:
            return f"cannot write the results in {output.folder}: {err}"
        run.dirty = True
        return None

    def finish(self, run: LazyRun | ClusterRun, outcome: Outcome) -> str:
        """Show what ``run`` made (main thread); the status line."""
        if isinstance(run, ClusterRun):
            return self._cluster_done(run, outcome)
        stream = run.job.stream
        n = len(stream.blocks)
        text = (
            f"{run.done} block(s) predicted, {n - stream.left}/{n} labelled, "
            f"{stream.cells} cell(s)"
        )
        if outcome.error is not None:
            return f"failed; {text} (kept)"
        if outcome.cancelled:
            return f"cancelled; {text} (kept)"
        more = "; 'Predict the rest' for the others" if stream.left else ""
        return f"done: {text}{more}"

    def _cluster_done(self, run: ClusterRun, outcome: Outcome) -> str:
        if outcome.error is not None or outcome.cancelled:
            if run.temporary is not None:
                shutil.rmtree(run.temporary, ignore_errors=True)
            what = "failed" if outcome.error is not None else "cancelled"
            return f"{what}; nothing written"
        result = outcome.value
        levels = open_labels(result.labels)
        image, n = run.image, len(run.image.scale)
        layer = Labels(
            levels,
            multiscale=len(levels) > 1,
            name=free_name(self.viewer, f"{image.name} prediction (cluster)"),
            scale=image.scale[n - 2 :],
            translate=image.translate[n - 2 :],
            units=image.units[n - 2 :],
            metadata={MADE: "prediction (cluster)", OF: image.name},
        )
        add_quietly(self.viewer, layer)
        if run.temporary is not None:
            cleanup = weakref.finalize(layer, shutil.rmtree, str(run.temporary), True)
            self.temporary[id(layer)] = cleanup
        where = "a temporary folder" if run.temporary is not None else str(result.labels)
        return f"done: {result.cells} cell(s) in {result.blocks} block(s), saved in {where}"


def _lazy_plane(data, prefix: tuple[int, ...]):
    """Plane ``prefix`` of the lazy stack ``data`` (dask, zarr, a memory map), still lazy."""
    import dask.array as da

    stack = data if isinstance(data, da.Array) else da.from_array(data)
    return stack[prefix]
