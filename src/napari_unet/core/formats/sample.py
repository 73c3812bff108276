"""The sample shipped in ``napari_unet/data``: a 512x512 crop of a Usiigaci phase-contrast image.

Tsai et al. (2019), "Usiigaci: Instance-aware cell tracking in stain-free phase contrast
microscopy enabled by machine learning", SoftwareX 9:230-237 (MIT licence); val/set47, rows
192:704, columns 64:576, with its hand-made instance labels (stray id fragments removed).

Its pixel size, :data:`PIXEL_SIZE_UM`, follows from the optics the source states (Usiigaci
README and ``shared/data/usiigaci/SOURCE.md``: 10x objective, 1.5x intermediate magnification,
Hamamatsu Orca Flash 4.0 with 2x2 binning): the camera's 6.5 um pixels, binned 2x2, seen through
15x: 6.5 * 2 / 15 = 0.867 um. The TIFF files carry no calibration.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from .io import read_image

__all__ = ["CITATION", "PIXEL_SIZE_UM", "sample_cells"]

CITATION = "Tsai et al. 2019, SoftwareX 9:230-237 (Usiigaci, MIT)"
PIXEL_SIZE_UM = 6.5 * 2 / (10 * 1.5)
"""The sample's pixel side in micrometres: 6.5 um camera pixels, 2x2 binning, 10x * 1.5x."""


def _read(name: str) -> np.ndarray:
    with resources.as_file(resources.files("napari_unet") / "data" / name) as path:
        return read_image(path)


def sample_cells() -> tuple[np.ndarray, np.ndarray]:
    """The image ``(512, 512)`` uint16 and its instance labels ``(512, 512)`` uint16."""
    return _read("phase_contrast_cells.tif"), _read("phase_contrast_cells_labels.tif")
