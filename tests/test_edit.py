"""Corrections of instance labels: merge and split (pure arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.edit import merge_cells, split_cell


def _disc(shape, center, radius):
    yy, xx = np.indices(shape)
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _two_touching_cells(gap: int) -> np.ndarray:
    """(40, 60) uint16: cells 1 (left) and 2 (right) of a 10 x 30 bar cut by a vertical
    background line ``gap`` px wide; cell 5 elsewhere."""
    labels = np.zeros((40, 60), np.uint16)
    labels[10:20, 10:25] = 1
    labels[10:20, 25 + gap : 40] = 2
    labels[30:35, 50:55] = 5
    return labels


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_merge_fills_the_gap_between_touching_cells(gap):
    labels = _two_touching_cells(gap)
    before = labels.copy()
    merged = merge_cells(labels, 1, 2)
    np.testing.assert_array_equal(labels, before)  # the input is not changed
    assert merged.dtype == labels.dtype
    assert not (merged == 2).any()
    assert (merged[10:20, 10:40] == 1).all(), "the separating line must be filled"
    np.testing.assert_array_equal(merged == 5, before == 5)  # other cells untouched
    grown = (merged == 1) & (before == 0)
    assert grown.sum() <= 10 * gap + 8, "only pixels between the two cells are filled"


def test_merge_of_distant_cells_only_relabels_and_gap_zero_keeps_lines():
    labels = _two_touching_cells(6)
    merged = merge_cells(labels, 2, 5)
    np.testing.assert_array_equal(merged, np.where(labels == 5, 2, labels))
    near = merge_cells(_two_touching_cells(1), 1, 2, gap=0)
    assert (near[10:20, 25] == 0).all()


def test_merge_relabels_every_plane_and_bridges_per_plane():
    stack = np.stack([_two_touching_cells(2), np.where(_two_touching_cells(2) == 2, 2, 0)])
    merged = merge_cells(stack, 1, 2)
    assert not (merged == 2).any()
    assert (merged[0, 10:20, 10:40] == 1).all()
    np.testing.assert_array_equal(merged[1] == 1, stack[1] == 2)  # no cell 1 there: no bridge


@pytest.mark.parametrize(
    ("keep", "other", "match"),
    [(1, 1, "itself"), (0, 1, "background"), (1, 9, "not in the labels")],
)
def test_merge_refuses_bad_ids(keep, other, match):
    with pytest.raises(ValueError, match=match):
        merge_cells(_two_touching_cells(1), keep, other)


def test_split_two_touching_discs_along_the_neck():
    labels = np.zeros((50, 80), np.uint8)
    left, right = _disc(labels.shape, (25, 25), 12), _disc(labels.shape, (25, 52), 16)
    labels[left | right] = 3
    labels[0:3, 0:3] = 1
    split = split_cell(labels, 3)
    assert split.dtype == np.uint8
    new = split == 4  # max + 1
    assert (split[left & ~right] == 4).mean() > 0.95 and (split[right & ~left] == 3).mean() > 0.95
    assert np.count_nonzero(new) < np.count_nonzero(split == 3)  # the smaller part is new
    assert (split[labels != 3] == labels[labels != 3]).all()
    assert ((split == 3) | new).sum() == (labels == 3).sum()


def test_split_a_convex_cell_across_its_longest_axis():
    labels = np.zeros((30, 60), np.uint16)
    labels[10:16, 5:55] = 7  # a 6 x 50 bar: no neck, one ridge
    split = split_cell(labels, 7, new_id=20)
    left, right = split[10:16, 5:30], split[10:16, 30:55]
    assert {int(left[0, 0]), int(right[0, -1])} == {7, 20}
    assert (left == left[0, 0]).all() and (right == right[0, -1]).all(), "cut across, not along"
    disc = np.zeros((41, 41), np.uint16)
    disc[_disc(disc.shape, (20, 20), 15)] = 1
    halves = split_cell(disc, 1)
    assert abs(int((halves == 1).sum()) - int((halves == 2).sum())) <= 1


def test_split_separate_pieces_keeps_the_largest():
    labels = np.zeros((20, 40), np.uint16)
    labels[2:12, 2:12] = 4
    labels[15:18, 30:33] = 4
    split = split_cell(labels, 4)
    assert (split[2:12, 2:12] == 4).all() and (split[15:18, 30:33] == 5).all()


@pytest.mark.parametrize(
    ("labels", "cell", "new_id", "match"),
    [
        (np.zeros((3, 4, 4), np.uint8), 1, None, "one \\(H, W\\) plane"),
        (np.eye(4, dtype=np.uint8), 0, None, "background"),
        (np.eye(4, dtype=np.uint8), 2, None, "not in the labels"),
        (np.pad([[1]], 2).astype(np.uint8), 1, None, "one pixel"),
        (np.eye(4, dtype=np.uint8) * 255, 255, None, "does not fit"),
        (np.eye(4, dtype=np.uint8), 1, 1, "taken"),
    ],
)
def test_split_refuses_bad_input(labels, cell, new_id, match):
    with pytest.raises(ValueError, match=match):
        split_cell(labels, cell, new_id)
