"""Training targets and weight maps of the U-Net paper (Ronneberger et al. 2015, eq. 2).

Instance labels (``0`` = background, other ids = cells) become a two-class target in which touching
cells are separated by background, and a weight map
``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` that makes the network learn
the thin background gaps between cells.

The border term is computed in local windows: it is below ``EPS`` wherever
``d1 + d2 > R = sigma * sqrt(2 * ln(w0 / EPS))``, so each cell only needs a distance transform over
its bounding box grown by ``R``, instead of one over the whole image. The result differs from the
exact map by less than ``EPS`` (absolute) at every pixel.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation

__all__ = [
    "EPS",
    "W0",
    "SIGMA",
    "CLASS_BALANCE",
    "carve_borders",
    "check_labels",
    "check_weight_params",
    "largest_piece",
    "separation_weight_map",
    "training_target",
]

EPS = 1e-4
"""Largest absolute error of the border term; values below it are set to 0."""

W0, SIGMA, CLASS_BALANCE = 10.0, 5.0, False
"""The one default weight map, used by training, the Weight map dock and ``napari-unet
weightmap``: the paper's border term (w0 10, sigma 5 px) on the carved target, without the
paper's class-balance term w_c (on sparse images balancing made a model over-predict cells)."""
MAX_W0, MAX_SIGMA = 1e3, 100.0
"""The largest w0 and sigma (px) accepted: 100x the paper's weight, 20x its width (a larger
w0 only rescales the loss; a larger sigma reaches past any cell's neighbours)."""


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Validate an instance label image.

    Parameters
    ----------
    labels
        (H, W) array-like of non-negative integers: 0 = background, other values = cell ids.
    name
        Name of the argument, used in error messages.

    Returns
    -------
    np.ndarray
        (H, W) integer array, the input itself when it already is one (not a copy).

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D, is empty, is not of an integer dtype, or holds negative values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        hint = " (drop the singleton axes with .squeeze())" if labels.squeeze().ndim == 2 else ""
        raise ValueError(
            f"{name} must be a 2-D (H, W) label image, got shape {labels.shape}{hint}."
        )
    if labels.size == 0:
        raise ValueError(f"{name} is empty (shape {labels.shape}); expected an (H, W) image.")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            fix = f"convert them with {name}.astype(np.uint16) (np.uint32 for > 65535 cells)"
        else:
            fix = (
                "a binary or probability image must be turned into instances first, "
                "e.g. skimage.measure.label(image > 0.5)"
            )
        raise ValueError(
            f"{name} must be integers (cell ids, 0 = background), got dtype {labels.dtype}; {fix}."
        )
    if labels.dtype.kind == "i" and (low := labels.min()) < 0:
        raise ValueError(
            f"{name} must be non-negative (0 = background, > 0 = cell ids), "
            f"but the minimum is {low}."
        )
    return labels


def check_weight_params(w0: float, sigma: float) -> None:
    """ValueError unless ``w0`` is a number in [0, ``MAX_W0``] and ``sigma`` in
    (0, ``MAX_SIGMA``] px."""
    if not (isinstance(w0, numbers.Real) and 0 <= w0 <= MAX_W0):
        raise ValueError(f"w0 must be a finite number in [0, {MAX_W0:g}] (paper: 10), got {w0}.")
    if not (isinstance(sigma, numbers.Real) and 0 < sigma <= MAX_SIGMA):
        raise ValueError(
            f"sigma must be a finite number of pixels in (0, {MAX_SIGMA:g}] (paper: 5), "
            f"got {sigma}."
        )


def _border_term(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """(H, W) float32 border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``, 0 on cells."""
    term = np.zeros(labels.shape, np.float32)
    if w0 <= EPS:
        return term
    radius = sigma * math.sqrt(2 * math.log(w0 / EPS))
    margin = math.ceil(radius)
    if labels.max() > labels.size:  # huge sparse ids: find_objects would list them all
        labels = segmentation.relabel_sequential(labels)[0]
    # d1 <= d2: distances to the nearest and second-nearest cell among those within `margin`.
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for cell_id, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(box, labels.shape, strict=True)
        )
        dist = ndi.distance_transform_edt(labels[window] != cell_id)
        near, second = d1[window], d2[window]
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    total = d1 + d2
    inside = (labels == 0) & (total <= radius)
    term[inside] = w0 * np.exp(-(total[inside] ** 2) / (2 * sigma**2))
    return term


