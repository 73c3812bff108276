"""Fine-tune: train a copy of the current model on a few annotated planes, in the background.

The training set is a list of image / annotation pairs (one plane each, optionally restricted to
an annotated region: by default the region the Annotate dock chose for that image); ticked pairs
are held out for validation (their foreground IoU is shown). Start trains a deep copy of the
viewer's current model (or a new network) in a thread worker over :func:`napari_unet.finetune`
for a time budget ("train for 5 min", the main control) and at most a number of steps (under
"advanced", with the learning rate, batch and crop size); each step's event updates a progress
bar (time, or steps when they run out first), a status line and a loss curve. When the run ends
(done, or stopped: Stop keeps what the copy learnt so far) the copy becomes the current model
for Predict and Export, with a label saying so; "Undo fine-tuning" returns to the model before
the run. A run that fails leaves the current model and its label as they were.

The loop of a user: predict, correct the prediction in Annotate, add it as a pair, Start again:
the next round trains a copy of the current (fine-tuned) model on all pairs, and its label says
which round it is and that it continued from the one before.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Labels
from napari.utils import progress
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..core.network import NEW_BASE_CHANNELS
from ._layers import (
    WHOLE_IMAGE,
    annotation_of,
    annotation_pair,
    image_choices,
    layer_choices,
    region_choices,
    watch_layers,
)
from ._loss_plot import LossPlot
from ._session import CHANGE, TRAINING, session_for
from ._training_runs import Pair, TrainingRun, clock, measured, training_events, verdict
from ._ui import Messages, narrow, plural, precision_box, precision_words, row
from ._worker import Task

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from ..core.network.model import UNet
    from ..core.training.train import FinetuneEvent
    from ._worker import Outcome

__all__ = ["FinetuneWidget"]

CURRENT_MODEL, NEW_NETWORK = "current model", f"new network (base {NEW_BASE_CHANNELS})"
PAIR_LIST_HEIGHT = 100  # px, about four pairs; the list scrolls beyond
HOLD_OUT_TIP = "Tick to hold this pair out for validation: not trained on, its IoU is reported."
MINUTES = 5.0  # the default time budget
PERMILLE = 1000  # the progress bar's steps while time is the limit
NEXT_ROUND = (
    "Next round: predict again, correct the prediction in Annotate, Add pair, then Start to "
    "continue from this model with all pairs."
)
_say = Messages("Fine-tune")


class FinetuneWidget(Container):
    """Fine-tune a copy of the viewer's U-Net on image / annotation pairs; Start, Stop, Undo."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from ..core.training.train import (  # the training defaults (imports torch)
            DEFAULT_STEPS,
            FinetuneConfig,
        )

        defaults = FinetuneConfig()
        self._viewer = viewer
        self._session = session_for(viewer)
        self._task: Task | None = None
        self._ran_in = "float32"  # the precision of the run (its words), "auto" resolved
        self._run: TrainingRun | None = None
        self._pairs: list[Pair] = []
        self._rounds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model: round

        self._image = ComboBox(label="image", choices=image_choices(viewer))
        self._annotation_box = ComboBox(
            label="annotation",
            choices=layer_choices(viewer, Labels),
            tooltip="Instance labels of the image: 0 = background, 1..N = cells.",
        )
        self._region = ComboBox(
            label="region",
            choices=region_choices(viewer, exclude=lambda: self._annotation_box.value),
            tooltip="Annotated part of the image (Shapes, or labels non-zero); other pixels are "
            "ignored in training. Follows the region chosen in Annotate for the image.",
        )
        self._add = PushButton(text="Add pair", tooltip="Add the current plane of the pair.")
        self._remove = PushButton(text="Remove", tooltip="Remove the selected pair.")
        self._pair_list = QListWidget()
        self._pair_list.setToolTip(HOLD_OUT_TIP)
        self._pair_list.setMaximumHeight(PAIR_LIST_HEIGHT)
        self._choose = Container(
            widgets=[
                self._image,
                self._annotation_box,
                self._region,
                row(self._add, self._remove),
            ]
        )
        self._choose.native.layout().addWidget(self._pair_list)

        self._start_from = ComboBox(
            label="start from",
            choices=[CURRENT_MODEL, NEW_NETWORK],
            tooltip="Train a copy of the viewer's current model (after a run: the fine-tuned "
            "one, so Start continues from it with all pairs), or a new small U-Net.",
        )
        self._model_info = Label(value="")
        self._undo = PushButton(
            text="Undo fine-tuning",
            enabled=False,
            tooltip="Make the model before the last fine-tuning run current again.",
        )
        self._minutes = FloatSpinBox(
            label="train for",
            value=MINUTES,
            min=0,
            max=24 * 60,
            step=1,
            tooltip="How long to train: a few minutes on a laptop CPU is the usual budget. "
            "0 = no time limit (then 'at most' steps, under advanced, ends the run).",
        )
        self._minutes.native.setSuffix(" min")
        self._minutes.native.setSpecialValueText("no time limit")
        self._show_advanced = CheckBox(
            text="advanced",
            value=False,
            tooltip="Show the step limit, learning rate, batch and crop size.",
        )
        self._steps = SpinBox(
            label="at most (steps)",
            value=DEFAULT_STEPS,
            min=1,
            max=1_000_000,
            tooltip="Stop after this many optimisation steps even if time remains.",
        )
        self._lr = FloatSpinBox(
            label="learning rate", value=defaults.lr, min=1e-5, max=0.1, step=1e-5
        )
        self._batch = SpinBox(label="batch size", value=defaults.batch_size, min=1, max=256)
        self._tile = SpinBox(
            label="tile (px)",
            value=defaults.tile,
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
        self._precision = precision_box(defaults.precision)
        self._advanced = Container(
            widgets=[self._steps, self._lr, self._batch, self._tile, self._precision]
        )
        self._settings = Container(
            widgets=[
                self._start_from,
                self._model_info,
                self._undo,
                self._minutes,
                self._augment,
                self._grey,
                self._show_advanced,
                self._advanced,
            ]
        )
        self._start = PushButton(text="Start")
        self._stop = PushButton(text="Stop", enabled=False)
        self._status = Label(value="")
        self._validation = Label(value="")
        self._bar = ProgressBar(min=0, max=1, value=0)
        self._plot = LossPlot()
        self._progress = Container(
            labels=False,
            widgets=[
                row(self._start, self._stop),
                self._status,
                self._validation,
                self._bar,
            ],
        )
        self._progress.native.layout().addWidget(self._plot)
        super().__init__(labels=False, widgets=[self._choose, self._settings, self._progress])
        narrow(self)
        self._connect_signals()
        self._on_image_changed()
        self._on_model_changed()
        self._on_show_advanced()

    def _connect_signals(self) -> None:
        watch_layers(self._viewer, self._on_layers_changed)
        self._image.changed.connect(self._on_image_changed)
        self._add.changed.connect(self._on_add)
        self._remove.changed.connect(self._on_remove)
        self._start.changed.connect(self._on_start)
        self._stop.changed.connect(self._on_stop)
        self._undo.changed.connect(self._on_undo)
        self._show_advanced.changed.connect(self._on_show_advanced)
        self._minutes.changed.connect(self._on_minutes)
        self._session.model_changed.connect(self._on_model_changed)
        self._session.busy_changed.connect(self._on_model_changed)
        self._session.region_changed.connect(self._on_region_chosen)

    def _on_layers_changed(self, event=None) -> None:
        self.reset_choices()
        gone = [row for row, pair in enumerate(self._pairs) if pair.gone(self._viewer)]
        if gone:  # a pair whose layers are gone cannot be trained on: out of the list
            names = ", ".join(f"'{self._pairs[row].name}'" for row in gone)
            for row in reversed(gone):
                self._pair_list.takeItem(row)
                del self._pairs[row]
            _say.info(f"a layer was closed; out of the training set: {names}")
        # "<image> annotation" made (or named) after the image was chosen: it is the one to use
        annotation = annotation_of(self._viewer, self._image.value)
        added = getattr(event, "value", None)
        if annotation is not None and (
            added is annotation or getattr(event, "type", "") == "renamed"
        ):
            self._annotation_box.value = annotation

    def _on_image_changed(self, _value=None) -> None:
        """Another image: its annotation layer and the region chosen for it in Annotate."""
        image = self._image.value
        annotation = annotation_of(self._viewer, image)
        if annotation is not None:
            self._annotation_box.value = annotation
        self._on_region_chosen(image)

    def _on_region_chosen(self, image) -> None:
        if image is None or image is not self._image.value:
            return
        region = self._session.region_for(image)
        known = region is not None and region in self._viewer.layers
        self._region.value = region if known else WHOLE_IMAGE

    def _on_show_advanced(self, *_) -> None:
        self._advanced.visible = self._show_advanced.value

    def _on_minutes(self, *_) -> None:
        if self._minutes.value == 0:  # no time limit: show the step limit that ends the run
            self._show_advanced.value = True

    def _on_model_changed(self, *_) -> None:
        self._model_info.value = f"current model: {self._session.label}"
        self._undo.enabled = self._session.can_undo and not self._session.refusal(CHANGE)

    # the training set ------------------------------------------------------------------------
    def _on_add(self, *_) -> None:
        image, labels, region = self._image.value, self._annotation_box.value, self._region.value
        if image is None or labels is None:
            _say.warning("pick an image layer and its annotation (a labels layer)")
            return
        region = None if region == WHOLE_IMAGE else region
        pair = Pair(image, labels, region, tuple(image.world_to_data(self._viewer.dims.point)))
        try:
            annotation_pair(image, labels, region, pair.step)
        except ValueError as err:
            _say.error(f"cannot add this pair: {err}")
            return
        key = (image, labels, region, pair.plane)
        if any((p.image, p.labels, p.region, p.plane) == key for p in self._pairs):
            _say.info(f"'{pair.name}' is already in the training set")
            return
        item = QListWidgetItem(pair.named())  # long names cut in the middle: the plane shows
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Unchecked)
        item.setToolTip(f"{pair.name}\n{HOLD_OUT_TIP}")
        self._pair_list.addItem(item)
        self._pairs.append(pair)

    def _on_remove(self, *_) -> None:
        row = self._pair_list.currentRow()
        if row < 0:
            _say.info("select a pair in the list to remove it")
            return
        self._pair_list.takeItem(row)
        del self._pairs[row]

    def _held_out(self, row: int) -> bool:
        return self._pair_list.item(row).checkState() == Qt.CheckState.Checked

    def _collect(self) -> tuple[list, list] | None:
        """``(train, validation)`` lists of ``(image, labels, mask)`` copies of the pairs'
        planes; None after a notification saying what is wrong."""
        if not self._pairs:
            _say.error("no training pair; pick an image and its annotation, then 'Add pair'")
            return None
        train, validation = [], []
        for index, pair in enumerate(self._pairs):
            try:
                image, labels, mask = annotation_pair(
                    pair.image, pair.labels, pair.region, pair.step
                )
            except ValueError as err:
                _say.error(f"pair '{pair.name}': {err}")
                return None
            if not np.any(labels if mask is None else labels[mask]):
                where = "" if mask is None else " inside its region"
                _say.error(
                    f"pair '{pair.name}' has no annotated cell{where}; paint at least one cell "
                    "(Annotate) or remove the pair"
                )
                return None
            (validation if self._held_out(index) else train).append((image, labels, mask))
        if not train:
            _say.error("every pair is held out for validation; untick at least one")
            return None
        return train, validation

    # training --------------------------------------------------------------------------------
    def _trainee(self) -> UNet | None:
        """What to train: a deep copy of the current model, or a new network; None after a
        notification."""
        if self._start_from.value == NEW_NETWORK:
            from napari_unet import UNet

            return UNet(base_channels=NEW_BASE_CHANNELS)
        model = self._session.get_model(_say)
        return None if model is None else copy.deepcopy(model)

    def run(self) -> GeneratorWorker | None:
        """Start training as the Start button does; the run's worker, None when it did not
        start (the user told why)."""
        self._on_start()
        return None if self._task is None else self._task.worker

    @property
    def status(self) -> str:
        """The status line: how the run is going, or how it ended."""
        return self._status.value

    def _on_start(self, *_) -> None:
        if self._task is not None:
            return
        pairs = self._collect()
        if pairs is None:
            return
        if not self._session.check_free(TRAINING, _say):
            return
        trainee = self._trainee()
        if trainee is None:
            return
        continued = self._start_from.value == CURRENT_MODEL and self._session.has_model
        round_ = self._rounds.get(self._session.model, 0) + 1 if continued else 1
        train, validation = pairs
        seconds = self._minutes.value * 60 or None
        settings = {
            "steps": self._steps.value,
            "max_seconds": seconds,
            "lr": self._lr.value,
            "batch_size": self._batch.value,
            "tile": self._tile.value,
            "augment": self._augment.value,
            "precision": self._precision.value,
            "score": True,  # the annotated cells before and after: did the run change them?
        }
        self._ran_in = precision_words(settings["precision"], trainee)
        events = training_events(trainee, train, validation, self._grey.value, settings)
        self._task = Task(
            events,
            _say,
            on_yielded=self._on_yielded,
            on_done=self._on_done,
            session=self._session,
            task=TRAINING,
        )
        bar = progress(total=100, desc="Fine-tuning U-Net (% of the budget)")
        self._run = TrainingRun(trainee, bar, len(train), seconds, round_)
        self._plot.clear()
        self._show_progress(0, settings["steps"], 0.0)
        self._status.value = f"preparing the training data… (training in {self._ran_in})"
        self._validation.value = (
            f"validation on {plural(len(validation), 'held-out pair')}: pending"
            if validation
            else ""
        )
        self._set_running(True)
        if not self._task.start():
            bar.close()
            self._task = self._run = None
            self._status.value = "not started; the current model is unchanged"
            self._set_running(False)

    def _on_stop(self, *_) -> None:
        if self._task is None:
            return
        self._task.cancel()
        self._stop.enabled = False
        self._status.value = f"stopping after step {self._run.steps + 1}…"

    def _on_undo(self, *_) -> None:
        if not self._session.can_undo or not self._session.check_free(CHANGE, _say):
            return
        self._session.undo()
        self._status.value = f"back to the model before fine-tuning: {self._session.label}"

    def _set_running(self, running: bool) -> None:
        self._start.enabled = not running
        self._stop.enabled = running
        self._settings.enabled = not running
        if not running:
            self._on_model_changed()

    def _timed(self, step: int, total: int, elapsed: float) -> bool:
        """Whether the time budget, not the step limit, ends the run (the one used up more)."""
        seconds = self._run.seconds
        return seconds is not None and elapsed / seconds >= step / total

    def _show_progress(self, step: int, total: int, elapsed: float, done: bool = False) -> None:
        """The progress bar in time (``m:ss / m:ss``) or in steps, whichever ends the run."""
        seconds = self._run.seconds
        if self._timed(step, total, elapsed):
            self._bar.max = PERMILLE
            self._bar.value = (
                PERMILLE if done else min(round(PERMILLE * elapsed / seconds), PERMILLE)
            )
            self._bar.native.setFormat(f"{clock(elapsed)} / {clock(seconds)}")
        else:
            self._bar.max = total
            self._bar.value = total if done else step
            self._bar.native.setFormat("%v / %m steps")

    def _on_yielded(self, event: FinetuneEvent) -> None:
        run = self._run
        run.update(event)
        self._show_progress(event.step, event.total, event.elapsed, event.done)
        if not self._task.cancelling:
            if self._timed(event.step, event.total, event.elapsed):
                at = f"{clock(event.elapsed)} of {clock(run.seconds)}, step {event.step}"
            else:
                at = f"step {event.step}/{event.total} ({clock(event.remaining)} left)"
            self._status.value = f"{at} in {self._ran_in}, loss {event.loss:.3g}"
        self._plot.add(event.step, event.loss)
        if event.val_iou is not None:
            self._validation.value = f"validation IoU {event.val_iou:.3f} (step {event.step})"
        done = 1.0 if event.done else event.step / event.total
        if run.seconds is not None:
            done = max(done, event.elapsed / run.seconds)
        # last: napari's progress bar processes events, which may run _on_done right here
        run.bar.update(min(int(100 * done), 100) - run.bar.n)

    def _on_done(self, outcome: Outcome) -> None:
        run, self._run, self._task = self._run, None, None
        run.bar.close()
        self._set_running(False)
        if outcome.error is not None:
            self._status.value = (
                f"failed after {plural(run.steps, 'step')}; the current model is unchanged"
            )
            return
        if run.steps == 0:
            self._status.value = "stopped before the first step; the model was not changed"
            return
        how, said = "stopped at" if outcome.cancelled else "done:", verdict(run)
        self._status.value = (
            f"{how} step {run.steps}, loss {run.loss:.3g}, {clock(run.elapsed)} of training "
            f"in {self._ran_in}. " + said + measured(run.model) + NEXT_ROUND
        )
        if run.check.too_short or run.check.unchanged:
            _say.warning(said.strip())
        source = f"{plural(run.pairs, 'pair')}, {plural(run.steps, 'step')}"
        if run.round == 1:
            source = f"fine-tuned on {source}"
        else:
            source = f"round {run.round}: continued from round {run.round - 1} on {source}"
        self._rounds[run.model] = run.round
        self._session.set_model(run.model, source, undoable=True)
