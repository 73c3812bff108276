"""Screenshots of each dock, for the README and the user guide.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py IMAGE LABELS --out DIR

The pictures follow one user's journey in the window ``napari-unet gui`` opens (1500x950, the
five docks tabified), one picture per dock, each dock brought to the front and driven the way a
user would drive it: Annotate (a few cells painted inside an annotated region), Weight map (the
preview: of the sample's annotation when the sample is beside the image), Fine-tune (a pair of
the image; a few minutes of real steps), Predict (the cell diameter measured with lines across
cells, real tiles streamed) and Export (the prediction chosen). The whole window is saved to
``DIR/<dock>.png`` (default: ``docs/images``), as a 256-colour PNG.

The image of the journey is, by default, a calibrated 512x512 frame of the Cell Tracking
Challenge's PhC-C2DH-U373 (``../shared/data/u373``, beside the repository, as the tests find
it; never copied into the repository): written to a temporary TIFF with its pixel size and
opened as ``napari-unet gui FRAME.tif`` opens it, with the sample beside it (File > Open
Sample) at its own pixel size, both in micrometres. Without that data the journey is on the
sample alone (the script says why). With IMAGE and LABELS it is on IMAGE, LABELS giving the
cells painted. Uses the bundled model when one ships, else a small network fine-tuned here for
the pictures. Without IMAGE, a last picture ``large.png`` shows a lazy 16,384 x 16,384 slide.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QDockWidget

from napari_unet import UNet, bundled_models, read_image
from napari_unet._widgets._session import session_for
from napari_unet.cli import open_viewer

OUT = Path(__file__).parent / "images"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real data beside the repository (``../shared/data``), as the tests find it."""
U373 = DATA / "u373"
U373_FRAME = "02_t041.tif"  # a frame with gold (hand-made) masks: 7 cells, 5 of them in the crop
U373_CROP = (slice(4, 516), slice(48, 560))  # 512x512 of its 520x696
U373_NAME = "U373_t041"  # the crop's file name: short enough to stay whole in the layer list
U373_PIXEL_UM = 0.65
"""The pixel size the Cell Tracking Challenge states for PhC-C2DH-U373 (0.65 x 0.65 um); the
frames' TIFFs carry none, so the crop is written with it."""
MINUTES = 4.0
"""Fine-tune's budget: enough for some 200 steps on a busy 2-core machine, which a run needs
to change anything (shorter runs say so, as a warning)."""
REGION_SHARE = 0.62
"""The annotated region: the top 62 % of the image's rows; the cells wholly inside are painted."""


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


def save_png(array: np.ndarray, path: Path) -> None:
    """``array`` (a screenshot) as a 256-colour (or 128-colour) PNG: a third of the size of a
    true-colour one, and the window's greys, the phase contrast and the label colours survive."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(array[..., :3]))
    for colours in (256, 128):  # 128 where 256 would exceed 400 KB (the busy slide)
        quantized = picture.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=0)
        quantized.save(path, optimize=True)
        if path.stat().st_size < 400 * 1024:
            break
    print("wrote", path, f"({path.stat().st_size // 1024} KB)")


def u373_frame(folder: Path) -> tuple[Path, np.ndarray] | None:
    """The 512x512 crop of a U373 frame written to ``folder`` as a TIFF with its pixel size
    (:data:`U373_PIXEL_UM`), and the crop of its gold mask; None (saying why) without the data."""
    import tifffile

    from napari_unet.core.formats.io import tiff_resolution

    frame, mask = U373 / "images" / U373_FRAME, U373 / "masks" / U373_FRAME
    if not (frame.is_file() and mask.is_file()):
        print(
            f"no calibrated frame: {frame} or {mask} not found (clone the project beside "
            "../shared/data); the pictures show the sample alone"
        )
        return None
    image, labels = read_image(frame)[U373_CROP], read_image(mask)[U373_CROP]
    path = folder / f"{U373_NAME}.tif"
    pixel = (U373_PIXEL_UM, U373_PIXEL_UM)
    tifffile.imwrite(path, image, **tiff_resolution(pixel, image))
    return path, labels


class Window:
    """The window of ``napari-unet gui [IMAGE]`` (the sample when no IMAGE), with the sample
    beside IMAGE when ``with_sample``; ``reference`` holds the cells a user paints."""

    def __init__(self, image: Path | None, reference: np.ndarray | None, with_sample: bool):
        self.viewer = napari.Viewer(title="napari-unet")
        self.viewer.window.resize(1500, 950)
        open_viewer([str(image)] if image else [], self.viewer)  # its calibration read
        self.image = self.viewer.layers[0]
        self.name = self.image.name
        if image is None:  # the sample: its own annotation holds the cells
            reference = np.asarray(self.viewer.layers["cells annotation"].data).copy()
        self.reference = reference
        self.with_sample = with_sample and image is not None
        if self.with_sample:
            self.viewer.open_sample("napari-unet", "phase_contrast_cells")  # File > Open Sample
            # laid beside the image, as a user drags it there in its layers' transform mode
            # (napari opens every layer at the origin): both at their real size, in um
            width = self.image.data.shape[1] * self.image.scale[-1]
            for name in ("cells", "cells annotation"):
                self.viewer.layers[name].translate = (0, 1.06 * width)
            self.viewer.layers["cells annotation"].opacity = 0.5
        if image is not None:  # the contrast slider, as a user sets it for a dim phase contrast
            self.image.contrast_limits = tuple(np.percentile(self.image.data, (0.5, 99.8)))
        self.viewer.layers.selection.active = self.image
        self.viewer.reset_view()

    @classmethod
    def around(cls, viewer) -> Window:
        """The picture window of a viewer set up otherwise."""
        window = cls.__new__(cls)
        window.viewer = viewer
        return window

    @property
    def annotation(self):
        return self.viewer.layers[f"{self.name} annotation"]

    def dock(self, name: str):
        """Bring the dock ``name`` to the front; its widget."""
        widget = next(w for key, w in self.viewer.window.dock_widgets.items() if name in key)
        frame = widget.native
        while not isinstance(frame, QDockWidget):
            frame = frame.parent()
        frame.raise_()
        return widget

    def save(self, out: Path, name: str) -> None:
        """The window as ``out/<name>.png``, without the notifications' toasts (they fade by
        themselves; the docks' status lines say the same in full)."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        settle(1.0)
        for toast in self.viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
        settle(0.5)
        out.mkdir(parents=True, exist_ok=True)
        save_png(self.viewer.screenshot(canvas_only=False), out / f"{name}.png")


