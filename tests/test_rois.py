"""ImageJ ROI sets: one polygon per cell that Fiji fills back to the cell."""

from __future__ import annotations

import os

import numpy as np
import pytest
import roifile
from skimage.draw import polygon2mask

from napari_unet.core.formats.rois import label_rois, write_rois


def _filled(roi, shape) -> np.ndarray:
    """The pixels whose centres the ROI's polygon holds, as Fiji fills it."""
    return polygon2mask(shape, roi.coordinates()[:, ::-1] - 0.5)  # ImageJ centres are at +0.5


def test_roi_set_round_trip_matches_every_cell_of_the_sample(tmp_path, whole_sample):
    _, labels = whole_sample
    path = write_rois(tmp_path / "cells_rois.zip", labels)
    rois = roifile.roiread(path)
    ids = np.unique(labels[labels > 0])
    assert [r.name for r in rois] == [f"cell-{i:02d}" for i in ids]
    ious = []
    for roi, i in zip(rois, ids, strict=True):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        assert roi.properties["id"] == i
        cell, mask = labels == i, _filled(roi, labels.shape)
        ious.append((cell & mask).sum() / (cell | mask).sum())
        assert ious[-1] >= 0.95, roi.name  # the bar, for every cell
    assert np.mean(ious) > 0.98  # measured: every cell above 0.99


def test_stack_rois_sit_on_their_slice_and_holes_are_noted():
    labels = np.zeros((3, 12, 12), np.uint16)
    labels[1, 2:9, 2:9] = 5
    labels[1, 4:6, 4:6] = 0  # a hole
    labels[2, 1:4, 1:4] = 5  # the same id again, on another plane
    labels[2, 6:8, 6:10] = 5  # ... in two pieces
    first, second = label_rois(labels)
    assert (first.name, first.position) == ("plane-1-cell-5", 2)  # Fiji counts slices from 1
    assert first.properties == {"id": 5, "plane": 1, "holes": 1, "pieces": 1}
    assert _filled(first, (12, 12)).sum() == 49  # the outer outline: the hole filled
    assert (second.name, second.position) == ("plane-2-cell-5", 3)
    assert second.properties["pieces"] == 2
    assert _filled(second, (12, 12)).sum() == 9  # the larger piece


def test_bad_labels_or_suffix_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"\.zip file"):
        write_rois(tmp_path / "rois.roi", np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="integer ids"):
        write_rois(tmp_path / "rois.zip", np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="negative"):
        write_rois(tmp_path / "rois.zip", -np.ones((4, 4), np.int32))
    assert os.listdir(tmp_path) == []
    assert roifile.roiread(write_rois(tmp_path / "none.zip", np.zeros((4, 4), np.uint8))) == []
