"""Export widget in a real viewer: label files read back equal; the model round trip."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import load_model, read_image
from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets import _ui
from napari_unet._widgets._session import session_for
from napari_unet._widgets.export import ExportWidget, safe_file_name


@pytest.fixture
def messages(monkeypatch):
    found = {"error": [], "info": []}
    monkeypatch.setattr(_ui, "show_error", found["error"].append)
    monkeypatch.setattr(_ui, "show_info", found["info"].append)
    return found


@pytest.fixture
def labels():
    return phase_contrast_cells()[1][0]


def _export(widget, layers, fmt, destination):
    widget._layers.value = layers
    widget._format.value = fmt
    widget._destination.value = destination
    widget._export.native.click()


@pytest.mark.parametrize(("fmt", "ext"), [("TIFF", "tif"), ("PNG", "png"), ("NPY", "npy")])
def test_export_one_layer_reads_back(make_napari_viewer, labels, messages, tmp_path, fmt, ext):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="cells annotation")
    widget = ExportWidget(viewer)
    _export(widget, [layer], fmt, tmp_path / "mask")  # the suffix follows the format
    assert messages["error"] == []
    np.testing.assert_array_equal(read_image(tmp_path / f"mask.{ext}"), labels)
    assert str(tmp_path / f"mask.{ext}") in messages["info"][-1]


def test_export_several_layers_to_a_folder(make_napari_viewer, labels, messages, tmp_path):
    viewer = make_napari_viewer()
    first = viewer.add_labels(labels, name="cells annotation")
    big = np.zeros((100, 80), np.uint32)
    big[10:20, 10:20], big[30:40, 30:40] = 70_000, 3  # an id beyond uint16
    second = viewer.add_labels(big, name="crop: a/b")
    widget = ExportWidget(viewer)
    _export(widget, [first, second], "TIFF", tmp_path)
    assert messages["error"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells annotation.tif", "crop_ a_b.tif"]
    back = read_image(tmp_path / "crop_ a_b.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, second.data)


def test_png_of_a_stack_is_refused_and_nothing_written(
    make_napari_viewer, labels, messages, tmp_path
):
    viewer = make_napari_viewer()
    plane = viewer.add_labels(labels, name="plane")
    stack = viewer.add_labels(np.stack([labels[:64, :64]] * 3), name="stack")
    widget = ExportWidget(viewer)
    _export(widget, [plane, stack], "PNG", tmp_path)
    assert len(messages["error"]) == 1
    assert "'stack'" in messages["error"][0] and "TIFF" in messages["error"][0]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(make_napari_viewer, labels, messages, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="cells")
    (tmp_path / "file.txt").write_text("not a folder")
    widget = ExportWidget(viewer)
    _export(widget, [layer], "TIFF", tmp_path / "file.txt" / "mask.tif")
    assert len(messages["error"]) == 1 and "file.txt" in messages["error"][0]
    assert messages["info"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_save_model_round_trip(make_napari_viewer, tiny_unet, messages, tmp_path):
    import torch

    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    session = session_for(viewer)
    tiny_unet.metadata = {"steps": 3}
    session.set_model(tiny_unet, "fine-tuned in a test")
    widget._model_path.value = tmp_path / "tuned"

    widget._save_model.native.click()
    model = load_model(tmp_path / "tuned.safetensors")
    assert model.metadata == {"steps": 3, "source": "fine-tuned in a test"}
    for name, tensor in tiny_unet.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
    assert "tuned.safetensors" in messages["info"][-1]


def test_save_without_model_is_refused(make_napari_viewer, messages, tmp_path, monkeypatch):
    from napari_unet.core.network import store

    monkeypatch.setattr(store, "bundled_models", list)  # no bundled model ships
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    widget._model_path.value = tmp_path / "model.safetensors"
    widget._save_model.native.click()
    assert len(messages["error"]) == 1 and "Export: no model:" in messages["error"][0]
    assert list(tmp_path.iterdir()) == []


def test_safe_file_name():
    assert safe_file_name('a/b\\c:d*e?"<>|') == "a_b_c_d_e_"
    assert safe_file_name("..") == "labels"
    assert safe_file_name("cells annotation (2)") == "cells annotation (2)"


def test_rois_measurements_and_pixel_size(make_napari_viewer, messages, tmp_path):
    import csv

    import roifile

    from napari_unet.core.formats.io import read_pixel_size

    (image, *_), (labels, *_) = phase_contrast_cells()
    viewer = make_napari_viewer()
    calibrated = {"scale": (0.5, 0.5), "units": ("um", "um")}
    cells = viewer.add_image(image, name="cells", **calibrated)
    layer = viewer.add_labels(labels, name="cells annotation", **calibrated)
    widget = ExportWidget(viewer)
    assert widget._intensities.native.isHidden()  # for measurements only
    widget._format.value = "measurements (CSV)"
    assert not widget._intensities.native.isHidden()
    widget._intensities.value = cells
    _export(widget, [layer], "measurements (CSV)", tmp_path / "cells")
    _export(widget, [layer], "ImageJ ROIs (zip)", tmp_path / "cells")
    _export(widget, [layer], "TIFF", tmp_path / "cells")
    assert messages["error"] == []
    ids = np.unique(labels[labels > 0])
    with open(tmp_path / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ids) and float(rows[0]["mean_intensity"]) > 0
    assert float(rows[0]["area_um2"]) == int(rows[0]["area_px"]) * 0.25
    assert len(roifile.roiread(tmp_path / "cells.zip")) == len(ids)
    assert read_pixel_size(tmp_path / "cells.tif") == pytest.approx((0.5, 0.5))
    assert layer.features["index"].tolist() == ids.tolist()  # napari shows them on hover
    inside = labels.shape[0] // 2, np.nonzero(labels[labels.shape[0] // 2])[0][0]
    status = layer.get_status(inside)["value"]
    assert status.startswith(f"{labels[inside]}; id: {labels[inside]},") and "area_um2" in status


def test_measurements_refuse_an_image_of_another_shape(
    make_napari_viewer, labels, messages, tmp_path
):
    viewer = make_napari_viewer()
    small = viewer.add_image(np.ones((10, 10)), name="small")
    layer = viewer.add_labels(labels, name="cells annotation")
    widget = ExportWidget(viewer)
    widget._format.value = "measurements (CSV)"
    widget._intensities.value = small
    _export(widget, [layer], "measurements (CSV)", tmp_path / "cells")
    assert "nothing exported: cannot measure layer 'cells annotation'" in messages["error"][-1]
    assert list(tmp_path.iterdir()) == [] and layer.features.empty


def _measure(widget, layer, destination):
    _export(widget, [layer], "measurements (CSV)", destination)


def test_measurements_keep_the_users_features(make_napari_viewer, messages, tmp_path):
    labels = np.zeros((40, 40), np.uint16)
    labels[2:10, 2:10], labels[20:30, 20:30], labels[12:16, 30:36] = 5, 7, 9
    viewer = make_napari_viewer()
    mine = {"index": [7, 5, 3], "class": ["b", "a", "x"], "area_px": [-1, -2, -3]}
    layer = viewer.add_labels(labels, name="typed cells", features=mine)
    widget = ExportWidget(viewer)
    for _ in range(2):  # a second export replaces the first one's columns, keeps the user's
        _measure(widget, layer, tmp_path / "cells")
        assert messages["error"] == []
        assert "'typed cells' already had features" in messages["info"][-2]
        assert "area_px kept their values" in messages["info"][-2]
        features = layer.features
        assert features["index"].tolist() == [7, 5, 3, 9]  # the user's rows, then a new cell's
        assert features["class"].tolist()[:3] == ["b", "a", "x"]
        assert features["area_px"].tolist()[:3] == [-1, -2, -3]
        assert features["solidity"].tolist()[:2] == [1.0, 1.0] and features["id"][3] == 9
        assert np.isnan(features["solidity"][2])  # id 3: no such cell
        assert list(features.columns).count("solidity") == 1
    status = layer.get_status((25, 25))["value"]
    assert "class: b" in status and "solidity" in status
    assert (tmp_path / "cells.csv").read_text().splitlines()[0].startswith("id,plane,area_px")


def test_measurements_in_features_mapped_by_row(make_napari_viewer, messages, tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 3
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="cells", features={"note": ["bg", "one", "two"]})
    _measure(ExportWidget(viewer), layer, tmp_path / "cells")
    features = layer.features  # no 'index' column: row i is id i, then the added rows
    assert features["index"].tolist() == [0, 1, 2, 3]
    assert features["note"].tolist()[:3] == ["bg", "one", "two"]
    assert features["area_px"].tolist()[1] == 16 and features["area_px"].tolist()[3] == 25
    assert np.isnan(features["area_px"][0]) and np.isnan(features["area_px"][2])


def test_measurements_replace_the_ones_set_earlier(make_napari_viewer, messages, tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 3
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="cells")
    widget = ExportWidget(viewer)
    _measure(widget, layer, tmp_path / "first")
    labels[2:6, 2:6] = 0
    layer.data = labels
    _measure(widget, layer, tmp_path / "second")
    assert layer.features["index"].tolist() == [3]  # the first export's rows are gone
    assert len(messages["info"]) == 2 and "already had" not in " ".join(messages["info"])


def test_bioimageio_package_of_the_current_model(
    make_napari_viewer, tiny_unet, messages, qtbot, tmp_path
):
    pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed")
    import torch

    from napari_unet.core.network.store import load_bioimageio

    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    session_for(viewer).set_model(tiny_unet, "fine-tuned in a test")
    widget._model_format.value = "bioimage.io model package (zip)"
    widget._model_path.value = tmp_path / "tuned.safetensors"  # another format's suffix
    widget._save_model.native.click()
    assert "nothing saved: the file name tuned.safetensors ends in" in messages["error"][-1]
    widget._model_path.value = tmp_path / "missing" / "tuned"
    widget._save_model.native.click()
    assert "nothing saved: cannot write" in messages["error"][-1] and widget._task is None

    widget._model_path.value = tmp_path / "tuned"  # the suffix follows the format
    widget._save_model.native.click()
    assert not widget._save_model.enabled and session_for(viewer).busy  # until the run ends
    qtbot.waitUntil(lambda: widget._task is None, timeout=60_000)
    assert widget._save_model.enabled and not session_for(viewer).busy
    assert len(messages["error"]) == 2 and "model test passed" in messages["info"][-1]
    assert [p.name for p in tmp_path.iterdir()] == ["tuned.zip"]
    back = load_bioimageio(tmp_path / "tuned.zip")
    assert back.metadata["source"] == "bioimage.io package tuned.zip"
    for a, b in zip(tiny_unet.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
