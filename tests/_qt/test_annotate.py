"""Annotate widget in a real viewer: annotation layer, cell helpers, prediction, region."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.key_bindings import KeymapHandler

from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets import _ui
from napari_unet._widgets._layers import annotation_of, annotation_pair
from napari_unet._widgets._session import session_for
from napari_unet._widgets.annotate import AnnotateWidget


@pytest.fixture
def sample():
    (image, image_kw, _), (labels, _, _) = phase_contrast_cells()
    return image, image_kw, labels


@pytest.fixture
def errors(monkeypatch):
    messages: list[str] = []
    monkeypatch.setattr(_ui, "show_error", messages.append)
    return messages


def _ring(shape, center, inner, outer):
    yy, xx = np.indices(shape)
    r2 = (yy - center[0]) ** 2 + (xx - center[1]) ** 2
    return (r2 >= inner**2) & (r2 <= outer**2)


def _press(layer, key):
    handler = KeymapHandler()
    handler.keymap_providers = [layer]
    handler.press_key(key)


def _wait_status(qtbot, widget, text):
    """The status counts once napari's paint events have settled (a zero-delay timer)."""
    qtbot.waitUntil(lambda: widget._status.value == text, timeout=2000)


def _training_pair(viewer, widget):
    """What Fine-tune trains on for the Annotate dock's image: its annotation, the region the
    dock chose for it (through the session), the viewed plane."""
    image = widget._image.value
    region = session_for(viewer).region_for(image)
    step = image.world_to_data(viewer.dims.point)
    return annotation_pair(image, annotation_of(viewer, image), region, step)


def _annotated(viewer, widget):
    widget._pick.native.click()
    return viewer.layers[f"{widget._image.value.name} annotation"]


def test_create_annotation_and_cell_helpers(make_napari_viewer, sample, qtbot):
    image, image_kw, _ = sample
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kw)
    widget = AnnotateWidget(viewer)
    assert widget._status.value.startswith("no annotation layer")

    layer = _annotated(viewer, widget)
    assert layer.data.shape == (512, 512)
    assert layer.data.dtype == np.uint32
    assert viewer.layers.selection.active is layer
    assert layer.mode == "paint"
    _wait_status(qtbot, widget, "0 cells, whole image")

    widget._new_cell.native.click()
    assert layer.selected_label == 1
    layer.brush_size = 5
    layer.paint((50, 50), 1)  # a stroke: napari's paint event updates the status
    _wait_status(qtbot, widget, "1 cell, whole image")

    _press(layer, "n")  # the layer's key binding
    assert layer.selected_label == 2
    ring = _ring(layer.data.shape, (200, 200), 6, 12)
    layer.data_setitem(np.nonzero(ring), 2)
    inner = np.zeros_like(ring)
    inner[198:203, 198:203] = True  # another cell inside the hole
    layer.data_setitem(np.nonzero(inner), 3)
    _wait_status(qtbot, widget, "3 cells, whole image")

    layer.selected_label = 2
    widget._fill.native.click()
    hole = _ring(layer.data.shape, (200, 200), 0, 5.9) & ~inner
    assert (layer.data[hole] == 2).all()
    assert (layer.data[inner] == 3).all(), "fill holes overwrote another cell"
    assert (layer.data[~(ring | hole | inner)] != 2).all()

    layer.selected_label = 3
    widget._delete.native.click()
    assert not (layer.data == 3).any()
    _wait_status(qtbot, widget, "2 cells, whole image")
    layer.undo()  # napari's undo restores the deleted cell
    assert (layer.data[inner] == 3).all()

    widget._erase.native.click()
    assert layer.mode == "erase"

    widget._pick.native.click()  # picking again finds the same layer
    assert [lay.name for lay in viewer.layers].count("cells annotation") == 1


def test_start_from_prediction_keeps_painted_cells(make_napari_viewer, sample, qtbot):
    image, image_kw, labels = sample
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kw)
    prediction = viewer.add_labels(labels, name="cells prediction")
    widget = AnnotateWidget(viewer)
    layer = _annotated(viewer, widget)
    painted = np.zeros(labels.shape, bool)
    painted[0:60, 0:60] = True  # overlaps predicted cells
    assert (labels[painted] != 0).any()
    layer.data_setitem(np.nonzero(painted), 1)

    widget._prediction.value = prediction
    widget._start.native.click()
    assert (layer.data[painted] == 1).all()
    copied = ~painted & (labels != 0)
    assert (layer.data[copied] != 0).all()
    assert (layer.data[~painted & (labels == 0)] == 0).all()
    assert (layer.data[copied] > 1).all(), "copied ids must not merge with painted cells"
    n_cells = len(np.unique(layer.data)) - 1
    _wait_status(qtbot, widget, f"{n_cells} cells, whole image")
    np.testing.assert_array_equal(prediction.data, labels)  # the prediction is untouched


