"""Cell size as an input: diameters, resampling factors, images and labels at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_unet.core.prediction.scale import (
    median_diameter,
    rescale_image,
    rescale_labels,
    resize_to,
    scale_factor,
)


def discs(shape=(200, 300), radius=10, spacing=40):
    """``shape`` instance labels of discs of ``radius`` on a grid."""
    labels = np.zeros(shape, np.uint16)
    n = 0
    for y in range(spacing // 2, shape[0] - radius, spacing):
        for x in range(spacing // 2, shape[1] - radius, spacing):
            n += 1
            labels[disk((y, x), radius, shape=shape)] = n
    return labels


def test_median_diameter_is_the_discs_diameter():
    assert median_diameter(discs(radius=10)) == pytest.approx(20, abs=0.5)
    assert median_diameter(discs(radius=25, spacing=60)) == pytest.approx(50, abs=0.5)
    with pytest.raises(ValueError, match="no cell"):
        median_diameter(np.zeros((5, 5), int))


def test_scale_factor_bounds_and_messages():
    assert scale_factor(40, 80) == 0.5
    assert scale_factor(40, 40.5) == 1.0  # within 2 %: the image as it comes
    for bad in (0, -3, float("nan"), float("inf"), "30"):
        with pytest.raises(ValueError, match="positive number of pixels"):
            scale_factor(40, bad)
    with pytest.raises(ValueError, match="too far from the 40 px"):
        scale_factor(40, 1000)


def test_rescaled_labels_keep_ids_and_scale_the_diameter():
    labels = discs(radius=20, spacing=60)
    half = rescale_labels(labels, 0.5)
    assert half.shape == (100, 150) and half.dtype == labels.dtype
    assert set(np.unique(half)) == set(np.unique(labels))
    assert median_diameter(half) == pytest.approx(20, abs=1)
    assert median_diameter(rescale_labels(labels, 2.0)) == pytest.approx(80, abs=1)
    assert rescale_labels(labels, 1.0) is labels


def test_rescaled_image_is_anti_aliased_and_resize_to_returns_to_the_grid():
    rng = np.random.default_rng(0)
    stripes = np.tile([0.0, 1.0], (64, 32)).astype(np.float32)  # 1-px stripes: pure aliasing
    small = rescale_image(stripes, 0.25)
    assert small.shape == (16, 16) and small.dtype == np.float32
    assert small.std() < 0.1  # averaged, not sampled to all-0 or all-1
    image = rng.random((3, 50, 70)).astype(np.float32)
    assert rescale_image(image, 2.0).shape == (3, 100, 140)
    smooth = np.add.outer(np.arange(50.0), np.arange(70.0)).astype(np.float32)
    back = resize_to(rescale_image(smooth, 0.5), smooth.shape)
    assert back.shape == smooth.shape
    np.testing.assert_allclose(back[5:-5, 5:-5], smooth[5:-5, 5:-5], atol=0.6)
    assert resize_to(smooth, smooth.shape) is smooth


def test_finetune_trains_near_the_models_diameter_and_records_the_size_it_worked_at(tiny_unet):
    from napari_unet import finetune
    from napari_unet.core.prediction.scale import WORKING_RANGE
    from napari_unet.core.training.train import at_model_size

    labels = discs((256, 256), radius=20, spacing=64)  # cells 40 px across
    image = (labels > 0).astype(np.float32) + 0.1
    tiny_unet.metadata = {"diameter": 20.0}  # 2x off: shrunk to the edge of the working range
    samples, cells, factor = at_model_size([(image, labels)], tiny_unet)
    assert factor == pytest.approx(20 * WORKING_RANGE / 40, abs=0.02)
    assert samples[0][0].shape == samples[0][1].shape == (round(256 * factor),) * 2
    assert median_diameter(samples[0][1]) == pytest.approx(20 * WORKING_RANGE, abs=1)
    for _ in finetune(tiny_unet, [(image, labels)], steps=2, tile=32, seed=0):
        pass
    assert tiny_unet.metadata["cells"]["median_diameter"] == pytest.approx(40, abs=1)
    assert tiny_unet.metadata["finetune"]["scale"] == pytest.approx(factor)
    assert tiny_unet.metadata["diameter"] == pytest.approx(20 * WORKING_RANGE, abs=1)
    assert at_model_size([(image, labels)], tiny_unet)[2] == pytest.approx(factor)  # round 2:
    assert tiny_unet.metadata["trained_diameter"] == 20.0  # the base's range, no drift to 40 px
    tiny_unet.metadata = {"diameter": 34.0}  # within reach: the cells as they are
    assert at_model_size([(image, labels)], tiny_unet)[2] == 1.0
    tiny_unet.metadata = {}  # a model that does not say its size trains on the images as they are
    assert at_model_size([(image, labels)], tiny_unet)[2] == 1.0


def test_predict_at_a_diameter_is_the_prediction_of_the_resampled_image(tiny_unet):
    from napari_unet import normalize, predict, to_instances
    from napari_unet.core.prediction.instances import Probabilities

    rng = np.random.default_rng(1)
    image = rng.random((120, 90)).astype(np.float32)
    tiny_unet.metadata = {"diameter": 20.0}
    prob = predict(tiny_unet, image, diameter=40.0)
    assert isinstance(prob, Probabilities) and prob.shape == image.shape
    assert prob.cells["median_diameter"] == 40.0  # sized for the image's own cells
    # normalised by the image's own percentiles, then resampled (as the blocks of a large image)
    half = rescale_image(normalize(image), 0.5)
    half = predict(tiny_unet, half, diameter=20.0, percentiles=None)
    np.testing.assert_allclose(prob, resize_to(half, image.shape), atol=1e-5)
    to_instances(prob)  # sized by the diameter given
    # a random network finds no cells at any size: the image as it comes, with a warning
    np.testing.assert_array_equal(
        predict(tiny_unet, image), predict(tiny_unet, image, diameter=20)
    )
    stack = np.stack([image, image[::-1]])
    both = predict(tiny_unet, stack, diameter=40.0)
    assert both.shape == stack.shape
    np.testing.assert_allclose(both[0], prob, atol=1e-5)


def test_predict_uses_the_diameter_a_model_was_fine_tuned_on(tiny_unet):
    from napari_unet import predict

    image = np.random.default_rng(2).random((100, 100)).astype(np.float32)
    tiny_unet.metadata = {
        "diameter": 20.0,
        "cells": {"median_area": 1256.6, "median_diameter": 40.0},
    }
    np.testing.assert_allclose(
        predict(tiny_unet, image), predict(tiny_unet, image, diameter=40.0), atol=0
    )
    tiny_unet.metadata = {}
    with pytest.raises(ValueError, match="does not say what cell size it works at"):
        predict(tiny_unet, image, diameter=30.0)
    tiny_unet.metadata = {"diameter": 20.0}
    with pytest.raises(ValueError, match="positive number of pixels"):
        predict(tiny_unet, image, diameter=-1)


def test_the_scale_search_finds_the_size_at_which_cells_look_like_the_models():
    from napari_unet.core.prediction.diameter import search_diameter

    labels = discs((400, 400), radius=15, spacing=50)  # cells 30 px across

    def predictor(window):  # a "network" that sees what is there, at every size
        return (window > 0.5).astype(np.float32)

    estimate = search_diameter((labels > 0).astype(np.float32), 40.0, predictor)
    assert estimate.diameter == pytest.approx(30, rel=0.1)
    assert estimate.cells >= 3 and len(estimate.tries) >= 5
    with pytest.raises(ValueError, match="no cells were found"):
        search_diameter(np.zeros((300, 300), np.float32), 40.0, predictor)


def test_the_estimate_is_the_size_that_stays_the_same_across_tries():
    """Cells 60 px across, a model of 40: enlarged, the network draws pieces of its own size
    (their size in image px follows the try); shrunk far, it merges neighbours into blobs that
    still look like cells of about 40 px to it. Only the real cells measure 60 px at several
    tries in a row; the most shrunk try that looks like 40 px cells took two-cell blobs."""
    from napari_unet.core.prediction.diameter import _choose

    known, true = 40.0, 60.0
    tries = [(t, 30, known, 0.9) for t in (8.0, 11.3, 16.0, 22.6)]  # pieces of the model's size
    tries += [(t, 12, true * known / t, 0.9) for t in (32.0, 45.3, 64.0, 90.5)]  # the cells
    tries += [(t, 4, 2.2 * true * known / t, 0.8) for t in (128.0, 181.0)]  # two-cell blobs
    estimate = _choose(tries, known)
    assert estimate.diameter == pytest.approx(true)
    assert estimate.cells == 12 and estimate.tries == tuple(tries)


def test_an_estimate_outside_the_sizes_tried_is_brought_within_them(caplog):
    """ISBI EM with the bundled model: specks of texture found at the smallest try (8 px) measured
    22 px at the model's 40, an estimate of 4.4 px, which predict then refused (factor 9)."""
    from napari_unet.core.prediction.diameter import _choose

    tries = [(8.0, 40, 22.0, 0.7), (11.3, 35, 15.6, 0.7), (16.0, 2, 40.0, 0.6)]
    with caplog.at_level("WARNING"):
        assert _choose(tries, 40.0).diameter == 8.0
    assert "outside the sizes tried (8-16 px): using 8 px" in caplog.text
    tries = [(128.0, 5, 90.0, 0.8), (181.0, 4, 64.0, 0.8), (256.0, 3, 46.0, 0.8)]
    assert _choose(tries, 40.0).diameter == 256.0  # blobs that grow with every shrink


