"""Per-cell measurements: one row per cell, in pixels and, with a pixel size, micrometres."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from napari_unet.core.formats.measure import measure_cells, write_csv


def test_one_csv_row_per_cell_of_the_sample(tmp_path, whole_sample):
    image, labels = whole_sample
    table = measure_cells(labels, image, pixel_size=(0.5, 0.5))
    path = write_csv(tmp_path / "cells.csv", table)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ids = np.unique(labels[labels > 0])
    assert len(rows) == len(ids) == 33
    assert list(rows[0])[:3] == ["id", "plane", "area_px"]  # no index column
    first = labels == ids[0]
    assert int(rows[0]["id"]) == ids[0] and int(rows[0]["area_px"]) == first.sum()
    assert float(rows[0]["area_um2"]) == pytest.approx(first.sum() * 0.25)
    assert float(rows[0]["max_intensity"]) == image[first].max()
    assert float(rows[0]["centroid_x_um"]) == pytest.approx(np.nonzero(first)[1].mean() * 0.5)
    assert float(rows[0]["perimeter_um"]) == pytest.approx(float(rows[0]["perimeter_px"]) / 2)


def test_stack_with_channels_and_rectangular_pixels():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[1, 2:4, 2:5] = 3
    image = np.zeros((2, 8, 8, 2), np.float32)
    image[1, 2:4, 2:5] = (1.0, 2.0)
    table = measure_cells(labels, image, pixel_size=(2.0, 1.0))
    assert table["id"].tolist() == [3] and table["plane"].tolist() == [1]
    assert table["mean_intensity_c1"].tolist() == [2.0]
    assert table["area_um2"].tolist() == [12.0]
    assert "perimeter_um" not in table  # not defined by a scale factor for rectangular pixels
    assert all(len(v) == 0 for v in measure_cells(np.zeros((4, 4), np.uint8)).values())


def test_bad_inputs_write_nothing(tmp_path):
    labels = np.ones((4, 4), np.uint8)
    with pytest.raises(ValueError, match="image has shape"):
        measure_cells(labels, np.ones((4, 5)))
    with pytest.raises(ValueError, match="pixel_size"):
        measure_cells(labels, pixel_size=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"\.csv file"):
        write_csv(tmp_path / "cells.txt", measure_cells(labels))
    with pytest.raises(ValueError, match="differ in length"):
        write_csv(tmp_path / "cells.csv", {"a": np.ones(2), "b": np.ones(3)})
    assert os.listdir(tmp_path) == []
