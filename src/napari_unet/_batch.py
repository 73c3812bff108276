"""``napari-unet predict --workers N | --scheduler ADDRESS``: files and large images on dask.

Inputs are files, folders (their images and zarr folders) or glob patterns. Images that fit one
block run as one task each, spread over the workers; larger ones run block by block
(:mod:`napari_unet.core.large.distributed`). Each output is written atomically and a rerun skips
the outputs that are complete, so an interrupted run resumes; a file that fails is reported at the
end and does not stop the others.
"""

from __future__ import annotations

import glob
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("napari_unet")

__all__ = ["expand_inputs", "model_record", "model_sha256", "run", "torch_threads"]


def expand_inputs(items: list[str]) -> list[Path]:
    """Files for ``items``: a file or zarr folder as is, a folder's images and zarr folders
    (sorted), a glob pattern's matching images and zarr folders (sorted); FileNotFoundError for
    an item that gives none."""
    from .core.formats.io import IMAGE_SUFFIXES
    from .core.formats.zarrio import is_zarr

    def image(p: Path) -> bool:
        return is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if is_zarr(path) or path.is_file():
            paths.append(path)
        elif path.is_dir():
            paths.extend(
                p for p in sorted(path.iterdir()) if not p.name.startswith(".") and image(p)
            )
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"no such image file, folder or pattern: {item}")
            paths.extend(p for p in map(Path, matches) if image(p))
    if not paths:
        raise FileNotFoundError(f"no images found in {', '.join(items)}")
    return list(dict.fromkeys(paths))


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


def model_sha256(model) -> str:
    """Hex SHA-256 of ``model``'s weights (names and values): equal for equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_record(label: str | None, model) -> dict:
    """What an output records of the model it was made with (compared when a rerun resumes):
    ``label`` (a file, ``None``: the bundled model) and the weights' SHA-256."""
    return {"model": label or "bundled", "model_sha256": model_sha256(model)}


def _write_small(
    targets: dict, labels, probs, source, pixel_size, record: dict, chunk: int
) -> None:
    """Write the labels (and ``probs``, when asked for) of an image segmented whole, with the
    ROI set and measurements asked for (as the in-process command writes them)."""
    from .cli import _write_cell_tables
    from .core.formats.io import PREDICTION_SOFTWARE, write_image, write_labels
    from .core.formats.zarrio import write_labels_zarr
    from .core.large.blocks import opened

    target = targets["labels"]
    if target.suffix == ".tif":
        write_labels(target, labels, software=PREDICTION_SOFTWARE, pixel_size=pixel_size)
    else:
        write_labels_zarr(target, labels, (chunk, chunk), pixel_size=pixel_size, metadata=record)
    if "probabilities" in targets:
        target = targets["probabilities"]
        if target.suffix == ".tif":
            write_image(target, probs, software=PREDICTION_SOFTWARE)
        else:
            options = {"pixel_size": pixel_size, "metadata": record, "label": False}
            write_labels_zarr(target, probs, (chunk, chunk), **options)
    if _TABLES.intersection(targets):
        with opened(source) as plane:
            image = np.asarray(plane[:, :])
        _write_cell_tables(targets, labels, image, pixel_size)


_TABLES = {"rois", "cells"}
"""Output kinds made from the labels in memory (small images only)."""


def _segment_large(client, name, model, info, targets: dict, args, instance, record) -> int:
    """Segment a large image block by block into ``targets["labels"]`` (and
    ``targets["probabilities"]`` when asked for): OME-Zarr written in place atomically, or TIFF
    written band by band from OME-Zarr in a work folder. Returns the number of cells."""
    from contextlib import ExitStack

    from .core.formats.io import work_folder
    from .core.formats.zarrio import atomic_folder, write_tiff_bands
    from .core.large.distributed import segment_large

    options = {
        "block": args.block,
        "halo": args.halo,
        "flips": args.flips,
        "instance": instance,
        "pixel_size": info.pixel_size,
        "metadata": record,
    }
    target, probs = targets["labels"], targets.get("probabilities")
    if target.suffix != ".tif":
        with ExitStack() as stack:  # the labels, marked last, take their place last
            tmp = stack.enter_context(atomic_folder(target))
            if probs is not None:
                options["probabilities"] = stack.enter_context(atomic_folder(probs))
            return segment_large(client, name, model, info, tmp, **options).cells
    with work_folder(target.parent) as work:
        if probs is not None:
            options["probabilities"] = work / "probabilities.ome.zarr"
        result = segment_large(client, name, model, info, work / "labels.ome.zarr", **options)
        import zarr

        if probs is not None:
            array = zarr.open_array(str(options["probabilities"]), path="0", mode="r")
            write_tiff_bands(probs, array, pixel_size=info.pixel_size, dtype="float32")
        labels = zarr.open_array(str(result.labels), path="0", mode="r")
        dtype = "uint16" if result.cells <= 65535 else "uint32"
        write_tiff_bands(target, labels, pixel_size=info.pixel_size, dtype=dtype)
        return result.cells


