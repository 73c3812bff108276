"""Predict on large images: lazy layers region by region (visible first), and a dask cluster."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from napari_unet._widgets import _cluster, _lazy, _runs
from napari_unet._widgets._session import session_for
from napari_unet._widgets.predict import LOCAL_CLUSTER, SCHEDULER, PredictWidget

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

TIMEOUT = 60_000
STEP = 64  # block side (the dock's tile size)


@pytest.fixture
def small_budget(monkeypatch):
    """Lazy path for small arrays: a 512 x 512 plane is 'large', sampled on 4 of its 64 blocks."""
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 1000)
    monkeypatch.setattr(_runs, "SAMPLE", (STEP, 4 * STEP * STEP))
    monkeypatch.setattr(_lazy, "CELL_HALO", 16)


@pytest.fixture(scope="module")
def pattern():
    """(512, 512) uint16: one random 64 x 64 block repeated, so that every block, and so any
    sample of blocks, has the whole image's percentiles (the same normalisation as predict)."""
    block = np.random.default_rng(0).integers(0, 4000, (STEP, STEP)).astype(np.uint16)
    return np.tile(block, (8, 8))


def counted(image, reads):
    """``image`` as a dask array that notes each chunk read."""

    def note(chunk, block_info=None):
        reads.add(tuple(block_info[0]["chunk-location"]))
        return chunk

    return da.from_array(image, chunks=STEP).map_blocks(note, dtype=image.dtype)


def dock(viewer, model):
    session_for(viewer).set_model(model, "test")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._block.value = STEP
    return widget


def look_at(viewer, center, width):
    """Centre the camera on ``center`` ``(y, x)`` with about ``width`` px in view."""
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = center
    camera.zoom = max(viewer.canvas.size) / width


def click(widget, button, qtbot):
    """Click ``button`` and wait for the run it starts to end (no signal to miss)."""
    button.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def test_lazy_layer_visible_region_first_then_the_rest(
    make_napari_viewer, qtbot, small_budget, tiny_unet, pattern
):
    from napari_unet import predict

    reads = set()
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        counted(pattern, reads), name="big", visible=False
    )  # napari reads none
    widget = dock(viewer, tiny_unet)
    look_at(viewer, (100, 300), 40)  # blocks (1, 4), maybe their neighbours
    click(widget, widget._predict, qtbot)
    out = viewer.layers["big probability (large)"]
    prob = out.data[0][:]
    whole = predict(tiny_unet, pattern)
    stream = widget._lazy.jobs[id(layer)].stream
    starts = [(stream.cores[i][0].start, stream.cores[i][1].start) for i in stream.order]
    assert starts[0] == (64, 256)  # the block in view first, then what its labels need:
    near = {(y, x) for y in range(0, 256, 64) for x in range(128, 448, 64)}  # two rings
    assert set(starts) == near and len(starts) == 20
    for i in stream.order:
        assert np.abs(prob[stream.cores[i]] - whole[stream.cores[i]]).max() <= 1e-5
    assert not prob[256:].any() and not prob[:, :128].any()  # the rest: not predicted
    final = {(stream.cores[i][0].start, stream.cores[i][1].start) for i in stream.painted}
    assert (64, 256) in final and final < near  # the labels in view are final
    assert len(reads) < 64  # of 64 chunks: the sample's, and the blocks' with their margins
    assert widget._rest.enabled and not widget.status.startswith("failed")
    click(widget, widget._rest, qtbot)
    prob = out.data[0][:]
    assert np.abs(prob - whole).max() <= 1e-5  # the whole plane, no block twice
    labels = viewer.layers["big prediction (large)"].data[0][:]
    assert stream.left == 0 and not widget._rest.enabled and len(stream.order) == 64
    assert set(np.unique(labels)) - {0} == set(range(1, stream.cells + 1))  # ids unique
    coarse = out.data[1][:]
    np.testing.assert_array_equal(coarse, prob[::2, ::2])  # the pyramid follows
    roots = widget._lazy.jobs[id(layer)].output.roots
    assert "image-label" not in roots["probability"].attrs  # an image, not labels
    assert "image-label" in roots["prediction"].attrs


