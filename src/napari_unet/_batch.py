"""``napari-unet predict --workers N | --scheduler ADDRESS``: files and large images on dask.

Inputs are files, folders (their images and zarr folders) or glob patterns. Images that fit one
block run as one task each, spread over the workers; larger ones run block by block
(:mod:`napari_unet.core.large.distributed`). Each output is written atomically and a rerun skips
the outputs that are complete, so an interrupted run resumes; a file that fails is reported at the
end and does not stop the others.

For a model that works at one cell size, each image is resampled to it (large ones block by
block, each block with its halo in the resampled space) at ``--diameter``, else at the cells the
model was fine-tuned on, else at a diameter estimated on the image (its central region for a
large one, on a worker for a small one); the cell sizes left open (``--min-size``, the cores')
follow the diameter used, as in-process. Each output records the diameter used and its source
and the options sized by it, besides what was asked (compared when a rerun resumes), and the
per-image line says the diameter.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .core.formats.io import remove_stale_work
from .outputs import (
    MARKED,
    TABLES,
    NewFolders,
    expand_inputs,
    model_record,
    plan_outputs,
    resumable,
    write_cell_tables,
)

if TYPE_CHECKING:
    from .core.prediction.instances import InstanceConfig

log = logging.getLogger("napari_unet")

__all__ = ["BatchSettings", "run"]


@dataclass(frozen=True)
class BatchSettings:
    """What ``predict --workers N | --scheduler ADDRESS`` is asked to do."""

    images: tuple[str, ...]  # files, folders or glob patterns (:func:`expand_inputs`)
    out: Path  # the output folder
    model: str | None  # bundled name or file (None: the bundled model)
    instance: InstanceConfig
    kinds: tuple[str, ...]  # outputs per image (:func:`~napari_unet.outputs.output_kinds`)
    max_pixels: int  # refuse larger images
    block: int | None = None  # block side, px (None: ``DEFAULT_BLOCK``)
    halo: int | None = None  # cell halo, px (None: ``DEFAULT_HALO``)
    flips: bool = False
    workers: int | None = None  # a local cluster of this many workers, or
    scheduler: str | None = None  # the running one at this address
    diameter: float | None = None  # cells' diameter, px (None: tuned, estimated or as it comes)
    precision: str = "auto"  # "auto", "fp32" or "bf16": each worker resolves "auto" for its CPU


@dataclass(frozen=True)
class _WholeFile:
    """A file read whole on the worker, as the in-process command reads it."""

    path: str
    in_channels: int
    max_pixels: int

    @contextmanager
    def open(self):
        from .core.formats.io import read_image
        from .core.image import grey_if_rgb

        yield grey_if_rgb(read_image(self.path, max_pixels=self.max_pixels), self.in_channels)


def _check_channels(shape: tuple[int, ...], in_channels: int) -> None:
    """Refuse, before submitting, a ``(..., H, W[, C])`` file whose channels do not fit."""
    from .core.image import MAX_CHANNELS

    channels = shape[-1] if len(shape) >= 3 and shape[-1] <= MAX_CHANNELS else 1
    if channels != in_channels and not (in_channels == 1 and channels in (3, 4)):
        raise ValueError(
            f"image of shape {shape} has {channels} channel(s) but the model takes {in_channels}"
        )


def _plane_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(H, W)`` of the planes of a file's ``(..., H, W[, C])`` image."""
    from .core.image import MAX_CHANNELS

    channels_last = len(shape) >= 3 and shape[-1] <= MAX_CHANNELS
    return tuple(shape[-3:-1]) if channels_last else tuple(shape[-2:])


