"""Screenshots of each widget on the sample data, for the README and the user guide.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py

Each widget is docked in a real napari window with the sample image, driven the way a user
would drive it (fine-tuning runs a few real steps, prediction streams real tiles), and the whole
window is saved to ``docs/images/<widget>.png``. Uses the bundled model when one ships, else a
small network fine-tuned here for the pictures.
"""

from __future__ import annotations

from pathlib import Path

import napari

from napari_unet import UNet, bundled_models
from napari_unet._widgets._session import session_for

OUT = Path(__file__).parent / "images"


def settle(seconds: float = 0.5) -> None:
    """Let Qt process events (layers and widgets repaint) for ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def wait_for(worker, timeout: float = 600) -> None:
    """Process events until ``worker`` has finished (it may not have started yet)."""
    import time

    done = []
    worker.finished.connect(lambda: done.append(True))
    start = time.perf_counter()
    while not done and time.perf_counter() - start < timeout:
        settle(0.2)
    settle(0.5)


def fresh_viewer() -> napari.Viewer:
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-unet", "phase_contrast_cells")
    viewer.layers["cells annotation"].opacity = 0.5
    return viewer


def save(viewer: napari.Viewer, name: str) -> None:
    settle(1.0)
    OUT.mkdir(exist_ok=True)
    viewer.screenshot(str(OUT / f"{name}.png"), canvas_only=False)
    print("wrote", OUT / f"{name}.png")
    viewer.close()


def annotate() -> None:
    viewer = fresh_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    widget._pick.clicked.emit()
    annotation = viewer.layers["cells annotation"]
    annotation.data[annotation.data > 20] = 0  # a user half-way through: 20 cells painted
    annotation.refresh()
    widget._add_region.clicked.emit()
    region = viewer.layers["cells annotated region"]
    region.add_rectangles([[0, 0], [300, 512]])
    widget._region.value = region
    save(viewer, "annotate")


def weight_map() -> None:
    viewer = fresh_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Weight map")
    widget._labels.value = viewer.layers["cells annotation"]
    settle(1.0)
    viewer.layers["cells annotation target"].visible = False
    save(viewer, "weightmap")


def finetune(model) -> None:
    viewer = fresh_viewer()
    session_for(viewer).set_model(model, "pictures")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget._image.value = viewer.layers["cells"]
    widget._annotation.value = viewer.layers["cells annotation"]
    widget._on_add()
    widget._steps.value = 40
    widget._tile.value = 96
    widget._batch.value = 2
    widget._on_start()
    wait_for(widget.worker)
    save(viewer, "finetune")


def predict(model) -> None:
    viewer = fresh_viewer()
    viewer.layers["cells annotation"].visible = False
    session_for(viewer).set_model(model, "pictures")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")
    widget._image.value = viewer.layers["cells"]
    widget._tile.value = 128
    widget._on_predict()
    wait_for(widget.worker)
    save(viewer, "predict")


def export() -> None:
    viewer = fresh_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export")
    widget._layers.value = [viewer.layers["cells annotation"]]
    save(viewer, "export")


def picture_model():
    """The bundled model, or a small network fine-tuned briefly on the sample (for pictures)."""
    if bundled_models():
        from napari_unet import load_bundled

        return load_bundled()
    from napari_unet import finetune as train
    from napari_unet._sample_data import phase_contrast_cells

    (image, *_), (labels, *_) = phase_contrast_cells()
    model = UNet(base_channels=16)
    for _ in train(model, [(image, labels)], steps=150, lr=1e-3, seed=0):
        pass
    return model


def main() -> None:
    model = picture_model()
    annotate()
    weight_map()
    finetune(model)
    predict(model)
    export()


if __name__ == "__main__":
    main()
