"""Large images and many images on dask.distributed.

The engine is dask's: a ``LocalCluster`` here, or any cluster by its scheduler address (e.g. one
that dask-jobqueue starts on SLURM); lost workers and retries are dask's business. A large plane
becomes a graph of blocks (:mod:`~napari_unet.core.large.blocks`):

1. ``predict``: each block's probabilities, read from the file by the worker (tasks carry block
   coordinates, not pixels), normalised with one
   :class:`~napari_unet.core.large.blocks.Normalisation`
   estimated before the graph runs; for a model that works at one cell size, each block
   resampled to it with a halo in the resampled space and resampled back (one
   :class:`~napari_unet.core.prediction.scale.Resampling` of the plane, resolved before the
   graph runs); equal to in-process :func:`~napari_unet.predict`; written to a scratch zarr
   store beside the output;
2. ``cells``: each block's probabilities grown by a cell halo, labelled with
   :func:`~napari_unet.to_instances` (its sizes left open sized by the plane's diameter, as
   ``predict``'s result sizes them), the cells it owns kept
   (:mod:`~napari_unet.core.large.seams`) and written to the scratch folder;
3. ``paint``: each block's provisional ids, from the cells of the windows reaching into it,
   written to the scratch folder;
4. ``ids``: final ids ``1..N`` once every block's count is known, written to level 0 of the
   OME-Zarr label image, then its pyramid levels.

Intermediate results live on disk (the scratch folder holds about 4 bytes per pixel of
probabilities, compressed, and the cells), never as task results, so a worker's memory does not
grow with the image whatever order dask runs the tasks in. The model travels once to each
worker as safetensors bytes (:class:`ModelPlugin`), never as a pickled module. Importing this
module imports dask.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, get_worker, wait

from ..prediction.scale import Resampling
from .blocks import (
    DEFAULT_BLOCK,
    DEFAULT_HALO,
    SAMPLE_VALUES,
    Normalisation,
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

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_HALO",
    "ModelPlugin",
    "connect",
    "share_model",
    "shared_model",
    "segment_large",
    "segment_large_steps",
    "segment_small",
    "torch_threads",
    "LargeResult",
]

log = logging.getLogger(__name__)


@contextmanager
def connect(
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit="auto",
    timeout: float | None = None,
):
    """Yield a :class:`distributed.Client` (current in this thread's context only, never the
    process's default: other dask work, e.g. napari slicing a dask layer, stays local): to
    ``scheduler`` (an address such as
    ``tcp://host:8786``; OSError when it cannot be reached within ``timeout`` seconds, dask's
    configured timeout by default) or to a new ``LocalCluster`` of ``workers`` single-threaded
    processes (closed at the end)."""
    if scheduler is not None:
        options = {"timeout": timeout} if timeout else {}
        with Client(scheduler, set_as_default=False, **options) as client, client.as_current():
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=memory_limit,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        yield client


class ModelPlugin(WorkerPlugin):
    """Loads the model once on each worker, from safetensors bytes (also on workers that join
    or are restarted later); tasks find it by :attr:`name`."""

    def __init__(self, blob: bytes, torch_threads: int | None = None):
        import hashlib

        self.blob = blob
        self.name = f"napari-unet-model-{hashlib.sha256(blob).hexdigest()[:16]}"
        self.torch_threads = torch_threads
        self.model = None
        self.loads = 0

    def setup(self, worker=None):
        import torch

        from ..network.store import load_model

        threads = self.torch_threads
        if threads is None and worker is not None:  # dask's nanny set one thread
            threads = max(1, usable_cpus() // max(1, worker.state.nthreads))
        if threads:
            torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.safetensors"
            path.write_bytes(self.blob)
            self.model = load_model(path).eval()
        self.loads += 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what SLURM or taskset gave it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads(workers: int | None) -> int | None:
    """Torch threads per worker of a local cluster of ``workers``: this process's CPUs shared
    out; ``None`` for a remote cluster (each worker uses its own CPUs, see ``ModelPlugin``)."""
    return max(1, usable_cpus() // workers) if workers else None


def share_model(
    client: Client, model, torch_threads: int | None = None, *, own: bool = False
) -> str:
    """Send ``model`` (a :class:`~napari_unet.UNet`) to every worker of ``client`` once; returns
    the name tasks use to find it (the hash of its weights; ``own``: with a random suffix, a
    copy that no other job shares). ``torch_threads``: intra-op threads per worker (``None``:
    each worker's :func:`usable_cpus` over its dask threads; dask's nanny would leave one).
    The model travels with its metadata: the cell size it works at and was fine-tuned on,
    which a worker resolves a small image's diameter by."""
    from ..network.store import save_model

    metadata = getattr(model, "metadata", None)
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(model, Path(folder) / "model.safetensors", metadata)
        plugin = ModelPlugin(path.read_bytes(), torch_threads)
    if own:
        plugin.name = f"{plugin.name}-{uuid.uuid4().hex[:8]}"
    client.register_plugin(plugin, name=plugin.name)
    return plugin.name


@contextmanager
def shared_model(
    client: Client, model, torch_threads: int | None = None, *, unregister: bool = False
):
    """:func:`share_model` for one job: yields the name. ``unregister``: for a cluster that
    outlives the job (reached by its address), the job's own copy, removed from the scheduler
    and the workers at the end (else each model sent stays on every worker); a failure to
    remove it is logged, never raised over the job's outcome."""
    name = share_model(client, model, torch_threads, own=unregister)
    try:
        yield name
    finally:
        if unregister:
            try:
                client.unregister_worker_plugin(name)
            except (OSError, TimeoutError) as err:
                log.warning("could not remove model %s from the cluster: %s", name, err)


def _model(name: str):
    return get_worker().plugins[name].model


# ---------------------------------------------------------------------------------- the tasks
# Blocks hand their probabilities and cells to their neighbours through the scratch folder, not
# as task results: a result stays in a worker's memory until every task that needs it has run,
# and dask runs most predictions before the first labelling, so held results (and a worker's
# peak memory) grew with the number of blocks. Tasks return at most two counts.
def _predict_task(
    name, source, block, norm: Normalisation, flips: bool, probs: str, resampling, precision
) -> None:
    import zarr

    with opened(source) as plane:
        options = {"flips": flips, "resampling": resampling, "precision": precision}
        prob = predict_block(_model(name), plane, block, norm, **options)
    zarr.open_array(probs, mode="r+")[block.inner] = prob


def _cells_task(
    probs: str, cells: str, index: int, window, core, shape, instance: dict, *_predicted
) -> tuple[int, int]:
    import zarr

    from ..prediction.instances import to_instances

    prob = zarr.open_array(probs, mode="r")[window]
    owned, n, cut = owned_cells(to_instances(prob, **instance), window, core, shape)
    zarr.open_array(cells, mode="r+")[(index, *_extent(window))] = owned
    return n, cut


def _paint_task(store: str, cells: str, core, indices, windows, *_labelled) -> None:
    import zarr

    owned = zarr.open_array(cells, mode="r")
    pieces = [(i, w, owned[(i, *_extent(w))]) for i, w in zip(indices, windows, strict=True)]
    zarr.open_array(store, mode="r+")[core] = paint(core, pieces)


def _extent(window) -> tuple[slice, slice]:
    """Where a window's cells lie in its slot of the scratch array of cells (at its origin)."""
    return tuple(slice(0, s.stop - s.start) for s in window)


def _offsets(*counts) -> np.ndarray:
    n = np.array([c[0] for c in counts], np.uint64)
    return np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.uint64)