def test_region_from_shapes(make_napari_viewer, sample, qtbot):
    image, image_kw, labels = sample
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kw)
    widget = AnnotateWidget(viewer)
    layer = _annotated(viewer, widget)
    layer.data_setitem(np.nonzero(labels), labels[labels != 0])

    widget._add_region.native.click()
    region = viewer.layers["cells annotated region"]
    assert widget._region.value is region
    assert region.mode == "add_rectangle"
    region.add_rectangles(np.array([[10, 20], [10, 119], [89, 119], [89, 20]]))
    n_cells = len(np.unique(labels)) - 1
    _wait_status(qtbot, widget, f"{n_cells} cells in 1 region")

    image_plane, labels_plane, mask = _training_pair(viewer, widget)
    np.testing.assert_array_equal(image_plane, image)
    np.testing.assert_array_equal(labels_plane, labels)
    assert mask.dtype == bool and mask.shape == (512, 512)
    assert mask[50, 50] and not mask[200, 200] and not mask[5, 50]
    assert abs(int(mask.sum()) - 80 * 100) < 400


def test_stack_plane(make_napari_viewer, errors, qtbot):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, (3, 64, 64), dtype=np.uint16)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = AnnotateWidget(viewer)
    layer = _annotated(viewer, widget)
    assert layer.data.shape == (3, 64, 64)
    layer.data[0, 5:10, 5:10] = 7
    layer.refresh()
    viewer.dims.set_current_step(0, 1)

    widget._new_cell.native.click()
    assert layer.selected_label == 8  # next free id over the whole stack
    ring = _ring((64, 64), (30, 30), 4, 8)
    index = np.nonzero(ring)
    layer.data_setitem((np.full(index[0].size, 1), *index), 8)
    _press(layer, "h")  # fill holes on the current plane only
    assert (layer.data[1][_ring((64, 64), (30, 30), 0, 3.9)] == 8).all()
    assert (layer.data[[0, 2]] != 8).all()
    _wait_status(qtbot, widget, "2 cells, whole image")
    layer.selected_label = 7
    _press(layer, "Shift-D")  # delete cell 7 from the whole stack
    assert not (layer.data == 7).any()
    _wait_status(qtbot, widget, "1 cell, whole image")

    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    region = viewer.add_labels(mask, name="mask")  # one plane, used for every plane
    widget._region.value = region
    _wait_status(qtbot, widget, "1 cell in 1 region")
    image_plane, labels_plane, region_mask = _training_pair(viewer, widget)
    np.testing.assert_array_equal(image_plane, stack[1])
    np.testing.assert_array_equal(labels_plane, layer.data[1])
    np.testing.assert_array_equal(region_mask, mask != 0)
    viewer.cursor.position = (1, 30, 30)
    _press(layer, "Shift-S")  # split cell 8 on the viewed plane
    assert set(np.unique(layer.data[1])) == {0, 8, 9} and not layer.data[[0, 2]].any()
    assert errors == []


def test_annotation_pair_is_pure_and_checks_shapes():
    from napari.layers import Image, Labels, Shapes

    rgb = Image(np.zeros((2, 32, 48, 3), np.uint8), rgb=True, name="rgb")
    cells = np.arange(1, 2 * 4 * 6 + 1, dtype=np.uint32).reshape(2, 4, 6)
    labels = Labels(np.kron(cells, np.ones((1, 8, 8), np.uint32)))  # 8x8 cells, planes differ
    image, plane, mask = annotation_pair(rgb, labels, None, (0, 1, 0, 0))
    assert image.shape == (32, 48, 3) and mask is None
    np.testing.assert_array_equal(plane, labels.data[1])

    with pytest.raises(ValueError, match="must match"):
        annotation_pair(rgb, Labels(np.zeros((32, 48), np.uint16)), None, (0, 0))
    empty = Shapes(ndim=3)
    with pytest.raises(ValueError, match="marks no pixel"):
        annotation_pair(rgb, labels, empty, (1, 0, 0))


def test_bad_input_changes_nothing(make_napari_viewer, sample, errors):
    image, image_kw, _ = sample
    viewer = make_napari_viewer()
    widget = AnnotateWidget(viewer)
    widget._pick.native.click()
    widget._new_cell.native.click()
    assert len(errors) == 2 and all("no image layer" in e for e in errors)
    assert len(viewer.layers) == 0

    viewer.add_image(image, **image_kw)
    wrong = viewer.add_labels(np.zeros((10, 10), np.uint16), name="cells annotation")
    widget._pick.native.click()
    assert "has shape (10, 10)" in errors[-1]
    assert widget._status.value.startswith("annotation 'cells annotation' has shape")
    assert len(viewer.layers) == 2 and wrong.data.shape == (10, 10)


