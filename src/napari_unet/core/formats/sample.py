"""The sample shipped in ``napari_unet/data``: a 512x512 crop of a Usiigaci phase-contrast image.

Tsai et al. (2019), "Usiigaci: Instance-aware cell tracking in stain-free phase contrast
microscopy enabled by machine learning", SoftwareX 9:230-237 (MIT licence); val/set47, rows
192:704, columns 64:576, with its hand-made instance labels (stray id fragments removed).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from .io import read_image

__all__ = ["CITATION", "sample_cells"]

CITATION = "Tsai et al. 2019, SoftwareX 9:230-237 (Usiigaci, MIT)"


def _read(name: str) -> np.ndarray:
    with resources.as_file(resources.files("napari_unet") / "data" / name) as path:
        return read_image(path)


def sample_cells() -> tuple[np.ndarray, np.ndarray]:
    """The image ``(512, 512)`` uint16 and its instance labels ``(512, 512)`` uint16."""
    return _read("phase_contrast_cells.tif"), _read("phase_contrast_cells_labels.tif")
