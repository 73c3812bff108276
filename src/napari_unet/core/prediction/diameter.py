"""The cell diameter of an image nobody measured: a scale search with the model itself.

A model trained at one cell diameter ``D`` (``model.metadata["diameter"]``) draws cells about
``D`` px across when it sees them near that size. :func:`search_diameter` predicts a window of
the image at a ladder of sizes (the image's cells assumed 8 to 256 px across) and measures, at
each try, the cells found, in the image's pixels. Real cells measure the same whatever the size
they were shown at; what the network makes of a badly sized image does not: enlarged too much,
it draws pieces (inner texture as edges) of about ``D`` at the model's size, so their size in
the image's pixels follows the try; shrunk too much, it merges cells into blobs or loses them.
The estimate is the median of the longest run of consecutive tries that agree within 1.3x (ties:
the more shrunk run). (Chosen on the training splits of every shared kind against "the most
shrunk try whose cells are within 1.5x of ``D``", "the median of those" and wider agreement:
bench/bench_diameter.py ``--tries``/``--rules``; docs/benchmarks.md.)
``napari_unet.core.prediction.predict.estimate_diameter`` runs it with the model's own prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .instances import Probabilities, to_instances
from .scale import MAX_FACTOR, MIN_FACTOR, median_diameter, rescale_image, sized_cells

__all__ = ["search_diameter", "DiameterEstimate", "DIAMETERS", "WINDOW"]

log = logging.getLogger(__name__)

DIAMETERS = tuple(float(d) for d in np.geomspace(8, 256, 11))
"""The image cell diameters (px) tried: 8 to 256 px, each 1.41x the last."""
WINDOW = 640
"""Side (px, at the model's size) of the window predicted for each try: the cost of a try is
bounded whatever the image's size."""
AGREE = 1.3
"""Tries whose estimates are within this ratio of each other agree."""
MIN_CELLS = 3


@dataclass(frozen=True)
class DiameterEstimate:
    """The estimated median cell diameter ``diameter`` (px, in the image's pixels), the
    ``cells`` found at the chosen try (inside the window) and a ``confidence`` in [0, 1] (how
    decisive the probabilities were there); ``tries`` lists ``(tried diameter, cells found,
    their median diameter at the model's size, confidence)`` for each try."""

    diameter: float
    cells: int
    confidence: float
    tries: tuple


def search_diameter(
    image: np.ndarray, known: float, predictor: Callable[[np.ndarray], np.ndarray]
) -> DiameterEstimate:
    """Estimate the median diameter (px) of the cells of one ``(H, W)`` or ``(H, W, C)`` image
    for a model that works at cells ``known`` px across; ``predictor`` maps an image of that
    layout to its ``(H, W)`` foreground probability. ValueError when no try finds cells."""
    image = np.asarray(image)
    channels = image.ndim == 3
    plane = image.shape[:2]
    tries = []
    for tried in DIAMETERS:
        factor = known / tried
        if not MIN_FACTOR <= factor <= MAX_FACTOR:
            continue
        window = _window(image, plane, WINDOW / factor)
        if channels:
            scaled = np.moveaxis(rescale_image(np.moveaxis(window, -1, 0), factor), 0, -1)
        else:
            scaled = rescale_image(window, factor)
        if min(scaled.shape[:2]) < known:
            continue  # a window smaller than one cell says nothing
        prob = np.asarray(predictor(scaled))
        labels = _inner(to_instances(Probabilities(prob, sized_cells(known))))
        count = len(np.unique(labels)) - 1
        found = median_diameter(labels) if count else 0.0
        confidence = float(np.mean(np.abs(2 * prob - 1)))
        tries.append((tried, count, found, confidence))
        log.debug("diameter %.1f px: %d cells, %.1f px at model size", tried, count, found)
    return _choose(tries, known)


def _window(image: np.ndarray, plane: tuple[int, int], side: float) -> np.ndarray:
    """The central ``side x side`` window of ``image`` (all of it where it is smaller)."""
    h, w = (min(n, max(1, int(np.ceil(side)))) for n in plane)
    top, left = (plane[0] - h) // 2, (plane[1] - w) // 2
    return image[top : top + h, left : left + w]


def _inner(labels: np.ndarray) -> np.ndarray:
    """``labels`` without the cells that touch the window's border (cut cells look small)."""
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, edge[edge > 0]), 0, labels)


def _choose(tries: list, known: float) -> DiameterEstimate:
    """The median estimate (image px) of the longest run of consecutive tries that found cells
    and agree within :data:`AGREE` (ties: the more shrunk run), brought within the sizes tried
    (an estimate outside them could not be predicted at); its confidence and cells are those of
    the run's middle try."""
    found = [(t, t[2] * t[0] / known) for t in tries if t[1] >= MIN_CELLS]
    if not found:
        raise ValueError(
            "no cells were found at any size from 8 to 256 px, so no diameter could be "
            "estimated; give the cell diameter (px)"
        )
    run: list = []
    for first in range(len(found)):
        for last in range(first, len(found)):
            values = [e for _, e in found[first : last + 1]]
            if max(values) / min(values) > AGREE:
                break
            if last + 1 - first >= len(run):
                run = found[first : last + 1]
    middle = run[len(run) // 2][0]
    estimate = float(np.median([e for _, e in run]))
    low, high = tries[0][0], tries[-1][0]
    if not low <= estimate <= high:  # e.g. specks of EM texture measured at the smallest try
        log.warning(
            "the cells found measure %.3g px, outside the sizes tried (%.3g-%.3g px): "
            "using %.3g px",
            estimate,
            low,
            high,
            min(max(estimate, low), high),
        )
        estimate = min(max(estimate, low), high)
    return DiameterEstimate(
        diameter=estimate,
        cells=middle[1],
        confidence=middle[3],
        tries=tuple(tries),
    )