def test_lazy_results_outlive_a_new_run_and_their_image(
    make_napari_viewer, qtbot, small_budget, tiny_unet, pattern
):
    viewer = make_napari_viewer()
    image = viewer.add_image(da.from_array(pattern, chunks=STEP), name="big")
    widget = dock(viewer, tiny_unet)
    look_at(viewer, (32, 32), 40)
    click(widget, widget._predict, qtbot)
    old = widget._lazy.jobs[id(image)].output
    session_for(viewer).set_model(copy.deepcopy(tiny_unet), "the same weights")
    click(widget, widget._predict, qtbot)
    assert widget._lazy.jobs[id(image)].output is old  # same weights: the same job goes on
    widget._threshold.value = 0.3  # another job, into new layers
    widget._predict.native.click()
    widget._on_image_changed()  # e.g. the chosen image changed during the run
    assert not widget._rest.enabled  # never during a run
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    new = widget._lazy.jobs[id(image)].output
    assert new is not old
    old_layers = [
        viewer.layers["big probability (large)"],
        viewer.layers["big prediction (large)"],
    ]
    viewer.layers.remove(image)
    assert old.folder.is_dir() and not old.closed  # its layers still read from it
    assert old_layers[1].data[0][:].any()
    viewer.layers.remove(old_layers[0])
    assert old.folder.is_dir()
    viewer.layers.remove(old_layers[1])
    assert not old.folder.exists() and old.closed  # gone with the last of its layers


def test_results_removed_during_a_run_stop_it(
    make_napari_viewer, qtbot, small_budget, tiny_unet, pattern, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(da.from_array(pattern, chunks=STEP), name="big")
    widget = dock(viewer, tiny_unet)
    look_at(viewer, (32, 32), 40)
    click(widget, widget._predict, qtbot)
    output = widget._lazy.jobs[id(image)].output
    worker = widget.run(rest=True)

    def remove(_event):
        for layer in (output.probability, output.labels):
            if layer in viewer.layers:
                viewer.layers.remove(layer)

    worker.yielded.connect(remove)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert output.closed and not output.folder.exists()  # not made again by a late write
    assert widget.status.startswith("cancelled")
    assert any("layers were removed" in n.message for n in notes)


def test_lazy_results_need_room_in_their_folder(
    make_napari_viewer, small_budget, tiny_unet, pattern, notes, monkeypatch, tmp_path
):
    monkeypatch.setattr(_lazy, "OUTPUT_BYTES", 1e30)
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(pattern, chunks=STEP), name="big")
    widget = dock(viewer, tiny_unet)
    widget._out_folder.value = str(tmp_path)
    assert widget.run() is None and [layer.name for layer in viewer.layers] == ["big"]
    assert any(f"GB in {tmp_path}" in n.message for n in notes)


def test_what_goes_lazy_is_decided_on_bytes_memory_maps_too(tmp_path, monkeypatch):
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 10_000)
    big = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.uint16, (40, 40))
    assert _lazy.goes_lazy(big, (40, 40), (40, 40))  # 40 * 40 * (2 + 8) bytes > 10,000
    assert not _lazy.goes_lazy(np.asarray(big).copy(), (40, 40), (40, 40))  # in memory
    stack = da.zeros((50, 20, 20), dtype=np.uint8)
    assert _lazy.goes_lazy(stack, (50, 20, 20), (50, 20, 20))  # all planes: too much
    assert not _lazy.goes_lazy(stack, (50, 20, 20), (20, 20))  # one plane fits


def test_a_layer_showing_other_than_its_file_is_not_sent(tmp_path):
    import tifffile
    from napari.layers import Image
    from napari.layers._source import layer_source

    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    with layer_source(path=str(path)):
        layer = Image(np.zeros((32, 64), np.uint16), name="crop")
    with pytest.raises(ValueError, match=r"shows data of shape \(32, 64\).*\(64, 64\)"):
        _cluster.layer_file(layer)


def test_multiscale_layer_is_predicted_at_full_resolution(
    make_napari_viewer, qtbot, small_budget, tiny_unet, pattern
):
    from napari_unet import predict

    image = pattern[:256, :256]
    viewer = make_napari_viewer()
    level0 = da.from_array(image, chunks=STEP)
    viewer.add_image([level0, level0[::2, ::2], level0[::4, ::4]], multiscale=True, name="ms")
    widget = dock(viewer, tiny_unet)
    look_at(viewer, (128, 128), 256)
    click(widget, widget._predict, qtbot)
    out = viewer.layers["ms probability (large)"]
    assert out.multiscale and out.data[0].shape == (256, 256)
    prob = out.data[0][:]
    assert np.abs(prob - predict(tiny_unet, image)).max() <= 1e-5  # all of it was in view


