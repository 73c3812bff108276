"""Instance labels from a foreground probability map, sized by the cells a model was trained on."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from ..image import check_finite

__all__ = [
    "to_instances",
    "InstanceConfig",
    "Probabilities",
    "cell_areas",
    "cell_sizes",
    "size_defaults",
    "fill_cell_holes",
]

METHODS = ("watershed", "components")
THRESHOLD = 0.5
"""Default ``threshold`` of :func:`to_instances`: pixels above it are foreground."""
EXPAND = 1
"""Default ``expand`` (px) of :func:`to_instances`."""
CORE = 0.9
"""Default ``core`` of :func:`to_instances`: pixels above it seed the cells (so a ``threshold``
at or above it leaves nothing to grow)."""
MIN_SIZE, MIN_CORE = 16, 200
"""``min_size`` and ``min_core`` (px) of :func:`to_instances` when the model says nothing of its
cells: tuned on the shared data's cells (bench_accuracy.py)."""
SIZE_FRACTION = 0.05
"""With the median cell area ``a`` known, ``min_size = min_core = SIZE_FRACTION * a``: chosen
leave-one-kind-out on the shared data (bench_fewshot.py), never worse than the fixed pixels."""


class Probabilities(np.ndarray):
    """Foreground probability ``(..., H, W)`` from :func:`~napari_unet.predict` that carries
    ``cells``, what the model knows of the cells it was fine-tuned on (see :func:`cell_sizes`;
    ``None`` when nothing), so that :func:`to_instances` sizes its defaults for them.

    Otherwise a plain ndarray: slices keep ``cells``, reductions give plain scalars,
    ``np.asarray`` drops it.
    """

    def __new__(cls, array, cells: dict | None = None):
        obj = np.asarray(array).view(cls)
        obj.cells = cells
        return obj

    def __array_finalize__(self, obj) -> None:
        self.cells = getattr(obj, "cells", None)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        if array.ndim == 0:
            return array[()]
        return super().__array_wrap__(array, context, return_scalar)

    def __reduce__(self):
        rebuild, args, state = super().__reduce__()
        return rebuild, args, (state, self.cells)

    def __setstate__(self, state) -> None:
        state, self.cells = state
        super().__setstate__(state)


def cell_areas(labels, mask=None) -> np.ndarray:
    """Areas (px) of the cells of ``(H, W)`` instance labels that have a pixel in the optional
    ``(H, W)`` bool ``mask``; 1-D int64."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    present = sizes > 0
    if mask is not None:
        present &= np.bincount(labels[np.asarray(mask, bool)], minlength=len(sizes)) > 0
    present[0] = False
    return sizes[present].astype(np.int64)


def cell_sizes(areas) -> dict:
    """What annotated cells say of their size, as ``model.metadata["cells"]`` keeps it and
    :func:`to_instances` reads it: ``{"median_area": px, "median_diameter": px (of a disc of
    that area), "count": cells}`` from the 1-D ``areas`` (:func:`cell_areas`); ValueError when
    empty."""
    areas = np.asarray(areas)
    if areas.size == 0:
        raise ValueError("no annotated cell to measure; expected labels with ids > 0")
    area = float(np.median(areas))
    return {
        "median_area": area,
        "median_diameter": float(2 * np.sqrt(area / np.pi)),
        "count": int(areas.size),
    }


def size_defaults(cells: dict | None) -> tuple[int, int]:
    """``(min_size, min_core)`` in px for cells described by :func:`cell_sizes` (``None``: the
    fixed ``MIN_SIZE, MIN_CORE``)."""
    if not cells:
        return MIN_SIZE, MIN_CORE
    size = max(1, round(SIZE_FRACTION * float(cells["median_area"])))
    return size, size


@dataclass(frozen=True)
class InstanceConfig:
    """How :func:`to_instances` splits foreground into cells, as the CLI, the batch runner, the
    cluster and the Predict dock set it: its keyword arguments, with their defaults and bounds
    (checked when made: ValueError, as :func:`to_instances` says it). ``min_size`` and
    ``min_core`` left ``None`` are sized by the cells in use
    (:func:`~napari_unet.core.prediction.predict.instance_options`)."""

    threshold: float = THRESHOLD
    min_size: int | None = None
    expand: int = EXPAND
    core: float = CORE
    min_core: int | None = None

    def __post_init__(self) -> None:
        _check_options(self.threshold, self.core, self.min_size, self.expand, "watershed")

    def options(self) -> dict:
        """Keyword arguments of :func:`to_instances` (JSON-serialisable, as runs record them)."""
        return asdict(self)


def _check_options(threshold, core, min_size, expand, method: str) -> None:
    """ValueError for settings :func:`to_instances` refuses (``min_size`` ``None``: sized)."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "watershed" and not threshold <= core <= 1:
        raise ValueError(f"core must be in [threshold, 1] = [{threshold}, 1], got {core}")
    if min_size is not None and min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if expand < 0:
        raise ValueError(f"expand must be >= 0 px, got {expand}")


