"""Shared fixtures: the real data beside the clone, small models, fixed seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test, saying why, when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (clone the project beside ../shared/data)")
    return path


@pytest.fixture
def tiny_unet():
    """A randomly initialised UNet of base width 4, depth 3 (fast, same arithmetic)."""
    import torch

    from napari_unet import UNet

    torch.manual_seed(0)
    return UNet(base_channels=4, depth=3).eval()


@pytest.fixture(scope="session")
def usiigaci_crop():
    """(256, 256) uint16 phase-contrast image and its (256, 256) instance labels (val/set46)."""
    import tifffile

    image = tifffile.imread(data_path("usiigaci", "val", "images", "set46.tif"))
    labels = tifffile.imread(data_path("usiigaci", "val", "masks", "set46.tif"))
    return image[300:556, 300:556], labels[300:556, 300:556]


@pytest.fixture(scope="session")
def whole_sample():
    """The sample that ships with the package (no ../shared/data needed): (512, 512) uint16
    phase-contrast image and its (512, 512) uint16 instance labels (33 cells)."""
    from napari_unet._sample_data import phase_contrast_cells

    (image, *_), (labels, *_) = phase_contrast_cells()
    return image, labels


@pytest.fixture(scope="session")
def sample(whole_sample):
    """(96, 96) crop of ``whole_sample``: uint16 image and its uint16 instance labels."""
    image, labels = whole_sample
    return image[:96, :96], labels[:96, :96]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