def _why(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def torch_threads(workers: int | None) -> int | None:
    """Torch threads per worker of a local cluster of ``workers``: this process's CPUs shared
    out; ``None`` for a remote cluster (each worker uses its own CPUs, see ``ModelPlugin``)."""
    from .core.large.distributed import usable_cpus

    return max(1, usable_cpus() // workers) if workers else None


def run(args) -> int:
    """Run ``predict`` on dask; returns the exit status (1 when a file failed)."""
    from tqdm import tqdm

    from .cli import _MARKED, _plan_outputs, instance_options
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

    args.block = args.block or DEFAULT_BLOCK
    args.halo = args.halo or DEFAULT_HALO
    from distributed import as_completed

    from .core.large.distributed import connect, fits_one_block, segment_small, shared_model

    if args.device not in (None, "cpu"):
        raise ValueError("--device: workers predict on their own CPU (leave --device out)")
    if args.tile is not None:
        raise ValueError(
            "--tile: with --workers/--scheduler every block chooses its tile automatically "
            "(the result is the same); leave --tile out, or use --block"
        )
    model = open_model(args.model)
    instance = instance_options(model, args)
    record = {**model_record(args.model, model), "instances": instance, "flips": args.flips}
    out = Path(args.out)
    args.folders.check(out)
    kinds = ("labels",) + ("probabilities",) * args.probabilities
    kinds += ("rois",) * args.rois + ("cells",) * args.measurements
    plan = _plan_outputs(expand_inputs(args.images), out, kinds)
    todo = []
    for path, targets in plan:
        done, why = _resumable([t for k, t in targets.items() if k in _MARKED], record)
        if done:
            log.info("%s: done already (%s), skipped", path.name, targets["labels"].name)
        else:
            if why:
                log.info("%s: redone (%s)", path.name, why)
            todo.append((path, targets))
    if not todo:
        print(f"nothing to do: all {len(plan)} output(s) are complete in {out}")
        return 0
    args.folders.make(out)
    failures: dict[Path, str] = {}
    with (
        connect(workers=args.workers, scheduler=args.scheduler) as client,
        shared_model(
            client,
            model,
            torch_threads(args.workers),
            unregister=args.scheduler is not None,
        ) as name,
    ):
        small, large = {}, []
        for path, targets in todo:
            try:
                info = inspect_image(path) if is_zarr(path) else None
                shape = info.shape if info else image_info(path)[0]
                if fits_one_block(_plane_shape(shape), args.block):
                    if info:
                        source = model_source(info, model.in_channels)
                    else:
                        _check_channels(shape, model.in_channels)
                        source = _WholeFile(str(path), model.in_channels, args.max_pixels)
                    future = segment_small(
                        client,
                        name,
                        source,
                        flips=args.flips,
                        instance=instance,
                        probabilities=args.probabilities,
                    )
                    size = info.pixel_size if info else read_pixel_size(path)
                    small[future] = (path, targets, source, size)
                else:
                    if _TABLES.intersection(targets):
                        raise ValueError(
                            f"--rois/--measurements need the labels in memory, and this image "
                            f"is larger than one block (--block {args.block}) and is "
                            "segmented block by block; run it without them, or in-process"
                        )
                    large.append((path, targets, info or inspect_image(path)))
            except Exception as err:  # noqa: BLE001 - reported per file at the end
                failures[path] = _why(err)
        with tqdm(total=len(todo) - len(failures), desc="images", unit="image") as bar:
            for path, targets, info in large:
                try:
                    meta = {**record, "input": str(path)}
                    job = (client, name, model, info, targets, args, instance, meta)
                    cells = _segment_large(*job)
                    tqdm.write(f"{path.name}: {cells} cells -> {targets['labels']}")
                except Exception as err:  # noqa: BLE001 - reported per file at the end
                    failures[path] = _why(err)
                bar.update(1)
            for future in as_completed(list(small)):
                path, targets, source, size = small.pop(future)
                try:
                    labels, probs = future.result()
                    meta = {**record, "input": str(path), "normalisation": _whole_norm()}
                    _write_small(targets, labels, probs, source, size, meta, args.block)
                    cells = int(labels.max(initial=0))
                    tqdm.write(f"{path.name}: {cells} cells -> {targets['labels']}")
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
        return 1
    return 0


def _whole_norm() -> dict:
    from .core.image import PERCENTILES

    return {"percentiles": list(PERCENTILES), "sampled_blocks": 1, "blocks": 1}


def _resumable(targets: list[Path], record: dict) -> tuple[bool, str]:
    """Whether the complete outputs ``targets`` may be kept by a rerun made as ``record`` says:
    ``(True, "")``; else ``(False, why)``, ``why`` naming what differs ("" when an output is
    missing or incomplete). An OME-Zarr output records the model and options; a TIFF records
    neither, and is kept."""
    from .core.formats.zarrio import is_complete_output, read_record

    if not all(map(is_complete_output, targets)):
        return False, ""
    for target in targets:
        stored = read_record(target)
        if stored is None:
            continue
        keys = ("model_sha256", "instances", "flips")
        differ = [k for k in keys if stored.get(k) != record[k]]
        if differ:
            return False, "made with another " + ", ".join(differ)
    return True, ""
