"""Screenshots of each dock, for the README and the user guide.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py IMAGE LABELS --out DIR

Each picture is the window ``napari-unet gui`` opens (1500x950, the five docks tabified), with
the sample image and its annotation, or IMAGE with LABELS as its annotation ("<stem>
annotation"). The dock of the picture is brought to the front and driven the way a user would
drive it (fine-tuning runs a few real steps, prediction streams real tiles), and the whole window
is saved to ``DIR/<dock>.png`` (default: ``docs/images``). Uses the bundled model when one
ships, else a small network fine-tuned here for the pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
from qtpy.QtWidgets import QDockWidget

from napari_unet import UNet, bundled_models
from napari_unet._widgets._session import session_for
from napari_unet.cli import open_viewer

OUT = Path(__file__).parent / "images"


def settle(seconds: float = 0.5) -> None:
    """Let Qt process events (layers and widgets repaint) for ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def wait_for(widget, timeout: float = 600) -> None:
    """Process events until ``widget``'s background run has ended."""
    import time

    start = time.perf_counter()
    while widget._task is not None and time.perf_counter() - start < timeout:
        settle(0.2)
    settle(0.5)


class Window:
    """The window of ``napari-unet gui`` on the pictures' image."""

    def __init__(self, image: Path | None, labels: Path | None) -> None:
        self.viewer = napari.Viewer(title="napari-unet")
        self.viewer.window.resize(1500, 950)
        open_viewer([str(image)] if image else [], self.viewer)
        if labels is not None:
            from napari_unet import read_image

            self.viewer.add_labels(read_image(labels), name=f"{self.image.name} annotation")
        self.annotation.opacity = 0.5
        self.viewer.reset_view()

    @classmethod
    def around(cls, viewer) -> Window:
        """The picture window of a viewer set up otherwise."""
        window = cls.__new__(cls)
        window.viewer = viewer
        return window

    @property
    def image(self):
        return self.viewer.layers[0]

    @property
    def annotation(self):
        return self.viewer.layers[f"{self.image.name} annotation"]

    def dock(self, name: str):
        """Bring the dock ``name`` to the front; its widget."""
        widget = next(w for key, w in self.viewer.window.dock_widgets.items() if name in key)
        frame = widget.native
        while not isinstance(frame, QDockWidget):
            frame = frame.parent()
        frame.raise_()
        return widget

    def save(self, out: Path, name: str) -> None:
        settle(1.0)
        out.mkdir(parents=True, exist_ok=True)
        self.viewer.screenshot(str(out / f"{name}.png"), canvas_only=False)
        print("wrote", out / f"{name}.png")
        self.viewer.close()


def annotate(window: Window, out: Path) -> None:
    widget = window.dock("Annotate")
    widget._pick.clicked.emit()
    annotation = window.annotation
    annotation.data[annotation.data > 20] = 0  # a user half-way through: 20 cells painted
    annotation.refresh()
    widget._add_region.clicked.emit()
    region = window.viewer.layers[f"{window.image.name} annotated region"]
    height, width = window.image.data.shape[:2]
    region.add_rectangles([[0, 0], [int(0.6 * height), width]])
    window.viewer.layers.selection.active = annotation
    window.save(out, "annotate")


def weight_map(window: Window, out: Path) -> None:
    widget = window.dock("Weight map")
    widget._annotation_box.value = window.annotation
    widget._preview.value = True
    window.save(out, "weightmap")


def finetune(window: Window, out: Path, model) -> None:
    use(window, model)
    widget = window.dock("Fine-tune")
    widget._image.value = window.image
    widget._on_add()
    widget._minutes.value = 0.5  # the picture shows the time budget at work
    widget._tile.value = 96
    widget._batch.value = 2
    widget._on_start()
    wait_for(widget)
    window.save(out, "finetune")


def predict(window: Window, out: Path, model) -> None:
    window.annotation.visible = False
    use(window, model)
    widget = window.dock("Predict")
    widget._image.value = window.image
    widget._tile.value = 128
    widget._on_predict()
    wait_for(widget)
    window.save(out, "predict")


def large(out: Path, model, size: int = 16384) -> None:
    """A lazy 16,384 x 16,384 mosaic of the sample (a dask array, never read whole), zoomed in:
    Predict does the blocks in view first."""
    import dask.array as da
    import numpy as np

    from napari_unet._sample_data import phase_contrast_cells

    (tile, *_), _ = phase_contrast_cells()
    flips = [[tile[:: 1 - 2 * (i % 2), :: 1 - 2 * (j % 2)] for j in range(2)] for i in range(2)]
    quad = da.from_array(np.block(flips), chunks=512)
    mosaic = da.tile(quad, (size // quad.shape[0], size // quad.shape[1]))
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1500, 950)
    open_viewer([], viewer)
    viewer.layers.clear()
    viewer.add_image(mosaic, name="slide", contrast_limits=(0, float(tile.max())))
    window = Window.around(viewer)
    use(window, model)
    widget = window.dock("Predict")
    widget._image.value = viewer.layers["slide"]
    camera = viewer.scene.camera
    camera.center = (5000, 7000)
    camera.zoom = 0.5
    settle()
    widget._on_predict()
    wait_for(widget)
    viewer.layers["slide probability (large)"].visible = False
    camera.zoom = 0.09  # step back: the labelled region amid the rest of the slide
    window.save(out, "large")


def export(window: Window, out: Path) -> None:
    widget = window.dock("Export")
    widget._layers.value = [window.annotation]
    window.save(out, "export")


def picture_model():
    """None when a bundled model ships (the docks load it), else a small network fine-tuned
    briefly on the sample, for the pictures."""
    if bundled_models():
        return None
    from napari_unet import finetune as train
    from napari_unet._sample_data import phase_contrast_cells

    (image, *_), (labels, *_) = phase_contrast_cells()
    model = UNet(base_channels=16)
    for _ in train(model, [(image, labels)], steps=150, lr=1e-3, seed=0):
        pass
    return model


def use(window: Window, model) -> None:
    if model is not None:
        session_for(window.viewer).set_model(model, "trained for the pictures")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, help="image (default: the sample)")
    parser.add_argument("labels", nargs="?", type=Path, help="its annotation")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the pictures")
    args = parser.parse_args()
    if (args.image is None) != (args.labels is None):
        parser.error("give an image and its labels, or neither (the sample)")
    model = picture_model()
    napari.Viewer().close()  # napari's one-time notices (e.g. on the Qt backend) go here
    annotate(Window(args.image, args.labels), args.out)
    weight_map(Window(args.image, args.labels), args.out)
    finetune(Window(args.image, args.labels), args.out, model)
    predict(Window(args.image, args.labels), args.out, model)
    export(Window(args.image, args.labels), args.out)
    if args.image is None:
        large(args.out, model)


if __name__ == "__main__":
    main()
