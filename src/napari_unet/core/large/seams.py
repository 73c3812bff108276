"""Cells whole across block seams: label each block with a halo, keep the cells it owns.

Every block labels its probabilities grown by a halo (``window``) with
:func:`~napari_unet.to_instances`. A cell belongs to the block whose core holds its first pixel in
raster order (its *anchor*); the labelling of a cell depends only on the foreground around it, so
a cell that lies inside a window with room to spare (the halo larger than a cell) is labelled there
exactly as in the whole image, and every window that holds it agrees on its anchor: each cell is
kept once, by one block. A block's output is then painted from the cells owned by the blocks whose
windows reach into it, with ids ``offset of the owner + rank of the cell in its owner``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROVISIONAL_SHIFT", "owned_cells", "paint", "final_ids"]

PROVISIONAL_SHIFT = 32
"""A painted (provisional) id is ``(owner block + 1) << 32 | rank``; :func:`final_ids` turns it
into ``offset[owner] + rank`` once every block's count is known."""


def owned_cells(
    labels: np.ndarray, window: tuple[slice, slice], core: tuple[slice, slice], shape
) -> tuple[np.ndarray, int, int]:
    """The cells of a labelled window whose anchor lies in ``core``.

    Parameters
    ----------
    labels
        ``(h, w)`` instance labels of the plane's region ``window``.
    window, core
        ``(slice, slice)`` in plane coordinates; ``core`` lies inside ``window``.
    shape
        ``(H, W)`` of the plane (window edges on the plane's border cut no cell).

    Returns
    -------
    (owned, n, cut)
        ``owned`` ``(h, w)`` uint32: the owned cells numbered 1..n in the raster order of their
        anchors, 0 elsewhere; ``cut``: how many of them touch a window edge inside the plane
        (cells larger than the halo: they may differ from the whole-image labelling).
    """
    ids, first = np.unique(labels.ravel(), return_index=True)
    if ids.size and ids[0] == 0:
        ids, first = ids[1:], first[1:]
    ay, ax = np.unravel_index(first, labels.shape)
    ay, ax = ay + window[0].start, ax + window[1].start
    inside = (core[0].start <= ay) & (ay < core[0].stop) & (core[1].start <= ax)
    inside &= ax < core[1].stop
    mine = ids[inside][np.argsort(first[inside], kind="stable")]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint32)
    lut[mine] = np.arange(1, mine.size + 1, dtype=np.uint32)
    owned = lut[labels]
    edges = []
    if window[0].start > 0:
        edges.append(owned[0])
    if window[0].stop < shape[0]:
        edges.append(owned[-1])
    if window[1].start > 0:
        edges.append(owned[:, 0])
    if window[1].stop < shape[1]:
        edges.append(owned[:, -1])
    cut = np.count_nonzero(np.unique(np.concatenate(edges))) if edges else 0
    return owned, int(mine.size), int(cut)


def paint(core: tuple[slice, slice], pieces) -> np.ndarray:
    """Provisional ``(h, w)`` uint64 ids of ``core`` from the owned cells of the windows that
    reach into it.

    ``pieces`` is ``(block index, window, owned)`` per window (``owned`` from
    :func:`owned_cells`), in block order; where two owners claim a pixel (only cells cut by a
    halo can) the first keeps it.
    """
    out = np.zeros([s.stop - s.start for s in core], np.uint64)
    for index, window, owned in pieces:
        rows = slice(max(core[0].start, window[0].start), min(core[0].stop, window[0].stop))
        cols = slice(max(core[1].start, window[1].start), min(core[1].stop, window[1].stop))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        src = owned[
            rows.start - window[0].start : rows.stop - window[0].start,
            cols.start - window[1].start : cols.stop - window[1].start,
        ]
        dst = out[
            rows.start - core[0].start : rows.stop - core[0].start,
            cols.start - core[1].start : cols.stop - core[1].start,
        ]
        free = (src > 0) & (dst == 0)
        dst[free] = (np.uint64(index + 1) << np.uint64(PROVISIONAL_SHIFT)) + src[free]
    return out


def final_ids(provisional: np.ndarray, offsets: np.ndarray, dtype) -> np.ndarray:
    """Ids ``offsets[owner] + rank`` of provisional ids (0 stays 0) as ``dtype``; ``offsets``
    holds the number of cells owned by the blocks before each block."""
    provisional = np.asarray(provisional, np.uint64)
    owner = (provisional >> np.uint64(PROVISIONAL_SHIFT)).astype(np.int64) - 1
    rank = provisional & np.uint64(2**PROVISIONAL_SHIFT - 1)
    out = np.zeros(provisional.shape, dtype)
    hit = provisional > 0
    out[hit] = (np.asarray(offsets, np.uint64)[owner[hit]] + rank[hit]).astype(dtype)
    return out