def _write_small(
    targets: dict, labels, probs, source, pixel_size, record: dict, chunk: int
) -> None:
    """Write the labels (and ``probs``, when asked for) of an image segmented whole, with the
    ROI set and measurements asked for (as the in-process command writes them)."""
    from .core.formats.io import PREDICTION_SOFTWARE, write_image, write_labels
    from .core.formats.zarrio import write_labels_zarr
    from .core.large.blocks import opened

    if any(kind in TABLES for kind in targets):  # first: the labels record their hashes
        with opened(source) as plane:
            image = np.asarray(plane[:, :])
        record = {**record, "tables": write_cell_tables(targets, labels, image, pixel_size)}
    if "probabilities" in targets:
        target = targets["probabilities"]
        if target.suffix == ".tif":
            write_image(target, probs, software=PREDICTION_SOFTWARE, record=record)
        else:
            options = {"pixel_size": pixel_size, "metadata": record, "label": False}
            write_labels_zarr(target, probs, (chunk, chunk), **options)
    target = targets["labels"]  # last: complete labels say the image is done
    if target.suffix == ".tif":
        options = {"software": PREDICTION_SOFTWARE, "pixel_size": pixel_size, "record": record}
        write_labels(target, labels, **options)
    else:
        write_labels_zarr(target, labels, (chunk, chunk), pixel_size=pixel_size, metadata=record)


def _segment_large(client, name, model, info, targets: dict, options: dict):
    """Segment a large image block by block into ``targets["labels"]`` (and
    ``targets["probabilities"]`` when asked for): OME-Zarr written in place atomically, or TIFF
    written band by band from OME-Zarr in a work folder. ``options``: those of
    :func:`~napari_unet.core.large.distributed.segment_large`. Returns the
    :class:`~napari_unet.core.large.distributed.LargeResult`."""
    from contextlib import ExitStack

    from .core.formats.io import work_folder
    from .core.formats.zarrio import atomic_folder, write_tiff_bands
    from .core.large.distributed import segment_large

    options = {**options, "pixel_size": info.pixel_size}
    target, probs = targets["labels"], targets.get("probabilities")
    if target.suffix != ".tif":
        with ExitStack() as stack:  # the labels, marked last, take their place last
            tmp = stack.enter_context(atomic_folder(target))
            if probs is not None:
                options["probabilities"] = stack.enter_context(atomic_folder(probs))
            return segment_large(client, name, model, info, tmp, **options)
    with work_folder(target.parent) as work:
        if probs is not None:
            options["probabilities"] = work / "probabilities.ome.zarr"
        result = segment_large(client, name, model, info, work / "labels.ome.zarr", **options)
        import zarr

        grid = result.resampling  # the diameter used and the options sized by it, as
        record = {**(options.get("metadata") or {}), "diameter": grid.diameter}  # in OME-Zarr
        record.update(diameter_source=grid.source, instances=result.instance)
        if probs is not None:
            array = zarr.open_array(str(options["probabilities"]), path="0", mode="r")
            tiff = {"pixel_size": info.pixel_size, "dtype": "float32", "record": record}
            write_tiff_bands(probs, array, **tiff)
        labels = zarr.open_array(str(result.labels), path="0", mode="r")
        dtype = "uint16" if result.cells <= 65535 else "uint32"
        write_tiff_bands(target, labels, pixel_size=info.pixel_size, dtype=dtype, record=record)
        return result


def _said(diameter: float | None, source: str | None) -> str:
    """The per-image words on the diameter used, as the in-process command says them."""
    if diameter is None:
        return "diameter: none (image as it comes)"
    return f"diameter {diameter:.1f} px ({source})"