def test_predict_tiles_at_a_diameter_yields_tiles_of_the_resampled_plane_placed_on_the_image(
    tiny_unet,
):
    from napari_unet import predict, predict_tiles
    from napari_unet.core.prediction.predict import GIVEN, TUNED

    image = np.random.default_rng(3).random((120, 90)).astype(np.float32)
    tiny_unet.metadata = {"diameter": 20.0}
    tiles = list(predict_tiles(tiny_unet, image, tile=24, diameter=40.0, center=(110, 80)))
    grid = tiles[0].grid
    assert all(t.grid is grid for t in tiles)
    assert (grid.plane, grid.shape, grid.factor) == ((120, 90), (60, 45), 0.5)
    assert (grid.diameter, grid.source) == (40.0, GIVEN)
    resampled = np.zeros(grid.shape, np.float32)
    covered = np.zeros(grid.shape, int)
    on_image = np.zeros(image.shape, int)
    for t in tiles:
        resampled[t.region] = t.probabilities
        covered[t.region] += 1
        on_image[t.image_region] += 1
    assert (covered == 1).all() and (on_image == 1).all()  # each grid covered once
    assert tiles[0].image_region[0].stop == 120 and tiles[0].image_region[1].stop == 90
    expected = predict(tiny_unet, image, diameter=40.0)
    np.testing.assert_allclose(grid.to_image(resampled), expected, atol=1e-6)
    # None resolves as predict does: the fine-tuned size, recorded in each tile's grid
    cells = {"median_area": 1256.6, "median_diameter": 40.0}
    tiny_unet.metadata = {"diameter": 20.0, "cells": cells}
    grid = next(iter(predict_tiles(tiny_unet, image))).grid
    assert (grid.shape, grid.diameter, grid.source) == ((60, 45), 40.0, TUNED)
    tiny_unet.metadata = {}
    grid = next(iter(predict_tiles(tiny_unet, image))).grid
    assert not grid.resampled and grid.diameter is None and grid.factor == 1.0


