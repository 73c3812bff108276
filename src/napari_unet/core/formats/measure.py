"""Per-cell measurements of instance labels (``skimage.measure.regionprops_table``), as a table of
columns that napari takes as a layer's ``features`` and that :func:`write_csv` writes for
spreadsheets (one header row, one row per cell, no index column).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["measure_cells", "write_csv"]

_SHAPE = {  # regionprops name -> column (pixels; bbox bottom/right exclusive)
    "label": "id",
    "area": "area_px",
    "centroid-0": "centroid_y_px",
    "centroid-1": "centroid_x_px",
    "bbox-0": "bbox_top_px",
    "bbox-1": "bbox_left_px",
    "bbox-2": "bbox_bottom_px",
    "bbox-3": "bbox_right_px",
    "perimeter": "perimeter_px",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
}
_INTENSITY = {"intensity_mean": "mean", "intensity_min": "min", "intensity_max": "max"}


def _image_planes(image, labels: np.ndarray, n: int) -> np.ndarray:
    """``image`` as ``n`` planes ``(n, H, W)`` or ``(n, H, W, C)`` matching ``labels``."""
    image = np.asarray(image)
    if image.shape == labels.shape:
        return image.reshape(n, *labels.shape[-2:])
    if image.ndim == labels.ndim + 1 and image.shape[:-1] == labels.shape:
        return image.reshape(n, *image.shape[-3:])
    raise ValueError(
        f"the image has shape {image.shape} but the labels {labels.shape}; expected the same "
        "shape, or the same with channels last"
    )


def measure_cells(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    pixel_size: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """One row per cell (per plane in a stack) of shape and intensity measurements.

    Parameters
    ----------
    labels
        ``(H, W)`` or ``(..., H, W)`` non-negative integer ids, 0 = background; the planes of a
        stack are numbered in C order from 0 and measured each on its own.
    image
        Optional intensities, ``labels.shape`` or ``labels.shape + (C,)``: adds
        ``mean_intensity``, ``min_intensity``, ``max_intensity`` (``_c0``, ``_c1``, ... per
        channel).
    pixel_size
        Optional ``(y, x)`` pixel size in micrometres: adds ``area_um2``, ``centroid_y_um``,
        ``centroid_x_um`` and, for square pixels, ``perimeter_um``.

    Returns
    -------
    dict of equal-length 1-D arrays, ordered by plane then id: ``id``, ``plane``, ``area_px``,
    ``centroid_y_px``, ``centroid_x_px``, ``bbox_top_px``, ``bbox_left_px``, ``bbox_bottom_px``,
    ``bbox_right_px`` (bottom and right exclusive), ``perimeter_px``, ``eccentricity``,
    ``solidity``, then the intensity and physical columns above.
    """
    from skimage.measure import regionprops_table

    from ..image import compact_ids, label_planes
    from .io import check_pixel_size

    planes = label_planes(labels)
    images = None if image is None else _image_planes(image, np.asarray(labels), len(planes))
    properties = ["label", "area", "centroid", "bbox", "perimeter", "eccentricity", "solidity"]
    properties += list(_INTENSITY) if images is not None else []
    parts = []
    for p, plane in enumerate(planes):
        compact, ids = compact_ids(plane)
        table = regionprops_table(
            compact, None if images is None else images[p], properties=properties
        )
        table["label"] = ids[table["label"]]
        table["plane"] = np.full(len(table["label"]), p)
        parts.append(table)
    table = {k: np.concatenate([t[k] for t in parts]) for k in parts[0]}
    columns = {"id": table.pop("label"), "plane": table.pop("plane")}
    columns.update({_SHAPE[k]: table.pop(k) for k in _SHAPE if k in table})
    columns["area_px"] = columns["area_px"].astype(np.int64)  # a pixel count
    for key, values in table.items():  # intensities: "intensity_mean" or "intensity_mean-0"
        stat, _, channel = key.partition("-")
        columns[f"{_INTENSITY[stat]}_intensity" + (f"_c{channel}" if channel else "")] = values
    if pixel_size is not None:
        y, x = check_pixel_size(pixel_size)
        columns["area_um2"] = columns["area_px"] * (y * x)
        columns["centroid_y_um"] = columns["centroid_y_px"] * y
        columns["centroid_x_um"] = columns["centroid_x_px"] * x
        if math.isclose(y, x, rel_tol=1e-6):
            columns["perimeter_um"] = columns["perimeter_px"] * x
    return columns


def write_csv(path: str | os.PathLike, table: dict[str, np.ndarray]) -> Path:
    """Write a table of equal-length columns (as :func:`measure_cells` returns) as a ``.csv``
    file, atomically: a header row, then one row per entry, comma-separated."""
    from .io import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"a measurements table is a .csv file, got {path.name}")
    columns = [np.asarray(v) for v in table.values()]
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise ValueError(f"the table's columns differ in length: {sorted(lengths)}")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(table)
        writer.writerows(zip(*(c.tolist() for c in columns), strict=True))
    return path