def _why(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def run(settings: BatchSettings, folders: NewFolders) -> int:
    """Run ``predict`` on dask as ``settings`` say, creating the output folder with
    ``folders``; returns the exit status (1 when a file failed)."""
    from tqdm import tqdm

    from .core.formats.io import image_info, read_pixel_size
    from .core.formats.zarrio import inspect_image, is_zarr
    from .core.large.blocks import model_source
    from .core.network.store import open_model

    try:
        from .core.large.distributed import DEFAULT_BLOCK, DEFAULT_HALO
    except ImportError as err:
        raise ValueError(
            f"--workers/--scheduler need dask.distributed and zarr ({err.name} is missing): "
            "pip install 'napari-unet[distributed]'"
        ) from err

    block = settings.block or DEFAULT_BLOCK
    halo = settings.halo or DEFAULT_HALO
    from distributed import as_completed

    from .core.large.distributed import (
        connect,
        fits_one_block,
        segment_small,
        shared_model,
        torch_threads,
    )

    model = open_model(settings.model)
    diameter = settings.diameter
    # the sizes left open are sized where the diameter is resolved (on the worker for a small
    # image, before the graph for a large one) and recorded there ("instances"); a rerun
    # compares what was asked, from which the same inputs give the same diameter and sizes
    instance = settings.instance
    flips = settings.flips
    precision = settings.precision
    record = {**model_record(settings.model, model), "flips": flips, "precision": precision}
    record.update(instances_asked=instance.options(), diameter_asked=diameter)
    out = settings.out
    folders.check(out)
    remove_stale_work(out)  # a killed run's, even when this run has nothing large to do
    plan = plan_outputs(expand_inputs(list(settings.images)), out, settings.kinds)
    todo = []
    for path, targets in plan:
        done, why = resumable([t for k, t in targets.items() if k in MARKED], record)
        if done:
            log.info("%s: done already (%s), skipped", path.name, targets["labels"].name)
        else:
            if why:
                log.info("%s: redone (%s)", path.name, why)
            todo.append((path, targets))
    if not todo:
        print(f"nothing to do: all {len(plan)} output(s) are complete in {out}")
        return 0
    folders.make(out)
    failures: dict[Path, str] = {}
    workers, scheduler = settings.workers, settings.scheduler
    with (
        connect(workers=workers, scheduler=scheduler) as client,
        shared_model(
            client,
            model,
            torch_threads(workers),
            unregister=scheduler is not None,
        ) as name,
    ):
        small, large = {}, []
        for path, targets in todo:
            try:
                info = inspect_image(path) if is_zarr(path) else None
                shape = info.shape if info else image_info(path)[0]
                if fits_one_block(_plane_shape(shape), block):
                    if info:
                        source = model_source(info, model.in_channels)
                    else:
                        _check_channels(shape, model.in_channels)
                        source = _WholeFile(str(path), model.in_channels, settings.max_pixels)
                    future = segment_small(
                        client,
                        name,
                        source,
                        flips=flips,
                        instance=instance,
                        probabilities="probabilities" in targets,
                        diameter=diameter,
                        precision=precision,
                    )
                    size = info.pixel_size if info else read_pixel_size(path)
                    small[future] = (path, targets, source, size)
                else:
                    if any(kind in TABLES for kind in targets):
                        raise ValueError(
                            f"--rois/--measurements need the labels in memory, and this image "
                            f"is larger than one block (--block {block}) and is "
                            "segmented block by block; run it without them, or in-process"
                        )
                    large.append((path, targets, info or inspect_image(path)))
            except Exception as err:  # noqa: BLE001 - reported per file at the end
                failures[path] = _why(err)
        with tqdm(total=len(todo) - len(failures), desc="images", unit="image") as bar:
            for path, targets, info in large:
                try:
                    meta = {**record, "input": str(path)}
                    options = {"block": block, "halo": halo, "flips": flips}
                    options.update(instance=instance, metadata=meta, diameter=diameter)
                    options["precision"] = precision
                    result = _segment_large(client, name, model, info, targets, options)
                    grid = result.resampling
                    said = _said(grid.diameter, grid.source)
                    tqdm.write(f"{path.name}: {result.cells} cells, {said} -> {targets['labels']}")
                except Exception as err:  # noqa: BLE001 - reported per file at the end
                    failures[path] = _why(err)
                bar.update(1)
            for future in as_completed(list(small)):
                path, targets, source, size = small.pop(future)
                try:
                    labels, probs, (used, where), options = future.result()
                    meta = {**record, "input": str(path), "normalisation": _whole_norm()}
                    meta.update(diameter=used, diameter_source=where, instances=options)
                    _write_small(targets, labels, probs, source, size, meta, block)
                    cells = int(labels.max(initial=0))
                    said = _said(used, where)
                    tqdm.write(f"{path.name}: {cells} cells, {said} -> {targets['labels']}")
                except Exception as err:  # noqa: BLE001 - reported per file at the end
                    failures[path] = _why(err)
                bar.update(1)
    if failures:
        for path, why in failures.items():
            print(f"napari-unet: failed: {path}: {why}", file=sys.stderr)
        print(
            f"napari-unet: error: {len(failures)} of {len(todo)} image(s) failed (listed above); "
            "a rerun does only what is missing",
            file=sys.stderr,
        )
        folders.remove_empty()  # an output folder this run made and nothing went into
        return 1
    return 0


def _whole_norm() -> dict:
    from .core.image import PERCENTILES

    return {"percentiles": list(PERCENTILES), "sampled_blocks": 1, "blocks": 1}