def test_lazy_layer_in_3d_view_or_out_of_view_is_refused(
    make_napari_viewer, small_budget, tiny_unet, pattern, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(pattern, chunks=STEP), name="big")
    widget = dock(viewer, tiny_unet)
    viewer.dims.ndisplay = 3
    widget._predict.native.click()
    viewer.dims.ndisplay = 2
    look_at(viewer, (-5000, -5000), 40)
    assert widget.run() is None and [layer.name for layer in viewer.layers] == ["big"]
    messages = [n.message for n in notes]
    assert any("switch to 2D view" in m for m in messages)
    assert any("pan to the image" in m for m in messages)


def test_numpy_layer_cannot_go_to_a_cluster(make_napari_viewer, tiny_unet, pattern, notes):
    viewer = make_napari_viewer()
    viewer.add_image(pattern, name="mem")
    widget = dock(viewer, tiny_unet)
    widget._run_on.value = LOCAL_CLUSTER
    assert widget.run() is None and [layer.name for layer in viewer.layers] == ["mem"]
    assert any("has no file napari-unet can find" in n.message for n in notes)
    assert not session_for(viewer).busy and widget._predict.enabled


@pytest.fixture(scope="module")
def ome_zarr(tmp_path_factory, whole_sample):
    """A (256, 384) crop of the sample as an OME-Zarr image on disk."""
    from napari_unet.core.formats.zarrio import create_multiscale

    path = tmp_path_factory.mktemp("cluster") / "cells.ome.zarr"
    image = whole_sample[0][:256, :384]
    root = create_multiscale(path, image.shape, (128, 128), np.uint16)
    root["0"][:] = image
    return path


