"""``napari-unet predict --workers N | --scheduler ADDRESS``: files and large images on dask.

Inputs are files, folders (their images and zarr folders) or glob patterns. Images that fit one
block run as one task each, spread over the workers; larger ones run block by block
(:mod:`napari_unet.core.distributed`). Each output is written atomically and a rerun skips the
outputs that are complete, so an interrupted run resumes; a file that fails is reported at the
end and does not stop the others.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("napari_unet")

__all__ = ["expand_inputs", "run"]


def expand_inputs(items: list[str]) -> list[Path]:
    """Files for ``items``: a file or zarr folder as is, a folder's images and zarr folders
    (sorted), a glob pattern's matches (sorted); FileNotFoundError for an item that gives none."""
    from .core.io import IMAGE_SUFFIXES
    from .core.zarrio import is_zarr

    def images_in(folder: Path) -> list[Path]:
        found = [
            p
            for p in sorted(folder.iterdir())
            if not p.name.startswith(".")
            and (is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        ]
        return found

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if is_zarr(path) or path.is_file():
            paths.append(path)
        elif path.is_dir():
            paths.extend(images_in(path))
        else:
            paths.extend(Path(p) for p in sorted(glob.glob(item)))
            if not glob.glob(item):
                raise FileNotFoundError(f"no such image file, folder or pattern: {item}")
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
        from .core.image import grey_if_rgb
        from .core.io import read_image

        yield grey_if_rgb(read_image(self.path, max_pixels=self.max_pixels), self.in_channels)


def _targets(paths: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """``(input, output)``: ``<stem>_labels.ome.zarr`` for zarr inputs, else
    ``<stem>_labels.tif``; a stem met again gets ``-2``, ``-3``, ..."""
    from .core.zarrio import ImageFile, is_zarr

    plan, taken = [], set()
    for path in paths:
        stem = ImageFile(str(path), "", (), None).stem
        suffix = "_labels.ome.zarr" if is_zarr(path) else "_labels.tif"
        name, k = f"{stem}{suffix}", 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}{suffix}"
        taken.add(name)
        plan.append((path, out / name))
    return plan


def _plane_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(H, W)`` of the planes of a file's ``(..., H, W[, C])`` image."""
    channels_last = len(shape) >= 3 and shape[-1] <= 4
    return tuple(shape[-3:-1]) if channels_last else tuple(shape[-2:])


def _write_small(target: Path, labels, info) -> None:
    from .core.io import PREDICTION_SOFTWARE, write_labels
    from .core.zarrio import (
        atomic_folder,
        create_labels,
        mark_complete,
        pyramid_shapes,
        write_level,
    )

    if target.suffix == ".tif":
        write_labels(target, labels, software=PREDICTION_SOFTWARE)
        return
    with atomic_folder(target) as tmp:
        chunks = (1024, 1024)
        root = create_labels(
            tmp, labels.shape, chunks, labels.dtype, pixel_size=info.pixel_size, unit=info.unit
        )
        root["0"][:] = labels
        for level, shape in enumerate(pyramid_shapes(labels.shape, chunks)[1:], start=1):
            write_level(root, level, (slice(0, shape[0]), slice(0, shape[1])))
        mark_complete(root)


def _segment_large(client, name, model, info, target: Path, args, instance) -> int:
    from .core.distributed import segment_large
    from .core.io import work_folder
    from .core.zarrio import atomic_folder, write_tiff_bands

    options = {
        "block": args.block,
        "halo": args.halo,
        "flips": args.flips,
        "instance": instance,
        "pixel_size": info.pixel_size,
        "unit": info.unit,
        "metadata": {"input": str(info.path), "model": args.model or "bundled"},
    }
    if target.suffix != ".tif":
        with atomic_folder(target) as tmp:
            return segment_large(client, name, model, info, tmp, **options).cells
    with work_folder(target.parent) as work:
        result = segment_large(client, name, model, info, work / "labels.ome.zarr", **options)
        import zarr

        labels = zarr.open_array(str(result.labels), path="0", mode="r")
        dtype = "uint16" if result.cells <= 65535 else "uint32"
        write_tiff_bands(target, labels, pixel_size=info.pixel_size, unit=info.unit, dtype=dtype)
        return result.cells


def run(args) -> int:
    """Run ``predict`` on dask; returns the exit status (1 when a file failed)."""
    import numpy as np
    from tqdm import tqdm

    from .core.instances import size_defaults, to_instances
    from .core.io import image_info
    from .core.store import open_model
    from .core.zarrio import inspect_image, is_complete_output, is_zarr

    try:
        from .core.distributed import DEFAULT_BLOCK, DEFAULT_HALO
    except ImportError as err:
        raise ValueError(
            f"--workers/--scheduler need dask.distributed and zarr ({err.name} is missing): "
            "pip install 'napari-unet[distributed]'"
        ) from err

    args.block = args.block or DEFAULT_BLOCK
    args.halo = args.halo or DEFAULT_HALO
    from distributed import as_completed

    from .core.distributed import connect, fits_one_block, segment_small, share_model

    if args.probabilities:
        raise ValueError("--probabilities is not written with --workers/--scheduler yet")
    if args.device not in (None, "cpu"):
        raise ValueError("--device: workers predict on their own CPU (leave --device out)")
    to_instances(np.zeros((1, 1), np.float32), args.threshold, args.min_size, expand=args.expand)
    model = open_model(args.model)
    # blocks are labelled from plain arrays: the model's cell-size defaults are resolved here
    min_size, min_core = size_defaults((getattr(model, "metadata", None) or {}).get("cells"))
    instance = {
        "threshold": args.threshold,
        "min_size": min_size if args.min_size is None else args.min_size,
        "min_core": min_core,
        "expand": args.expand,
    }
    out = Path(args.out)
    args.folders.check(out)
    plan = _targets(expand_inputs(args.images), out)
    todo = []
    for path, target in plan:
        if is_complete_output(target):
            log.info("%s: done already (%s), skipped", path.name, target.name)
        elif os.path.lexists(target):
            raise FileExistsError(
                f"{target} exists and napari-unet predict did not write it; refusing to replace "
                f"it with the output for {path} (move it, or choose another --out)"
            )
        else:
            todo.append((path, target))
    if not todo:
        print(f"nothing to do: all {len(plan)} output(s) are complete in {out}")
        return 0
    args.folders.make(out)
    failures: dict[Path, str] = {}
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None
    with connect(workers=args.workers, scheduler=args.scheduler) as client:
        name = share_model(client, model, torch_threads=threads)
        small, large = {}, []
        for path, target in todo:
            try:
                info = inspect_image(path) if is_zarr(path) else None
                shape = info.shape if info else _plane_shape(image_info(path)[0])
                if fits_one_block(shape, args.block):
                    source = info or _WholeFile(str(path), model.in_channels, args.max_pixels)
                    future = segment_small(
                        client, name, source, flips=args.flips, instance=instance
                    )
                    small[future] = (path, target, info)
                else:
                    large.append((path, target, info or inspect_image(path)))
            except Exception as err:  # noqa: BLE001 - reported per file at the end
                failures[path] = " ".join(str(err).split()) or type(err).__name__
        with tqdm(total=len(todo) - len(failures), desc="images", unit="image") as bar:
            for path, target, info in large:
                try:
                    cells = _segment_large(client, name, model, info, target, args, instance)
                    tqdm.write(f"{path.name}: {cells} cells -> {target}")
                except Exception as err:  # noqa: BLE001 - reported per file at the end
                    failures[path] = " ".join(str(err).split()) or type(err).__name__
                bar.update(1)
            for future in as_completed(list(small)):
                path, target, info = small.pop(future)
                try:
                    labels, _ = future.result()
                    _write_small(target, labels, info)
                    tqdm.write(f"{path.name}: {int(labels.max(initial=0))} cells -> {target}")
                except Exception as err:  # noqa: BLE001 - reported per file at the end
                    failures[path] = " ".join(str(err).split()) or type(err).__name__
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
