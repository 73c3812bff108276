"""Tests of the weight map, the carved training targets and label clean-up."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.training.weightmap import (
    carve_borders,
    check_labels,
    largest_piece,
    separation_weight_map,
    training_target,
)


def naive_weight_map(labels, w0=10.0, sigma=5.0, class_balance=True):
    """Reference: one distance transform per cell over the whole image, two smallest per pixel."""
    fg = labels > 0
    ids = np.unique(labels[fg])
    wc = np.ones(labels.shape)
    if class_balance and ids.size > 0 and not fg.all():
        n_fg = np.count_nonzero(fg)
        wc = np.where(fg, fg.size / (2 * n_fg), fg.size / (2 * (fg.size - n_fg)))
    if ids.size < 2:
        return wc
    dist = np.sort([ndi.distance_transform_edt(labels != i) for i in ids], axis=0)
    border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
    return wc + np.where(fg, 0.0, border)


def discs_and_rectangles():
    """(96, 128) int32: overlapping (so touching) discs and rectangles, plus isolated ones."""
    rows, cols = np.mgrid[:96, :128]
    labels = np.zeros((96, 128), np.int32)
    for i, (r, c, radius) in enumerate([(20, 20, 12), (20, 42, 11), (38, 30, 10), (70, 90, 9)]):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = i + 1
    labels[50:80, 10:30] = 5
    labels[50:80, 30:45] = 6
    labels[10:30, 100:120] = 7
    return labels


def voronoi(size=128, n_seeds=30, radius=12.0, seed=1):
    """(size, size) int32: Voronoi cells of random seeds clipped to `radius`, most touching."""
    rng = np.random.default_rng(seed)
    seeds = np.ones((size, size), bool)
    seeds[tuple(rng.integers(0, size, (2, n_seeds)))] = False
    dist, (r, c) = ndi.distance_transform_edt(seeds, return_indices=True)
    ids = np.zeros((size, size), np.int32)
    ids[~seeds] = np.arange(1, np.count_nonzero(~seeds) + 1)
    return np.where(dist <= radius, ids[r, c], 0)


@pytest.fixture(scope="module")
def real_crop(whole_sample):
    """(256, 256) real instance labels with touching cells: the shipped sample's."""
    return whole_sample[1][:256, :256]


@pytest.mark.parametrize("make", [discs_and_rectangles, voronoi])
@pytest.mark.parametrize(
    ("w0", "sigma", "class_balance"), [(10.0, 5.0, True), (10.0, 5.0, False), (5.0, 8.0, True)]
)
def test_matches_naive_reference(make, w0, sigma, class_balance):
    labels = make()
    expected = naive_weight_map(labels, w0, sigma, class_balance)
    weights = separation_weight_map(labels, w0, sigma, class_balance)
    assert weights.shape == labels.shape
    assert weights.dtype == np.float32
    assert np.abs(weights - expected).max() <= 1e-3


def test_matches_naive_reference_on_real_crop(real_crop):
    assert np.unique(real_crop[real_crop > 0]).size >= 2
    expected = naive_weight_map(real_crop)
    weights = separation_weight_map(real_crop, class_balance=True)
    assert np.abs(weights - expected).max() <= 1e-3


def test_matches_naive_reference_on_carved_real_crop(real_crop):
    carved = carve_borders(real_crop)
    expected = naive_weight_map(carved, class_balance=False)
    _, weights = training_target(real_crop)
    assert np.abs(weights - expected).max() <= 1e-3


def test_border_term_only_on_background():
    labels = discs_and_rectangles()
    weights = separation_weight_map(labels, class_balance=False)
    assert np.all(weights[labels > 0] == 1)
    assert weights[labels == 0].max() > 5


@pytest.mark.parametrize("class_balance", [True, False])
def test_no_border_term_with_fewer_than_two_cells(class_balance):
    labels = np.zeros((40, 50), np.uint8)
    assert np.all(separation_weight_map(labels, class_balance=class_balance) == 1)
    labels[10:20, 10:20] = 4
    weights = separation_weight_map(labels, class_balance=class_balance)
    assert np.unique(weights[labels == 0]).size == 1
    assert np.unique(weights[labels > 0]).size == 1


def test_ids_need_not_be_contiguous():
    labels = discs_and_rectangles()
    pair = np.where(labels == 1, 3, np.where(labels == 2, 700, 0)).astype(np.int64)
    contiguous = separation_weight_map(np.where(pair == 3, 1, np.where(pair == 700, 2, 0)))
    np.testing.assert_array_equal(separation_weight_map(pair), contiguous)
    huge = np.where(pair == 700, 2**40, pair)  # ids far above the pixel count
    np.testing.assert_array_equal(separation_weight_map(huge), contiguous)


