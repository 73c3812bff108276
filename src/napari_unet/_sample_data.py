"""File > Open Sample > napari-unet: the sample of :mod:`napari_unet.core.formats.sample`."""

from __future__ import annotations

from .core.formats.sample import CITATION, PIXEL_SIZE_UM, sample_cells


def phase_contrast_cells() -> list[tuple]:
    """The image (512, 512) uint16 and its labels (512, 512) uint16, as napari layer data, both
    at the sample's pixel size (``PIXEL_SIZE_UM`` um): beside a calibrated image of the user's,
    the units agree and each is drawn at its real size."""
    image, labels = sample_cells()

    def kwargs(name: str) -> dict:
        return {
            "name": name,
            "metadata": {"citation": CITATION},
            "scale": (PIXEL_SIZE_UM, PIXEL_SIZE_UM),
            "units": ("um", "um"),
        }

    return [(image, kwargs("cells"), "image"), (labels, kwargs("cells annotation"), "labels")]
