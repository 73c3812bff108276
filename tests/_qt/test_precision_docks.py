"""Issue 22: the Predict and Fine-tune docks take a precision and say which one runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, predict
from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets._session import session_for
from napari_unet._widgets.finetune import FinetuneWidget
from napari_unet._widgets.predict import PredictWidget

TIMEOUT = 60_000  # ms; the machine is shared


@pytest.fixture
def viewer_with_cells(make_napari_viewer):
    """A viewer with a (96, 96) crop of the sample and its labels, a tiny current model."""
    (image, *_), (labels, *_) = phase_contrast_cells()
    viewer = make_napari_viewer()
    viewer.add_image(image[:96, :96], name="cells")
    viewer.add_labels(labels[:96, :96], name="cells annotation")
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3)
    session_for(viewer).set_model(model, "test")
    return viewer, model


def test_predict_dock_runs_in_the_precision_chosen_and_says_so(viewer_with_cells, qtbot):
    viewer, model = viewer_with_cells
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._precision.value == "auto" and widget._precision.choices == (
        "auto",
        "fp32",
        "bf16",
    )
    widget._precision.value = "bf16"
    widget._with_probability.value = True
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert "bfloat16" in widget.status, widget.status
    shown = viewer.layers["cells probability"].data
    expected = predict(model, viewer.layers["cells"].data, precision="bf16")
    np.testing.assert_allclose(shown, expected, atol=1e-6)


def test_finetune_dock_trains_in_the_precision_chosen_and_says_so(viewer_with_cells, qtbot):
    viewer, _ = viewer_with_cells
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._precision in widget._advanced  # under "advanced"
    widget._tile.value, widget._batch.value, widget._steps.value = 32, 1, 2
    widget._precision.value = "bf16"
    widget._image.value = viewer.layers["cells"]
    widget._annotation_box.value = viewer.layers["cells annotation"]
    widget._add.native.click()
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert "in bfloat16" in widget.status, widget.status
    tuned = session_for(viewer).model
    assert tuned.metadata["finetune"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in tuned.parameters())
