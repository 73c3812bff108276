"""What the five docks share: narrow layouts, one handling of a damaged bundled model, the
same defaults, and no dock importing another."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet._widgets.export import ExportWidget
from napari_unet._widgets.finetune import FinetuneWidget
from napari_unet._widgets.predict import PredictWidget
from napari_unet._widgets.weightmap import WeightMapWidget

DOCKS = (AnnotateWidget, WeightMapWidget, FinetuneWidget, PredictWidget, ExportWidget)
WIDGETS = Path(__file__).resolve().parents[2] / "src" / "napari_unet" / "_widgets"


@pytest.fixture
def sample_viewer(make_napari_viewer):
    """A viewer with the sample image and its annotation."""
    (image, image_kw, _), (labels, labels_kw, _) = phase_contrast_cells()
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kw)
    viewer.add_labels(labels, **labels_kw)
    return viewer


def test_docks_stay_narrow_with_long_names_and_messages(make_napari_viewer):
    """A 64-character layer name and a long status must not widen a dock (the canvas shrank
    to 0 px with such a name)."""
    viewer = make_napari_viewer()
    name = "DSB2018_" + "0123456789abcdef" * 3 + "fedcba98"
    assert len(name) == 64
    viewer.add_image(np.zeros((64, 64), np.uint16), name=name)
    viewer.add_labels(np.zeros((64, 64), np.uint16), name=f"{name} annotation")
    for dock in DOCKS:
        widget = dock(viewer)
        if hasattr(widget, "_status"):
            widget._status.value = "a long message that says a lot " * 8
        width = widget.native.minimumSizeHint().width()
        assert width < 350, f"{dock.__name__} needs {width} px"


def test_damaged_bundled_model_is_one_clear_message_per_dock(
    sample_viewer, notes, monkeypatch, tmp_path
):
    from napari_unet.core.network import store

    def damaged(*args, **kwargs):
        raise ValueError("bad safetensors header")

    monkeypatch.setattr(store, "load_bundled", damaged)
    viewer = sample_viewer
    predict, finetune, export = PredictWidget(viewer), FinetuneWidget(viewer), ExportWidget(viewer)
    predict_worker = predict.run()
    finetune._add.native.click()
    finetune_worker = finetune.run()
    export._model_path.value = tmp_path / "model.safetensors"
    export._save_model.native.click()
    messages = [str(n.message) for n in notes]
    assert [m.split(":")[0] for m in messages] == ["Predict", "Fine-tune", "Export"]
    assert all("bundled model" in m and "bad safetensors header" in m for m in messages)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells annotation"]
    assert predict_worker is None and finetune_worker is None
    assert list(tmp_path.iterdir()) == []


def test_convert_rgb_to_grey_is_on_in_predict_and_finetune(sample_viewer):
    assert PredictWidget(sample_viewer)._grey.value
    assert FinetuneWidget(sample_viewer)._grey.value


def test_no_dock_imports_another():
    docks = {"annotate", "weightmap", "finetune", "predict", "export"}
    for dock in docks:
        tree = ast.parse((WIDGETS / f"{dock}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            imported |= {name.rsplit(".", 1)[-1] for name in names}
        assert not imported & (docks - {dock}), f"{dock}.py imports {imported & docks}"
