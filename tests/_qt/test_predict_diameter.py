"""Predict's cell diameter: typed or automatic, tiles on the resampled grid over the image, the
result on the image's grid, the lazy route resampled block by block, the measuring lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_unet import UNet, predict, to_instances
from napari_unet._widgets import _lazy
from napari_unet._widgets._diameter import AS_IT_COMES, Sized
from napari_unet._widgets._session import session_for
from napari_unet._widgets.predict import PredictWidget
from napari_unet.core.prediction.instances import size_defaults
from napari_unet.core.prediction.scale import sized_cells

TIMEOUT = 60_000  # ms; the machine is shared, timings are noisy
SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)  # um per px, um


@pytest.fixture(scope="module")
def discs():
    """(200, 240) uint16: bright discs 40 px across on a grid."""
    image = np.full((200, 240), 20, np.uint16)
    for y in range(32, 200, 64):
        for x in range(32, 240, 64):
            image[disk((y, x), 20, shape=image.shape)] = 220
    return image


def sized_unet(**metadata) -> UNet:
    """A tiny model that says it was trained at cells 20 px across (and ``metadata``)."""
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3)
    model.metadata = {"diameter": 20.0, **metadata}
    return model


@pytest.fixture
def setup(make_napari_viewer, discs):
    """A viewer with the discs (scaled and shifted), a sized current model and a Predict dock."""
    viewer = make_napari_viewer()
    viewer.add_image(discs, name="discs", scale=SCALE, translate=TRANSLATE)
    session_for(viewer).set_model(sized_unet(), "sized")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._with_probability.value = True
    return viewer, widget


def run(widget, qtbot, on_event=None):
    worker = widget.run()
    assert worker is not None
    if on_event is not None:
        worker.yielded.connect(on_event)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass


def test_typed_diameter_streams_over_the_image_and_ends_on_its_grid(setup, qtbot, discs):
    viewer, widget = setup
    model = session_for(viewer).model
    assert widget._diameter.said.value == "automatic: estimated when you predict"
    widget._diameter.value.value = 40  # the model knows 20 px: predicted at half size
    assert widget._diameter.said.value == "typed: 40 px"
    seen = []

    def check(event):  # runs after the dock applied the event
        layer = viewer.layers["discs prediction (running)"]
        if isinstance(event, Sized):
            assert event.source == "typed" and event.grid.shape == (100, 120)
        seen.append((layer.data.shape, tuple(layer.scale), tuple(layer.translate)))

    run(widget, qtbot, check)
    # pixel j of the half-size grid covers image pixels [2j, 2j + 2): centre 2j + 0.5
    placed = ((100, 120), (1.0, 1.0), (10.25, 20.25))
    assert len(seen) > 1 and all(s == placed for s in seen)
    labels, prob = viewer.layers["discs prediction"], viewer.layers["discs probability"]
    for layer in (labels, prob):
        assert layer.data.shape == discs.shape
        assert tuple(layer.scale) == SCALE and tuple(layer.translate) == TRANSLATE
    expected = predict(model, discs, diameter=40)
    np.testing.assert_allclose(prob.data, expected, atol=1e-5)
    size = size_defaults(sized_cells(40))[0]  # the sizes follow the diameter in use
    np.testing.assert_array_equal(labels.data, to_instances(prob.data, 0.5, size, min_core=size))
    assert widget._diameter.said.value == "typed: 40 px"
    assert widget.status.startswith("done") and widget._diameter.value.enabled


def test_automatic_diameter_is_estimated_in_the_worker(setup, qtbot, discs, monkeypatch):
    from napari_unet.core.prediction import predict as predict_module
    from napari_unet.core.prediction.diameter import DiameterEstimate

    viewer, widget = setup
    model = session_for(viewer).model
    threads = []

    def estimate(model, image, *, device=None, precision="auto"):
        import threading

        threads.append(threading.current_thread() is threading.main_thread())
        assert image.shape == discs.shape
        return DiameterEstimate(diameter=40.0, cells=12, confidence=0.9, tries=())

    monkeypatch.setattr(predict_module, "estimate_diameter", estimate)
    run(widget, qtbot)
    assert threads == [False]  # in the worker, before the tiles
    assert widget._diameter.said.value == "estimated: 40 px"
    prob = viewer.layers["discs probability"].data
    np.testing.assert_allclose(prob, predict(model, discs, diameter=40), atol=1e-5)

    widget._diameter.value.value = 20  # typed: no estimate
    run(widget, qtbot)
    assert threads == [False] and widget._diameter.said.value == "typed: 20 px"
    np.testing.assert_allclose(
        viewer.layers["discs probability"].data, predict(model, discs, diameter=20), atol=1e-5
    )


def test_a_tuned_size_is_used_and_a_model_without_size_turns_the_control_off(setup, qtbot):
    viewer, widget = setup
    cells = {"median_area": 1256.6, "median_diameter": 40.0, "count": 12}
    session_for(viewer).set_model(sized_unet(cells=cells), "tuned")
    assert widget._diameter.said.value == "from the model: 40 px"
    run(widget, qtbot)
    assert viewer.layers["discs prediction"].data.shape == (200, 240)
    assert widget._diameter.said.value == "from the model: 40 px"

    widget._diameter.value.value = 30
    torch.manual_seed(0)
    session_for(viewer).set_model(UNet(base_channels=4, depth=3), "plain")
    assert widget._diameter.said.value == AS_IT_COMES
    assert not widget._diameter.value.enabled and widget._diameter.typed is None
    run(widget, qtbot)  # as it comes, whatever was typed
    assert not widget._diameter.value.enabled  # still off after the run
    assert viewer.layers["discs prediction"].data.shape == (200, 240)


def test_a_typed_diameter_out_of_range_is_refused_before_any_layer(setup, notes):
    viewer, widget = setup
    widget._diameter.value.value = 1000
    assert widget.run() is None
    assert [layer.name for layer in viewer.layers] == ["discs"]
    assert any("too far from the 20 px" in n.message for n in notes)


def test_the_lazy_route_resamples_block_by_block_onto_the_image(
    make_napari_viewer, qtbot, discs, monkeypatch
):
    from napari_unet._widgets import _runs

    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 1000)  # the discs are "large"
    monkeypatch.setattr(_runs, "SAMPLE", (64, 10**8))  # normalised on every block: exact
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        da.from_array(discs, chunks=64), name="big", scale=SCALE, translate=TRANSLATE
    )
    model = sized_unet()
    session_for(viewer).set_model(model, "sized")
    widget = PredictWidget(viewer)
    widget._block.value = 64
    widget._diameter.value.value = 40  # the model knows 20 px: each block at half size
    worker = widget.run(rest=True)
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.status.startswith("done") and "cells 40 px" in widget.status, widget.status
    prob = viewer.layers["big probability (large)"]
    labels = viewer.layers["big prediction (large)"]
    for out in (prob, labels):  # on the image's own grid, over it
        assert out.data[0].shape == discs.shape
        assert tuple(out.scale) == tuple(layer.scale) == SCALE
        assert tuple(out.translate) == tuple(layer.translate) == TRANSLATE
    expected = predict(model, discs, diameter=40)
    np.testing.assert_allclose(prob.data[0][:], expected, atol=1e-5)
    assert not session_for(viewer).busy


def test_measure_sets_the_mean_line_length_in_image_pixels(setup):
    viewer, widget = setup
    widget._diameter.measure()
    ruler = viewer.layers["discs diameter"]
    assert viewer.layers.selection.active is ruler and ruler.mode == "add_line"
    assert tuple(ruler.scale) == SCALE
    ruler.add([np.array([[50, 50], [50, 80]]), np.array([[60, 60], [110, 60]])], shape_type="line")
    widget._diameter.measure()  # again: the lines give the diameter
    assert widget._diameter.value.value == 40  # (30 + 50) / 2 px
    assert widget._diameter.said.value == "typed: 40 px"
    ruler.scale = (1.0, 1.0)  # a ruler px is 2 image px
    widget._diameter.measure()
    assert widget._diameter.value.value == 80
    assert [layer.name for layer in viewer.layers] == ["discs", "discs diameter"]


def test_current_plane_of_a_stack_is_resampled_and_placed_back(make_napari_viewer, qtbot, discs):
    viewer = make_napari_viewer()
    stack = np.stack([discs, discs[::-1], discs[:, ::-1]])
    viewer.add_image(stack, name="stack")
    model = sized_unet()
    session_for(viewer).set_model(model, "sized")
    widget = PredictWidget(viewer)
    widget._with_probability.value = True
    widget._diameter.value.value = 40
    viewer.dims.set_point(0, 1)
    shapes = []
    worker = widget.run()
    running = viewer.layers["stack prediction (running)"]
    worker.yielded.connect(lambda _: shapes.append(running.data.shape))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert set(shapes) == {(3, 100, 120)}
    prob = viewer.layers["stack probability"].data
    assert prob.shape == stack.shape and not prob[0].any() and not prob[2].any()
    np.testing.assert_allclose(prob[1], predict(model, stack[1], diameter=40), atol=1e-5)
    assert tuple(viewer.layers["stack prediction"].scale) == (1.0, 1.0, 1.0)


def estimated_at(diameter: float, seen: list):
    """A stand-in for the scale search (tested in test_scale) that finds ``diameter``."""
    from napari_unet.core.prediction.diameter import DiameterEstimate

    def estimate(model, image, *, device=None, precision="auto"):
        seen.append(image.shape)
        return DiameterEstimate(diameter=diameter, cells=9, confidence=0.9, tries=())

    return estimate


@pytest.fixture(scope="module")
def bundled_at_40():
    """The bundled model, saying it works at cells 40 px across (the sample's cells at 30 px
    are enlarged x 1.33)."""
    from napari_unet import load_bundled

    model = load_bundled()
    model.metadata = {**model.metadata, "diameter": 40.0}
    return model


def test_the_lazy_route_sizes_cells_by_the_diameter_in_use_and_says_it(
    make_napari_viewer, qtbot, whole_sample, bundled_at_40, monkeypatch
):
    from napari.layers import Labels

    from napari_unet._widgets import _runs
    from napari_unet.core.metrics import match_counts
    from napari_unet.core.prediction import predict as predict_module

    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 1000)  # the crop is "large"
    monkeypatch.setattr(_runs, "SAMPLE", (64, 10**8))  # normalised on every block: exact
    seen = []
    monkeypatch.setattr(predict_module, "estimate_diameter", estimated_at(30.0, seen))
    model, image = bundled_at_40, whole_sample[0][:256, :256]
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(image, chunks=128), name="cells")
    session_for(viewer).set_model(model, "sized")
    widget = PredictWidget(viewer)
    widget._block.value = 128
    reference = to_instances(predict(model, image, diameter=30.0))  # sized by 30 px cells
    for typed, source in ((0, "estimated"), (30, "typed")):
        widget._diameter.value.value = typed
        assert widget.run(rest=True) is not None
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
        assert widget.status.startswith("done"), widget.status
        assert f"cells 30 px ({source})" in widget.status, widget.status  # as in memory
        assert widget._diameter.said.value == f"{source}: 30 px"  # the control's line too
        labels = [la for la in viewer.layers if isinstance(la, Labels)][-1].data[0][:]
        matched, n_ref, n_out = match_counts(reference, labels, 0.99)
        assert n_ref > 10 and matched == n_ref == n_out, (matched, n_ref, n_out)
    assert seen == [(256, 256)]  # estimated once, on the plane's central region


def test_the_in_memory_route_says_the_diameter_in_use_as_the_others(
    make_napari_viewer, qtbot, whole_sample, bundled_at_40, monkeypatch
):
    from napari_unet.core.prediction import predict as predict_module

    model, image = bundled_at_40, whole_sample[0][:256, :256]
    monkeypatch.setattr(predict_module, "estimate_diameter", estimated_at(30.0, []))
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    session_for(viewer).set_model(model, "sized")
    widget = PredictWidget(viewer)
    run(widget, qtbot)
    assert widget._diameter.said.value == "estimated: 30 px"
    assert widget.status.startswith("done"), widget.status
    assert ", cells 30 px (estimated)" in widget.status, widget.status  # as the other routes
    expected = to_instances(predict(model, image, diameter=30.0))
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)