def fill_cell_holes(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` labels where each hole of a cell (background 4-connected pixels enclosed by
    that one cell) is that cell; gaps enclosed by several cells stay background."""
    holes, n = ndi.label(ndi.binary_fill_holes(labels > 0) & (labels == 0))
    if n == 0:
        return labels
    rows, cols = np.nonzero(holes)
    hole = holes[rows, cols]
    # (hole, cell) for the 4 neighbours of every hole pixel (no hole touches the border)
    pairs = np.unique(
        np.concatenate(
            [
                np.stack([hole, labels[rows + dy, cols + dx]])
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
            ],
            axis=1,
        ),
        axis=1,
    )
    pairs = pairs[:, pairs[1] > 0]
    owners = np.bincount(pairs[0], minlength=n + 1)
    single = pairs[:, owners[pairs[0]] == 1]
    owner = np.zeros(n + 1, labels.dtype)
    owner[single[0]] = single[1]
    filled = labels.copy()
    filled[rows, cols] = owner[hole]
    return filled


def _label_plane(
    prob, threshold: float, core: float, min_core: int, min_size: int, expand: int, method: str
):
    foreground = prob > threshold
    if method == "components":
        labels, _ = ndi.label(foreground)
    else:
        # Cells are seeded from their confident cores and grown down the probability: a faint
        # bridge between two touching cells (0.5 < p < core) no longer merges them.
        markers, _ = ndi.label(prob > core)
        tiny = np.bincount(markers.ravel()) < min_core  # specks of confidence over-split cells
        tiny[0] = False
        markers[tiny[markers]] = 0
        markers, n = ndi.label(markers > 0)
        labels = watershed(-prob, markers, mask=foreground)
        orphans = foreground & (labels == 0)  # cells with no confident core keep their pixels
        if orphans.any():
            extra, _ = ndi.label(orphans)
            labels[orphans] = extra[orphans] + n
    labels = fill_cell_holes(labels)
    if min_size > 1:
        small = np.bincount(labels.ravel()) < min_size
        small[0] = False
        labels[small[labels]] = 0
    if expand > 0:
        labels = expand_labels(labels, expand)
    return relabel_sequential(labels)[0]


def to_instances(
    probabilities: np.ndarray,
    threshold: float = THRESHOLD,
    min_size: int | None = None,
    *,
    core: float = CORE,
    min_core: int | None = None,
    expand: int = EXPAND,
    method: str = "watershed",
) -> np.ndarray:
    """Instance labels from foreground probabilities.

    Parameters
    ----------
    probabilities
        ``(H, W)`` or a stack ``(..., H, W)`` of foreground probability in [0, 1]; each plane is
        labelled on its own. A :class:`Probabilities` from :func:`~napari_unet.predict` also
        says how large the model's cells are: ``min_size`` and ``min_core`` left ``None`` are
        then ``SIZE_FRACTION`` of their median area (:func:`size_defaults`).
    threshold
        Pixels above it are foreground.
    min_size
        Objects smaller than this (px) are dropped; ``None``: from the cells' size, else
        ``MIN_SIZE`` (16).
    core
        ``method="watershed"``: pixels above ``core`` seed the cells, which then grow over the
        foreground down the probability; splits touching cells joined by a faint bridge.
    min_core
        Cores smaller than this (px) seed nothing (their cell then grows from a larger core or
        stays whole): without it, specks above ``core`` split cells; ``None``: from the cells'
        size, else ``MIN_CORE`` (200). ``core=0.9, min_core=200`` was never worse than connected
        components on the held-out splits (bench_accuracy.py).
    expand
        Grow every cell by this many px into the background, never into another cell. The
        network tends to draw cells inside their outline (its weight map makes the pixels
        between touching cells expensive, and its targets pull touching cells 1 px apart each);
        1 px scored best on training images (bench_accuracy.py --training-images).
    method
        ``"watershed"`` (default) or ``"components"`` (plain connected components).

    A hole inside one cell (its middle predicted as background, as in rounded phase-contrast
    cells with a bright halo) becomes part of that cell (:func:`fill_cell_holes`).

    Returns
    -------
    ``(..., H, W)`` uint16 (uint32 when there are more than 65535 cells in a plane), ids 1..N
    per plane, 0 = background.
    """
    sized_size, sized_core = size_defaults(getattr(probabilities, "cells", None))
    min_size = sized_size if min_size is None else min_size
    min_core = sized_core if min_core is None else min_core
    prob = np.asarray(probabilities)
    if prob.ndim < 2 or prob.size == 0:
        raise ValueError(f"probabilities have shape {prob.shape}; expected (H, W) or (..., H, W)")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"probabilities must be floats in [0, 1], got dtype {prob.dtype}")
    check_finite(prob, "probabilities")
    _check_options(threshold, core, min_size, expand, method)
    planes = [
        _label_plane(prob[idx], threshold, core, int(min_core), int(min_size), int(expand), method)
        for idx in np.ndindex(*prob.shape[:-2])
    ]
    top = max(int(p.max(initial=0)) for p in planes)
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    return np.stack([p.astype(dtype) for p in planes]).reshape(prob.shape)
