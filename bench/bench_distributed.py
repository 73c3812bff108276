"""Distributed prediction (issue 13): memory per worker, throughput, exactness, cells at seams.

A mosaic of the bundled sample image (512 x 512, flipped copies so that no two neighbours are
the same) is written as OME-Zarr, then segmented

- in-process (``predict`` + ``to_instances``), when ``--size`` fits in memory,
- on a LocalCluster of 1 and of 2 workers (``segment_large``), recording wall time and each
  worker's peak resident memory (``ru_maxrss`` of its process),

and the probabilities the cluster computes for the blocks are compared with ``predict`` (max
difference) and the cells with the whole-image labelling (fraction matched at IoU >= 0.99, both
ways). ``--picture`` writes a PNG of the cells that differ (red: whole-image cells without a
match, cyan: block-wise cells without one); an all-black picture means none differ.

    python bench/bench_distributed.py --size 1024 --block 512          # quick (minutes)
    python bench/bench_distributed.py --size 8192 --no-in-process      # memory at 8k
    python bench/bench_distributed.py --size 16384 --no-in-process     # memory at 16k
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

INSTANCE = {"threshold": 0.5, "min_size": 16, "expand": 1}


def mosaic(size: int) -> np.ndarray:
    from napari_unet._sample_data import phase_contrast_cells

    (tile, *_), _ = phase_contrast_cells()
    n = -(-size // tile.shape[0])
    rows = [
        np.concatenate([tile[:: 1 - 2 * ((i + j) % 2), :: 1 - 2 * (i % 2)] for j in range(n)], 1)
        for i in range(n)
    ]
    return np.concatenate(rows, 0)[:size, :size]


def peak_rss(dask_worker=None) -> int:
    """Peak resident memory (bytes) of this process's own memory map.

    Linux's ``ru_maxrss`` survives ``exec``: a worker spawned from this process would report at
    least this process's memory at the time of the spawn; ``VmHWM`` belongs to the new map only.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def block_probabilities(name, source, block, norm) -> np.ndarray:
    """What a predict task of the graph computes (it writes them to its scratch folder)."""
    from napari_unet.core.large import distributed as dist
    from napari_unet.core.large.blocks import opened, predict_block

    with opened(source) as plane:
        return predict_block(dist._model(name), plane, block, norm)


def run_cluster(workers: int, model, zarr_path: Path, out: Path, block: int, halo: int, prob):
    """Segment on a LocalCluster; with ``prob`` (in-process probabilities) also the largest
    difference from them of the blocks' probabilities computed on the cluster."""
    from napari_unet.core.formats.zarrio import inspect_image
    from napari_unet.core.large import distributed as dist
    from napari_unet.core.large.blocks import plan_blocks

    info = inspect_image(zarr_path)
    with dist.connect(workers=workers) as client:
        name = dist.share_model(client, model, torch_threads=max(1, 2 // workers))
        start = time.perf_counter()
        result = dist.segment_large(
            client, name, model, info, out, block=block, halo=halo, instance=INSTANCE
        )
        wall = time.perf_counter() - start
        peaks = client.run(peak_rss)
        diff = None
        if prob is not None:  # the predict tasks of the graph, with its normalisation
            blocks = plan_blocks(info.shape, model, block)
            futures = [
                client.submit(block_probabilities, name, info, b, result.normalisation)
                for b in blocks
            ]
            diff = max(
                float(np.abs(f.result() - prob[b.inner]).max())
                for f, b in zip(futures, blocks, strict=True)
            )
    return result, wall, sorted(peaks.values()), diff


def unmatched(a: np.ndarray, b: np.ndarray, iou: float = 0.99) -> np.ndarray:
    """``(H, W)`` bool: the cells of ``a`` that no cell of ``b`` matches with IoU >= ``iou``."""
    fg = a > 0
    pairs, overlap = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    union = area_a[pairs[0]] + area_b[pairs[1]] - overlap
    good = pairs[0][(pairs[1] > 0) & (overlap / union >= iou)]
    return fg & ~np.isin(a, good)


def difference_picture(path: Path, reference: np.ndarray, labels: np.ndarray) -> int:
    """Write the PNG of the cells that differ; returns how many pixels it colours."""
    import imageio.v3 as iio

    picture = np.zeros((*reference.shape, 3), np.uint8)
    picture[unmatched(reference, labels)] = (255, 0, 0)
    picture[unmatched(labels, reference)] = (0, 255, 255)
    iio.imwrite(path, picture)
    return int(picture.any(axis=-1).sum())


def main() -> None:
    import napari_unet as nu
    from napari_unet.core.formats.zarrio import create_labels
    from napari_unet.core.metrics import match_counts

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-in-process", action="store_true")
    parser.add_argument("--picture", type=Path, help="PNG of the cells that differ")
    args = parser.parse_args()

    model = nu.load_bundled()
    image = mosaic(args.size)
    folder = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    source = folder / "mosaic.ome.zarr"
    root = create_labels(source, image.shape, (1024, 1024), image.dtype)  # a multiscale image
    root["0"][:] = image
    report = {"size": args.size, "block": args.block, "halo": args.halo}

    reference = prob = None
    if not args.no_in_process:
        start = time.perf_counter()
        prob = nu.predict(model, image)
        reference = nu.to_instances(prob, **INSTANCE)
        report["in_process_s"] = round(time.perf_counter() - start, 2)
        report["in_process_peak_rss_gib"] = round(peak_rss() / 2**30, 2)

    for workers in args.workers:
        out = folder / f"labels-{workers}.ome.zarr"
        result, wall, peaks, diff = run_cluster(
            workers, model, source, out, args.block, args.halo, prob
        )
        entry = {
            "wall_s": round(wall, 2),
            "peak_rss_gib_per_worker": [round(p / 2**30, 2) for p in peaks],
            "cells": result.cells,
            "cut_cells": result.cut,
            "blocks": result.blocks,
        }
        if reference is not None:
            labels = zarr.open_array(str(out), path="0", mode="r")[:]
            matched, n_ref, n_out = match_counts(reference, labels, 0.99)
            entry["matched_iou_0.99"] = [matched, n_ref, n_out]
            entry["fraction_matched"] = round(matched / max(1, max(n_ref, n_out)), 4)
            entry["overhead_vs_in_process"] = round(wall / report["in_process_s"], 2)
            entry["probability_max_diff"] = diff  # the cluster's blocks against predict
            if args.picture:
                picture = args.picture.with_name(f"{args.picture.stem}-{workers}.png")
                entry["differing_pixels"] = difference_picture(picture, reference, labels)
                entry["picture"] = str(picture)
        report[f"workers_{workers}"] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