def _ids_task(store: str, labels: str, core, offsets, _painted) -> None:
    import zarr

    provisional = zarr.open_array(store, mode="r")[core]
    target = zarr.open_array(labels, path="0", mode="r+")
    target[core] = final_ids(provisional, offsets, target.dtype)


def _level_task(labels: str, level: int, region, *_done) -> None:
    import zarr

    from ..formats.zarrio import write_level

    write_level(zarr.open_group(labels, mode="r+"), level, region)


def _whole_task(
    name, source, flips: bool, instance: dict, probabilities: bool, diameter, precision
):
    """Predict and label a plane that fits one block, as in-process prediction does (the
    diameter resolved as :func:`~napari_unet.predict` does, the sizes left open in ``instance``
    sized by it; ``precision`` resolved on the worker); ``(labels, probabilities or None,
    (diameter, source), options)``,
    ``options`` those :func:`~napari_unet.to_instances` was given."""
    from ..prediction.instances import to_instances
    from ..prediction.predict import instance_options, predict, resolve_diameter
    from ..prediction.scale import model_diameter

    model = _model(name)
    with opened(source) as plane:
        image = np.asarray(plane[:, :])
    used = resolve_diameter(model, image, diameter, precision=precision)
    # the model's own size for "as it comes": no second estimate in predict
    size = used[0] if used[0] is not None else model_diameter(model)
    options = {"flips": flips, "diameter": size, "precision": precision}
    prob = np.asarray(predict(model, image, **options), np.float32)
    options = instance_options(instance, model, *used)
    labels = to_instances(prob, **options)
    return labels, (prob if probabilities else None), used, options


