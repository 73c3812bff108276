"""Cell size as an input: resample images so their cells have the diameter a model knows.

A model trained with every image resampled so its median cell diameter is ``D`` px (stored in
the model's metadata as ``"diameter"``) sees a user's image of cells ``d`` px across at the
factor ``D / d``; its output is resampled back onto the image's own grid. Images are resampled
with anti-aliasing (area-like when shrinking), labels by nearest neighbour.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "median_diameter",
    "model_diameter",
    "tuned_diameter",
    "sized_cells",
    "scale_factor",
    "rescale_image",
    "rescale_labels",
    "resize_to",
    "MIN_FACTOR",
    "MAX_FACTOR",
]

MIN_FACTOR, MAX_FACTOR = 1 / 8, 8.0
"""The resampling factors allowed: a diameter more than 8x off the model's is refused."""
SAME = 0.02
"""Factors within 2 % of 1 are not resampled (the image is used as it comes)."""


def median_diameter(labels) -> float:
    """Median over the cells of ``(H, W)`` instance ``labels`` of the diameter (px) of a disc of
    the cell's area; ValueError when there is no cell."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        raise ValueError("no cell to measure a diameter from; expected labels with ids > 0")
    return float(2 * np.sqrt(np.median(areas) / np.pi))


def model_diameter(model) -> float | None:
    """The cell diameter (px) ``model`` works at: ``metadata["diameter"]`` for a model trained
    with its images resampled to one size; for a model fine-tuned on images as they came, the
    diameter of its annotated cells; ``None`` when the model says neither."""
    metadata = getattr(model, "metadata", None) or {}
    if metadata.get("diameter") is not None:
        return float(metadata["diameter"])
    return tuned_diameter(model)


def tuned_diameter(model) -> float | None:
    """The diameter (px, in their images' own pixels) of the cells ``model`` was fine-tuned on
    (``metadata["cells"]``), or ``None``."""
    cells = (getattr(model, "metadata", None) or {}).get("cells") or {}
    diameter = cells.get("median_diameter")
    return None if diameter is None else float(diameter)


def sized_cells(diameter: float) -> dict:
    """What :func:`~napari_unet.to_instances` reads of cells ``diameter`` px across (the area of
    a disc of that diameter; see :func:`~napari_unet.core.prediction.instances.cell_sizes`)."""
    return {"median_area": float(np.pi * diameter**2 / 4), "median_diameter": float(diameter)}


def scale_factor(model_diameter: float, diameter: float) -> float:
    """``model_diameter / diameter``: how much to enlarge an image of cells ``diameter`` px
    across for a model that knows cells ``model_diameter`` px across; 1.0 when within ``SAME``.
    ValueError when a diameter is not a positive number or the factor is out of range."""
    for name, value in (("diameter", diameter), ("model diameter", model_diameter)):
        if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
            raise ValueError(f"the cell {name} must be a positive number of pixels, got {value!r}")
    factor = float(model_diameter) / float(diameter)
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise ValueError(
            f"cells {diameter:g} px across are too far from the {model_diameter:g} px this model "
            f"knows (factor {factor:.3g}; expected {model_diameter / MAX_FACTOR:.3g}-"
            f"{model_diameter / MIN_FACTOR:.3g} px)"
        )
    return 1.0 if abs(factor - 1) <= SAME else factor


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """``(H', W')``: the plane ``(..., H, W)`` resampled by ``factor`` (at least 1 px)."""
    return tuple(max(1, round(s * factor)) for s in shape[-2:])


def rescale_image(image: np.ndarray, factor: float, channels_last: bool = False) -> np.ndarray:
    """``(..., H, W)`` image (``(..., H, W, C)`` with ``channels_last``) resampled by ``factor``
    in H and W (bilinear, with a Gaussian anti-aliasing filter when shrinking); float32. The
    image itself when factor is 1."""
    if factor == 1.0:
        return image
    if channels_last:
        return np.moveaxis(rescale_image(np.moveaxis(image, -1, 0), factor), 0, -1)
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    shape = (*image.shape[:-2], *scaled_shape(image.shape, factor))
    return resize(
        image, shape, order=1, mode="reflect", anti_aliasing=factor < 1, preserve_range=True
    ).astype(np.float32, copy=False)


def rescale_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """``(H, W)`` instance labels resampled by ``factor`` by nearest neighbour (ids kept; a cell
    smaller than a pixel of the result may vanish)."""
    if factor == 1.0:
        return labels
    labels = np.asarray(labels)
    h, w = scaled_shape(labels.shape, factor)
    rows = np.minimum((np.arange(h) + 0.5) * labels.shape[-2] / h, labels.shape[-2] - 1)
    cols = np.minimum((np.arange(w) + 0.5) * labels.shape[-1] / w, labels.shape[-1] - 1)
    return labels[..., rows.astype(np.intp)[:, None], cols.astype(np.intp)[None, :]]


def resize_to(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(..., h, w)`` float map (probabilities) resampled bilinearly onto ``(..., H, W)`` =
    ``shape``, pixel centres aligned; float32. The array itself when the shapes agree."""
    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    from skimage.transform import resize

    out = (*array.shape[:-2], *shape)
    return resize(
        np.asarray(array, np.float32), out, order=1, mode="edge", anti_aliasing=False
    ).astype(np.float32, copy=False)
