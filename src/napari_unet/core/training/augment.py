"""Training augmentation: the paper's elastic deformation, flips and 90-degree turns, intensity.

Beyond the paper: zoom, gamma, a smooth random background (uneven illumination) and per-cell
contrast (some cells fainter or brighter than their neighbours).

Ronneberger et al. (2015): "smooth deformations using random displacement vectors on a coarse 3 by
3 grid. The displacements are sampled from a Gaussian distribution with 10 pixels standard
deviation. Per-pixel displacements are then computed using bicubic interpolation."
Warps mirror the array at its borders (reflection about the edge pixels). Linear warps use
torch's ``grid_sample``; the per-pixel coordinate arithmetic and nearest-neighbour warps use numpy
(single-threaded), so a warp makes one multi-threaded torch call: torch's thread pool stalls badly
on every call while another process holds a core.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

__all__ = [
    "elastic_deform",
    "random_cell_contrast",
    "random_displacement",
    "random_flip_rot",
    "random_gamma",
    "random_illumination",
    "random_intensity",
    "random_zoom",
    "warp",
]


def random_displacement(
    shape: tuple[int, int], *, rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Draw a smooth random displacement field as in the paper.

    Parameters
    ----------
    shape
        ``(H, W)`` of the field.
    rng
        Source of the ``(2, grid, grid)`` Gaussian displacements of the coarse grid.
    grid
        Nodes of the coarse grid per axis; they sit on the image corners and edges (and the centre
        for ``grid=3``).
    sigma
        Standard deviation of the coarse displacements, in pixels; 0 gives a zero field.

    Returns
    -------
    (2, H, W) float32
        Displacement ``(dy, dx)`` in pixels, bicubically interpolated from the coarse grid.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    h, w = shape
    return _bicubic(rng.normal(0.0, sigma, size=(2, grid, grid)), h, w)


def random_zoom(
    shape: tuple[int, int], *, rng: np.random.Generator, max_zoom: float = 1.3
) -> np.ndarray:
    """Draw the displacement field of a zoom about the centre of an ``(H, W)`` array.

    The factor is log-uniform in ``[1 / max_zoom, max_zoom]``; above 1 objects appear larger.
    Add it to a field from :func:`random_displacement` to zoom and deform in one :func:`warp`.

    Returns
    -------
    (2, H, W) float32
        Displacement ``(dy, dx)`` in pixels.
    """
    if not max_zoom >= 1:
        raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
    zoom = np.exp(rng.uniform(-np.log(max_zoom), np.log(max_zoom)))
    h, w = shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2], np.float32)[:, None, None]
    return ((_pixel_grid(h, w) - centre) * np.float32(1 / zoom - 1)).astype(np.float32)


def warp(array: np.ndarray, displacement: np.ndarray, *, order: int) -> np.ndarray:
    """Warp an array by a displacement field: ``out(y, x) = array(y + dy(y, x), x + dx(y, x))``.

    Samples outside the array are mirrored back in (reflection about the edge pixels).

    Parameters
    ----------
    array
        ``(H, W)`` or ``(H, W, C)`` array.
    displacement
        ``(2, H, W)`` displacement ``(dy, dx)`` in pixels, e.g. from :func:`random_displacement`.
    order
        1: linear interpolation, for images and weight maps; 0: nearest neighbour, for labels and
        targets (exact for any dtype and any label value: no new values appear).

    Returns
    -------
    ndarray
        Same shape as ``array``; float32 for ``order=1``, the dtype of ``array`` for ``order=0``.
        A zero field returns a copy.
    """
    array = np.asarray(array)
    displacement = np.asarray(displacement, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be (H, W) or (H, W, C), got shape {array.shape}")
    h, w = array.shape[:2]
    if displacement.shape != (2, h, w):
        raise ValueError(
            f"displacement of shape {displacement.shape} does not match array of shape "
            f"{array.shape}: expected (2, {h}, {w})"
        )
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    if not displacement.any():
        return array.copy() if order == 0 else array.astype(np.float32)
    coords = _pixel_grid(h, w) + displacement
    return _take_nearest(array, coords) if order == 0 else _sample_linear(array, coords)


def elastic_deform(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    rng: np.random.Generator,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deform an image and its labels with one random smooth field, as in the paper.

    The image is interpolated linearly (the field itself is bicubic), the labels by nearest
    neighbour, so no new label ids appear; ids of cells pushed out of view may disappear.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` image, any real dtype.
    labels
        ``(H, W)`` integer instance labels (0 = background).
    rng, grid, sigma
        As in :func:`random_displacement`; ``sigma=0`` is the identity.

    Returns
    -------
    image : float32, shape of ``image``
    labels : dtype and shape of ``labels``
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim != 2 or image.shape[:2] != labels.shape:
        raise ValueError(
            f"image of shape {image.shape} and labels of shape {labels.shape} do not match: "
            "expected image (H, W) or (H, W, C) and labels (H, W)"
        )
    field = random_displacement(labels.shape, rng=rng, grid=grid, sigma=sigma)
    return warp(image, field, order=1), warp(labels, field, order=0)


def random_flip_rot(arrays: list[np.ndarray], *, rng: np.random.Generator) -> list[np.ndarray]:
    """Apply one random transform of the 8 flips and 90-degree turns to every array.

    Parameters
    ----------
    arrays
        ``(H, W)`` or ``(H, W, C)`` arrays sharing ``H`` and ``W``.
    rng
        Picks the transform.

    Returns
    -------
    list of ndarray
        C-contiguous copies, same dtypes; a quarter turn swaps ``H`` and ``W``.
    """
    arrays = [np.asarray(a) for a in arrays]
    if len({a.shape[:2] for a in arrays}) > 1:
        raise ValueError(
            f"arrays must share their first two axes, got shapes {[a.shape for a in arrays]}"
        )
    k = int(rng.integers(8))
    out = []
    for a in arrays:
        a = np.rot90(a, k % 4, axes=(0, 1))
        if k >= 4:
            a = a[:, ::-1]
        out.append(a.copy())
    return out


def random_intensity(
    image: np.ndarray, *, rng: np.random.Generator, gain: float = 0.2, offset: float = 0.1
) -> np.ndarray:
    """Random gain and offset for an image normalised to about [0, 1].

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` image.
    rng
        Source of the gain ``1 + U(-gain, gain)`` and the offset ``U(-offset, offset)``, shared by
        all channels.

    Returns
    -------
    float32, shape of ``image``
        ``image * gain + offset``.
    """
    scale = np.float32(1.0 + rng.uniform(-gain, gain))
    shift = np.float32(rng.uniform(-offset, offset))
    return np.asarray(image, dtype=np.float32) * scale + shift


def random_gamma(image: np.ndarray, *, rng: np.random.Generator, spread: float = 1.5):
    """Random gamma for an image normalised to about [0, 1]: dims or brightens mid-tones.

    ``gamma`` is log-uniform in ``[1 / spread, spread]``; pixels above 0 become ``x ** gamma``,
    pixels below 0 stay. Returns float32 of the image's shape.
    """
    if not spread >= 1:
        raise ValueError(f"spread must be >= 1, got {spread}")
    gamma = np.float32(np.exp(rng.uniform(-np.log(spread), np.log(spread))))
    image = np.asarray(image, dtype=np.float32)
    return np.maximum(image, 0) ** gamma + np.minimum(image, 0)


def random_illumination(
    image: np.ndarray, *, rng: np.random.Generator, strength: float = 0.4, grid: int = 3
) -> np.ndarray:
    """Add a smooth random background, as uneven illumination or tissue autofluorescence.

    The background is bicubically interpolated from a coarse ``(grid, grid)`` grid of values
    drawn from ``U(0, 1)`` and scaled by one ``U(0, strength)``, so it stays within about
    ``[0, strength]``; meant to show the network that a slowly varying glow is not a cell
    (it did not improve the bundled model, see its model card).

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` image normalised to about [0, 1]; all channels get the
        same background.

    Returns
    -------
    float32, shape of ``image``
    """
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    image = np.asarray(image, dtype=np.float32)
    coarse = rng.uniform(0.0, 1.0, size=(grid, grid)) * rng.uniform(0.0, strength)
    background = _bicubic(coarse, *image.shape[:2])
    return image + (background[..., None] if image.ndim == 3 else background)


def random_cell_contrast(
    image: np.ndarray,
    target: np.ndarray,
    *,
    rng: np.random.Generator,
    fraction: float = 0.5,
    low: float = 0.15,
    high: float = 1.5,
) -> np.ndarray:
    """Change the contrast of some cells against the background, each by its own factor.

    Real images hold cells of very different brightness (expression, cell cycle, focus); after
    percentile normalisation the faint ones sit close to the background. Each cell (a connected
    piece of ``target == 1``; touching cells are separate pieces once their borders are carved)
    is picked with probability ``fraction`` and its difference from the background median is
    scaled by a factor log-uniform in ``[low, high]``. The factor reaches 2 px beyond the cell
    (its blurred rim) and is smoothed over about 1 px, so no sharp edge appears.

    Parameters
    ----------
    image
        ``(H, W, C)`` image normalised to about [0, 1].
    target
        ``(H, W)`` classes aligned with ``image`` (1 = cell).

    Returns
    -------
    float32, shape of ``image``
    """
    if not 0 < low <= high:
        raise ValueError(f"expected 0 < low <= high, got low={low}, high={high}")
    image = np.asarray(image, dtype=np.float32)
    cells, n = ndi.label(np.asarray(target) == 1)
    if n == 0:
        return image
    picked = rng.random(n) < fraction
    factors = np.exp(rng.uniform(np.log(low), np.log(high), n))
    if not picked.any():  # nothing changes: skip the filters over the whole crop
        return image
    factor = np.concatenate([[1.0], np.where(picked, factors, 1.0)]).astype(np.float32)[cells]
    # Carry each factor over the cell's rim: the strongest change wins where rims meet.
    dimmer = ndi.grey_erosion(np.minimum(factor, 1), size=5)
    brighter = ndi.grey_dilation(np.maximum(factor, 1), size=5)
    factor = ndi.gaussian_filter(np.where(dimmer < 1, dimmer, brighter), 1.0)
    background = np.asarray(target) == 0
    pixels = image[background] if background.any() else image.reshape(-1, image.shape[-1])
    level = np.median(pixels, axis=0).astype(np.float32)
    return level + (image - level) * factor[..., None]


def _bicubic(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(..., grid, grid)`` coarse values bicubically upsampled to float32 ``(..., h, w)``."""
    grid = coarse.shape[-1]
    coarse = torch.from_numpy(np.asarray(coarse, np.float32))
    # In torch, not numpy: numpy's BLAS threads would fight torch's threads for the cores.
    return (_cubic_weights(h, grid) @ coarse @ _cubic_weights(w, grid).T).numpy()


