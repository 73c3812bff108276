"""Cell size as an input: resample images so their cells have the diameter a model knows.

A model trained with every image resampled so its median cell diameter is ``D`` px (stored in
the model's metadata as ``"diameter"``) sees a user's image of cells ``d`` px across at the
factor ``D / d``; its output is resampled back onto the image's own grid. Images are resampled
with anti-aliasing (area-like when shrinking), labels by nearest neighbour.

A :class:`Resampling` says how one image's planes are resampled (its factor, both grids, the
diameter and where it came from). It also computes any window of the resampled plane from the
image pixels that window needs (:meth:`Resampling.window`), and any region of the image from a
window of the resampled plane (:meth:`Resampling.back`), equal to the same pixels of
:func:`rescale_image` and :func:`resize_to` of the whole plane (to float rounding): a block of a
large image is resampled, predicted and resampled back on its own, and still equals the
prediction of the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tiling import mirror_indices

__all__ = [
    "median_diameter",
    "model_diameter",
    "tuned_diameter",
    "sized_cells",
    "scale_factor",
    "working_diameter",
    "rescale_image",
    "rescale_labels",
    "resize_to",
    "Resampling",
    "MIN_FACTOR",
    "MAX_FACTOR",
]

MIN_FACTOR, MAX_FACTOR = 1 / 8, 8.0
"""The resampling factors allowed: a diameter more than 8x off the model's is refused."""
SAME = 0.02
"""Factors within 2 % of 1 are not resampled (the image is used as it comes)."""
WORKING_RANGE = 1.4
"""A sized model is fine-tuned on cells as they come when they are within this factor of its
diameter, and on cells resampled to that limit when they are further off (docs/benchmarks.md,
"At which size to fine-tune")."""


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


def working_diameter(model_diameter: float, diameter: float) -> float:
    """The diameter (px) to fine-tune a model that knows cells ``model_diameter`` px across on
    cells ``diameter`` px across: ``diameter`` itself within :data:`WORKING_RANGE` of the
    model's (the network sees such cells whole, and learns them best at their own size), else
    the nearer limit of that range."""
    low, high = model_diameter / WORKING_RANGE, model_diameter * WORKING_RANGE
    return float(min(max(diameter, low), high))


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


_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, as rescale_image filters