def test_prediction_box_waits_for_a_prediction(make_napari_viewer, sample, qtbot, tiny_unet):
    from napari_unet._widgets._session import session_for
    from napari_unet._widgets.predict import PredictWidget

    image, image_kw, labels = sample
    viewer = make_napari_viewer()
    viewer.add_image(image[:128, :128], **image_kw)
    viewer.add_labels(labels[:128, :128], name="cells annotation")
    widget = AnnotateWidget(viewer)
    assert widget._prediction.value is None  # never the annotation itself
    assert viewer.layers["cells annotation"] not in widget._prediction.choices
    viewer.add_labels(labels[:128, :128], name="ground truth")  # offered, not chosen
    assert widget._prediction.value is None

    session_for(viewer).set_model(tiny_unet, "test")
    predict = PredictWidget(viewer)
    predict._predict.native.click()
    qtbot.waitUntil(lambda: predict._task is None, timeout=60_000)
    made = viewer.layers["cells prediction"]
    assert widget._prediction.value is made
    names = {layer.name for layer in widget._prediction.choices if layer is not None}
    assert names == {"cells prediction", "ground truth"}


def _click(layer, position):
    """A left click at the world ``position`` on ``layer``, through napari's mouse callbacks."""
    from types import SimpleNamespace

    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    def event(kind):
        return ReadOnlyWrapper(
            SimpleNamespace(
                type=kind,
                is_dragging=False,
                button=1,
                modifiers=(),
                position=position,
                view_direction=None,
                dims_displayed=(0, 1),
                dims_point=position,
            )
        )

    mouse_press_callbacks(layer, event("mouse_press"))
    mouse_release_callbacks(layer, event("mouse_release"))


def test_merge_and_split_are_undoable_and_touch_no_other_layer(make_napari_viewer, errors, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.arange(64 * 96, dtype=np.uint16).reshape(64, 96), name="cells")
    prediction = viewer.add_labels(np.ones((64, 96), np.uint16), name="cells prediction")
    widget = AnnotateWidget(viewer)
    layer = _annotated(viewer, widget)
    cells = np.zeros((64, 96), np.uint32)
    cells[10:20, 10:30] = 1
    cells[10:20, 32:50] = 2  # a 2 px background line between cells 1 and 2
    cells[_ring((64, 96), (45, 30), 0, 10) | _ring((64, 96), (45, 52), 0, 13)] = 3  # two touch
    layer.data_setitem(np.nonzero(cells), cells[cells != 0])
    before = np.array(layer.data)

    layer.selected_label = 1
    viewer.cursor.position = (15, 40)  # over cell 2
    _press(layer, "Shift-M")
    assert not (layer.data == 2).any() and (layer.data[10:20, 10:50] == 1).all()
    assert (layer.data[cells == 3] == 3).all()
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)

    widget._split.native.click()  # waits for a click on a cell, painting nothing meanwhile
    assert layer.mode == "pan_zoom" and widget._status.value == "click the cell to split"
    _click(layer, (45, 55))
    assert layer.mode == "paint"
    assert set(np.unique(layer.data[cells == 3])) == {3, 4}  # the new part: the next free id
    assert (layer.data[_ring((64, 96), (45, 25), 0, 4)] == 4).all()  # the smaller disc
    np.testing.assert_array_equal(layer.data[cells != 3], before[cells != 3])
    layer.mode = "pan_zoom"
    _click(layer, (45, 55))  # not armed any more: nothing happens
    assert (layer.data[cells == 3] != 0).all() and layer.data.max() == 4
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)

    layer.selected_label = 2
    widget._merge.native.click()
    assert widget._status.value == "click the cell to merge into cell 2"
    _click(layer, (15, 15))  # cell 1 joins the selected cell 2
    assert not (layer.data == 1).any() and (layer.data[10:20, 10:50] == 2).all()

    viewer.cursor.position = (2, 2)  # the background: nothing to merge or split
    _press(layer, "Shift-M")
    _press(layer, "Shift-S")
    assert [str(n.message) for n in notes][-2:] == [
        "Annotate: no cell there: point at (or click) the cell to merge",
        "Annotate: no cell there: point at (or click) the cell to split",
    ]
    np.testing.assert_array_equal(image.data, np.arange(64 * 96).reshape(64, 96))
    assert (prediction.data == 1).all() and errors == []
