"""Corrections of instance labels: merge two cells, split one cell in two.

Pure array operations (the Annotate dock wires them to buttons and keys). Labels are integer
arrays, 0 = background, 1..N = cells; the last two axes are a plane, leading axes (Z, T, ...)
hold independent planes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MERGE_GAP", "merge_cells", "split_cell"]

MERGE_GAP = 3
"""Widest background gap (px) between two merged cells that :func:`merge_cells` fills: the
1-3 px lines that separate touching cells in a prediction."""
_MIN_SHARE = 0.05  # a watershed part smaller than this share of the cell is not a split
_MAX_NECK = 0.8  # two maxima are two cells if the neck between them is at most this deep
_EIGHT = np.ones((3, 3), bool)  # pieces of a cell: 8-connected


def _check_cell(labels: np.ndarray, cell: int, name: str = "cell") -> None:
    if cell == 0:
        raise ValueError(f"{name} 0 is the background; expected a cell id (1 or more)")
    if not np.any(labels == cell):
        raise ValueError(f"{name} {cell} is not in the labels")


def _window(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of ``mask`` (2-D, not empty), grown by ``pad`` px, clipped."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    height, width = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, height)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, width)),
    )


def merge_cells(labels: np.ndarray, keep: int, other: int, *, gap: int = MERGE_GAP) -> np.ndarray:
    """Cell ``other`` becomes part of cell ``keep``, with the thin gap between them.

    Parameters
    ----------
    labels
        ``(..., H, W)`` integer instance labels (not changed).
    keep, other
        Ids of the two cells; ``other`` takes the id ``keep`` in every plane.
    gap
        On each plane holding both cells, the background pixels between them are filled
        (those ``p`` with ``d_keep(p) + d_other(p) <= gap + 1``, distances in px to the two
        cells): a background line up to ``gap`` px wide between them disappears. 0: none.

    Returns
    -------
    ``(..., H, W)`` array of ``labels``' dtype, a new array.

    Raises
    ------
    ValueError
        If ``keep`` equals ``other``, either is 0, or either is not in ``labels``.
    """
    labels = np.asarray(labels)
    if keep == other:
        raise ValueError(f"cannot merge cell {keep} with itself; pick two different cells")
    _check_cell(labels, keep)
    _check_cell(labels, other)
    out = labels.copy()
    for lead in np.ndindex(labels.shape[:-2]):
        plane = out[lead]  # a view: written in place
        mine, theirs = plane == keep, plane == other
        if gap > 0 and mine.any() and theirs.any():
            box = _window(mine | theirs, gap)
            near = ndimage.distance_transform_edt(~mine[box]) + ndimage.distance_transform_edt(
                ~theirs[box]
            )
            plane[box][(plane[box] == 0) & (near <= gap + 1)] = keep
        plane[theirs] = keep
    return out


def split_cell(labels: np.ndarray, cell: int, new_id: int | None = None) -> np.ndarray:
    """Divide cell ``cell`` of one plane in two; the smaller part gets ``new_id``.

    A cell made of separate pieces keeps its largest piece (8-connected) and the other pieces
    become the new cell. One piece is split by a watershed of its distance transform from its
    two strongest maxima (two touching round cells part along their neck); where that finds no
    two maxima (a round or convex cell), it is cut in two equal halves across its longest axis.

    Parameters
    ----------
    labels
        ``(H, W)`` integer instance labels (not changed).
    cell
        Id of the cell to split; it needs at least 2 pixels.
    new_id
        Id of the new part; default ``labels.max() + 1``. Must be unused and fit the dtype.

    Returns
    -------
    ``(H, W)`` array of ``labels``' dtype, a new array.

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D, ``cell`` is 0, absent or one pixel, or ``new_id`` is taken,
        0, or does not fit the dtype.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"split_cell takes one (H, W) plane, got shape {labels.shape}")
    _check_cell(labels, cell)
    if new_id is None:
        new_id = int(labels.max()) + 1
    if new_id <= 0 or np.any(labels == new_id):
        raise ValueError(f"new id {new_id} is the background or taken; expected a free id")
    if np.issubdtype(labels.dtype, np.integer) and new_id > np.iinfo(labels.dtype).max:
        raise ValueError(f"new id {new_id} does not fit the labels' dtype {labels.dtype}")
    box = _window(labels == cell, 1)  # one px of margin: the distance transform sees an edge
    mask = labels[box] == cell
    if np.count_nonzero(mask) < 2:
        raise ValueError(f"cell {cell} has one pixel; nothing to split")
    part = _pieces(mask)
    if part is None:
        part = _watershed_halves(mask)
    if part is None:
        part = _axis_halves(mask)
    out = labels.copy()
    out[box][part] = new_id
    return out


def _smaller(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Of ``first`` and ``mask & ~first``, the smaller (``first`` on a tie)."""
    second = mask & ~first
    return first if np.count_nonzero(first) <= np.count_nonzero(second) else second


def _pieces(mask: np.ndarray) -> np.ndarray | None:
    """All pieces of ``mask`` but its largest, or None for one piece."""
    pieces, n = ndimage.label(mask, structure=_EIGHT)
    if n < 2:
        return None
    sizes = np.bincount(pieces.ravel())[1:]
    return mask & (pieces != 1 + int(np.argmax(sizes)))


def _watershed_halves(mask: np.ndarray) -> np.ndarray | None:
    """The smaller part of a watershed of ``mask``'s distance transform from its two strongest
    maxima; None unless there are two maxima with a neck between them (its half-width at most
    :data:`_MAX_NECK` of the lower maximum's) and each part holds a fair share of the cell."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(mask)
    spacing = max(1, int(distance.max() / 2))  # maxima of one cell's plateau are one maximum
    peaks = peak_local_max(
        distance,
        min_distance=spacing,
        labels=mask.astype(np.uint8),
        num_peaks=2,
        exclude_border=False,
    )
    if len(peaks) < 2:
        return None
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = (1, 2)
    parts = watershed(-distance, markers, mask=mask)
    first = parts == 1
    neck = distance[first & ndimage.binary_dilation(parts == 2, _EIGHT)].max(initial=0)
    if neck > _MAX_NECK * distance[tuple(peaks.T)].min():
        return None  # a plateau or a ridge: one cell
    share = np.count_nonzero(first) / np.count_nonzero(mask)
    if not _MIN_SHARE <= share <= 1 - _MIN_SHARE:
        return None
    return _smaller(mask, first)


def _axis_halves(mask: np.ndarray) -> np.ndarray:
    """One half of ``mask`` (as many pixels as the other, give or take one), cut across its
    longest axis through the middle."""
    coords = np.argwhere(mask)
    centred = coords - coords.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    along = centred @ vectors[:, -1]  # the longest axis: the largest eigenvalue's vector
    order = np.argsort(along, kind="stable")
    half = np.zeros(mask.shape, bool)
    half[tuple(coords[order[len(order) // 2 :]].T)] = True
    return _smaller(mask, half)
