"""Image helpers shared by the core, the CLI and the docks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from napari_unet.core import image as image_module
from napari_unet.core.image import PERCENTILES, count_ids


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([[0, 3, 3], [7, 0, 1]], np.uint16), 3),  # dense: bincount
        (np.array([[0, 2**40], [5, 5]], np.int64), 2),  # ids above the pixel count
        (np.array([[-1, 0], [2, 2]], np.int32), 2),  # negative ids count too
        (np.array([[0.0, 4.0], [4.0, 9.0]]), 2),  # integer-valued floats
        (np.array([[True, False]]), 1),
        (np.zeros((2, 0), np.uint8), 0),
        (np.zeros((3, 3), np.uint8), 0),
        (np.arange(12, dtype=np.uint32).reshape(2, 2, 3), 11),  # a stack counts as one image
    ],
)
def test_count_ids_counts_distinct_non_zero_ids(labels, expected):
    assert count_ids(labels) == expected


def test_one_set_of_normalisation_percentiles():
    from napari_unet.core.prediction.predict import predict, predict_tiles
    from napari_unet.core.training.train import prepare_samples

    assert inspect.signature(image_module.normalize).parameters["low"].default == PERCENTILES[0]
    assert inspect.signature(image_module.normalize).parameters["high"].default == PERCENTILES[1]
    for function in (predict, predict_tiles, prepare_samples):
        assert inspect.signature(function).parameters["percentiles"].default is PERCENTILES
