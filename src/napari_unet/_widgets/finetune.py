"""Fine-tune: train the current model on a few annotated planes, in the background.

The training set is a list of image / annotation pairs (one plane each, optionally restricted to
an annotated region); ticked pairs are held out for validation (their foreground IoU is shown).
Start claims the viewer's model, and a thread worker runs :func:`napari_unet.finetune` on copies
of the planes; each step's event updates a progress bar, a status line and a loss curve. Stop
keeps what the model learnt so far. When the run ends (done or stopped) the trained model becomes
the current model of the viewer, for Predict and Export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem, QProgressBar, QVBoxLayout, QWidget

from ._loss_plot import LossPlot
from ._session import session_for
from .annotate import WHOLE_IMAGE, annotation_pair, plane_index, spatial_shape
from .weightmap import layer_choices

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from ..core.model import UNet
    from ..core.train import FinetuneEvent

__all__ = ["FinetuneWidget"]

CURRENT_MODEL, NEW_NETWORK = "current model", "new network (base 16)"
HOLD_OUT_TIP = "Tick to hold this pair out for validation: not trained on, its IoU is reported."


def _training_events(model: UNet, train: list, validation: list, grey: bool, settings: dict):
    """Worker body: yield the :class:`~napari_unet.FinetuneEvent` of each training step."""
    from napari_unet import finetune
    from napari_unet.core.image import grey_if_rgb

    if grey:
        train = [(grey_if_rgb(image, model.in_channels), *rest) for image, *rest in train]
        validation = [
            (grey_if_rgb(image, model.in_channels), *rest) for image, *rest in validation
        ]
    yield from finetune(model, train, validation=validation or None, **settings)


def _drive(events):
    """The worker's generator function, over events made (not started) on the main thread,
    so the main thread can close them when the worker ends (the model is then left in eval
    mode even after Stop)."""
    yield from events


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class _Pair:
    """One plane of an image and its annotation (read when training starts)."""

    image: Image
    labels: Labels
    region: Layer | None
    step: tuple[float, ...]  # the image's data coordinates at the plane

    @property
    def plane(self) -> tuple[int, ...]:
        return plane_index(spatial_shape(self.image), self.step)

    @property
    def name(self) -> str:
        plane = self.plane
        where = "" if not plane else f" [z={plane[0]}]" if len(plane) == 1 else f" [{plane}]"
        region = "" if self.region is None else f" in {self.region.name}"
        return f"{self.image.name} / {self.labels.name}{where}{region}"

    def layers(self) -> list[Layer]:
        return [layer for layer in (self.image, self.labels, self.region) if layer is not None]


@dataclass
class _Run:
    """One training run, as the main thread sees it."""

    model: UNet
    events: object  # the generator the worker drives
    bar: progress
    pairs: int
    steps: int = 0
    loss: float = float("nan")
    stopped: bool = False
    failed: bool = False


class FinetuneWidget(QWidget):
    """Fine-tune the viewer's U-Net on image / annotation pairs; Start, Stop, live loss curve."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._session = session_for(viewer)
        self.worker = None
        self._run: _Run | None = None
        self._pairs: list[_Pair] = []

        self._image = ComboBox(label="image", choices=layer_choices(viewer, Image))
        self._annotation = ComboBox(
            label="annotation",
            choices=layer_choices(viewer, Labels),
            tooltip="Instance labels of the image: 0 = background, 1..N = cells.",
        )
        self._region = ComboBox(
            label="region",
            choices=self._region_choices,
            tooltip="Annotated part of the image (Shapes, or labels non-zero); "
            "other pixels are ignored in training.",
        )
        self._add = PushButton(text="Add pair", tooltip="Add the current plane of the pair.")
        self._remove = PushButton(text="Remove", tooltip="Remove the selected pair.")
        self._choose = Container(
            widgets=[
                self._image,
                self._annotation,
                self._region,
                Container(layout="horizontal", labels=False, widgets=[self._add, self._remove]),
            ]
        )
        self._list = QListWidget()
        self._list.setToolTip(HOLD_OUT_TIP)

        self._start_from = ComboBox(
            label="start from",
            choices=[CURRENT_MODEL, NEW_NETWORK],
            tooltip="Fine-tune the viewer's current model, or train a new small U-Net.",
        )
        self._model_info = Label()
        self._steps = SpinBox(label="steps", value=200, min=1, max=1_000_000)
        self._minutes = FloatSpinBox(
            label="minutes",
            value=0,
            min=0,
            max=24 * 60,
            step=0.5,
            tooltip="Stop after this many minutes even if steps remain; 0 = no time limit.",
        )
        self._lr = FloatSpinBox(label="learning rate", value=3e-4, min=1e-6, max=0.1, step=1e-5)
        self._batch = SpinBox(label="batch size", value=4, min=1, max=256)
        self._tile = SpinBox(
            label="tile (px)",
            value=128,
            min=16,
            max=2048,
            step=16,
            tooltip="Output side of a training crop, rounded up to a valid size.",
        )
        self._augment = CheckBox(
            text="augment",
            value=True,
            tooltip="Elastic deformation, flips / 90-degree turns and intensity changes.",
        )
        self._grey = CheckBox(
            text="convert RGB to grey",
            value=True,
            tooltip="Turn RGB(A) images into grey for a one-channel model.",
        )
        self._settings = Container(
            widgets=[
                self._start_from,
                self._model_info,
                self._steps,
                self._minutes,
                self._lr,
                self._batch,
                self._tile,
                self._augment,
                self._grey,
            ]
        )
        self._start = PushButton(text="Start")
        self._stop = PushButton(text="Stop", enabled=False)
        self._buttons = Container(
            layout="horizontal", labels=False, widgets=[self._start, self._stop]
        )
        self._status = QLabel("")
        self._validation = QLabel("")
        self._bar = QProgressBar()
        self._plot = LossPlot()

        layout = QVBoxLayout(self)
        for widget in (
            self._choose.native,
            self._list,
            self._settings.native,
            self._buttons.native,
            self._status,
            self._validation,
            self._bar,
            self._plot,
        ):
            layout.addWidget(widget)
        self._connect_signals()
        self._on_model_changed()

    def _connect_signals(self) -> None:
        layers = self._viewer.layers.events
        for event in (layers.inserted, layers.removed, layers.renamed, layers.reordered):
            event.connect(self.reset_choices)
        self._add.changed.connect(self._on_add)
        self._remove.changed.connect(self._on_remove)
        self._start.changed.connect(self._on_start)
        self._stop.changed.connect(self._on_stop)
        self._session.model_changed.connect(self._on_model_changed)

    def reset_choices(self, *_) -> None:
        """Refresh the layer combos (napari calls this when layers change)."""
        self._choose.reset_choices()

    def _region_choices(self, _widget=None) -> list[tuple[str, object]]:
        regions = [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, (Shapes, Labels))
        ]
        return [(WHOLE_IMAGE, WHOLE_IMAGE), *regions]

    def _on_model_changed(self) -> None:
        source = self._session.source if self._session.has_model else "default (bundled)"
        self._model_info.value = f"current model: {source}"

    # the training set ------------------------------------------------------------------------
    def _on_add(self, *_) -> None:
        image, labels, region = self._image.value, self._annotation.value, self._region.value
        if image is None or labels is None:
            show_warning("Fine-tune: pick an image layer and its annotation (a Labels layer).")
            return
        region = None if region == WHOLE_IMAGE else region
        pair = _Pair(image, labels, region, tuple(image.world_to_data(self._viewer.dims.point)))
        try:
            annotation_pair(image, labels, region, pair.step)
        except ValueError as err:
            show_error(f"Fine-tune: cannot add this pair: {err}")
            return
        key = (image, labels, region, pair.plane)
        if any((p.image, p.labels, p.region, p.plane) == key for p in self._pairs):
            show_info(f"Fine-tune: '{pair.name}' is already in the training set.")
            return
        item = QListWidgetItem(pair.name)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Unchecked)
        item.setToolTip(HOLD_OUT_TIP)
        self._list.addItem(item)
        self._pairs.append(pair)

    def _on_remove(self, *_) -> None:
        row = self._list.currentRow()
        if row < 0:
            show_info("Fine-tune: select a pair in the list to remove it.")
            return
        self._list.takeItem(row)
        del self._pairs[row]

    def _held_out(self, row: int) -> bool:
        return self._list.item(row).checkState() == Qt.CheckState.Checked

    def _collect(self) -> tuple[list, list] | None:
        """``(train, validation)`` lists of ``(image, labels, mask)`` copies of the pairs'
        planes; None after a notification saying what is wrong."""
        if not self._pairs:
            show_error(
                "Fine-tune: no training pair. Pick an image and its annotation, then 'Add pair'."
            )
            return None
        train, validation = [], []
        for row, pair in enumerate(self._pairs):
            if any(layer not in self._viewer.layers for layer in pair.layers()):
                show_error(f"Fine-tune: a layer of '{pair.name}' was removed; remove the pair.")
                return None
            try:
                image, labels, mask = annotation_pair(
                    pair.image, pair.labels, pair.region, pair.step
                )
            except ValueError as err:
                show_error(f"Fine-tune: pair '{pair.name}': {err}")
                return None
            if not np.any(labels if mask is None else labels[mask]):
                where = "" if mask is None else " inside its region"
                show_error(
                    f"Fine-tune: pair '{pair.name}' has no annotated cell{where}; paint at "
                    "least one cell (Annotate widget) or remove the pair."
                )
                return None
            (validation if self._held_out(row) else train).append((image, labels, mask))
        if not train:
            show_error("Fine-tune: every pair is held out for validation; untick at least one.")
            return None
        return train, validation

    # training --------------------------------------------------------------------------------
    def _model(self) -> UNet | None:
        """The model to train; None after a notification."""
        if self._start_from.value == NEW_NETWORK:
            from napari_unet import UNet

            return UNet(base_channels=16)
        try:
            return self._session.model
        except (FileNotFoundError, ValueError) as err:
            show_error(
                f"Fine-tune: no current model ({err}). Load a model file first, or set "
                f"'start from' to '{NEW_NETWORK}'."
            )
            return None

    def _on_start(self, *_) -> None:
        if self._run is not None:
            return
        pairs = self._collect()
        if pairs is None:
            return
        train, validation = pairs
        if not self._session.claim("training"):
            show_warning(f"Fine-tune: the model is busy {self._session.busy}; stop it or wait.")
            return
        model = self._model()
        if model is None:
            self._session.release()
            return
        minutes = self._minutes.value
        settings = {
            "steps": self._steps.value,
            "max_seconds": minutes * 60 if minutes > 0 else None,
            "lr": self._lr.value,
            "batch_size": self._batch.value,
            "tile": self._tile.value,
            "augment": self._augment.value,
        }
        events = _training_events(model, train, validation, self._grey.value, settings)
        bar = progress(total=settings["steps"], desc="Fine-tuning U-Net")
        self._run = _Run(model=model, events=events, bar=bar, pairs=len(train))
        self._plot.clear()
        self._bar.setRange(0, settings["steps"])
        self._bar.setValue(0)
        self._status.setText("preparing the training data…")
        self._validation.setText(
            f"validation on {len(validation)} held-out pair(s): pending" if validation else ""
        )
        self._set_running(True)
        self.worker = create_worker(
            _drive,
            events,
            _start_thread=False,
            _connect={
                "yielded": self._on_yielded,
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )
        self.worker.start()

    def _on_stop(self, *_) -> None:
        if self._run is None:
            return
        self._run.stopped = True
        self._stop.enabled = False
        self._status.setText(f"stopping after step {self._run.steps + 1}…")
        self.worker.quit()

    def _set_running(self, running: bool) -> None:
        self._start.enabled = not running
        self._stop.enabled = running
        self._settings.enabled = not running

    def _on_yielded(self, event: FinetuneEvent) -> None:
        run = self._run
        run.steps, run.loss = event.step, event.loss
        self._bar.setRange(0, event.total)
        self._bar.setValue(event.total if event.done else event.step)
        if not run.stopped:
            self._status.setText(
                f"step {event.step}/{event.total}, loss {event.loss:.3g}, "
                f"{_clock(event.remaining)} left"
            )
        self._plot.add(event.step, event.loss)
        if event.val_iou is not None:
            self._validation.setText(f"validation IoU {event.val_iou:.3f} (step {event.step})")
        # last: napari's progress bar processes events, which may run _on_finished right here
        run.bar.update(event.step - run.bar.n)

    def _on_errored(self, err: Exception) -> None:
        self._run.failed = True
        show_error(f"Fine-tuning failed: {err}")

    def _on_finished(self) -> None:
        run, self._run = self._run, None
        run.events.close()  # ends finetune() in the model's eval mode, also after Stop
        run.bar.close()
        self._session.release()
        self._set_running(False)
        if run.failed:
            self._status.setText(f"failed after {run.steps} steps")
            return
        if run.steps == 0:
            self._status.setText("stopped before the first step; the model was not changed")
            return
        how = "stopped at" if run.stopped else "done:"
        self._status.setText(f"{how} step {run.steps}, loss {run.loss:.3g}")
        source = f"fine-tuned on {_plural(run.pairs, 'pair')}, {_plural(run.steps, 'step')}"
        self._session.set_model(run.model, source)
