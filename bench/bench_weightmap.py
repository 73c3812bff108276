"""Benchmark: windowed separation weight map vs one whole-image distance transform per cell.

Run ``python bench/bench_weightmap.py [--naive-cells N]``. The label image is a 1024 x 1024
Voronoi tessellation of ~1000 random seeds, clipped to 20 px around each seed: most cells touch
their neighbours, with background gaps where seeds lie far apart. With ``--naive-cells N`` the
naive version runs on N cells only and its time is extrapolated linearly to all cells (the
difference is then not measured).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.training.weightmap import separation_weight_map


def voronoi_cells(size: int = 1024, n_seeds: int = 1000, radius: float = 20.0, seed: int = 0):
    """(size, size) int32 labels: Voronoi cells of random seeds, clipped to ``radius``."""
    rng = np.random.default_rng(seed)
    seeds = np.ones((size, size), bool)
    seeds[tuple(rng.integers(0, size, (2, n_seeds)))] = False
    dist, (rows, cols) = ndi.distance_transform_edt(seeds, return_indices=True)
    ids = np.zeros((size, size), np.int32)
    ids[~seeds] = np.arange(1, np.count_nonzero(~seeds) + 1)
    return np.where(dist <= radius, ids[rows, cols], 0)


def naive_weight_map(labels, w0=10.0, sigma=5.0, class_balance=True, cells=None):
    """Reference: one distance transform per cell over the whole image (all cells, or `cells`)."""
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for cell_id in np.unique(labels[labels > 0]) if cells is None else cells:
        dist = ndi.distance_transform_edt(labels != cell_id)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    fg = labels > 0
    wc = np.ones(labels.shape)
    if class_balance:
        n_fg = np.count_nonzero(fg)
        wc = np.where(fg, fg.size / (2 * n_fg), fg.size / (2 * (fg.size - n_fg)))
    border = np.where(fg, 0.0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)))
    return (wc + border).astype(np.float32)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-cells", type=int, default=None, help="extrapolate from N cells")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    labels = voronoi_cells()
    ids = np.unique(labels[labels > 0])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"labels: {labels.shape}, {ids.size} cells, "
        f"{np.count_nonzero(labels == 0) / labels.size:.0%} background"
    )

    fast = separation_weight_map(labels, class_balance=True)  # as naive_weight_map
    t_fast = best_of(lambda: separation_weight_map(labels, class_balance=True), args.repeats)
    print(f"windowed: {t_fast:.3f} s (best of {args.repeats})")

    if args.naive_cells is None:
        start = time.perf_counter()
        naive = naive_weight_map(labels)
        t_naive = time.perf_counter() - start
        print(f"naive:    {t_naive:.3f} s (one run, all {ids.size} cells)")
        print(f"max abs difference: {np.abs(fast - naive).max():.2e}")
    else:
        start = time.perf_counter()
        naive_weight_map(labels, cells=ids[: args.naive_cells])
        t_naive = (time.perf_counter() - start) * ids.size / args.naive_cells
        print(
            f"naive:    {t_naive:.3f} s (extrapolated linearly from {args.naive_cells} cells; "
            "difference not measured)"
        )
    print(f"speed-up: {t_naive / t_fast:.0f}x")


if __name__ == "__main__":
    main()
