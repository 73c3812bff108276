"""Instances from probabilities, and the scores that measure them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet import to_instances
from napari_unet.core.metrics import foreground_iou, instance_f1, seg_score
from napari_unet.core.prediction.instances import (
    Probabilities,
    cell_areas,
    cell_sizes,
    fill_cell_holes,
    size_defaults,
)
from napari_unet.core.training.weightmap import carve_borders


def two_cells_with_a_faint_bridge():
    prob = np.zeros((40, 60), np.float32)
    prob[10:30, 5:28] = 0.97
    prob[10:30, 32:55] = 0.97
    prob[10:30, 28:32] = 0.6  # the border between them, predicted faintly
    return prob


def test_watershed_splits_a_faint_bridge_that_components_merge():
    prob = two_cells_with_a_faint_bridge()
    assert to_instances(prob, method="components").max() == 1
    labels = to_instances(prob, expand=0)
    assert labels.max() == 2 and labels.dtype == np.uint16
    assert (labels > 0).sum() == (prob > 0.5).sum()  # the bridge is shared, not lost


def test_expand_gives_cells_predicted_too_small_their_outline_back(usiigaci_crop):
    """Real cells shrunk by 1 px all round, as the network tends to predict them: growing by
    1 px restores their outline and the borders of touching cells, each keeping its own id."""
    _, truth = usiigaci_crop
    same = ndi.maximum_filter(truth, size=3) == ndi.minimum_filter(truth, size=3)
    prob = ((truth > 0) & same).astype(np.float32)
    kept = to_instances(prob, expand=0, min_core=1)
    grown = to_instances(prob, min_core=1)
    assert grown.max() == kept.max() and (grown[kept > 0] > 0).all()
    assert foreground_iou(truth, grown) > foreground_iou(truth, kept) + 0.05
    seg_grown, seg_kept = (np.divide(*seg_score(truth, x)) for x in (grown, kept))
    assert seg_grown > seg_kept + 0.05


def test_cells_without_a_confident_core_are_kept_and_small_ones_dropped():
    prob = np.zeros((30, 30), np.float32)
    prob[2:12, 2:12] = 0.7  # no pixel above the core threshold
    prob[20:22, 20:22] = 0.99  # 4 px
    labels = to_instances(prob, min_size=5)
    assert labels.max() == 1 and (labels[2:12, 2:12] == 1).all()
    assert to_instances(prob, min_size=4).max() == 2


def test_a_hole_inside_one_cell_is_that_cell_and_a_gap_between_cells_stays():
    """A ring of probability (a rounded cell whose middle the network misses) is one whole cell;
    background enclosed by two touching cells is not given to either."""
    yy, xx = np.mgrid[:60, :60]
    r = np.hypot(yy - 30, xx - 30)
    ring = ((r > 6) & (r < 16)).astype(np.float32)
    labels = to_instances(ring, min_core=1)
    assert labels.max() == 1 and (labels[r < 16] == 1).all()
    two = np.zeros((40, 40), np.uint16)
    two[5:35, 5:20], two[5:35, 20:35] = 1, 2
    two[15:25, 15:25] = 0  # enclosed by both
    two[8:10, 8:10] = 0  # enclosed by cell 1 only
    filled = fill_cell_holes(two)
    assert (filled[15:25, 15:25] == 0).all() and (filled[8:10, 8:10] == 1).all()
    assert (filled[two > 0] == two[two > 0]).all()


def test_stack_planes_are_labelled_separately():
    prob = np.stack([two_cells_with_a_faint_bridge()] * 3)
    labels = to_instances(prob)
    assert labels.shape == prob.shape and [p.max() for p in labels] == [2, 2, 2]


def test_on_real_cells_watershed_beats_components(usiigaci_crop):
    """Probabilities built from real touching cells: carved borders blurred to a faint dip."""
    _, truth = usiigaci_crop
    prob = ndi.gaussian_filter((carve_borders(truth) > 0).astype(np.float32), 1.5)
    f1_cc = instance_f1(truth, to_instances(prob, method="components"))
    f1_ws = instance_f1(truth, to_instances(prob))
    assert f1_ws > f1_cc + 0.05
    assert f1_ws > 0.8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"core": 0.2}, "core must be"),
        ({"method": "magic"}, "unknown method"),
        ({"min_size": -1}, "min_size"),
        ({"expand": -1}, "expand must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_instances(np.zeros((5, 5), np.float32), **kwargs)


def test_bad_probabilities():
    with pytest.raises(ValueError, match="floats in"):
        to_instances(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_instances(np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="expected"):
        to_instances(np.zeros(5))


def test_scores_on_a_hand_made_example():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # 16 px
    truth[6:10, 6:10] = 2  # 16 px, missed entirely
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:3] = 5  # 12 px inside cell 1: IoU 0.75
    pred[5:6, 0:2] = 7  # a false positive
    assert foreground_iou(truth, pred) == pytest.approx(12 / 34)
    assert instance_f1(truth, pred) == pytest.approx(2 * 1 / 4)
    total, n = seg_score(truth, pred)
    assert n == 2 and total == pytest.approx(0.75)
    assert seg_score(truth, truth) == (2.0, 2)


def test_cell_sizes_count_the_annotated_cells():
    labels = np.zeros((20, 20), np.uint16)
    labels[0:2, 0:5] = 1  # 10 px
    labels[5:10, 5:10] = 2  # 25 px
    labels[12:20, 12:20] = 3  # 64 px, outside the mask below
    mask = np.zeros((20, 20), bool)
    mask[:12, :12] = True
    assert list(cell_areas(labels)) == [10, 25, 64]
    assert list(cell_areas(labels, mask)) == [10, 25]
    sizes = cell_sizes(cell_areas(labels))
    assert sizes == {
        "median_area": 25.0,
        "median_diameter": pytest.approx(5.642, abs=1e-3),
        "count": 3,
    }
    with pytest.raises(ValueError, match="no annotated cell"):
        cell_sizes(cell_areas(np.zeros((4, 4), np.uint8)))


def test_to_instances_sizes_its_defaults_from_the_cells():
    """Small cells: the fixed 200-px core size seeds none of them, so touching cells merge;
    with the cells' size known they are seeded and split."""
    prob = np.zeros((20, 40), np.float32)
    prob[5:15, 5:15] = prob[5:15, 17:27] = 0.95  # two 100-px cells
    prob[5:15, 15:17] = 0.6  # joined by a faint bridge
    assert to_instances(prob).max() == 1
    hinted = Probabilities(prob, {"median_area": 100.0, "median_diameter": 11.3, "count": 2})
    assert size_defaults(hinted.cells) == (5, 5) and size_defaults(None) == (16, 200)
    assert to_instances(hinted).max() == 2
    assert to_instances(hinted, min_core=200).max() == 1  # explicit values win
    assert np.array_equal(to_instances(hinted), to_instances(prob, min_size=5, min_core=5))


def test_probabilities_behave_as_arrays_and_keep_their_cells():
    import pickle

    cells = {"median_area": 50.0, "median_diameter": 8.0, "count": 3}
    prob = Probabilities(np.random.default_rng(0).random((2, 8, 8), np.float32), cells)
    assert prob[0].cells is cells and (prob > 0.5).cells is cells
    assert isinstance(prob.max(), np.floating) and float(prob.mean()) == float(prob.mean())
    assert type(np.asarray(prob)) is np.ndarray
    back = pickle.loads(pickle.dumps(prob))
    assert back.cells == cells and np.array_equal(back, prob)