@pytest.fixture(scope="module")
def scheduler():
    """A running LocalCluster of one worker, reached by its address ('dask scheduler')."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_cluster_route_equals_the_cli_and_cancel_stops_it(
    make_napari_viewer, qtbot, ome_zarr, tmp_path, scheduler
):
    import multiprocessing

    from napari_unet import load_bundled
    from napari_unet.cli import main
    from napari_unet.core.formats.zarrio import read_record

    model = load_bundled()
    viewer = make_napari_viewer()
    layer = viewer.add_image(zarr.open_array(str(ome_zarr), path="0", mode="r"), name="cells")
    widget = dock(viewer, model)
    widget._block.value = 96  # not the default block: the same normalisation sample anyway
    widget._run_on.value = SCHEDULER
    widget._scheduler.value = scheduler
    widget._out_folder.value = str(tmp_path)
    click(widget, widget._predict, qtbot)
    assert widget.status.startswith("done"), widget.status
    shown = viewer.layers["cells prediction (cluster)"]
    target = tmp_path / "cells_labels.ome.zarr"
    assert str(shown.data[0].store.root) == str(target)
    assert shown.scale.tolist() == layer.scale.tolist()
    out = tmp_path / "cli"
    argv = ["predict", str(ome_zarr), "--out", str(out), "--scheduler", scheduler]
    assert main([*argv, "--block", "96"]) == 0
    expected = out / "cells_labels.ome.zarr"
    np.testing.assert_array_equal(
        zarr.open_array(str(target), path="0", mode="r")[:],
        zarr.open_array(str(expected), path="0", mode="r")[:],
    )
    assert read_record(target)["normalisation"] == read_record(expected)["normalisation"]
    from distributed import Client

    from ..test_distributed import model_plugins

    with Client(scheduler, set_as_default=False) as probe:
        assert not model_plugins(probe)  # neither the dock nor the CLI left its model there
    # cancel a local cluster's run at the first progress of the job itself
    children = set(multiprocessing.active_children())
    widget._run_on.value = LOCAL_CLUSTER
    widget._workers.value = 1
    widget._out_folder.value = ""
    widget._block.value = 32  # many small blocks
    worker = widget.run()
    # (tasks done, tasks); the job also says the diameter it predicts at (a Sized)
    worker.yielded.connect(
        lambda p: isinstance(p, tuple) and p[1] and widget._cancel.native.click()
    )
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.status.startswith("cancelled")
    assert [la.name for la in viewer.layers] == ["cells", "cells prediction (cluster)"]
    assert set(multiprocessing.active_children()) <= children  # its LocalCluster is closed


def test_the_cluster_route_sizes_cells_by_the_diameter_in_use_as_the_cli(
    make_napari_viewer, qtbot, ome_zarr, tmp_path, scheduler, monkeypatch
):
    from napari_unet import load_bundled
    from napari_unet.cli import main
    from napari_unet.core.formats.zarrio import read_record
    from napari_unet.core.network.store import save_model
    from napari_unet.core.prediction import predict as predict_module
    from napari_unet.core.prediction.instances import size_defaults
    from napari_unet.core.prediction.scale import sized_cells

    from .test_predict_diameter import estimated_at

    model = load_bundled()
    model.metadata = {**model.metadata, "diameter": 40.0}  # cells of 30 px: enlarged x 1.33
    viewer = make_napari_viewer()
    viewer.add_image(zarr.open_array(str(ome_zarr), path="0", mode="r"), name="cells")
    widget = dock(viewer, model)
    widget._block.value = 128
    widget._run_on.value = SCHEDULER
    widget._scheduler.value = scheduler
    widget._out_folder.value = str(tmp_path)
    widget._diameter.value.value = 30
    click(widget, widget._predict, qtbot)
    assert widget.status.startswith("done"), widget.status
    assert "cells 30 px (typed)" in widget.status, widget.status  # as the other routes say it
    assert widget._diameter.said.value == "typed: 30 px"
    typed = tmp_path / "cells_labels.ome.zarr"
    record = read_record(typed)
    size = size_defaults(sized_cells(30.0))[0]  # 5 % of a 30 px disc, not the model's sizes
    assert record["instances"]["min_size"] == record["instances"]["min_core"] == size
    assert (record["diameter"], record["diameter_source"]) == (30.0, "given")
    file = save_model(model, tmp_path / "sized.safetensors", model.metadata)
    out = tmp_path / "cli"
    argv = ["predict", str(ome_zarr), "--out", str(out), "--scheduler", scheduler]
    assert main([*argv, "--block", "128", "--model", str(file), "--diameter", "30"]) == 0
    expected = zarr.open_array(str(out / "cells_labels.ome.zarr"), path="0", mode="r")[:]
    np.testing.assert_array_equal(zarr.open_array(str(typed), path="0", mode="r")[:], expected)
    # automatic: estimated in the dock's worker before the job is sent, and said alike
    seen = []
    monkeypatch.setattr(predict_module, "estimate_diameter", estimated_at(30.0, seen))
    widget._diameter.value.value = 0
    click(widget, widget._predict, qtbot)
    assert "cells 30 px (estimated)" in widget.status, widget.status
    assert widget._diameter.said.value == "estimated: 30 px"
    estimated = tmp_path / "cells_labels-2.ome.zarr"
    np.testing.assert_array_equal(zarr.open_array(str(estimated), path="0", mode="r")[:], expected)
    assert read_record(estimated)["diameter_source"] == "estimated" and seen == [(256, 384)]


def test_lazy_outputs_of_a_plane_show_on_that_plane_only(
    make_napari_viewer, qtbot, small_budget, tiny_unet, pattern
):
    from napari_unet import predict

    plane = pattern[:128, :128]
    stack = da.stack([da.from_array(plane, chunks=STEP)] * 3)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack", scale=(2, 1, 1), translate=(10, 0, 0))
    viewer.dims.set_point(0, 12)  # plane 1
    widget = dock(viewer, tiny_unet)
    look_at(viewer, (64, 64), 128)
    click(widget, widget._predict, qtbot)
    for kind in ("probability", "prediction"):
        out = viewer.layers[f"stack {kind} (large)"]
        assert out.ndim == 3 and out.data[0].shape == (1, 128, 128)
        assert out.data_to_world((0, 5, 7)) == pytest.approx((12, 5, 7))  # at plane 1
        at = []
        for z in (10, 12, 14):  # planes 0, 1, 2 in view
            viewer.dims.set_point(0, z)
            value = out.get_value((z, 60, 70), world=True)
            at.append(value[1] if out.multiscale else value)  # (level, value)
        assert at[0] is None and at[1] is not None and at[2] is None
    prob = viewer.layers["stack probability (large)"].data[0][0]
    assert np.abs(prob - predict(tiny_unet, plane)).max() <= 1e-5
