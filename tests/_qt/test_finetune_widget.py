"""Fine-tune widget: pairs, a short real training run, Stop, busy model, bad input, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, predict
from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets._session import session_for
from napari_unet._widgets.finetune import NEW_NETWORK, FinetuneWidget

TIMEOUT = 120_000  # ms; the machine is shared, timings are noisy


@pytest.fixture(scope="module")
def crops():
    """Two 128x128 crops of the sample: (image uint16, labels uint16), each with 4+ cells."""
    image, labels = (data for data, _, _ in phase_contrast_cells())
    return [
        (image[a:b, c:d], labels[a:b, c:d])
        for a, b, c, d in ((64, 192, 64, 192), (192, 320, 192, 320))
    ]


@pytest.fixture
def setup(make_napari_viewer, crops):
    """A viewer with one cropped image + annotation, a tiny current model, a docked widget
    set up for short runs (tile 32, batch 1)."""
    viewer = make_napari_viewer()
    image, labels = crops[0]
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells annotation")
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3)
    session_for(viewer).set_model(model, "test")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._tile.value, widget._batch.value = 32, 1
    return viewer, widget, model


def _add(widget, viewer, image, labels):
    widget._image.value = viewer.layers[image]
    widget._annotation_box.value = viewer.layers[labels]
    widget._add.native.click()


def _train(widget, qtbot, steps):
    widget._steps.value = steps
    worker = widget.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass


def _weights(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _same(model, weights: dict) -> bool:
    state = model.state_dict()
    return state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)


def test_short_run_trains_a_copy_and_undo_returns(setup, crops, qtbot):
    viewer, widget, model = setup
    _add(widget, viewer, "cells", "cells annotation")
    assert widget._pair_list.item(0).text() == "cells / cells annotation"
    before = _weights(model)
    assert not widget._undo.enabled
    _train(widget, qtbot, steps=4)
    session = session_for(viewer)
    assert [step for step, _ in widget._plot.points] == [1, 2, 3, 4]
    assert not widget._plot.grab().isNull()
    tuned = session.model
    assert tuned is not model and session.source == "fine-tuned on 1 pair, 4 steps"
    assert session.busy == ""
    assert _same(model, before), "the run trains a copy; the model before it is kept as it was"
    assert not _same(tuned, before)
    assert not tuned.training
    assert widget._model_info.value == "current model: fine-tuned on 1 pair, 4 steps"
    assert widget._start.enabled and not widget._stop.enabled
    assert widget._status.value.startswith("done: step 4")
    assert widget._bar.value == widget._bar.max == 4
    np.testing.assert_array_equal(viewer.layers["cells annotation"].data, crops[0][1])
    assert widget._undo.enabled
    widget._undo.native.click()
    assert session.model is model and session.source == "test"
    assert widget._model_info.value == "current model: test"
    assert not widget._undo.enabled  # one model is kept, one undo


def test_stop_keeps_a_usable_model(setup, crops, qtbot):
    viewer, widget, model = setup
    _add(widget, viewer, "cells", "cells annotation")
    widget._steps.value = 100_000
    worker = widget.run()
    assert widget._stop.enabled and not widget._start.enabled
    worker.yielded.connect(lambda _event: widget._stop.native.click())
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    steps = len(widget._plot.points)
    assert 1 <= steps < 100_000
    assert widget._status.value.startswith("stopped at step")
    assert widget._start.enabled and not widget._stop.enabled
    session = session_for(viewer)
    assert session.busy == "" and session.model is not model
    assert session.source.endswith("1 step" if steps == 1 else f"{steps} steps")
    assert not session.model.training
    probabilities = predict(session.model, crops[0][0])
    assert probabilities.shape == (128, 128) and np.isfinite(probabilities).all()


@pytest.fixture
def held_step(monkeypatch):
    """Optimiser steps wait for ``go`` (set at teardown at the latest): a run stays in flight
    inside its first step for as long as a test needs. Returns ``(go, calls)``."""
    import threading

    go, calls, real_step = threading.Event(), [], torch.optim.Adam.step

    def step(self, *args, **kwargs):
        calls.append(1)
        go.wait(TIMEOUT / 1000)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    yield go, calls
    go.set()


def test_predict_and_save_model_while_a_fine_tune_trains_its_copy(
    setup, crops, qtbot, notes, held_step, tmp_path
):
    """Fine-tune trains a copy: Predict and Save model use the current model meanwhile; only a
    second training run and a change of the current model wait (the result is swapped in at
    the end)."""
    from napari_unet import load_model
    from napari_unet._widgets.export import ExportWidget
    from napari_unet._widgets.predict import PredictWidget

    viewer, widget, model = setup
    session = session_for(viewer)
    go, calls = held_step
    before = _weights(model)
    _add(widget, viewer, "cells", "cells annotation")
    widget._steps.value = 1
    training = widget.run()
    qtbot.waitUntil(lambda: bool(calls), timeout=TIMEOUT)  # inside the first step

    predict_dock = PredictWidget(viewer)
    predict_dock_worker = predict_dock.run()
    assert predict_dock_worker is not None
    with qtbot.waitSignal(predict_dock_worker.finished, timeout=TIMEOUT):
        pass
    assert predict_dock._status.value.startswith("done")
    probabilities = predict(model, crops[0][0])  # the current model, not the copy in training
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data > 0, probabilities > 0.5)

    export = ExportWidget(viewer)
    export._model_path.value = tmp_path / "current"
    assert export._save_model.enabled
    export._save_model.native.click()
    saved = load_model(tmp_path / "current.safetensors")
    assert saved.metadata["source"] == "test" and _same(saved, before)

    second = FinetuneWidget(viewer)  # a second training run waits
    _add(second, viewer, "cells", "cells annotation")
    assert second.run() is None
    assert not widget._undo.enabled
    with pytest.raises(RuntimeError, match="busy training"):
        session.set_model(UNet(base_channels=4, depth=3), "other")
    messages = [str(n.message) for n in notes]
    assert messages[0].startswith("Export: saved the model (test)")
    assert messages[1:] == [
        "Fine-tune: cannot start another fine-tuning run: the model is busy training (its copy "
        "is swapped in when the run ends); stop it or wait"
    ]

    go.set()
    with qtbot.waitSignal(training.finished, timeout=TIMEOUT):
        pass
    assert session.source == "fine-tuned on 1 pair, 1 step" and session.busy == ""
    assert _same(model, before)


def test_the_swap_at_the_end_of_training_leaves_predictions_in_flight_alone(
    setup, crops, qtbot, monkeypatch
):
    """A prediction keeps the model it started with, also when a fine-tuning run started after
    it swaps its copy in; two predictions share the model."""
    import threading

    from napari_unet import to_instances
    from napari_unet._widgets.predict import PredictWidget
    from napari_unet.core.prediction import predict as core_predict

    go, calls, real = threading.Event(), [], core_predict.predict_tiles

    def held(model, *args, **kwargs):  # the first prediction waits after its first tile
        calls.append(1)
        first = len(calls) == 1
        for n, result in enumerate(real(model, *args, **kwargs)):
            yield result
            if n == 0 and first:
                go.wait(TIMEOUT / 1000)

    monkeypatch.setattr(core_predict, "predict_tiles", held)
    viewer, widget, model = setup
    image = crops[0][0]
    first = PredictWidget(viewer)
    first._tile.value = 32
    seen = []
    first_worker = first.run()
    first_worker.yielded.connect(seen.append)
    try:
        qtbot.waitUntil(lambda: bool(seen), timeout=TIMEOUT)  # the first is in flight

        second = PredictWidget(viewer)  # a second prediction of the same model runs too
        second._image.value = viewer.add_image(crops[1][0], name="other")
        second_worker = second.run()
        with qtbot.waitSignal(second_worker.finished, timeout=TIMEOUT):
            pass
        assert second._status.value.startswith("done")

        _add(widget, viewer, "cells", "cells annotation")
        _train(widget, qtbot, steps=1)  # starts while predicting, swaps its copy in at the end
        assert session_for(viewer).model is not model
    finally:
        go.set()
    with qtbot.waitSignal(first_worker.finished, timeout=TIMEOUT):
        pass
    assert first._status.value.startswith("done")
    expected = to_instances(predict(model, image), 0.5, None, expand=1)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


def test_empty_annotation_is_refused(setup, notes):
    viewer, widget, _ = setup
    viewer.add_labels(np.zeros((128, 128), np.uint16), name="empty")
    _add(widget, viewer, "cells", "empty")
    assert widget.run() is None and session_for(viewer).busy == ""
    assert any("no annotated cell" in str(n.message) for n in notes)


def test_mismatched_pair_is_not_added(setup, notes):
    viewer, widget, _ = setup
    viewer.add_labels(np.zeros((64, 64), np.uint16), name="small")
    _add(widget, viewer, "cells", "small")
    assert widget._pair_list.count() == 0 and widget._pairs == []
    assert any("must match" in str(n.message) for n in notes)


def test_held_out_stack_plane_reports_validation_iou(setup, crops, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, _ = setup
    _add(widget, viewer, "cells", "cells annotation")
    image, labels = crops[1]
    viewer.add_image(np.stack([crops[0][0], image]), name="stack")
    viewer.add_labels(np.stack([crops[0][1], labels]), name="stack annotation")
    viewer.dims.set_current_step(0, 1)
    _add(widget, viewer, "stack", "stack annotation")
    assert widget._pair_list.item(1).text() == "stack / stack annotation [z=1]"
    widget._pair_list.item(1).setCheckState(Qt.CheckState.Checked)
    _train(widget, qtbot, steps=3)
    assert widget._validation.value.startswith("validation IoU")
    assert session_for(viewer).source == "fine-tuned on 1 pair, 3 steps"


def test_remove_pair_and_start_from_new_network(setup, qtbot):
    viewer, widget, tiny = setup
    _add(widget, viewer, "cells", "cells annotation")
    _add(widget, viewer, "cells", "cells annotation")  # the same plane again: not added twice
    assert widget._pair_list.count() == 1
    widget._pair_list.setCurrentRow(0)
    widget._remove.native.click()
    assert widget._pair_list.count() == 0
    _add(widget, viewer, "cells", "cells annotation")
    widget._start_from.value = NEW_NETWORK
    widget._tile.value = 16
    _train(widget, qtbot, steps=1)
    model = session_for(viewer).model
    assert model is not tiny and model.base_channels == 16
    assert widget._model_info.value.endswith("fine-tuned on 1 pair, 1 step")


def test_failure_before_the_first_step_is_one_message_and_changes_nothing(setup, notes, qtbot):
    """finetune() rejects the input before any step; the run still ends once, with one
    notification (see test_failure_after_steps_... for a failure in the middle of training)."""
    viewer, widget, model = setup
    before = _weights(model)
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[..., 0] = viewer.layers["cells"].data >> 8
    viewer.add_image(rgb, name="rgb")
    _add(widget, viewer, "rgb", "cells annotation")
    widget._grey.value = False  # a one-channel model cannot take the RGB image as it is
    widget._steps.value = 2
    widget._start.native.click()
    qtbot.waitUntil(lambda: widget._start.enabled, timeout=TIMEOUT)
    assert [str(n.message)[:18] for n in notes] == ["Fine-tune: failed:"]  # exactly one
    assert widget._status.value.endswith("the current model is unchanged")
    assert not widget._stop.enabled and widget._settings.enabled
    session = session_for(viewer)
    assert session.busy == "" and session.model is model and session.source == "test"
    assert _same(model, before) and not widget._undo.enabled


def test_failure_after_steps_changes_neither_model_nor_label(
    setup, notes, qtbot, monkeypatch, tmp_path
):
    """Two optimiser steps succeed, the third raises (torch's RuntimeError, which superqt
    used to turn into a warning without `finished`): the current model keeps its weights
    bit for bit and its label, and Export saves exactly that."""
    from napari_unet import load_model
    from napari_unet._widgets.export import ExportWidget

    viewer, widget, model = setup
    before = _weights(model)
    real_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("element 0 of tensors does not require grad")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    _add(widget, viewer, "cells", "cells annotation")
    widget._steps.value = 5
    widget._start.native.click()
    qtbot.waitUntil(lambda: widget._task is None, timeout=TIMEOUT)  # `finished` came
    assert len(calls) == 3 and widget._status.value.startswith("failed after 2 steps")
    assert [str(n.message) for n in notes] == [
        "Fine-tune: failed: element 0 of tensors does not require grad"
    ]
    session = session_for(viewer)
    assert session.model is model and session.source == "test" and session.busy == ""
    assert _same(model, before) and not widget._undo.enabled

    export = ExportWidget(viewer)
    export._model_path.value = tmp_path / "saved"
    export._save_model.native.click()
    saved = load_model(tmp_path / "saved.safetensors")
    assert saved.metadata["source"] == "test" and _same(saved, before)


def test_pairs_use_the_region_chosen_in_annotate(setup):
    from napari_unet._widgets.annotate import AnnotateWidget

    viewer, widget, _ = setup
    annotate = AnnotateWidget(viewer)
    annotate._add_region.native.click()
    region = viewer.layers["cells annotated region"]
    region.add_rectangles(np.array([[0, 0], [0, 100], [100, 100], [100, 0]]))
    assert widget._region.value is region  # Fine-tune follows Annotate's choice
    widget._image.value = viewer.layers["cells"]
    _add(widget, viewer, "cells", "cells annotation")
    assert widget._pairs[-1].region is region
    # 50 characters: cut in the middle to the list's 44 (the full name in the tooltip)
    assert widget._pair_list.item(0).text() == "cells / cells annot…lls annotated region"
    assert (
        widget._pair_list.item(0)
        .toolTip()
        .startswith("cells / cells annotation in cells annotated region\n")
    )

    annotate._region.value = "whole image"
    assert widget._region.value == "whole image"


def test_a_time_budget_is_the_main_control(setup, qtbot):
    """ "train for 5 min" is the default and shown first; the step limit waits under
    "advanced"; a run the budget ends shows its time, not its steps."""
    from napari_unet import DEFAULT_STEPS
    from napari_unet._widgets.finetune import NEXT_ROUND, PERMILLE

    viewer, widget, _ = setup
    assert widget._minutes.value == 5 and widget._steps.value == DEFAULT_STEPS
    assert widget._minutes.native.text() == "5.00 min"
    settings = list(widget._settings)
    assert settings.index(widget._minutes) < settings.index(widget._show_advanced)
    assert widget._advanced.native.isHidden() and not widget._minutes.native.isHidden()
    widget._show_advanced.value = True
    assert not widget._advanced.native.isHidden()
    widget._show_advanced.value = False
    widget._minutes.value = 0  # no time limit: the step limit must be seen
    assert not widget._advanced.native.isHidden()
    assert widget._minutes.native.text() == "no time limit"

    _add(widget, viewer, "cells", "cells annotation")
    widget._minutes.value = 0.01  # 0.6 s
    worker = widget.run()
    shown = []
    worker.yielded.connect(lambda _: shown.append(widget._status.value))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    steps = len(widget._plot.points)
    assert 1 <= steps < DEFAULT_STEPS
    assert all(text.startswith(("0:00 of 0:01, step", "0:01 of 0:01, step")) for text in shown)
    assert widget._bar.value == widget._bar.max == PERMILLE
    assert widget._bar.native.format().endswith(" / 0:01")
    assert widget._status.value.startswith(f"done: step {steps}, loss ")
    assert widget._status.value.endswith(NEXT_ROUND)


def test_correct_and_continue_the_loop(setup, crops, qtbot):
    """The user's loop in a real viewer: fine-tune, predict another image, start its
    annotation from the prediction, correct it (split, merge), add it as a pair, Start: the
    next round trains a copy of the fine-tuned model on both pairs and says so."""
    from scipy import ndimage

    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet._widgets.finetune import NEXT_ROUND
    from napari_unet._widgets.predict import PredictWidget

    viewer, widget, model = setup
    original = _weights(model)
    session = session_for(viewer)
    _add(widget, viewer, "cells", "cells annotation")
    widget._lr.value = 1e-2
    _train(widget, qtbot, steps=2)  # round 1
    first = session.model
    assert session.source == "fine-tuned on 1 pair, 2 steps"
    tuned = _weights(first)
    assert max((tuned[k] - original[k]).abs().max() for k in tuned) > 1e-3

    image, truth = crops[1]
    viewer.add_image(image, name="other")
    predict = PredictWidget(viewer)
    predict._image.value = viewer.layers["other"]
    predict_worker = predict.run()
    with qtbot.waitSignal(predict_worker.finished, timeout=TIMEOUT):
        pass
    prediction = viewer.layers["other prediction"]

    annotate = AnnotateWidget(viewer)
    annotate._image.value = viewer.layers["other"]
    annotation = _annotated(annotate)
    assert annotate._prediction.value is prediction
    annotate._start.native.click()  # start from the prediction
    np.testing.assert_array_equal(annotation.data > 0, prediction.data > 0)
    wrong = annotation.data != truth  # the user corrects the prediction
    annotation.data_setitem(np.nonzero(wrong), truth[wrong])
    cell = int(np.bincount(truth.ravel())[1:].argmax()) + 1  # the largest true cell
    inside = ndimage.distance_transform_edt(truth == cell)
    viewer.cursor.position = np.unravel_index(np.argmax(inside), truth.shape)  # its middle
    _press(annotation, "Shift-S")  # split it ...
    new = int(truth.max()) + 1
    assert set(np.unique(annotation.data[truth == cell])) == {cell, new}
    annotation.selected_label = cell
    viewer.cursor.position = tuple(np.argwhere(annotation.data == new)[0])
    _press(annotation, "Shift-M")  # ... and merge it back
    assert not (annotation.data == new).any() and (annotation.data[truth == cell] == cell).all()

    _add(widget, viewer, "other", "other annotation")
    assert widget._start_from.value == "current model" and widget._pair_list.count() == 2
    widget._lr.value = 1e-5
    _train(widget, qtbot, steps=2)  # round 2, from the round-1 model
    second = session.model
    assert second is not first and _same(first, tuned)
    assert session.source == "round 2: continued from round 1 on 2 pairs, 2 steps"
    assert widget._model_info.value == f"current model: {session.source}"
    assert predict._source.value == session.source
    assert widget._status.value.endswith(NEXT_ROUND)
    weights = _weights(second)
    assert max((weights[k] - tuned[k]).abs().max() for k in tuned) < 1e-4, "continued"
    widget._undo.native.click()
    assert session.model is first and session.source == "fine-tuned on 1 pair, 2 steps"


def _annotated(annotate):
    annotate._pick.native.click()
    return annotate._viewer.layers[f"{annotate._image.value.name} annotation"]


def _press(layer, key):
    from napari.utils.key_bindings import KeymapHandler

    handler = KeymapHandler()
    handler.keymap_providers = [layer]
    handler.press_key(key)


def test_status_says_the_annotated_size_and_the_resampling(setup, crops, qtbot):
    """After a run the status says the median diameter of the annotated cells; for a model
    trained at one size, also the factor the frames were resampled by."""
    from napari_unet.core.prediction.scale import WORKING_RANGE, median_diameter

    viewer, widget, model = setup
    _add(widget, viewer, "cells", "cells annotation")
    _train(widget, qtbot, steps=1)
    measured = median_diameter(crops[0][1])
    assert f"Annotated cells: median diameter {measured:.0f} px. " in widget.status
    assert "resampled" not in widget.status

    sized = UNet(base_channels=4, depth=3)
    sized.metadata = {"diameter": round(measured / 2)}
    session_for(viewer).set_model(sized, "sized")
    _train(widget, qtbot, steps=1)
    tuned = session_for(viewer).model.metadata
    factor = tuned["finetune"]["scale"]
    assert factor == pytest.approx(round(measured / 2) * WORKING_RANGE / measured, abs=0.02)
    assert (
        f"median diameter {measured:.0f} px; frames resampled by {factor:.2f} to "
        f"{tuned['diameter']:.0f} px, near the size the model knows. " in widget.status
    )


def test_the_annotation_box_follows_an_annotation_made_after_the_dock(setup, crops, notes):
    viewer, widget, _ = setup
    dic = viewer.add_image(crops[1][0], name="dic_frame", scale=(0.19, 0.19))
    widget._image.value = dic
    assert widget._annotation_box.value is viewer.layers["cells annotation"]  # none of its own
    mine = viewer.add_labels(np.zeros_like(crops[1][1]), name="dic_frame annotation")
    mine.scale = (0.19, 0.19)
    assert widget._annotation_box.value is mine
    widget._annotation_box.value = viewer.layers["cells annotation"]  # the other image's: refused
    widget._add.native.click()
    message = str(notes[-1].message)
    assert "pixel size 1 x 1" in message and "np.float64" not in message


def test_an_intensity_image_converted_to_labels_is_refused_at_add_pair(setup, crops, notes):
    viewer, widget, _ = setup
    converted = viewer.add_labels(crops[0][0].astype(np.uint16), name="converted")  # intensities
    widget._image.value = viewer.layers["cells"]
    widget._annotation_box.value = converted
    widget._add.native.click()
    assert "does not look like a label image" in str(notes[-1].message)
    assert widget._pair_list.count() == 0


def test_pairs_go_with_their_layers(setup, crops, notes):
    """Issue 25 item 8b: pairs whose layers were closed stayed in the list."""
    viewer, widget, _ = setup
    image, labels = crops[1]
    viewer.add_image(image, name="other")
    viewer.add_labels(labels, name="other annotation")
    _add(widget, viewer, "cells", "cells annotation")
    _add(widget, viewer, "other", "other annotation")
    viewer.layers.remove("cells annotation")
    assert [widget._pair_list.item(i).text() for i in range(widget._pair_list.count())] == [
        "other / other annotation"
    ]
    assert [p.name for p in widget._pairs] == ["other / other annotation"]
    assert [str(n.message) for n in notes] == [
        "Fine-tune: a layer was closed; out of the training set: 'cells / cells annotation'"
    ]


def test_long_pair_names_keep_their_plane_in_sight(make_napari_viewer, qtbot):
    """Issue 25 item 8d: in the gui window, a pair of a long-named stack shows its plane."""
    from napari_unet.cli import open_viewer

    viewer = make_napari_viewer(show=True)
    open_viewer([], viewer, fill_screen=True)
    name = "2024-03-18_HeLa_DIC_60x_timelapse_position07_" + "x" * 37
    assert len(name) == 82
    stack = np.zeros((5, 64, 64), np.uint16)
    labels = stack.copy()
    labels[3, 10:30, 10:30] = 1
    labels[3, 35:55, 35:55] = 2
    viewer.add_image(stack, name=name)
    viewer.add_labels(labels, name=f"{name} annotation")
    viewer.dims.set_current_step(0, 3)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, FinetuneWidget))
    native = widget.native
    while native.parent() is not None and not native.isWindow():
        native = native.parent()
        if type(native).__name__ == "QDockWidget" or native.inherits("QDockWidget"):
            native.raise_()
            break
    _add(widget, viewer, name, f"{name} annotation")
    qtbot.waitUntil(widget._pair_list.isVisible, timeout=2000)
    text = widget._pair_list.item(0).text()
    assert text.endswith(" [z=3]") and text.startswith("2024-03-18_HeLa") and "…" in text
    shown = widget._pair_list.fontMetrics().horizontalAdvance(text)
    assert shown < widget._pair_list.viewport().width() - 24  # and the check box beside it


def test_a_run_too_short_to_change_anything_says_so(setup, qtbot, notes):
    """Issue 25 item 7: a 1-minute run of 25-34 steps left 13 touching cells one object and the
    dock said 'done'. The run scores its own annotated cells before and after and says when
    too few steps ran, and how long to train here."""
    from napari_unet.core.training.train import MIN_STEPS

    viewer, widget, _ = setup
    _add(widget, viewer, "cells", "cells annotation")
    _train(widget, qtbot, 5)
    status = widget.status
    assert status.startswith("done: step 5") and "Only 5 steps ran (loss " in status
    assert f"min here ({MIN_STEPS} steps). " in status and "train for at least " in status
    assert ("found no better than before (SEG " in status) or ("too few to change" in status)
    warnings = [str(n.message) for n in notes]
    assert len(warnings) == 1 and warnings[0].startswith("Fine-tune: Only 5 steps ran")