def painted_cells(reference: np.ndarray, rows: int) -> np.ndarray:
    """The cells of ``reference`` wholly inside its first ``rows`` rows (the others unpainted)."""
    painted = np.array(reference)
    outside = np.unique(painted[rows:])
    painted[np.isin(painted, outside[outside > 0])] = 0
    return painted


def annotate(window: Window, out: Path) -> None:
    """A user half-way: the image picked, a few cells painted inside the annotated region."""
    widget = window.dock("Annotate")
    widget._image.value = window.image
    widget._pick.clicked.emit()
    annotation = window.annotation
    height, width = window.image.data.shape[:2]
    rows = int(REGION_SHARE * height)
    annotation.data = painted_cells(window.reference, rows).astype(annotation.data.dtype)
    annotation.opacity = 0.5
    widget._add_region.clicked.emit()
    region = window.viewer.layers[f"{window.name} annotated region"]
    region.add_rectangles([[0, 0], [rows, width]])
    region.mode = "pan_zoom"
    window.viewer.layers.selection.active = annotation
    window.save(out, "annotate")


def weight_map(window: Window, out: Path) -> None:
    """The preview of the sample's annotation when the sample is beside the image (its cells
    touch, so the separation weights show), else of the image's."""
    widget = window.dock("Weight map")
    beside = window.with_sample
    widget._annotation_box.value = (
        window.viewer.layers["cells annotation"] if beside else window.annotation
    )
    widget._preview.value = True
    window.save(out, "weightmap")
    widget._preview.value = False


def finetune(window: Window, out: Path) -> None:
    """A pair of the image in its annotated region; a run of a few minutes (the default is 5)."""
    widget = window.dock("Fine-tune")
    widget._image.value = window.image  # its annotation and annotated region follow
    widget._on_add()
    widget._minutes.value = MINUTES
    widget._tile.value = 96
    widget._batch.value = 2
    widget._on_start()
    wait_for(widget)
    window.save(out, "finetune")


def ruler_lines(reference: np.ndarray, cells: np.ndarray) -> list[np.ndarray]:
    """A line across each of ``cells`` (ids), through its centre, as long as its equivalent
    diameter: what a user draws with Predict's ruler."""
    lines = []
    for cell in cells:
        ys, xs = np.nonzero(reference == cell)
        y, x, half = ys.mean(), xs.mean(), np.sqrt(ys.size / np.pi)
        lines.append(np.array([[y, x - half], [y, x + half]]))
    return lines


def predict(window: Window, out: Path) -> None:
    """The diameter measured with lines across three painted cells, then Predict."""
    window.annotation.visible = False
    window.viewer.layers[f"{window.name} annotated region"].visible = False
    widget = window.dock("Predict")
    widget._image.value = window.image
    widget._diameter.measure()  # adds the ruler layer '<image> diameter'
    ruler = window.viewer.layers[f"{window.name} diameter"]
    cells = np.unique(window.annotation.data)
    ruler.add_lines(ruler_lines(window.reference, cells[cells > 0][:3]))
    widget._diameter.measure()  # the diameter: the lines' mean length
    ruler.mode = "pan_zoom"
    widget._tile.value = 128
    widget._on_predict()
    wait_for(widget)
    window.viewer.layers.selection.active = window.viewer.layers[f"{window.name} prediction"]
    window.save(out, "predict")


def export(window: Window, out: Path) -> None:
    widget = window.dock("Export")
    widget._layers.value = [window.viewer.layers[f"{window.name} prediction"]]
    window.save(out, "export")


def large(out: Path, model, size: int = 16384) -> None:
    """A lazy 16,384 x 16,384 mosaic of the sample (a dask array, never read whole), zoomed in:
    Predict does the blocks in view first."""
    import dask.array as da

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
    viewer.close()


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
    parser.add_argument("image", nargs="?", type=Path, help="image (default: a U373 frame)")
    parser.add_argument("labels", nargs="?", type=Path, help="its cells, painted as annotation")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the pictures")
    parser.add_argument("--no-large", action="store_true", help="skip the lazy slide's picture")
    args = parser.parse_args()
    if (args.image is None) != (args.labels is None):
        parser.error("give an image and its labels, or neither (a U373 frame, or the sample)")
    model = picture_model()
    napari.Viewer().close()  # napari's one-time notices (e.g. on the Qt backend) go here
    with tempfile.TemporaryDirectory() as folder:
        if args.image is not None:
            image, reference = args.image, read_image(args.labels)
        else:
            image, reference = u373_frame(Path(folder)) or (None, None)
        window = Window(image, reference, with_sample=args.image is None)
        use(window, model)
        for picture in (annotate, weight_map, finetune, predict, export):
            picture(window, args.out)
        window.viewer.close()
    if args.image is None and not args.no_large:
        large(args.out, model)


if __name__ == "__main__":
    main()