@pytest.mark.parametrize("factor", [0.37, 0.5, 1.7, 3.3])
def test_any_window_of_the_resampled_plane_and_back_equals_the_whole_plane_resampled(factor):
    from napari_unet.core.prediction.scale import Resampling

    rng = np.random.default_rng(4)
    image = rng.random((97, 130, 2)).astype(np.float32)
    grid = Resampling.of(image.shape[:2], factor)
    whole = rescale_image(image, factor, channels_last=True)
    assert whole.shape[:2] == grid.shape
    padded = np.pad(whole, ((40, 40), (40, 40), (0, 0)), mode="symmetric")
    reads = []

    def read(rows, cols):
        reads.append((rows, cols))
        return image[rows, cols]

    h, w = grid.shape
    for rows, cols in [((-20, 30), (5, 60)), ((0, h), (0, w)), ((h - 10, h + 25), (-7, 3))]:
        window = grid.window(read, rows, cols)
        expected = padded[rows[0] + 40 : rows[1] + 40, cols[0] + 40 : cols[1] + 40]
        np.testing.assert_allclose(window, expected, atol=1e-6)
    assert reads[0][0].stop < 97 and reads[0][1].start > 0  # only what the window needs
    prob = whole[..., 0]
    back = resize_to(prob, image.shape[:2])
    for region in [(slice(0, 97), slice(0, 130)), (slice(10, 40), slice(77, 130))]:
        needed = grid.needed(region)
        part = grid.back(prob[needed], (needed[0].start, needed[1].start), region)
        np.testing.assert_allclose(part, back[region], atol=1e-6)


def test_a_diameter_within_two_percent_of_the_models_still_sizes_the_cells(whole_sample):
    """Not resampled (factor 1), but the diameter given is the one in use: the result carries
    its cells, and labels as every route sizes them (instance_options)."""
    from napari_unet import InstanceConfig, load_bundled, predict, to_instances
    from napari_unet.core.prediction.predict import ESTIMATED, GIVEN, instance_options
    from napari_unet.core.prediction.scale import sized_cells

    model = load_bundled()
    model.metadata = {**model.metadata, "diameter": 40.0}
    image = whole_sample[0][:192, :192]
    prob = predict(model, image, diameter=40.5)  # within 2 % of 40 px: the image as it comes
    np.testing.assert_array_equal(prob, predict(model, image, diameter=40.0))
    assert prob.cells == sized_cells(40.5)
    options = instance_options(InstanceConfig(), model, 40.5, GIVEN)
    assert options == instance_options({}, model, 40.5, ESTIMATED)  # a dict, or estimated: alike
    assert options["min_size"] == options["min_core"] == 64  # 5 % of a 40.5 px disc
    np.testing.assert_array_equal(to_instances(prob), to_instances(np.asarray(prob), **options))
