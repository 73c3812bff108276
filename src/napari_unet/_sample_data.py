"""File > Open Sample > napari-unet: a 512x512 crop of a Usiigaci phase-contrast image.

Tsai et al. (2019), "Usiigaci: Instance-aware cell tracking in stain-free phase contrast
microscopy enabled by machine learning", SoftwareX 9:230-237 (MIT licence); val/set47, rows
192:704, columns 64:576, with its hand-made instance labels (stray id fragments removed).
"""

from __future__ import annotations

from importlib import resources

CITATION = "Tsai et al. 2019, SoftwareX 9:230-237 (Usiigaci, MIT)"


def _read(name: str):
    from .core.formats.io import read_image

    with resources.as_file(resources.files("napari_unet") / "data" / name) as path:
        return read_image(path)


def phase_contrast_cells() -> list[tuple]:
    """The image (512, 512) uint16 and its labels (512, 512) uint16, as napari layer data."""
    image = _read("phase_contrast_cells.tif")
    labels = _read("phase_contrast_cells_labels.tif")
    return [
        (image, {"name": "cells", "metadata": {"citation": CITATION}}, "image"),
        (labels, {"name": "cells annotation", "metadata": {"citation": CITATION}}, "labels"),
    ]
