"""File > Open Sample > napari-unet: the sample of :mod:`napari_unet.core.formats.sample`."""

from __future__ import annotations

from .core.formats.sample import CITATION, sample_cells


def phase_contrast_cells() -> list[tuple]:
    """The image (512, 512) uint16 and its labels (512, 512) uint16, as napari layer data."""
    image, labels = sample_cells()
    return [
        (image, {"name": "cells", "metadata": {"citation": CITATION}}, "image"),
        (labels, {"name": "cells annotation", "metadata": {"citation": CITATION}}, "labels"),
    ]
