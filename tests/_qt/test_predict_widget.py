"""Predict widget: tiles stream into a labels layer, final instances, cancel, layer reuse."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets._diameter import Sized
from napari_unet._widgets._session import session_for
from napari_unet._widgets.predict import ALL_PLANES, FILE, PLANE, PredictWidget

TIMEOUT = 60_000  # ms; the machine is shared, timings are noisy


@pytest.fixture(scope="module")
def cells():
    """The sample image, (512, 512) uint16."""
    return phase_contrast_cells()[0][0]


@pytest.fixture
def tiny():
    import torch

    from napari_unet import UNet

    torch.manual_seed(0)
    return UNet(base_channels=4, depth=3)


@pytest.fixture
def setup(make_napari_viewer, cells, tiny):
    """A viewer with the sample image, a tiny current model and a docked PredictWidget."""
    viewer = make_napari_viewer()
    viewer.add_image(cells, name="cells")
    session_for(viewer).set_model(tiny, "test")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def run(widget, qtbot):
    """Click Predict and wait for the worker to finish."""
    worker = widget.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass


def test_tiles_stream_in_before_the_worker_finishes(setup, qtbot):
    viewer, widget = setup
    before = viewer.layers["cells"].data.copy()
    widget._tile.value = 64
    worker = widget.run()
    layer = viewer.layers["cells prediction (running)"]  # made before the first tile
    assert layer.data.shape == (512, 512) and not layer.data.any()
    seen, finished = [], []
    worker.finished.connect(lambda: finished.append(True))

    def check(result):  # runs after the widget wrote the tile
        if isinstance(result, Sized):  # first: the cell size it predicts at (none here)
            assert result.source is None and not result.grid.resampled and not seen
            return
        written = layer.data[result.region]
        seen.append((bool(finished), np.array_equal(written, result.probabilities > 0.5)))

    worker.yielded.connect(check)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert len(seen) > 1
    assert all(not done and ok for done, ok in seen)
    assert layer.data.dtype in (np.uint16, np.uint32) and layer.data.shape == (512, 512)
    ids = np.unique(layer.data[layer.data > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # instances, 1..N
    np.testing.assert_array_equal(viewer.layers["cells"].data, before)
    assert layer.name == "cells prediction" and len(viewer.layers) == 2  # the result
    assert viewer.layers.selection.active is viewer.layers["cells"]  # not the new layer
    assert widget.status.startswith("done")
    assert not session_for(viewer).busy and widget._predict.enabled


def test_post_processing_settings_reach_the_instances(setup, qtbot):
    from napari_unet import load_bundled, to_instances

    viewer, widget = setup
    model = load_bundled()  # finds cells, unlike a random net; as it comes (no diameter), so
    model.metadata = {k: v for k, v in model.metadata.items() if k != "diameter"}  # sizes
    session_for(viewer).set_model(model, "bundled")  # are the defaults, as below
    widget._with_probability.value = True
    widget._threshold.value = 0.45
    results = []
    for expand in (0, 2):
        widget._expand.value = expand
        run(widget, qtbot)
        prob = viewer.layers["cells probability"].data
        expected = to_instances(prob, 0.45, None, expand=expand)
        results.append(viewer.layers["cells prediction"].data.copy())
        np.testing.assert_array_equal(results[-1], expected)
    assert (results[1] > 0).sum() > (results[0] > 0).sum()  # grown cells cover more


def test_flips_checkbox_averages_the_eight_orientations(setup, qtbot, cells, tiny):
    from napari_unet import predict

    viewer, widget = setup
    widget._with_probability.value = True
    widget._flips.value = True
    run(widget, qtbot)
    shown = viewer.layers["cells probability"].data
    np.testing.assert_allclose(shown, predict(tiny, cells, flips=True), atol=1e-6)
    assert [layer.name for layer in widget._image.choices] == ["cells"]  # not the probability
    assert np.abs(shown - predict(tiny, cells)).max() > 1e-3


def test_view_center_in_data_coordinates(make_napari_viewer, cells):
    viewer = make_napari_viewer()
    layer = viewer.add_image(cells, scale=(2, 2), translate=(10, 0))
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0, 110, 300)
    assert widget._view_center(layer, 2) == pytest.approx((50, 150))


def test_cancel_after_first_tile_closes_the_tile_generator(setup, qtbot, monkeypatch):
    import threading

    from napari_unet.core.prediction import predict as core_predict

    closed_on_main_thread = []
    real = core_predict.predict_tiles

    def probe(*args, **kwargs):  # the real generator, telling when and where it is closed
        try:
            yield from real(*args, **kwargs)
        finally:
            closed_on_main_thread.append(threading.current_thread() is threading.main_thread())

    monkeypatch.setattr(core_predict, "predict_tiles", probe)
    viewer, widget = setup
    widget._tile.value = 32
    worker = widget.run()
    worker.yielded.connect(lambda _: widget._cancel.native.click())
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert closed_on_main_thread == [False]  # closed once, in the worker, before it ended
    assert widget.status.startswith("cancelled after")
    assert "cells prediction (partial)" in viewer.layers  # the tiles done stay, clearly named
    assert not session_for(viewer).busy
    assert widget._predict.enabled and not widget._cancel.enabled


def test_while_training_only_make_current_waits(setup, qtbot, notes, tmp_path, tiny):
    """Fine-tune trains a copy: Predict runs meanwhile with the current model; only making a
    model file current waits (the run's result is swapped in when it ends)."""
    from napari_unet import save_model
    from napari_unet._widgets._session import TRAINING

    viewer, widget = setup
    session = session_for(viewer)
    session.claim(TRAINING)  # what Fine-tune's run holds while it is in flight
    widget._model_choice.value = FILE
    widget._model_file.value = save_model(tiny, tmp_path / "file.safetensors")
    widget._make_current.value = True
    assert widget.run() is None and len(viewer.layers) == 1 and session.source == "test"
    assert [str(n.message) for n in notes] == [
        "Predict: cannot change the current model: the model is busy training (its copy is "
        "swapped in when the run ends); stop it or wait"
    ]
    widget._make_current.value = False
    run(widget, qtbot)
    assert widget.status.startswith("done") and session.busy == TRAINING
    session.release(TRAINING)


def test_model_file(setup, qtbot, notes, tmp_path, tiny):
    from napari_unet import save_model

    viewer, widget = setup
    session = session_for(viewer)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    widget._model_choice.value = FILE
    widget._model_file.value = bad
    assert widget.run() is None and len(viewer.layers) == 1
    assert any("not a readable model file" in str(n.message) for n in notes)
    assert session.source == "test" and not session.busy

    good = save_model(tiny, tmp_path / "good.safetensors")
    widget._model_file.value = good
    run(widget, qtbot)
    assert "cells prediction" in viewer.layers
    assert session.source == "test"  # not made current
    widget._make_current.value = True
    run(widget, qtbot)
    assert session.source == "file: good.safetensors"
    assert widget._source.value == "file: good.safetensors"


def test_edited_layer_is_kept_unedited_reused(setup, qtbot):
    viewer, widget = setup
    run(widget, qtbot)
    first = viewer.layers["cells prediction"]
    run(widget, qtbot)
    assert viewer.layers[-1] is first and len(viewer.layers) == 2

    first.paint((20, 20), 99)  # the user edits the prediction
    edited = first.data.copy()
    assert first.metadata["napari_unet_edited"]
    run(widget, qtbot)
    assert [layer.name for layer in viewer.layers][1:] == [
        "cells prediction",
        "cells prediction [2]",
    ]
    np.testing.assert_array_equal(first.data, edited)


def test_stack_current_plane_and_all_planes(setup, qtbot, cells):
    viewer, widget = setup
    stack = np.stack([cells[:128, :128], cells[128:256, :128], cells[256:384, :128]])
    layer = viewer.add_image(stack, name="stack")
    widget._image.value = layer
    widget._with_probability.value = True
    viewer.dims.set_current_step(0, 1)
    widget._planes.value = PLANE
    run(widget, qtbot)
    labels = viewer.layers["stack prediction"]
    probability = viewer.layers["stack probability"]
    assert labels.data.shape == probability.data.shape == (3, 128, 128)
    assert probability.data[1].any()
    assert not probability.data[[0, 2]].any() and not labels.data[[0, 2]].any()

    widget._planes.value = ALL_PLANES
    run(widget, qtbot)
    assert viewer.layers["stack prediction"] is labels  # unedited: reused
    assert all(probability.data[i].any() for i in range(3))
    np.testing.assert_array_equal(layer.data, stack)


def test_rgb_needs_grey_conversion(setup, qtbot, notes, cells):
    viewer, widget = setup
    rgb = np.repeat((cells[:128, :128] >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    layer = viewer.add_image(rgb, name="rgb")
    assert layer.rgb
    widget._image.value = layer
    assert widget._grey.value  # on by default, as in Fine-tune
    widget._grey.value = False
    assert widget.run() is None and "rgb prediction" not in viewer.layers
    assert any("convert RGB to grey" in str(n.message) for n in notes)

    widget._grey.value = True
    run(widget, qtbot)
    assert viewer.layers["rgb prediction"].data.shape == (128, 128)
    np.testing.assert_array_equal(layer.data, rgb)


def test_start_failure_releases_the_model(setup, notes, monkeypatch, qtbot):
    from napari_unet._widgets import _worker
    from napari_unet._widgets.finetune import FinetuneWidget

    viewer, widget = setup
    session = session_for(viewer)

    def no_thread(*args, **kwargs):
        raise RuntimeError("no thread left")

    with monkeypatch.context() as patch:
        patch.setattr(_worker, "create_worker", no_thread)
        widget._predict.native.click()
    assert session.busy == ""
    assert [str(n.message) for n in notes] == ["Predict: could not start: no thread left"]
    assert widget._predict.enabled and not widget._cancel.enabled

    viewer.add_labels(phase_contrast_cells()[1][0], name="cells annotation")
    finetune = FinetuneWidget(viewer)  # the model is free: Fine-tune starts
    finetune._add.native.click()
    finetune._tile.value, finetune._batch.value, finetune._steps.value = 32, 1, 1
    finetune_worker = finetune.run()
    with qtbot.waitSignal(finetune_worker.finished, timeout=TIMEOUT):
        pass
    assert session.source == "fine-tuned on 1 pair, 1 step" and session.busy == ""


class _Unreadable:
    """An image napari can show (it reads slices) but that cannot be read whole."""

    def __init__(self, data: np.ndarray) -> None:
        self._data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim

    def __getitem__(self, index):
        return self._data[index]

    def __array__(self, dtype=None, copy=None):
        raise MemoryError("cannot read the whole image")


def test_image_that_cannot_be_read_never_claims_the_model(setup, notes):
    viewer, widget = setup
    layer = viewer.add_image(
        _Unreadable(np.zeros((64, 64), np.uint16)), name="big", contrast_limits=(0, 1)
    )
    claims = []
    session_for(viewer).busy_changed.connect(claims.append)
    widget._image.value = layer
    widget._predict.native.click()
    assert claims == [] and session_for(viewer).busy == ""
    assert [str(n.message) for n in notes] == [
        "Predict: could not start: cannot read the whole image"
    ]
    assert "big prediction" not in viewer.layers and widget._predict.enabled


@pytest.mark.parametrize("broken", ["NaN pixel", "damaged weights"])
def test_worker_error_is_one_notification_and_the_run_ends(setup, notes, qtbot, cells, broken):
    import torch

    viewer, widget = setup
    if broken == "NaN pixel":  # a ValueError in the worker
        image = cells[:64, :64].astype(np.float32)
        image[5, 5] = np.nan
        widget._image.value = viewer.add_image(image, name="nan")
    else:  # a RuntimeError in the worker: superqt used to end such a run without `finished`
        session_for(viewer).model.head.weight.data = torch.zeros(2, 1, 1, 1)
    worker = widget.run()
    assert worker is not None
    # the dock forgets its run on the worker's `finished` (which may come during the click)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    messages = [str(n.message) for n in notes]
    assert len(messages) == 1 and messages[0].startswith("Predict: failed: "), messages
    assert widget.status == "failed after 0 tile(s)"
    assert session_for(viewer).busy == "" and widget._predict.enabled


def test_probability_goes_right_over_its_image(setup, qtbot, cells):
    """Two images, each with its annotation: the probability of the second one lies directly
    over it (additive), not under it where the opaque image hides it; nothing gets selected."""
    viewer, widget = setup
    viewer.add_labels(np.zeros(cells.shape, np.uint16), name="cells annotation")
    two = viewer.add_image(cells, name="two")
    viewer.add_labels(np.zeros(cells.shape, np.uint16), name="two annotation")
    annotation = viewer.layers["two annotation"]
    viewer.layers.selection.active = annotation
    widget._image.value = two
    widget._with_probability.value = True
    run(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == [
        "cells",
        "cells annotation",
        "two",
        "two probability",
        "two annotation",
        "two prediction",
    ]
    assert viewer.layers.selection.active is annotation
    assert set(viewer.layers.selection) == {annotation}


def _first_result(viewer, widget, qtbot):
    """Run once with the probability layer: ``{name: copy of the data}`` of the two results."""
    widget._with_probability.value = True
    run(widget, qtbot)
    names = ("cells prediction", "cells probability")
    return {name: viewer.layers[name].data.copy() for name in names}


def _assert_kept(viewer, earlier):
    for name, data in earlier.items():
        np.testing.assert_array_equal(viewer.layers[name].data, data)


def test_cancel_keeps_the_earlier_prediction(setup, qtbot, cells, tiny):
    from napari_unet import predict, to_instances

    viewer, widget = setup
    earlier = _first_result(viewer, widget, qtbot)
    assert earlier["cells prediction"].any()
    order = [layer.name for layer in viewer.layers]
    widget._tile.value = 32
    widget._threshold.value = 0.2  # a run that would change the result
    worker = widget.run()
    worker.yielded.connect(lambda _: widget._cancel.native.click())
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    _assert_kept(viewer, earlier)
    partial = ["cells prediction (partial)", "cells probability (partial)"]
    assert [layer.name for layer in viewer.layers if layer.name not in partial] == order
    assert all(name in viewer.layers for name in partial)  # the tiles done, clearly named
    assert viewer.layers["cells prediction (partial)"].data.any()
    assert "unchanged" in widget.status

    run(widget, qtbot)  # a complete run replaces the earlier result, in place
    assert [layer.name for layer in viewer.layers if layer.name not in partial] == order
    probability = viewer.layers["cells probability"].data
    expected = to_instances(predict(tiny, cells), 0.2, None, expand=1)
    np.testing.assert_allclose(probability, predict(tiny, cells), atol=1e-6)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


@pytest.mark.parametrize("failure", ["worker error", "start failure"])
def test_a_failed_run_keeps_the_earlier_prediction(setup, qtbot, monkeypatch, failure):
    import torch

    from napari_unet._widgets import _worker

    viewer, widget = setup
    earlier = _first_result(viewer, widget, qtbot)
    order = [layer.name for layer in viewer.layers]
    if failure == "worker error":
        session_for(viewer).model.head.weight.data = torch.zeros(2, 1, 1, 1)
    else:

        def no_thread(*args, **kwargs):
            raise RuntimeError("no thread left")

        monkeypatch.setattr(_worker, "create_worker", no_thread)
    widget._predict.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    _assert_kept(viewer, earlier)
    assert [layer.name for layer in viewer.layers] == order  # the streamed layers are gone
    assert widget._predict.enabled and session_for(viewer).busy == ""


def test_cell_size_of_the_current_model_is_shown(setup, qtbot, tmp_path, tiny):
    """A model that records the cells it was fine-tuned on (``metadata["cells"]``) says how
    large they are, also after a round trip through its file; a model that does not, nothing."""
    from napari_unet import UNet, save_model, to_instances

    viewer, widget = setup
    assert widget._cells.value == "" and widget._cells.native.isHidden()
    widget._with_probability.value = True
    cells = {"median_area": 452.0, "median_diameter": 24.2, "count": 53}
    path = save_model(tiny, tmp_path / "sized.safetensors", {"cells": cells})
    widget._model_choice.value = FILE
    widget._model_file.value = path
    widget._make_current.value = True
    run(widget, qtbot)  # makes the file's model current
    assert session_for(viewer).model.metadata["cells"] == cells
    assert widget._cells.value == "cells ~24 px across (from 53 annotated cells)"
    assert not widget._cells.native.isHidden()
    assert widget._auto_size.value and not widget._min_size.enabled  # 5 % of 452 px: 23
    prob = viewer.layers["cells probability"].data
    expected = to_instances(prob, 0.5, 23, min_core=23, expand=1)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)

    widget._auto_size.value = False  # the user's own size
    assert widget._min_size.enabled
    widget._min_size.value = 0
    run(widget, qtbot)
    expected = to_instances(viewer.layers["cells probability"].data, 0.5, 0, min_core=23)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)

    session_for(viewer).set_model(UNet(base_channels=4, depth=3), "plain")
    assert widget._cells.value == "" and widget._cells.native.isHidden()


def test_min_size_from_the_model_shows_the_value_in_use(make_napari_viewer, cells, tiny):
    viewer = make_napari_viewer()
    viewer.add_image(cells, name="cells")
    tiny.metadata = {"cells": {"median_area": 9400.0, "median_diameter": 109.4, "count": 13}}
    session_for(viewer).set_model(tiny, "tuned on cells ~109 px across")
    widget = PredictWidget(viewer)
    assert widget._auto_size.value and widget._min_size.value == 470  # 5 % of 9,400 px, not 16
    tiny.metadata = {**tiny.metadata, "diameter": 40.0}
    session_for(viewer).set_model(tiny, "trained at 40 px, tuned at 109")
    widget._diameter.value.value = 20  # typed: sizes follow the typed diameter
    assert widget._min_size.value == round(0.05 * np.pi * 20**2 / 4)


def test_closing_the_image_while_it_is_predicted_adds_nothing_and_says_so(setup, qtbot, notes):
    """Issue 25 item 8a: the result of an image closed during its prediction was added."""
    viewer, widget = setup
    widget._tile.value = 64
    worker = widget.run()
    closed = []

    def close_the_image(result):
        if not closed and not isinstance(result, Sized):
            closed.append(True)
            viewer.layers.remove("cells")

    worker.yielded.connect(close_the_image)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert closed and len(viewer.layers) == 0  # no '(running)', '(partial)' or result layer
    assert widget.status == "dropped: 'cells' was closed during the prediction"
    assert [str(n.message) for n in notes] == [
        "Predict: 'cells' was closed while it was predicted; no result is added"
    ]
    assert not session_for(viewer).busy and widget._predict.enabled


def test_results_say_which_model_made_them(setup, qtbot):
    """Issue 25 item 8c: the model's label in the result layers' metadata and the status."""
    from napari_unet._widgets._layers import MODEL

    viewer, widget = setup
    widget._with_probability.value = True
    run(widget, qtbot)
    labels, probability = viewer.layers["cells prediction"], viewer.layers["cells probability"]
    assert labels.metadata[MODEL] == probability.metadata[MODEL] == "test"
    assert widget.status.startswith("done") and widget.status.endswith("(model: test)")
    import torch

    from napari_unet import UNet

    torch.manual_seed(1)
    session_for(viewer).set_model(UNet(base_channels=4, depth=3), "another")
    run(widget, qtbot)  # the result replaces the earlier one in place: its model too
    assert viewer.layers["cells prediction"] is labels and labels.metadata[MODEL] == "another"
    assert probability.metadata[MODEL] == "another"
    assert widget.status.endswith("(model: another)")


def test_removing_the_running_layer_stops_the_run(setup, qtbot, notes):
    """The tiles of a run whose layer the user removed are neither written to a layer
    outside the viewer nor refreshed there (issue 25 item 9)."""
    viewer, widget = setup
    widget._tile.value = 64
    worker = widget.run()

    def remove_it(result):
        if "cells prediction (running)" in viewer.layers:
            viewer.layers.remove("cells prediction (running)")

    worker.yielded.connect(remove_it)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert "its layers were removed" in widget.status