def _class_weights(foreground: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 ``n / (k * n_class)`` per pixel, counted over ``counted`` (or all) pixels.

    ``n`` is the number of counted pixels and ``k`` the number of classes present among them, so
    every present class carries the same total weight and the mean weight is 1.
    """
    n = foreground.size if counted is None else np.count_nonzero(counted)
    n_fg = np.count_nonzero(foreground if counted is None else foreground & counted)
    counts = np.array([n - n_fg, n_fg], np.float64)
    present = np.count_nonzero(counts)
    per_class = np.divide(n, present * counts, out=np.ones(2), where=counts > 0)
    return np.where(foreground, np.float32(per_class[1]), np.float32(per_class[0]))


def _weights(
    labels: np.ndarray,
    w0: float,
    sigma: float,
    class_balance: bool,
    counted: np.ndarray | None = None,
) -> np.ndarray:
    check_weight_params(w0, sigma)
    term = _border_term(labels, w0, sigma)
    if class_balance:
        return term + _class_weights(labels > 0, counted)
    return term + np.float32(1)


def separation_weight_map(
    labels, w0: float = W0, sigma: float = SIGMA, class_balance: bool = CLASS_BALANCE
) -> np.ndarray:
    """Weight map ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` of the U-Net paper
    (eq. 2), on ``labels`` as given.

    The paper's map is ``class_balance=True`` on the labels as given. Training, the Weight map
    dock and ``napari-unet weightmap`` use :func:`training_target` instead, which applies this
    function, with the same defaults (``W0``, ``SIGMA``, ``CLASS_BALANCE``: ``w_c = 1``), to the
    labels with touching cells carved apart (:func:`carve_borders`).

    ``d1`` and ``d2`` are the Euclidean distances (pixel centre to pixel centre) from a pixel to
    the nearest and second-nearest cell (distinct non-zero ids, which need not be contiguous).
    The border term is added on background pixels only, and is 0 where the image holds fewer than
    two cells. It is exact up to an absolute error below ``EPS`` (= 1e-4).

    Parameters
    ----------
    labels
        (H, W) integer instance labels, 0 = background.
    w0
        Height of the border term (paper: 10), >= 0.
    sigma
        Width of the border term in pixels (paper: 5), > 0.
    class_balance
        If True (the paper), ``w_c = n / (2 * n_class)`` on the pixels of each class (``n``
        pixels in all, ``n_class`` of the pixel's class), so foreground and background carry
        equal total weight and the mean of ``w_c`` is 1; ``w_c = 1`` for an image with a single
        class. If False (the default, ``CLASS_BALANCE``), ``w_c = 1`` everywhere.

    Returns
    -------
    np.ndarray
        (H, W) float32 weights.
    """
    labels = check_labels(labels)
    return _weights(labels, w0, sigma, class_balance)


def carve_borders(labels) -> np.ndarray:
    """Set to 0 the cell pixels that touch (8-neighbourhood) a pixel of another cell.

    Parameters
    ----------
    labels
        (H, W) integer instance labels, 0 = background.

    Returns
    -------
    np.ndarray
        (H, W) copy of ``labels`` (same dtype) in which no two cells touch; cells that touched no
        other cell are unchanged.
    """
    labels = check_labels(labels)
    highest = ndi.maximum_filter(labels, size=3, mode="nearest")
    # Background is raised to the largest id so that it never counts as a smaller neighbour.
    lowest = ndi.minimum_filter(
        np.where(labels == 0, labels.max(), labels), size=3, mode="nearest"
    )
    carved = labels.copy()
    carved[(labels > 0) & ((highest > labels) | (lowest < labels))] = 0
    return carved


def largest_piece(labels) -> np.ndarray:
    """Keep, for each cell id, only its largest 8-connected piece.

    Parameters
    ----------
    labels
        (H, W) integer instance labels, 0 = background.

    Returns
    -------
    np.ndarray
        (H, W) copy of ``labels`` (same dtype) with the smaller pieces of each id set to 0; of
        equally large pieces one is kept.
    """
    labels = check_labels(labels)
    pieces, n = measure.label(labels, background=0, connectivity=2, return_num=True)
    flat = pieces.ravel()
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    ids = np.zeros(n + 1, labels.dtype)
    ids[flat] = labels.ravel()
    ids = ids[1:]
    order = np.lexsort((sizes, ids))  # by id, then by size: the last of each id is the largest
    last = np.append(ids[order][1:] != ids[order][:-1], True)
    keep = np.zeros(n + 1, bool)
    keep[order[last] + 1] = True
    return np.where(keep[pieces], labels, 0).astype(labels.dtype)


def training_target(
    labels,
    mask=None,
    *,
    w0: float = W0,
    sigma: float = SIGMA,
    class_balance: bool = CLASS_BALANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-class target with carved borders and its separation weight map: the map that
    training (:func:`~napari_unet.finetune`), the Weight map dock and ``napari-unet weightmap``
    use.

    The weights are :func:`separation_weight_map` (the paper's eq. 2, with the same defaults) of
    ``carve_borders(labels)``, not of ``labels``: the target separates touching cells by a
    background line, and the border term weighs that line. ``class_balance=True`` adds the
    paper's class-balance term ``w_c``.

    Parameters
    ----------
    labels
        (H, W) integer instance labels, 0 = background.
    mask
        Optional (H, W) bool, True on annotated pixels (partial annotation); the others get
        weight 0 and do not count in the class balance. None: every pixel is annotated.
    w0, sigma
        Border term parameters, see `separation_weight_map`.
    class_balance
        Balance foreground and background weights, see `separation_weight_map`. Off by default:
        on sparse images (phase-contrast cells, ~8 % foreground) balancing made a model
        over-predict cells.

    Returns
    -------
    target : np.ndarray
        (H, W) uint8, 1 on the cells of ``carve_borders(labels)``, 0 elsewhere.
    weights : np.ndarray
        (H, W) float32, ``separation_weight_map`` of the carved labels, 0 outside ``mask``.

    Raises
    ------
    ValueError
        On invalid labels or parameters, or if ``mask`` and ``labels`` differ in shape.
    """
    labels = check_labels(labels)
    if mask is not None:
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.shape != labels.shape:
            raise ValueError(
                f"mask has shape {mask.shape} but labels have shape {labels.shape}; "
                "expected an (H, W) bool mask of the annotated pixels, same shape as labels."
            )
    carved = carve_borders(labels)
    weights = _weights(carved, w0, sigma, class_balance, mask)
    if mask is not None:
        weights[~mask] = 0
    return (carved > 0).astype(np.uint8), weights