# ------------------------------------------------------------------------------------- the jobs
@dataclass(frozen=True)
class LargeResult:
    """What :func:`segment_large` made: ``cells`` ids in ``labels`` (an OME-Zarr folder),
    ``cut`` cells larger than the halo (they may differ from whole-image labelling), the
    shared normalisation, the number of blocks, how the plane was resampled (its
    diameter and where it came from), and the options :func:`~napari_unet.to_instances` was
    given (sized by that diameter)."""

    labels: Path
    cells: int
    cut: int
    normalisation: Normalisation
    blocks: int
    resampling: Resampling | None = None
    instance: dict | None = None


def segment_large(client: Client, name: str, model, source, labels, **options) -> LargeResult:
    """Predict and label one large plane block by block on the cluster of ``client``; takes
    the arguments of :func:`segment_large_steps` and waits for the end."""
    steps = segment_large_steps(client, name, model, source, labels, **options)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def segment_large_steps(
    client: Client,
    name: str,
    model,
    source,
    labels: str | os.PathLike,
    *,
    block: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    flips: bool = False,
    instance: dict | None = None,
    sample_block: int = DEFAULT_BLOCK,
    sample_values: int = SAMPLE_VALUES,
    pixel_size=None,
    metadata: dict | None = None,
    work: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    poll: float = 0.5,
    diameter: float | Resampling | None = None,
    precision: str = "auto",
) -> Iterator[tuple[int, int]]:
    """Predict and label one large plane block by block on the cluster of ``client``: a
    generator yielding ``(tasks done, tasks)`` at least every ``poll`` seconds, returning a
    :class:`LargeResult`. Closing it cancels the job's futures (a running task finishes).

    Parameters
    ----------
    client, name
        The cluster, and the name :func:`share_model` returned for ``model``.
    model
        The same :class:`~napari_unet.UNet` (its size arithmetic plans the blocks).
    source
        A :class:`~napari_unet.core.formats.zarrio.ImageFile` on storage every worker reads (tasks
        open it themselves), or an in-memory ``(H, W[, C])`` array (sent to the workers).
    labels
        Folder of the OME-Zarr label image to create (uint32 ids 1..N, 0 = background).
    block, halo
        Block side (px, rounded onto the pooling grid as tiles are) and cell halo (px).
    instance
        Keyword arguments of :func:`~napari_unet.to_instances` (or an
        :class:`~napari_unet.InstanceConfig`); ``min_size`` and ``min_core`` left ``None`` or
        absent are sized by the diameter used, as ``predict``'s result sizes them
        (:func:`~napari_unet.core.prediction.predict.instance_options`), and recorded so.
    sample_block, sample_values
        The normalisation sample: a lattice of blocks of side ``sample_block`` (independent of
        ``block``, so every block size normalises alike) of at most about ``sample_values``
        pixels (see :func:`~napari_unet.core.large.blocks.sample_blocks`).
    pixel_size
        ``(y, x)`` in micrometres, kept in the label image (``None``: not known).
    metadata
        Recorded in the label image's ``"napari-unet"`` attribute, with the normalisation and
        the options.
    work
        Folder in which a scratch folder for the provisional ids is made (default: beside
        ``labels``); removed at the end, and those of killed runs at the next run.
    probabilities
        Folder of an OME-Zarr image to create with the float32 foreground probabilities (a
        pyramid as the labels', subsampled, with the same pixel size and metadata; marked
        complete at the end); ``None``: they stay in the scratch folder.
    diameter
        Median diameter (px) of the plane's cells, for a model that says its cell size: every
        block is resampled to the model's size and back, and equals in-process
        ``predict(model, image, diameter=...)``. ``None`` resolves it before the graph runs as
        :func:`~napari_unet.predict` does (the model's fine-tuned cells, else an estimate on the
        plane's central region, else as it comes; see
        :func:`~napari_unet.core.large.blocks.plane_resampling`, which logs the choice); a
        :class:`~napari_unet.core.prediction.scale.Resampling` it returned is used as it is.
        The diameter used and its source are recorded with the labels.
    precision
        ``"auto"``, ``"fp32"`` or ``"bf16"``: the network's arithmetic (see
        :func:`~napari_unet.predict`), recorded with the labels as asked; each worker resolves
        ``"auto"`` for its own CPU (bfloat16 where it computes it natively).
    """
    import dask

    from ..formats.io import work_folder
    from ..formats.zarrio import create_multiscale, mark_complete, pyramid_shapes

    if getattr(source, "kind", None) == "other":
        raise ValueError(
            f"{source.path} cannot be read a block at a time (every block would read it "
            "whole); convert it to TIFF or OME-Zarr"
        )
    from ..network.precision import check_precision
    from ..prediction.predict import instance_options

    check_precision(precision)
    source = model_source(source, model.in_channels)
    shape = tuple(source.shape[:2])
    blocks = plan_blocks(shape, model, block)
    # every block of an axis but the last has the first one's size: chunks of that size per
    # axis hold one block each, so no two tasks ever write the same chunk
    chunks = tuple(s.stop - s.start for s in blocks[0].inner)
    with opened(source) as plane:
        sample = plan_blocks(shape, model, sample_block)
        norm = estimate_normalisation(plane, sample, values=sample_values)
        grid = diameter
        if not isinstance(grid, Resampling):
            grid = plane_resampling(model, plane, diameter, precision=precision)
    instance = instance_options(instance, model, grid.diameter, grid.source)
    labels = Path(labels)
    record = {
        **(metadata or {}),
        "diameter": grid.diameter,
        "diameter_source": grid.source,
        "normalisation": norm.as_dict(),
        "block": list(chunks),
        "halo": halo,
        "instances": instance,
        "flips": flips,
        "precision": precision,
    }
    root = create_multiscale(
        labels,
        shape,
        chunks,
        np.uint32,
        pixel_size=pixel_size,
        unit="micrometer" if pixel_size else None,
        metadata=record,
    )
    prob_root = None
    if probabilities is not None:
        prob_root = create_multiscale(
            probabilities,
            shape,
            chunks,
            np.float32,
            pixel_size=pixel_size,
            unit="micrometer" if pixel_size else None,
            name="probabilities",
            metadata=record,
            label=False,
        )
    with work_folder(work or labels.parent) as scratch:
        import zarr

        store = str(scratch / "provisional.zarr")
        probs, cells_store = str(scratch / "probabilities.zarr"), str(scratch / "cells.zarr")
        if probabilities is not None:
            probs = str(Path(probabilities) / "0")  # level 0 of the output, made above
        largest = tuple(c + 2 * halo for c in chunks)  # window
        stores = [
            (store, shape, chunks, np.uint64),
            (cells_store, (len(blocks), *largest), (1, *largest), np.uint32),  # one per block
        ]
        if probabilities is None:
            stores.append((probs, shape, chunks, np.float32))
        for path, size, chunk, dtype in stores:
            zarr.create_array(
                path, shape=size, chunks=chunk, dtype=dtype, fill_value=0, zarr_format=2
            )
        src = source if hasattr(source, "open") else dask.delayed(source, pure=True)
        d = dask.delayed
        resampling = grid if grid.resampled else None
        predicted = [
            d(_predict_task, pure=True)(name, src, b, norm, flips, probs, resampling, precision)
            for b in blocks
        ]
        cores = [b.inner for b in blocks]
        windows = [cell_window(core, halo, shape) for core in cores]
        core_corners, window_corners = corners(cores), corners(windows)
        cells = [
            d(_cells_task, pure=True)(
                probs,
                cells_store,
                i,
                window,
                core,
                shape,
                instance,
                *[predicted[j] for j in overlapping(window, core_corners)],
            )
            for i, (window, core) in enumerate(zip(windows, cores, strict=True))
        ]
        offsets = d(_offsets, pure=True)(*cells)
        done = []
        for core in cores:
            near = overlapping(core, window_corners)
            painted = d(_paint_task)(
                store,
                cells_store,
                core,
                near,
                [windows[j] for j in near],
                *[cells[j] for j in near],
            )
            done.append(d(_ids_task)(store, str(labels), core, offsets, painted))
        levels = []
        pyramids = [(str(labels), done)]
        if probabilities is not None:
            pyramids.append((str(probabilities), predicted))
        for level, level_shape in enumerate(pyramid_shapes(shape, chunks)[1:], start=1):
            for region in _chunks(level_shape, chunks):
                for group, after in pyramids:
                    levels.append(d(_level_task)(group, level, region, *after))
        futures = client.compute([*cells, *done, *levels])
        try:
            while True:
                try:
                    with client.as_current():  # wait() asks for the current client
                        wait(futures, timeout=poll)
                    break
                except TimeoutError:
                    yield sum(f.done() for f in futures), len(futures)
            totals = client.gather(futures[: len(cells)])
            client.gather(futures[len(cells) :])  # raises a failed task's error
        finally:
            # an abandoned job leaves nothing running; a finished one is released with its
            # futures (cancelling finished futures trips an assertion in dask's scheduler log)
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
    cells_n = int(sum(t[0] for t in totals))
    cut = int(sum(t[1] for t in totals))
    if prob_root is not None:
        mark_complete(prob_root)
    mark_complete(root, cells=cells_n, cut_cells=cut)
    if cut:
        log.warning(
            "%d cell(s) reach past the %d px halo of their block; they may be labelled "
            "differently from whole-image labelling (raise the halo)",
            cut,
            halo,
        )
    return LargeResult(labels, cells_n, cut, norm, len(blocks), grid, instance)


