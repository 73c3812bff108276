"""Distributed prediction (issue 13): memory per worker, throughput, exactness, cells at seams.

A mosaic of the bundled sample image (512 x 512, flipped copies so that no two neighbours are
the same) is written as OME-Zarr, then segmented

- in-process (``predict`` + ``to_instances``), when ``--size`` fits in memory,
- on a LocalCluster of 1 and of 2 workers (``segment_large``), recording wall time and each
  worker's peak resident memory (``ru_maxrss`` of its process),

and the probabilities of the blocks are compared with ``predict`` (max difference) and the cells
with the whole-image labelling (fraction matched at IoU >= 0.99, both ways).

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_cluster(workers: int, model, zarr_path: Path, out: Path, block: int, halo: int):
    from napari_unet.core.distributed import connect, segment_large, share_model
    from napari_unet.core.zarrio import inspect_image

    with connect(workers=workers) as client:
        name = share_model(client, model, torch_threads=max(1, 2 // workers))
        start = time.perf_counter()
        result = segment_large(
            client, name, model, inspect_image(zarr_path), out, block=block, halo=halo,
            instance=INSTANCE,
        )
        wall = time.perf_counter() - start
        peaks = client.run(peak_rss)
    return result, wall, sorted(peaks.values())


def main() -> None:
    import napari_unet as nu
    from napari_unet.core.blocks import estimate_normalisation, plan_blocks, predict_block
    from napari_unet.core.metrics import match_counts
    from napari_unet.core.zarrio import create_labels

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-in-process", action="store_true")
    args = parser.parse_args()

    model = nu.load_bundled()
    image = mosaic(args.size)
    folder = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    source = folder / "mosaic.ome.zarr"
    root = create_labels(source, image.shape, (1024, 1024), image.dtype)  # a multiscale image
    root["0"][:] = image
    report = {"size": args.size, "block": args.block, "halo": args.halo}

    reference = None
    if not args.no_in_process:
        start = time.perf_counter()
        prob = nu.predict(model, image)
        reference = nu.to_instances(prob, **INSTANCE)
        report["in_process_s"] = round(time.perf_counter() - start, 2)
        blocks = plan_blocks(image.shape, model, args.block)
        norm = estimate_normalisation(image, blocks)
        diff = max(
            float(np.abs(predict_block(model, image, b, norm) - prob[b.inner]).max())
            for b in blocks
        )
        report["probability_max_diff"] = diff
        report["in_process_peak_rss_gib"] = round(peak_rss() / 2**30, 2)

    for workers in args.workers:
        out = folder / f"labels-{workers}.ome.zarr"
        result, wall, peaks = run_cluster(workers, model, source, out, args.block, args.halo)
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
        report[f"workers_{workers}"] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
