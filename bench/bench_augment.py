"""Time the paper's elastic deformation of one 512x512 image + labels pair, side by side.

Compares ``napari_unet.core.training.augment.elastic_deform`` (torch) with a scipy
``map_coordinates`` version of the same recipe (3x3 grid, 10 px std, cubic field, linear image,
nearest labels) and with ``elasticdeform.deform_random_grid`` if that package is installed. Run:
``python bench/bench_augment.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_unet.core.training.augment import elastic_deform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "usiigaci" / "train"
SIZE, RUNS, WARMUP = 512, 30, 3
THREADS = torch.get_num_threads()
OURS = "napari_unet elastic_deform (torch)"


def load_pair() -> tuple[np.ndarray, np.ndarray, str]:
    """A 512x512 float32 image and uint16 labels: Usiigaci set01 if present, else synthetic."""
    try:
        import tifffile

        image = tifffile.imread(DATA / "images" / "set01.tif")[:SIZE, :SIZE]
        labels = tifffile.imread(DATA / "masks" / "set01.tif")[:SIZE, :SIZE]
        source = f"Usiigaci set01 crop ({len(np.unique(labels)) - 1} cells)"
    except (ImportError, OSError):
        rng = np.random.default_rng(0)
        labels = ndimage.label(ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 8) > 0.5)[0]
        image = ndimage.gaussian_filter((labels > 0) * 1.0, 2) + 0.1 * rng.random((SIZE, SIZE))
        source = "synthetic blobs (Usiigaci data not found)"
    return image.astype(np.float32), labels.astype(np.uint16), source


def scipy_deform(image, labels, rng, grid=3, sigma=10.0):
    """The same recipe with scipy: cubic-spline field (zoom), map_coordinates order 1 and 0."""
    h, w = labels.shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    field = [ndimage.zoom(c, (h / grid, w / grid), order=3, grid_mode=False) for c in coarse]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([ys + field[0], xs + field[1]])
    return (
        ndimage.map_coordinates(image, coords, order=1, mode="mirror"),
        ndimage.map_coordinates(labels, coords, order=0, mode="mirror"),
    )


def median_ms(methods: dict) -> dict:
    """Median ms per call of each method, interleaved run by run so load changes hit all alike."""
    times = {name: [] for name in methods}
    for run in range(WARMUP + RUNS):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            if run >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    image, labels, source = load_pair()
    rng = np.random.default_rng(0)
    methods = {
        OURS: lambda: elastic_deform(image, labels, rng=rng),
        "scipy map_coordinates": lambda: scipy_deform(image, labels, rng),
    }
    try:
        import elasticdeform
    except ImportError:
        elasticdeform = None
    else:
        methods["elasticdeform.deform_random_grid"] = lambda: elasticdeform.deform_random_grid(
            [image, labels], sigma=10.0, points=3, order=[1, 0], mode="mirror"
        )
    print(f"pair: {SIZE}x{SIZE} float32 image + uint16 labels, {source}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: os.cpu_count()={os.cpu_count()}, torch.get_num_threads()={THREADS}, "
        f"load average {load}"
    )
    print(f"median of {RUNS} interleaved runs after {WARMUP} warm-up runs")
    ms = median_ms(methods)
    torch.set_num_threads(1)  # a separate pass: switching threads between runs slows torch down
    ms["the same, torch on 1 thread (own pass)"] = median_ms({"": methods[OURS]})[""]
    torch.set_num_threads(THREADS)
    ours = ms[OURS]
    for name, t in ms.items():
        print(f"  {name:36s} {t:8.2f} ms/pair   {t / ours:5.2f}x ours")
    if elasticdeform is None:
        print(f"  {'elasticdeform':36s} not installed")


if __name__ == "__main__":
    main()