def _chunks(shape, chunks) -> list[tuple[slice, slice]]:
    """The ``(cy, cx)`` chunks of an ``(H, W)`` array, as regions."""
    (cy, cx) = chunks
    return [
        (slice(y, min(y + cy, shape[0])), slice(x, min(x + cx, shape[1])))
        for y in range(0, shape[0], cy)
        for x in range(0, shape[1], cx)
    ]


def segment_small(
    client: Client,
    name: str,
    source,
    *,
    flips=False,
    instance=None,
    probabilities=False,
    diameter: float | None = None,
    precision: str = "auto",
):
    """Submit one plane (or stack) that fits one block: a single task that predicts and labels
    it as in-process prediction does (``diameter``: as :func:`~napari_unet.predict` takes it;
    ``instance``: as :func:`segment_large_steps` takes it, sized on the worker by the diameter
    used; ``precision``: as :func:`~napari_unet.predict` takes it, resolved on the worker).
    Returns a future of ``(labels, probabilities or None, (diameter, source),
    options)``: the diameter used and where it came from
    (:func:`~napari_unet.core.prediction.predict.resolve_diameter`), and the options
    :func:`~napari_unet.to_instances` was given."""
    from ..prediction.instances import InstanceConfig

    if isinstance(instance, InstanceConfig):
        instance = instance.options()
    return client.submit(
        _whole_task,
        name,
        source,
        flips,
        dict(instance or {}),
        probabilities,
        diameter,
        precision,
        pure=False,
    )


def fits_one_block(shape, block: int) -> bool:
    """Whether an ``(H, W[, C])`` plane needs no more than one block of side ``block``."""
    return max(shape[:2]) <= block
