"""Weight map widget: preview layers, carved borders, live debounced updates, stacks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets.weightmap import DEBOUNCE_MS, WeightMapWidget

TIMEOUT = 10_000  # ms; the machine is shared, timings are noisy


@pytest.fixture(scope="module")
def sample():
    (image, image_kwargs, _), (labels, labels_kwargs, _) = phase_contrast_cells()
    return image, image_kwargs, labels, labels_kwargs


@pytest.fixture
def docked(make_napari_viewer, sample):
    """A viewer with the sample image and annotation, and a docked WeightMapWidget."""
    image, image_kwargs, labels, labels_kwargs = sample
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kwargs)
    viewer.add_labels(labels, **labels_kwargs)
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _preview(viewer, widget, qtbot, name="cells annotation"):
    """Tick "show preview" and wait for the two preview layers."""
    widget._preview.value = True
    qtbot.waitUntil(lambda: f"{name} weights" in viewer.layers, timeout=TIMEOUT)
    return viewer.layers[f"{name} target"], viewer.layers[f"{name} weights"]


def test_preview_layers_with_carved_borders(docked, sample, qtbot):
    viewer, widget = docked
    labels = sample[2]
    target, weights = _preview(viewer, widget, qtbot)
    assert target.data.shape == weights.data.shape == (512, 512)
    assert target.data.dtype == np.uint8 and weights.data.dtype == np.float32
    assert set(np.unique(target.data)) == {0, 1}
    # Touching cells are split: pixels of cells were carved away, and every connected piece
    # of the target lies within a single cell.
    assert np.count_nonzero((labels > 0) & (target.data == 0)) > 0
    pieces = measure.label(target.data, connectivity=2)
    for piece in range(1, pieces.max() + 1):
        assert len(np.unique(labels[pieces == piece])) == 1
    # Border weights between close cells (w0 = 10), 1 elsewhere without class balance.
    assert 8 < weights.data.max() <= 11
    assert weights.data.min() == pytest.approx(1.0)
    assert weights.contrast_limits[1] == pytest.approx(float(weights.data.max()))
    assert weights.colormap.name == "magma"
    np.testing.assert_array_equal(viewer.layers["cells annotation"].data, labels)


def test_sliders_and_class_balance_update_in_place(docked, qtbot):
    viewer, widget = docked
    target, weights = _preview(viewer, widget, qtbot)
    n_layers = len(viewer.layers)
    widget._w0.value = 25
    qtbot.waitUntil(lambda: weights.data.max() > 20, timeout=TIMEOUT)
    assert weights.contrast_limits[1] == pytest.approx(float(weights.data.max()))
    widget._sigma.value = 2
    before = weights.data
    qtbot.waitUntil(lambda: weights.data is not before, timeout=TIMEOUT)
    assert np.count_nonzero(weights.data > 1.01) < np.count_nonzero(before > 1.01)
    widget._balance.value = True  # sparse cells: the foreground weighs more than 1 per pixel
    qtbot.waitUntil(lambda: weights.data[target.data == 1].min() > 2, timeout=TIMEOUT)
    assert weights.data[target.data == 0].min() < 1
    assert len(viewer.layers) == n_layers  # updated in place, no new layers


def test_painting_updates_the_preview(docked, qtbot):
    viewer, widget = docked
    target, _ = _preview(viewer, widget, qtbot)
    labels = viewer.layers["cells annotation"]
    spot = np.argwhere(target.data == 0)[0]
    labels.paint(tuple(spot), int(labels.data.max()) + 1)
    qtbot.waitUntil(lambda: target.data[tuple(spot)] == 1, timeout=TIMEOUT)


def test_stack_shows_the_current_plane(make_napari_viewer, sample, qtbot):
    crop = sample[2][:128, :128]
    stack = np.stack([np.zeros_like(crop), crop])
    viewer = make_napari_viewer()
    viewer.add_labels(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    target, weights = _preview(viewer, widget, qtbot, "stack")
    assert target.data.shape == (128, 128)
    qtbot.waitUntil(lambda: target.data.any(), timeout=TIMEOUT)
    viewer.dims.set_current_step(0, 0)  # the empty plane
    qtbot.waitUntil(lambda: not target.data.any(), timeout=TIMEOUT)
    assert np.all(weights.data == 1)
    np.testing.assert_array_equal(viewer.layers["stack"].data, stack)


def test_no_labels_layer_is_reported(make_napari_viewer, sample, notes, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(sample[0], name="cells")
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._preview.value = True
    qtbot.waitUntil(
        lambda: any("no annotation layer" in str(n.message) for n in notes), timeout=TIMEOUT
    )
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_preview_only_on_request_under_the_annotation_never_selected(docked, qtbot):
    viewer, widget = docked
    annotation = viewer.layers["cells annotation"]
    viewer.layers.selection.active = annotation  # the user is painting
    widget._w0.value = 12
    qtbot.wait(3 * DEBOUNCE_MS)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells annotation"]

    target, weights = _preview(viewer, widget, qtbot)
    assert [layer.name for layer in viewer.layers] == [
        "cells",
        "cells annotation target",
        "cells annotation weights",
        "cells annotation",
    ]
    assert viewer.layers.selection.active is annotation
    assert set(viewer.layers.selection) == {annotation}
    for layer in (target, weights):  # over the image, but never hiding it
        assert layer.blending == "additive" and layer.opacity < 1

    viewer.add_labels(np.zeros((512, 512), np.uint8), name="other")
    viewer.layers.selection.active = annotation
    widget._w0.value = 20  # an update in place keeps the order and the selection
    qtbot.waitUntil(lambda: weights.data.max() > 15, timeout=TIMEOUT)
    assert viewer.layers.selection.active is annotation
    assert viewer.layers.index(weights) < viewer.layers.index(annotation)

    widget._preview.value = False
    assert [layer.name for layer in viewer.layers] == ["cells", "cells annotation", "other"]


def test_preview_layers_are_never_offered_as_images(docked, qtbot):
    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet._widgets.finetune import FinetuneWidget
    from napari_unet._widgets.predict import PredictWidget

    viewer, widget = docked
    _preview(viewer, widget, qtbot)
    for dock in (AnnotateWidget(viewer), FinetuneWidget(viewer), PredictWidget(viewer)):
        assert [layer.name for layer in dock._image.choices] == ["cells"]


def test_spin_boxes_step_sensibly(docked):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_unet.core.training.weightmap import CLASS_BALANCE, SIGMA, W0

    _, widget = docked
    assert (widget._w0.value, widget._sigma.value) == (W0, SIGMA)
    assert widget._balance.value == CLASS_BALANCE
    for box in (widget._w0, widget._sigma):  # were FloatSliders: a step was 0.00001
        before = box.value
        QTest.keyClick(box.native, Qt.Key.Key_Up)  # the mouse wheel steps the same way
        step = box.value - before
        assert 0.5 <= step <= 1
        QTest.keyClick(box.native, Qt.Key.Key_PageUp)
        assert box.value - before == pytest.approx(11 * step)


def test_a_problem_is_notified_once(make_napari_viewer, sample, notes):
    viewer = make_napari_viewer()
    viewer.add_image(sample[0], name="cells")
    widget = WeightMapWidget(viewer)
    widget._preview.value = True
    for w0 in (11, 12, 13):
        widget._w0.value = w0
        widget._update()  # what the debounce timer runs
    assert [str(n.message) for n in notes] == [
        "Weight map: no annotation layer; add a labels layer (0 = background, 1..N = cells)"
    ]
    assert widget._status.value.startswith("no annotation layer")


def test_preview_of_the_second_image_goes_right_under_its_annotation(
    make_napari_viewer, sample, qtbot
):
    """Two images, each with its annotation: the preview of the second one must lie over the
    second image (opaque), not under it where nothing of it can be seen."""
    image, _, labels, _ = sample
    viewer = make_napari_viewer()
    for name in ("one", "two"):
        viewer.add_image(image, name=name)
        viewer.add_labels(labels, name=f"{name} annotation")
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    annotation = viewer.layers["two annotation"]
    widget._annotation_box.value = annotation
    viewer.layers.selection.active = annotation
    _preview(viewer, widget, qtbot, "two annotation")
    assert [layer.name for layer in viewer.layers] == [
        "one",
        "one annotation",
        "two",
        "two annotation target",
        "two annotation weights",
        "two annotation",
    ]
    assert viewer.layers.selection.active is annotation


def test_an_empty_annotation_is_said_to_be_empty(make_napari_viewer, sample, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(sample[0], name="cells")
    viewer.add_labels(np.zeros(sample[2].shape, np.uint16), name="cells annotation")
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _preview(viewer, widget, qtbot)
    qtbot.waitUntil(lambda: "is empty here" in widget._status.value, timeout=TIMEOUT)
    assert "weights from" not in widget._status.value  # was "weights from 1 to 1"


def test_an_intensity_image_converted_to_labels_is_refused(
    make_napari_viewer, sample, notes, qtbot
):
    viewer = make_napari_viewer()
    viewer.add_labels(sample[0].astype(np.uint16), name="cells annotation")  # intensities
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._preview.value = True
    qtbot.waitUntil(
        lambda: any("does not look like a label image" in str(n.message) for n in notes),
        timeout=TIMEOUT,
    )
    assert "weights from" not in widget._status.value