@lru_cache(maxsize=16)
def _cubic_weights(size: int, grid: int) -> torch.Tensor:
    """``(size, grid)`` float32 weights of torch's bicubic upsampling (align_corners=True).

    Bicubic interpolation is separable, so ``weights_h @ coarse @ weights_w.T`` equals
    ``F.interpolate(coarse, (h, w), mode="bicubic", align_corners=True)`` at a fraction of the
    cost. Shared: never mutate.
    """
    basis = torch.eye(grid)[None, :, :, None]  # channel k: the k-th grid node set to 1
    weights = F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=True)
    return weights[0, :, :, 0].T.contiguous()


@lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> np.ndarray:
    """``(2, H, W)`` float32 pixel coordinates ``(y, x)``; shared and read-only."""
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).astype(np.float32)
    grid.flags.writeable = False
    return grid


def _sample_linear(array: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear ``grid_sample`` of ``array`` at ``(2, H, W)`` pixel ``coords``; float32 out."""
    h, w = array.shape[:2]
    x = torch.from_numpy(np.require(array, np.float32, ["C", "W"]))  # torch warns on read-only
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels.
    grid = np.empty((1, h, w, 2), np.float32)
    np.multiply(coords[1], 2 / max(w - 1, 1), out=grid[0, ..., 0])
    np.multiply(coords[0], 2 / max(h - 1, 1), out=grid[0, ..., 1])
    grid -= 1
    out = F.grid_sample(
        x, torch.from_numpy(grid), mode="bilinear", padding_mode="reflection", align_corners=True
    )[0]
    return out[0].numpy() if array.ndim == 2 else np.ascontiguousarray(out.permute(1, 2, 0))


def _take_nearest(array: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of ``array`` at ``(2, H, W)`` pixel ``coords``, by indexing."""
    h, w = array.shape[:2]
    rows = np.rint(_reflect(coords[0], h - 1)).astype(np.intp)
    cols = np.rint(_reflect(coords[1], w - 1)).astype(np.intp)
    index = rows * w + cols
    return np.take(array.reshape(h * w, -1), index, axis=0).reshape(array.shape)


def _reflect(c: np.ndarray, n: int) -> np.ndarray:
    """Mirror coordinates into ``[0, n]`` about 0 and ``n`` (as grid_sample's reflection)."""
    if n == 0:
        return np.zeros_like(c)
    period = 2 * n
    c = np.abs(c)
    c -= period * np.floor(c * (1 / period))  # c mod period; np.fmod is several times slower
    return n - np.abs(c - n, out=c)