def test_class_balance_equalises_total_weight():
    labels = voronoi()
    weights = separation_weight_map(labels, w0=0.0, class_balance=True)
    fg = labels > 0
    assert weights[fg].sum() == pytest.approx(weights[~fg].sum(), rel=1e-5)
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.ones((4, 4), np.float32), r"integers.*astype\(np\.uint16\)"),
        (np.full((4, 4), 0.5), r"integers.*skimage\.measure\.label"),
        (np.ones((4, 4), bool), "must be integers"),
        (np.array([[0, 1], [-3, 2]]), "non-negative.*minimum is -3"),
        (np.zeros((2, 3, 4), np.uint8), r"\(H, W\).*\(2, 3, 4\)"),
        (np.zeros((1, 5, 6), np.uint8), r"\(1, 5, 6\).*squeeze"),
        (np.zeros(5, np.uint8), r"\(H, W\).*\(5,\)"),
        (np.zeros((0, 5), np.uint8), r"empty.*\(0, 5\)"),
    ],
)
def test_bad_labels_raise(labels, match):
    with pytest.raises(ValueError, match=match):
        check_labels(labels)
    with pytest.raises(ValueError, match=match):
        separation_weight_map(labels)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w0": -1.0}, r"w0 must be a finite number in \[0, 1000\].*-1.0"),
        ({"w0": 1e40}, r"w0 must be a finite number in \[0, 1000\].*1e\+40"),
        ({"w0": float("inf")}, "w0 must be"),
        ({"sigma": 0.0}, r"sigma must be .* in \(0, 100\].*0.0"),
        ({"sigma": float("nan")}, "sigma must be"),
        ({"sigma": 1e308}, "sigma must be"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    labels = discs_and_rectangles()
    with pytest.raises(ValueError, match=match):
        separation_weight_map(labels, **kwargs)
    with pytest.raises(ValueError, match=match):
        training_target(labels, **kwargs)


def test_check_labels_returns_2d_integer_array():
    labels = check_labels([[0, 1], [2, 0]])
    assert isinstance(labels, np.ndarray)
    assert labels.shape == (2, 2)


def test_carve_borders_separates_touching_cells():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:6, 2:6] = 1
    labels[2:6, 6:10] = 2
    labels[6:9, 10:13] = 5  # touches cell 2 diagonally only
    labels[12:16, 12:16] = 3
    carved = carve_borders(labels)
    assert carved.dtype == labels.dtype
    assert np.all(carved[2:6, 5] == 0) and np.all(carved[2:6, 6] == 0)
    assert np.all(carved[2:6, 2:5] == 1)
    assert carved[5, 9] == 0 and carved[6, 10] == 0
    np.testing.assert_array_equal(carved[12:16, 12:16], 3)
    assert np.count_nonzero(carved == 3) == 16
    for i in (1, 2, 5):  # no cell touches another one, even diagonally
        grown = ndi.binary_dilation(carved == i, np.ones((3, 3), bool))
        assert set(np.unique(carved[grown])) == {0, i}


def test_largest_piece_drops_stray_fragments():
    labels = np.zeros((30, 30), np.int32)
    labels[2:10, 2:10] = 1
    labels[20, 20] = 1  # stray fragment of cell 1
    labels[10, 10] = 1  # diagonal neighbour: same 8-connected piece
    labels[15:18, 2:5] = 2
    labels[25:27, 25:27] = 2  # smaller piece of cell 2
    kept = largest_piece(labels)
    assert kept.dtype == labels.dtype
    assert kept[20, 20] == 0 and kept[10, 10] == 1
    assert np.count_nonzero(kept == 1) == 65
    assert np.count_nonzero(kept == 2) == 9


def test_largest_piece_on_real_crop(real_crop):
    kept = largest_piece(real_crop)
    for i in np.unique(kept[kept > 0]):
        assert ndi.label(kept == i, np.ones((3, 3), bool))[1] == 1


def test_training_target_with_mask():
    labels = voronoi()
    mask = np.zeros(labels.shape, bool)
    mask[:, :70] = True
    target, weights = training_target(labels, mask)
    assert target.dtype == np.uint8 and weights.dtype == np.float32
    np.testing.assert_array_equal(target, carve_borders(labels) > 0)
    assert np.all(weights[~mask] == 0)
    full = separation_weight_map(carve_borders(labels), class_balance=False)
    np.testing.assert_array_equal(weights[mask], full[mask])

    _, balanced = training_target(labels, mask, w0=0.0, class_balance=True)
    fg = target > 0
    assert balanced[mask & fg].sum() == pytest.approx(balanced[mask & ~fg].sum(), rel=1e-5)


def test_training_target_rejects_mask_of_other_shape():
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\).*labels have shape \(4, 4\)"):
        training_target(np.zeros((4, 4), np.uint8), np.ones((3, 4), bool))


def test_one_default_map_training_target_is_separation_weight_map_of_carved_labels():
    labels = voronoi()
    _, weights = training_target(labels)
    np.testing.assert_array_equal(weights, separation_weight_map(carve_borders(labels)))