def _reflected(start: int, stop: int, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` of positions ``start..stop-1`` of its extension by
    ``scipy.ndimage``'s ``"mirror"`` mode (``np.pad``'s ``"reflect"``: the edge pixel once),
    the extension :func:`rescale_image` filters and interpolates with."""
    if length == 1:
        return np.zeros(stop - start, np.intp)
    p = np.arange(start, stop) % (2 * length - 2)
    return np.where(p < length, p, 2 * length - 2 - p)


def _linear(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """``values`` interpolated linearly along ``axis`` at ``coords`` (positions along it, within
    ``[0, n - 1]``); float64."""
    n = values.shape[axis]
    low = np.clip(np.floor(coords).astype(np.intp), 0, max(0, n - 2))
    high = np.minimum(low + 1, n - 1)
    weight = (coords - low).reshape([-1 if a == axis else 1 for a in range(values.ndim)])
    a = np.take(values, low, axis=axis).astype(np.float64)
    b = np.take(values, high, axis=axis).astype(np.float64)
    return a + (b - a) * weight


@dataclass(frozen=True)
class Resampling:
    """How the ``(H, W)`` planes of an image are resampled for a model, and back.

    Attributes
    ----------
    plane
        ``(H, W)``: the image's plane.
    shape
        ``(H', W')``: the resampled plane (:func:`scaled_shape`; ``plane`` when not resampled).
    factor
        ``model diameter / diameter`` (1.0: the image as it comes).
    diameter
        The median diameter (px of the image) of the image's cells it is predicted at; ``None``
        when not known (the image as it comes).
    source
        Where ``diameter`` came from (see
        :func:`~napari_unet.core.prediction.predict.resolve_diameter`); ``None`` when not known.

    Notes
    -----
    Pixel ``j`` of the resampled plane covers image pixels ``[j / f, (j + 1) / f)`` (``f``
    the axis' :attr:`factors`), so its centre is at image coordinate ``(j + 0.5) / f - 0.5``,
    as :func:`rescale_image` and :func:`resize_to` place pixel centres.
    """

    plane: tuple[int, int]
    shape: tuple[int, int]
    factor: float = 1.0
    diameter: float | None = None
    source: str | None = None

    @classmethod
    def of(cls, plane, factor: float = 1.0, diameter=None, source=None) -> Resampling:
        """The resampling of ``(..., H, W)`` planes by ``factor``."""
        plane = tuple(int(n) for n in tuple(plane)[-2:])
        shape = scaled_shape(plane, factor) if factor != 1.0 else plane
        diameter = None if diameter is None else float(diameter)
        return cls(plane, tuple(shape), float(factor), diameter, source)

    @property
    def resampled(self) -> bool:
        """Whether the resampled plane differs from the image's."""
        return tuple(self.shape) != tuple(self.plane)

    @property
    def factors(self) -> tuple[float, float]:
        """``(H' / H, W' / W)``: the resampling of each axis as done (rounded shapes)."""
        return tuple(s / p for s, p in zip(self.shape, self.plane, strict=True))

    @property
    def cells(self) -> dict | None:
        """:func:`sized_cells` of :attr:`diameter` (``None`` when not known)."""
        return None if self.diameter is None else sized_cells(self.diameter)

    def to_resampled(self, point: tuple[float, float]) -> tuple[float, float]:
        """``(y, x)`` of the image's plane in the resampled plane's pixels."""
        return tuple((c + 0.5) * f - 0.5 for c, f in zip(point, self.factors, strict=True))

    def image_region(self, region: tuple[slice, slice]) -> tuple[slice, slice]:
        """The image pixels whose centres lie in ``region`` (``(slice, slice)`` of the
        resampled plane): the part of the image a tile of that region covers. The regions of
        tiles that cover the resampled plane once cover the image once."""
        out = []
        for s, f, n in zip(region, self.factors, self.plane, strict=True):
            start, stop = (min(n, max(0, math.ceil(b / f - 0.5))) for b in (s.start, s.stop))
            out.append(slice(start, stop))
        return tuple(out)

    def _back_coords(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Where image pixels ``start..stop-1`` of ``axis`` lie in the resampled plane, as
        :func:`resize_to` interpolates them (clamped at its edges)."""
        n, m = self.plane[axis], self.shape[axis]
        coords = (np.arange(start, stop) + 0.5) * (m / n) - 0.5
        return np.clip(coords, 0, m - 1)

    def needed(self, region: tuple[slice, slice]) -> tuple[slice, slice]:
        """The region of the resampled plane that :meth:`back` reads to give ``region``
        (``(slice, slice)`` of the image's plane)."""
        out = []
        for axis, s in enumerate(region):
            coords = self._back_coords(axis, s.start, s.stop)
            low = int(np.floor(coords[0]))
            out.append(slice(low, min(self.shape[axis], int(np.floor(coords[-1])) + 2)))
        return tuple(out)

    def back(
        self, values: np.ndarray, origin: tuple[int, int], region: tuple[slice, slice]
    ) -> np.ndarray:
        """``region`` (``(slice, slice)`` of the image's plane) of :func:`resize_to` of the
        resampled plane, from ``values``: the ``(h', w')`` part of the resampled plane that
        starts at ``origin`` (``(y, x)``) and holds :meth:`needed` of ``region``. Returns
        ``(h, w)`` float32 (bilinear, as :func:`resize_to`)."""
        out = np.asarray(values)
        for axis, s in enumerate(region):
            coords = self._back_coords(axis, s.start, s.stop) - origin[axis]
            out = _linear(out, coords, axis)
        return out.astype(np.float32)

    def window(
        self,
        read: Callable[[slice, slice], np.ndarray],
        rows: tuple[int, int],
        cols: tuple[int, int],
    ) -> np.ndarray:
        """Pixels ``[rows) x [cols)`` (``(start, stop)``) of the resampled plane's mirror
        extension (``np.pad``'s ``"symmetric"``, as the tiler pads the resampled plane), equal
        to those of :func:`rescale_image` of the whole plane (to float rounding).

        ``read(rows, cols)`` gives the image's pixels of a region (two slices within the plane)
        as ``(h, w)`` or ``(h, w, C)`` float32, e.g. normalised; only the pixels the window
        needs are read: its region of the image, grown by the anti-aliasing filter's reach
        (when shrinking) and one pixel. Returns ``(len(rows), len(cols)[, C])`` float32.
        """
        indices, spans, plans = [], [], []
        for axis, (start, stop) in enumerate((rows, cols)):
            n, m = self.plane[axis], self.shape[axis]
            index = mirror_indices(start, stop, m)
            low, high = int(index.min()), int(index.max()) + 1
            coords = (np.arange(low, high) + 0.5) * (n / m) - 0.5  # image coordinates
            sigma = max(0.0, (n / m - 1) / 2) if self.factor < 1 else 0.0
            reach = int(_TRUNCATE * sigma + 0.5) if sigma > 1e-15 else 0
            first = int(np.floor(coords[0])) - reach
            last = int(np.floor(coords[-1])) + 1 + reach
            image_index = _reflected(first, last + 1, n)
            spans.append(slice(int(image_index.min()), int(image_index.max()) + 1))
            indices.append(index - low)
            plans.append((image_index, coords - first, sigma))
        pixels = np.asarray(read(*spans), np.float32)
        (iy, cy, sy), (ix, cx, sx) = plans
        window = pixels[np.ix_(iy - spans[0].start, ix - spans[1].start)]
        if sy > 1e-15 or sx > 1e-15:
            from scipy import ndimage as ndi

            for axis, sigma in ((0, sy), (1, sx)):
                if sigma > 1e-15:
                    window = ndi.gaussian_filter1d(
                        window, sigma, axis=axis, mode="mirror", truncate=_TRUNCATE
                    )
        values = _linear(_linear(window, cy, 0), cx, 1).astype(np.float32)
        return values[np.ix_(*indices)]

    def to_image(self, array: np.ndarray) -> np.ndarray:
        """``(..., H', W')`` (e.g. probabilities of the resampled planes) on the image's grid:
        ``(..., H, W)`` float32 (:func:`resize_to`)."""
        return resize_to(array, self.plane)
