"""Predict: stream a U-Net prediction into layers, visible region first, on one of three routes.

An image in memory streams tile by tile into layers of the run (:mod:`._in_memory`); a large
image that is not in memory is predicted block by block into on-disk layers (:mod:`._lazy`);
a file can be segmented on a dask cluster (:mod:`._cluster`). The route is chosen once, when
Predict is pressed, and its :class:`~._runs.Run` applies the worker's events on the main thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from qtpy.QtCore import QTimer

from ..core.prediction.instances import CORE, MIN_CORE, MIN_SIZE, InstanceConfig, size_defaults
from ..core.prediction.scale import sized_cells
from ._cluster import ClusterResults
from ._diameter import DiameterControl, Sized, cell_size_hint, needs_resampling
from ._in_memory import InMemoryRun
from ._layers import full_resolution, image_choices, plane_index, watch_layers
from ._lazy import LazyJobs, goes_lazy
from ._runs import Run, Settings
from ._session import CHANGE, PREDICTING, session_for
from ._ui import FixedRadioButtons, Messages, narrow, precision_box, precision_words
from ._worker import Task

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from ..core.network.model import UNet
    from ._worker import Outcome

__all__ = ["PredictWidget"]

CURRENT, FILE = "current model", "file…"
PLANE, ALL_PLANES = "current plane", "all planes"
THIS_PROCESS, LOCAL_CLUSTER, SCHEDULER = "this process", "local cluster", "dask scheduler"
REFRESH_INTERVAL = 0.1  # seconds; streamed tiles are shown at most this often
_say = Messages("Predict")


def _side(what: str, tooltip: str) -> SpinBox:
    """A control of the side of a tile or block in px, 0 for automatic."""
    return SpinBox(label=f"{what} size (0 = auto)", min=0, max=8192, step=16, tooltip=tooltip)


class PredictWidget(Container):
    """Predict an image layer with the current model (or a model file); tiles stream in."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._session = session_for(viewer)
        self._task: Task | None = None
        self._run: Run | None = None
        self._of: tuple[Image, str, str] | None = None  # a run's image, model, precision
        self._gone = ""  # the name of a run's image closed while it ran
        self._lazy = LazyJobs(viewer)  # lazy layers' jobs and outputs
        self._cluster = ClusterResults(viewer)  # the temporary folders of a cluster's labels
        self._last_refresh = 0.0
        self._refresh_timer = QTimer()
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(int(REFRESH_INTERVAL * 1000))

        self._image = ComboBox(label="image", choices=image_choices(viewer))
        self._model_choice = ComboBox(label="model", choices=[CURRENT, FILE], value=CURRENT)
        self._source = Label(label="current")
        self._cells = Label(
            value="",
            tooltip="The size of the cells the current model was fine-tuned on; splitting the "
            "foreground into cells uses it",
        )
        self._diameter = DiameterControl(viewer, lambda: self._image.value, _say)
        self._model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self._make_current = CheckBox(text="make current", value=False)
        self._tile = _side(
            "tile",
            "Output side of a tile of an image in memory, in px (0: the fastest that "
            "fits the memory)",
        )
        self._block = _side(
            "block",
            "Side of a block of a large image (predicted region by region, or on a "
            "cluster), in px (0: automatic)",
        )
        self._flips = CheckBox(
            text="average 8 flips",
            value=False,
            tooltip="Average the 8 flips and quarter turns of each tile: 8x slower, more accurate",
        )
        self._precision = precision_box("auto")
        defaults = InstanceConfig()
        self._threshold = FloatSpinBox(
            label="threshold", min=0.05, max=CORE, step=0.05, value=defaults.threshold
        )
        self._auto_size = CheckBox(
            text="min. size from the model",
            value=True,
            tooltip="Smallest cell kept and smallest seed: 5 % of the median area of the cells "
            "(a disc of the diameter typed or estimated, else the cells the model was "
            f"fine-tuned on); {MIN_SIZE} px and {MIN_CORE} px when it says nothing.",
        )
        self._min_size = SpinBox(label="min. size (px)", min=0, max=1_000_000, value=MIN_SIZE)
        self._expand = SpinBox(label="grow cells (px)", min=0, max=20, value=defaults.expand)
        self._with_probability = CheckBox(text="probability layer", value=False)
        self._grey = CheckBox(
            text="convert RGB to grey",
            value=True,
            tooltip="Turn RGB(A) images into grey for a one-channel model.",
        )
        self._planes = FixedRadioButtons(label="stack", choices=[PLANE, ALL_PLANES], value=PLANE)
        self._run_on = ComboBox(
            label="run on",
            choices=[THIS_PROCESS, LOCAL_CLUSTER, SCHEDULER],
            value=THIS_PROCESS,
            tooltip="A large image from a file (TIFF, zarr, OME-Zarr) can be segmented block by "
            "block on a dask cluster: a local one of some worker processes, or a running one",
        )
        self._workers = SpinBox(label="workers", min=1, max=256, value=2)
        self._scheduler = LineEdit(label="scheduler", value="tcp://localhost:8786")
        self._out_folder = FileEdit(
            label="save labels in",
            mode="d",
            tooltip="Folder for the results of large images: the OME-Zarr labels a cluster "
            "writes (kept), and a lazy image's results (in a folder napari-unet-* removed with "
            "their layers); empty: the system's temporary folder",
        )
        self._predict = PushButton(text="Predict")
        self._rest = PushButton(
            text="Predict the rest",
            tooltip="A large lazy image is predicted in view first; this predicts the rest, "
            "nearest to the view first",
        )
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(value="")
        super().__init__(
            widgets=[
                self._image,
                self._model_choice,
                self._source,
                self._cells,
                *self._diameter.widgets,
                self._model_file,
                self._make_current,
                self._tile,
                self._block,
                self._flips,
                self._precision,
                self._threshold,
                self._auto_size,
                self._min_size,
                self._expand,
                self._with_probability,
                self._grey,
                self._planes,
                self._run_on,
                self._workers,
                self._scheduler,
                self._out_folder,
                self._predict,
                self._rest,
                self._cancel,
                self._progress,
                self._status,
            ]
        )
        narrow(self)
        self._connect_signals()
        self._on_auto_size()
        self._on_model_choice()
        self._on_run_on()
        self._on_model_changed()
        self._on_image_changed()

    def _connect_signals(self) -> None:
        watch_layers(self._viewer, self._on_layers_changed)
        self._image.changed.connect(self._on_image_changed)
        self._model_choice.changed.connect(self._on_model_choice)
        self._session.model_changed.connect(self._on_model_changed)
        self._predict.clicked.connect(self._on_predict)
        self._rest.clicked.connect(self._on_rest)
        self._run_on.changed.connect(self._on_run_on)
        self._cancel.clicked.connect(self._on_cancel)
        self._auto_size.changed.connect(self._on_auto_size)
        self._diameter.value.changed.connect(self._on_auto_size)
        self._refresh_timer.timeout.connect(self._on_refresh_timer)

    # ------------------------------------------------------------------ choices and state
    def _on_auto_size(self, value=None) -> None:
        self._min_size.enabled = not self._auto_size.value
        if self._auto_size.value:  # show the value a run will use, not a stale number
            model = self._session.model if self._session.has_model else None
            cells = (getattr(model, "metadata", None) or {}).get("cells")
            typed = self._diameter.typed
            self._min_size.value = size_defaults(sized_cells(typed) if typed else cells)[0]

    def _on_layers_changed(self, _event=None) -> None:
        self.reset_choices()
        if self._task is not None and self._of[0] not in self._viewer.layers and not self._gone:
            self._gone = self._of[0].name  # its result is dropped, not added: stop now
            self._status.value = f"'{self._gone}' was closed: stopping…"
            self._task.cancel()
        self._lazy.prune()
        self._cluster.prune()

    def _on_image_changed(self, _value=None) -> None:
        layer = self._image.value
        spatial = layer.ndim if layer is not None else 2
        self._planes.enabled = spatial > 2
        self._grey.enabled = layer is not None and layer.rgb
        self._rest.enabled = self._task is None and self._lazy.can_go_on(layer)

    def _on_run_on(self, _value=None) -> None:
        self._tile.visible = self._run_on.value == THIS_PROCESS
        self._workers.visible = self._run_on.value == LOCAL_CLUSTER
        self._scheduler.visible = self._run_on.value == SCHEDULER

    def _on_model_choice(self, _value=None) -> None:
        from_file = self._model_choice.value == FILE
        self._model_file.visible = from_file
        self._make_current.visible = from_file
        self._on_model_changed()

    def _on_model_changed(self) -> None:
        self._source.value = self._session.label
        hint = cell_size_hint(self._session.model) if self._session.has_model else ""
        self._cells.value = hint
        self._cells.visible = bool(hint)
        current = self._model_choice.value == CURRENT and self._session.has_model
        self._diameter.show_model(self._session.model if current else None)
        self._on_auto_size()

    def _set_running(self, running: bool) -> None:
        for widget in self:
            if widget not in (self._progress, self._status):
                widget.enabled = not running
        self._cancel.enabled = running
        if not running:
            self._on_auto_size()
            self._on_image_changed()
            self._diameter.refresh()

    # ------------------------------------------------------------------------- Predict
    def _resolve_model(self) -> UNet | None:
        """The model to predict with; None (and the user told why) if there is none."""
        if self._model_choice.value == CURRENT:
            return self._session.get_model(_say)
        path = Path(self._model_file.value or "")
        if str(path) in ("", "."):
            _say.error("choose a .safetensors model file, or pick 'current model'")
            return None
        from napari_unet.core.network.store import load_model

        try:
            return load_model(path)
        except (OSError, ValueError) as err:
            _say.error(f"could not load the model: {err}")
            return None

    def _model_label(self) -> str:
        """The name of a run's model: the current model's label, or the file's."""
        if self._model_choice.value == FILE and not self._make_current.value:
            return f"file: {Path(self._model_file.value).name}"
        return self._session.label

    def _view_center(self, layer: Image, n_spatial: int) -> tuple[float, float]:
        """Centre of the current view as ``(y, x)`` in the layer's data coordinates."""
        point = np.asarray(self._viewer.dims.point, dtype=float)
        displayed = list(self._viewer.dims.displayed)
        viewer = self._viewer
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari<0.9
        point[displayed] = camera.center[-len(displayed) :]
        y, x = layer.world_to_data(point)[n_spatial - 2 : n_spatial]
        return float(y), float(x)

    def _check_layout(self, layer: Image, model: UNet) -> tuple[tuple[int, ...], bool] | None:
        """``(spatial shape, convert to grey)`` of ``layer`` (its full resolution) for
        ``model``; None (and the user told why) when the image does not fit the model."""
        data = full_resolution(layer)
        grey = bool(layer.rgb and model.in_channels == 1)
        if grey and not self._grey.value:
            _say.error(
                f"'{layer.name}' is RGB but the model takes one channel; tick 'convert RGB to "
                "grey' or choose a model trained on colour images"
            )
            return None
        if grey:
            return tuple(data.shape[:-1]), True
        from napari_unet.core.image import split_channels

        try:  # checks the layout only: a zero-strided stand-in, nothing copied
            checked, has_channels = split_channels(
                np.broadcast_to(np.zeros((), np.uint8), data.shape), model.in_channels
            )
        except ValueError as err:
            _say.error(f"'{layer.name}' does not fit the model: {err}")
            return None
        return tuple(checked.shape[:-1] if has_channels else checked.shape), False

    # ------------------------------------------------------------------ the public surface
    def run(self, *, rest: bool = False) -> GeneratorWorker | None:
        """Predict as the Predict button does ('Predict the rest' with ``rest``); the run's
        worker, None when it did not start (the user told why)."""
        self._on_predict(rest=rest)
        return None if self._task is None else self._task.worker

    @property
    def status(self) -> str:
        """The status line: how the last run is going, or how it ended."""
        return self._status.value

    @property
    def running(self) -> bool:
        """Whether a run is on (until its results are placed)."""
        return self._task is not None

    # ------------------------------------------------------------------------- routes
    def _on_rest(self, _value=None) -> None:
        self._on_predict(rest=True)

    def _on_predict(self, _value=None, *, rest: bool = False) -> None:
        if self._task is not None:  # one run at a time
            return
        layer = self._image.value
        if layer is None:
            _say.warning("add or open an image layer to predict")
            return
        make_current = self._model_choice.value == FILE and self._make_current.value
        if make_current and not self._session.check_free(CHANGE, _say):
            return
        model = self._resolve_model()
        layout = None if model is None else self._check_layout(layer, model)
        if layout is None:
            return
        if make_current:
            self._session.set_model(model, f"file: {Path(self._model_file.value).name}")
        try:
            run, events = self._make_run(layer, model, layout, rest)
        except Exception as err:  # e.g. the image cannot be read into memory
            _say.error(f"could not start: {err}")
            return
        self._of, self._gone = (layer, self._model_label(), self._ran_in(model)), ""
        self._start(run, events)

    def _ran_in(self, model: UNet) -> str:
        """What a run computes in, e.g. ``"float32"`` (a cluster's workers resolve "auto")."""
        if self._run_on.value != THIS_PROCESS and self._precision.value == "auto":
            return "precision auto"
        return precision_words(self._precision.value, model)

    def _make_run(self, layer: Image, model: UNet, layout, rest: bool):
        """``(run, generator)`` on the route the choices and the image call for."""
        shape, grey = layout
        settings = self._settings(model)
        needs_resampling(model, settings.diameter)  # ValueError: out of range
        if self._run_on.value != THIS_PROCESS:
            workers = scheduler = None
            if self._run_on.value == SCHEDULER:
                scheduler = self._scheduler.value.strip()
                if not scheduler:
                    raise ValueError(
                        "enter the address of a running dask scheduler (tcp://host:8786)"
                    )
            else:
                workers = self._workers.value
            return self._cluster.start(
                layer, model, settings, workers=workers, scheduler=scheduler
            )
        prefix = self._prefix(layer, shape)
        read = shape if prefix is None else shape[len(prefix) :]
        center = self._view_center(layer, len(shape))
        if goes_lazy(full_resolution(layer), shape, read):
            return self._lazy.start(layer, model, shape, prefix, center, settings, rest=rest)
        layout = (shape, grey, prefix or ())
        probability = self._with_probability.value
        return InMemoryRun.start(self._viewer, layer, model, layout, center, settings, probability)

    def _prefix(self, layer: Image, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Index of the viewed plane of a stack with "current plane" (``()`` for a 2-D
        image); None for "all planes" of a stack."""
        if len(shape) <= 2:
            return ()
        if self._planes.value == ALL_PLANES:
            return None
        step = layer.world_to_data(self._viewer.dims.point)
        return plane_index(shape, step[: len(shape)])

    def _instances(self) -> InstanceConfig:
        min_size = None if self._auto_size.value else self._min_size.value
        return InstanceConfig(self._threshold.value, min_size, self._expand.value)

    def _settings(self, model: UNet) -> Settings:
        folder = Path(self._out_folder.value or "")
        return Settings(
            config=self._instances(),
            tile=self._tile.value,
            block=self._block.value,
            flips=self._flips.value,
            folder=None if str(folder) in ("", ".") else folder,
            model_label=self._model_label(),
            diameter=self._diameter.typed,
            precision=self._precision.value,
        )

    def _start(self, run: Run, events) -> None:
        """Run the worker's generator ``events`` for ``run``."""
        task = Task(
            events,
            _say,
            on_yielded=self._on_event,
            on_done=self._on_done,
            session=self._session,
            task=PREDICTING,
        )
        self._status.value = "starting…"
        self._progress.value = 0
        self._last_refresh = 0.0
        self._task, self._run = task, run
        self._set_running(True)
        if not task.start():  # claims the model right before the worker starts
            run.discard()
            self._task = self._run = None
            self._status.value = "not started"
            self._set_running(False)

    # --------------------------------------------------------------- worker callbacks
    def _on_event(self, event) -> None:
        if isinstance(event, Sized):
            self._diameter.show_used(event)
        run = self._run
        stop = run.apply(event)
        if stop is not None and not self._task.cancelling:
            _say.error(stop)
            self._task.cancel()
        self._progress.max = max(1, run.total)
        self._progress.value = run.done
        if not self._task.cancelling:
            self._status.value = run.status
        if time.perf_counter() - self._last_refresh >= REFRESH_INTERVAL:
            self._refresh_layers()
        elif not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def _on_refresh_timer(self) -> None:
        if self._run is not None:
            self._refresh_layers()

    def _refresh_layers(self) -> None:
        """Show the tiles written since the last refresh."""
        self._refresh_timer.stop()
        run = self._run
        if not run.dirty:
            return
        run.refresh()
        run.dirty = False
        self._last_refresh = time.perf_counter()

    def _on_cancel(self) -> None:
        if self._task is not None:
            self._status.value = "cancelling…"
            self._task.cancel()

    def _on_done(self, outcome: Outcome) -> None:
        run = self._run
        self._refresh_layers()
        self._run = self._task = None
        self._set_running(False)
        if self._gone:
            run.drop()
            self._status.value = f"dropped: '{self._gone}' was closed during the prediction"
            _say.warning(f"'{self._gone}' was closed while it was predicted; no result is added")
            return
        said = run.finish(outcome)
        _, label, ran = self._of
        self._status.value = said if outcome.error else f"{said}, {ran} (model: {label})"
