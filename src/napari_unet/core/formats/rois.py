"""ImageJ / Fiji ROI sets from instance labels: one polygon per cell, written with ``roifile``.

Each cell's polygon follows its outer outline half way between its pixels and the background
(``skimage.measure.find_contours`` at level 0.5), in ImageJ's coordinates, where pixel ``(r, c)``
covers ``[c, c + 1) x [r, r + 1)``; Fiji fills it back to the cell's pixels (holes included, which
the ROI's properties count). A cell in several pieces gets the outline of its largest piece.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["label_rois", "write_rois"]


def _outline(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(points, holes, pieces)`` of a cell's ``(h, w)`` bool mask: its outer outline as
    ``(n, 2)`` float (row, col) in the mask's pixel-centre coordinates, its holes and pieces."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    filled = ndi.binary_fill_holes(mask)
    holes = ndi.label(filled & ~mask)[1]
    pieces = ndi.label(filled)[1]
    contours = find_contours(np.pad(filled, 1).astype(np.float32), 0.5)
    outer = max(contours, key=_area)
    return outer[:-1] - 1, holes, pieces  # closed contours repeat their first point


def _area(points: np.ndarray) -> float:
    y, x = points[:, 0], points[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2


def label_rois(labels: np.ndarray) -> list:
    """One ``roifile.ImagejRoi`` polygon per cell of ``labels``.

    Parameters
    ----------
    labels
        ``(H, W)`` or a stack ``(..., H, W)`` of non-negative integer ids, 0 = background; the
        planes of a stack are numbered in C order from 0.

    Returns
    -------
    list of ImagejRoi, ordered by plane then id, named ``cell-<id>`` (``plane-<p>-cell-<id>`` in
    a stack, where the ROI's stack position is ``p + 1`` so that Fiji shows it on that slice),
    with properties ``id``, ``plane``, ``holes`` and ``pieces``.
    """
    from roifile import ROI_TYPE, ImagejRoi
    from skimage.measure import regionprops

    from ..image import compact_ids, label_planes

    planes = label_planes(labels)
    stack = np.ndim(labels) > 2
    id_width = len(str(int(planes.max())))
    plane_width = len(str(len(planes) - 1))
    rois = []
    for p, plane in enumerate(planes):
        compact, ids = compact_ids(plane)
        for cell in regionprops(compact):
            points, holes, pieces = _outline(cell.image)
            xy = points[:, ::-1] + np.add(cell.bbox[1::-1], 0.5)  # pixel centres at +0.5
            cell_id = int(ids[cell.label])
            name = f"cell-{cell_id:0{id_width}d}"
            if stack:
                name = f"plane-{p:0{plane_width}d}-{name}"
            roi = ImagejRoi.frompoints(xy, name=name, position=p if stack else None)
            roi.roitype = ROI_TYPE.POLYGON
            roi.properties = {"id": cell_id, "plane": p, "holes": holes, "pieces": pieces}
            rois.append(roi)
    return rois


def write_rois(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write the cells of ``labels`` as an ImageJ ROI set (``.zip``, Fiji's ROI Manager opens
    it), atomically; see :func:`label_rois`. Returns the path."""
    from roifile import roiwrite

    from .io import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"an ImageJ ROI set is a .zip file, got {path.name}")
    rois = label_rois(labels)  # no cells: an empty set
    with atomic_path(path) as tmp:
        roiwrite(tmp, rois, mode="w")
    return path
