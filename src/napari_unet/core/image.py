"""Checking, normalising and reshaping input images.

Layout convention: a plane is ``(H, W)`` or ``(H, W, C)`` (channels last, as napari shows RGB);
a stack adds leading axes (Z, T, ...). Intensities are normalised per plane, never per tile.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PERCENTILES",
    "count_ids",
    "normalize",
    "rescale",
    "to_grey",
    "grey_if_rgb",
    "split_channels",
    "check_finite",
    "check_label_image",
    "mask_to_labels",
    "compact_ids",
    "label_planes",
]

PERCENTILES = (1.0, 99.8)
"""The percentiles that :func:`normalize` maps to 0 and 1, in prediction and training alike (the
bundled model was trained with them)."""
MAX_CHANNELS = 4  # a last axis this short holds channels, not a spatial dimension
_CHUNK_VALUES = 2**16  # normalize computes in float64 on chunks of this many values
_MAX_ID_CHANGES = 0.3
"""Largest share of neighbouring non-zero pixels with different ids in a plausible label image.
Real label images (Usiigaci, DSB 2018, ISBI 2012 masks) have at most 0.04, microscopy images
0.45-1.0 (the values of neighbouring pixels differ almost everywhere)."""


def check_finite(image: np.ndarray, name: str = "image") -> None:
    """Raise ValueError if ``image`` holds NaN or infinite values."""
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ValueError(
            f"{name} holds {bad} NaN or infinite pixel(s); expected finite values "
            "(replace them, for example with np.nan_to_num, before segmenting)"
        )


def normalize(
    image: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]
) -> np.ndarray:
    """Percentile normalisation of one image to float32.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` of any real dtype; channels are normalised separately.
    low, high
        Percentiles mapped to 0 and 1 (values outside are not clipped).

    Returns
    -------
    (H, W) or (H, W, C) float32, a new array; no full-size float64 copy is made.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape}); expected an (H, W) image")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(f"image has dtype {image.dtype}; expected integer or float pixels")
    if np.iscomplexobj(image):
        raise ValueError("image is complex; expected real-valued pixels")
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    check_finite(image)
    if image.dtype == bool:
        image = image.view(np.uint8)
    axes = (0, 1) if image.ndim == 3 else None
    lo, hi = np.percentile(image, [low, high], axis=axes, keepdims=image.ndim == 3)
    return rescale(image, lo, hi)


def rescale(image: np.ndarray, lo, hi) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 (no clipping): :func:`normalize` with given values.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` real pixels (any part of an image: the values are applied
        pixel by pixel, so a window of an image gets the same values as the whole image).
    lo, hi
        Scalars, or ``(1, 1, C)`` arrays for channels; ``hi <= lo`` maps ``x`` to ``x - lo``.

    Returns
    -------
    float32 array of ``image``'s shape, computed in float64 one chunk at a time.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.view(np.uint8)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    scale = np.where(hi > lo, hi - lo, 1.0)
    out = np.empty(image.shape, np.float32)
    rows = max(1, _CHUNK_VALUES // max(1, image[0].size))
    for start in range(0, len(image), rows):  # float64 arithmetic, one chunk at a time
        part = slice(start, start + rows)
        np.divide(np.subtract(image[part], lo), scale, out=out[part], casting="same_kind")
    return out


def count_ids(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids in ``labels`` (any shape; a stack counts as one image).

    Uses ``np.bincount`` when the ids are non-negative integers no larger than the pixel count
    (about 15x faster than ``np.unique``), else ``np.unique``.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0
    if labels.dtype.kind in "biu" and labels.min() >= 0 and labels.max() <= labels.size:
        return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    return int(np.count_nonzero(np.unique(labels)))


MASK_REGIONS, MASK_REGION_PX = 3, 16
"""A label image whose only id covers this many separate regions of this many px is a binary
mask (see :func:`check_label_image`)."""


def check_label_image(labels: np.ndarray, name: str = "labels") -> None:
    """Raise ValueError, saying what looks wrong, if ``labels`` looks like an intensity image.

    A label image holds one integer id per cell (0 = background), so neighbouring pixels mostly
    share an id; an intensity image passed by mistake has non-integer values, or neighbouring
    pixels that differ almost everywhere (and thousands of distinct values). A binary mask (one
    id over ``MASK_REGIONS`` or more separate regions of ``MASK_REGION_PX`` px or more) is
    refused too: :func:`mask_to_labels` makes its regions cells. Runs in a few array passes,
    so it can be called before long work.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.size and not np.all(np.mod(labels, 1) == 0):
        raise ValueError(
            f"{name} does not look like a label image: labels must be integers (one id per "
            f"cell, 0 = background), but it holds non-integer values from {labels.min():.4g} to "
            f"{labels.max():.4g} (dtype {labels.dtype}), like an intensity or probability image"
        )
    if labels.ndim < 2 or labels.dtype.kind not in "iuf":
        return
    changes = pairs = 0
    for axis in (-1, -2):
        a = np.moveaxis(labels, axis, -1)
        left, right = a[..., 1:], a[..., :-1]
        both = (left != 0) & (right != 0)
        pairs += np.count_nonzero(both)
        changes += np.count_nonzero(both & (left != right))
    if pairs and changes / pairs > _MAX_ID_CHANGES:
        raise ValueError(
            f"{name} does not look like a label image: {count_ids(labels):,} distinct ids, and "
            f"{changes / pairs:.0%} of neighbouring non-zero pixels differ, like an intensity "
            "image; a label image holds one integer id per cell (0 = background), each cell a "
            "patch of pixels with the same id"
        )
    if labels.ndim == 2:
        _check_not_a_mask(labels, name)


def _check_not_a_mask(labels: np.ndarray, name: str) -> None:
    """ValueError when ``(H, W)`` labels are a binary mask: one id over ``MASK_REGIONS`` or more
    separate regions of at least ``MASK_REGION_PX`` px each (one cell never looks like that)."""
    from scipy import ndimage as ndi

    ids = np.unique(labels[labels != 0]) if labels.any() else ()
    if len(ids) != 1:
        return
    regions, n = ndi.label(labels != 0)
    if n < MASK_REGIONS:
        return
    sizes = np.bincount(regions.ravel())[1:]
    if np.count_nonzero(sizes >= MASK_REGION_PX) >= MASK_REGIONS:
        raise ValueError(
            f"{name} looks like a binary mask, not instance labels: one id ({ids[0]}) covers "
            f"{n} separate regions, so training would take them for one cell and touching cells "
            "could never be separated. Give each cell its own id, or label the regions as cells "
            "(--connected-components; touching cells then stay merged)"
        )


def mask_to_labels(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint32 instance labels of the connected regions (8-connected) of a binary
    mask (any non-zero pixel); touching cells stay one region."""
    from scipy import ndimage as ndi

    return ndi.label(np.asarray(mask) != 0, structure=np.ones((3, 3)))[0].astype(np.uint32)


def label_planes(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """``labels`` as ``(N, H, W)`` planes (a view), checked: ``(H, W)`` or ``(..., H, W)``
    non-negative integer ids, 0 = background; ValueError saying what is wrong otherwise."""
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.size == 0:
        raise ValueError(
            f"{name} must be a non-empty (H, W) or (..., H, W) array, got {labels.shape}"
        )
    if labels.dtype.kind not in "biu":
        raise ValueError(
            f"{name} must hold integer ids (0 = background), got dtype {labels.dtype}"
        )
    if labels.dtype == bool:  # a mask: its pixels are cell 1
        labels = labels.view(np.uint8)
    if labels.min() < 0:
        raise ValueError(f"{name} must not hold negative ids, found {labels.min()}")
    return labels.reshape(-1, *labels.shape[-2:])


def compact_ids(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` ids renumbered ``1..n`` in their order, and the ``(n + 1,)`` original ids
    (``[0, id_1, ..., id_n]``): per-cell tables then take memory in the number of cells, not in
    the largest id (scikit-image's ``regionprops`` allocates one entry per id up to the
    largest)."""
    from skimage.segmentation import relabel_sequential

    compact, _, inverse = relabel_sequential(np.asarray(plane))
    return compact, np.asarray(inverse[np.arange(int(compact.max()) + 1)])


def to_grey(image: np.ndarray) -> np.ndarray:
    """Convert ``(..., H, W, 3|4)`` RGB(A) to ``(..., H, W)`` float32 luminance (alpha ignored)."""
    image = np.asarray(image)
    if image.ndim < 3 or image.shape[-1] not in (3, 4):
        raise ValueError(
            "to_grey expects RGB or RGBA with channels last (..., H, W, 3 or 4), "
            f"got {image.shape}"
        )
    weights = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # as skimage.color.rgb2gray
    return image[..., :3].astype(np.float32) @ weights


def split_channels(image: np.ndarray, in_channels: int) -> tuple[np.ndarray, bool]:
    """Decide whether the last axis holds channels for a model taking ``in_channels``.

    Returns the image and ``True`` when its last axis is channels. Raises ValueError with advice
    when the layout does not fit the model.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape}); expected an (H, W) image")
    if image.ndim < 2:
        raise ValueError(f"image has shape {image.shape}; expected at least (H, W)")
    channels_last = image.ndim >= 3 and image.shape[-1] <= MAX_CHANNELS
    if in_channels == 1:
        if channels_last and image.shape[-1] > 1:
            hint = " (convert RGB with napari_unet.to_grey)" if image.shape[-1] in (3, 4) else ""
            raise ValueError(
                f"image of shape {image.shape} has {image.shape[-1]} channels on its last axis "
                f"but the model takes 1{hint}; expected (H, W) or a stack (..., H, W)"
            )
        if channels_last:
            return image[..., 0], False
        return image, False
    if not channels_last or image.shape[-1] != in_channels:
        got = image.shape[-1] if channels_last else 1
        raise ValueError(
            f"image of shape {image.shape} has {got} channel(s) but the model takes "
            f"{in_channels}; expected (H, W, {in_channels}) or a stack (..., H, W, {in_channels})"
        )
    return image, True


def grey_if_rgb(image: np.ndarray, in_channels: int) -> np.ndarray:
    """``image`` converted with :func:`to_grey` when it is RGB(A) and the model takes one channel.

    The one place where napari-unet turns colour into grey; other layouts pass unchanged.
    """
    image = np.asarray(image)
    if in_channels == 1 and image.ndim >= 3 and image.shape[-1] in (3, 4):
        return to_grey(image)
    return image
