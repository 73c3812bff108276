"""Predict: stream a U-Net prediction into a labels layer, tile by tile, visible region first.

Each run streams into layers of its own, made before the worker starts (added without selecting
them: the layer being painted stays selected): the labels on top, the probability (when asked
for) directly over its image, additive. Each tile is shown as soon as it is done (its thresholded
probability, label 1); when all tiles are in, the worker splits the foreground into cells
(:func:`napari_unet.to_instances`) and the instance labels replace the preview.

An earlier result is replaced only by a complete run: the unedited prediction (and probability)
layer of the same image and shape gets the new data in place (its name and place kept) once the
run is done, and the run's own layers (``"<image> prediction (running)"``, ``"<image>
probability (running)"``) go away; with no earlier result they become the result, renamed
``"<image> prediction"`` / ``"<image> probability"``.
Cancel keeps the tiles done so far in layers renamed ``"<image> prediction (partial)"`` (and
``"... probability (partial)"``; thresholded, not split into cells, never reused); a failure
removes the run's layers. Either way an earlier result is left exactly as it was. A prediction
layer the user has painted on is never overwritten: the next run writes a new layer
``"<image> prediction [2]"``. With "current plane" only that plane of the earlier layer is
replaced, so planes can be predicted one at a time into one layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ._large import full_resolution, goes_lazy, instance_settings
from ._large_jobs import ClusterRun, LargeImages, LazyRun, Settings
from ._layers import (
    EDITED,
    MADE,
    OF,
    add_quietly,
    find_made,
    free_name,
    image_choices,
    plane_index,
    watch_layers,
)
from ._session import CHANGE, PREDICTING, session_for
from ._ui import Messages, narrow
from ._worker import Task

if TYPE_CHECKING:
    import napari

    from ..core.network.model import UNet
    from ._worker import Outcome

__all__ = ["PredictWidget"]

CURRENT, FILE = "current model", "file…"
PLANE, ALL_PLANES = "current plane", "all planes"
THIS_PROCESS, LOCAL_CLUSTER, SCHEDULER = "this process", "local cluster", "dask scheduler"
REFRESH_INTERVAL = 0.1  # seconds; streamed tiles are shown at most this often
_say = Messages("Predict")


def _predict_job(model, pixels, *, grey, shape, tile, center, flips, threshold, min_size, expand):
    """The worker's generator: yield each :class:`~napari_unet.TileResult`, then return
    ``(labels, probabilities)`` of ``shape``: uint16/uint32 instances and float32 foreground.
    Closing it closes the tile generator."""
    from contextlib import closing

    from napari_unet.core.image import grey_if_rgb
    from napari_unet.core.prediction.instances import Probabilities, to_instances
    from napari_unet.core.prediction.predict import predict_tiles

    if grey:
        pixels = grey_if_rgb(pixels, model.in_channels)
    probabilities = Probabilities.for_model(np.zeros(shape, dtype=np.float32), model)
    tiles = predict_tiles(model, pixels, tile=tile, center=center, flips=flips)
    with closing(tiles):
        for result in tiles:
            probabilities[result.plane][result.region] = result.probabilities
            yield result
    labels = to_instances(probabilities, threshold, min_size, expand=expand)
    return labels, np.asarray(probabilities)


@dataclass
class _Output:
    """One output of a run: the layer its tiles stream into (``metadata[MADE]`` is
    ``"<kind> (running)"`` meanwhile) and the earlier result a complete run replaces."""

    kind: str  # "prediction" or "probability"
    layer: Labels | Image
    earlier: Labels | Image | None


@dataclass
class _Run:
    """What the main thread needs to place the results of one prediction."""

    labels: _Output
    probability: _Output | None
    prefix: tuple[int, ...]  # index of the predicted plane in the layer ("current plane")
    threshold: float
    done: int = 0
    total: int = 0
    dirty: bool = False  # tiles written since the last refresh

    def refresh(self) -> None:
        for output in (self.labels, self.probability):
            if output is not None:
                output.layer.refresh()


def cell_size_hint(model: UNet) -> str:
    """One line on the cells ``model`` was fine-tuned on (``metadata["cells"]``, a dict with
    ``"median_diameter"`` in px and ``"count"``), e.g. ``"cells ~24 px across (from 53
    annotated cells)"``; ``""`` when the model does not say."""
    cells = (getattr(model, "metadata", None) or {}).get("cells")
    if not isinstance(cells, dict) or not cells.get("median_diameter"):
        return ""
    hint = f"cells ~{float(cells['median_diameter']):.0f} px across"
    count = cells.get("count")
    return f"{hint} (from {int(count)} annotated cells)" if count else hint


class PredictWidget(Container):
    """Predict an image layer with the current model (or a model file); tiles stream in."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._session = session_for(viewer)
        self.worker = None  # the last run's worker
        self._task: Task | None = None
        self._run: _Run | LazyRun | ClusterRun | None = None
        self._large = LargeImages(viewer)  # lazy layers' jobs and outputs, cluster labels
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
        self._model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self._make_current = CheckBox(text="make current", value=False)
        self._tile = SpinBox(label="tile size (0 = auto)", min=0, max=8192, step=16, value=0)
        self._flips = CheckBox(
            text="average 8 flips",
            value=False,
            tooltip="Average the 8 flips and quarter turns of each tile: 8x slower, more accurate",
        )
        self._threshold = FloatSpinBox(label="threshold", min=0.05, max=0.9, step=0.05, value=0.5)
        self._auto_size = CheckBox(
            text="min. size from the model",
            value=True,
            tooltip="Smallest cell kept and smallest seed: 5 % of the median area of the cells "
            "the model was fine-tuned on (shown above); 16 px and 200 px when it says nothing.",
        )
        self._min_size = SpinBox(label="min. size (px)", min=0, max=1_000_000, value=16)
        self._expand = SpinBox(label="grow cells (px)", min=0, max=20, value=1)
        self._with_probability = CheckBox(text="probability layer", value=False)
        self._grey = CheckBox(
            text="convert RGB to grey",
            value=True,
            tooltip="Turn RGB(A) images into grey for a one-channel model.",
        )
        self._planes = RadioButtons(label="stack", choices=[PLANE, ALL_PLANES], value=PLANE)
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
                self._model_file,
                self._make_current,
                self._tile,
                self._flips,
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
        self._refresh_timer.timeout.connect(self._on_refresh_timer)

    # ------------------------------------------------------------------ choices and state
    def _on_auto_size(self, value=None) -> None:
        self._min_size.enabled = not self._auto_size.value

    def _on_layers_changed(self, _event=None) -> None:
        self.reset_choices()
        self._large.prune()

    def _on_image_changed(self, _value=None) -> None:
        layer = self._image.value
        spatial = layer.ndim if layer is not None else 2
        self._planes.enabled = spatial > 2
        self._grey.enabled = layer is not None and layer.rgb
        self._rest.enabled = self._task is None and self._large.can_go_on(layer)

    def _on_run_on(self, _value=None) -> None:
        self._workers.visible = self._run_on.value == LOCAL_CLUSTER
        self._scheduler.visible = self._run_on.value == SCHEDULER

    def _on_model_choice(self, _value=None) -> None:
        from_file = self._model_choice.value == FILE
        self._model_file.visible = from_file
        self._make_current.visible = from_file

    def _on_model_changed(self) -> None:
        self._source.value = self._session.label
        hint = cell_size_hint(self._session.model) if self._session.has_model else ""
        self._cells.value = hint
        self._cells.visible = bool(hint)

    def _set_running(self, running: bool) -> None:
        for widget in self:
            if widget not in (self._progress, self._status):
                widget.enabled = not running
        self._cancel.enabled = running
        if not running:
            self._on_auto_size()
            self._on_image_changed()

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
        shape, grey = layout
        try:
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
                run, events = self._large.cluster(
                    layer, model, self._settings(model), workers=workers, scheduler=scheduler
                )
            else:
                prefix = self._prefix(layer, shape)
                read = shape if prefix is None else shape[len(prefix) :]
                if goes_lazy(full_resolution(layer), shape, read):
                    center = self._view_center(layer, len(shape))
                    run, events = self._large.lazy(
                        layer, model, shape, prefix, center, self._settings(model), rest=rest
                    )
                else:
                    run, events = self._prepare(layer, model, shape, grey, prefix or ())
        except Exception as err:  # e.g. the image cannot be read into memory
            _say.error(f"could not start: {err}")
            return
        self._start(run, events)

    def _prefix(self, layer: Image, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Index of the viewed plane of a stack with "current plane" (``()`` for a 2-D
        image); None for "all planes" of a stack."""
        if len(shape) <= 2:
            return ()
        if self._planes.value == ALL_PLANES:
            return None
        step = layer.world_to_data(self._viewer.dims.point)
        return plane_index(shape, step[: len(shape)])

    def _settings(self, model: UNet) -> Settings:
        folder = Path(self._out_folder.value or "")
        return Settings(
            instance=instance_settings(
                model,
                self._threshold.value,
                None if self._auto_size.value else self._min_size.value,
                self._expand.value,
            ),
            tile=self._tile.value,
            flips=self._flips.value,
            folder=None if str(folder) in ("", ".") else folder,
            model_label=self._session.label,
        )

    def _start(self, run, events) -> None:
        """Run the worker's generator ``events`` for ``run``."""
        task = Task(
            events,
            _say,
            on_yielded=self._on_tile,
            on_done=self._on_done,
            session=self._session,
            task=PREDICTING,
        )
        self._status.value = "starting…"
        self._progress.value = 0
        self._last_refresh = 0.0
        self._task, self._run = task, run
        self._set_running(True)
        started = task.start()  # claims the model right before the worker starts
        self.worker = task.worker
        if not started:
            if isinstance(run, _Run):
                self._discard(run)
            self._task = self._run = None
            self._status.value = "not started"
            self._set_running(False)

    def _prepare(
        self, layer: Image, model: UNet, shape: tuple[int, ...], grey: bool, prefix: tuple
    ):
        """Copy the pixels (plane ``prefix``), make the output layers; ``(run, generator)``."""
        data = full_resolution(layer)
        pixels = np.array(data[prefix] if prefix else data)  # the worker's copy
        center = self._view_center(layer, len(shape))
        run = _Run(
            labels=self._output(layer, shape, "prediction"),
            probability=(
                self._output(layer, shape, "probability") if self._with_probability.value else None
            ),
            prefix=prefix,
            threshold=self._threshold.value,
        )
        return run, _predict_job(
            model,
            pixels,
            grey=grey,
            shape=shape[len(prefix) :],
            tile=self._tile.value or None,
            center=center,
            flips=self._flips.value,
            threshold=self._threshold.value,
            min_size=None if self._auto_size.value else self._min_size.value,
            expand=self._expand.value,
        )

    # ------------------------------------------------------------------- output layers
    def _output(self, image: Image, shape: tuple[int, ...], kind: str) -> _Output:
        """A new layer for the tiles of ``kind`` ("prediction", "probability") and the earlier
        result of ``image`` it replaces when the run completes (an unedited one of ``shape``)."""
        viewer = self._viewer
        if kind == "prediction":
            earlier = find_made(
                viewer, Labels, kind, image.name, shape, lambda lay: not lay.metadata.get(EDITED)
            )
        else:
            earlier = find_made(viewer, Image, kind, image.name, shape)
        common = {
            "name": free_name(viewer, f"{image.name} {kind} (running)"),
            "scale": image.scale[: len(shape)],
            "units": image.units[: len(shape)],
            "translate": image.translate[: len(shape)],
            "metadata": {MADE: f"{kind} (running)", OF: image.name},
        }
        if kind == "prediction":
            layer = add_quietly(viewer, Labels(np.zeros(shape, dtype=np.uint16), **common))
        else:
            probability = Image(
                np.zeros(shape, dtype=np.float32),
                contrast_limits=(0.0, 1.0),
                colormap="magma",
                blending="additive",
                **common,
            )
            layer = add_quietly(viewer, probability, index=viewer.layers.index(image) + 1)
        return _Output(kind, layer, earlier)

    def _finish(self, output: _Output, values: np.ndarray, prefix: tuple[int, ...]) -> None:
        """Put a complete result into the earlier layer (if it is still there, unedited) and
        remove the run's layer; else the run's layer becomes the result."""
        earlier, layer = output.earlier, output.layer
        if (
            earlier is not None
            and earlier in self._viewer.layers
            and not earlier.metadata.get(EDITED)
            and earlier.data.shape == layer.data.shape
        ):
            self._place(earlier, values, prefix)
            self._remove(layer)
            return
        self._place(layer, values, prefix)
        layer.metadata[MADE] = output.kind
        if output.kind == "prediction":
            layer.metadata[EDITED] = False
            layer.events.paint.connect(self._on_prediction_painted)
        # last: the docks watching renamed layers (Annotate's prediction box) see the result
        layer.name = free_name(self._viewer, f"{layer.metadata[OF]} {output.kind}")

    def _keep_partial(self, output: _Output) -> str:
        """Rename the run's layer ``"<image> <kind> (partial)"`` (never reused); its name."""
        layer = output.layer
        layer.metadata[MADE] = f"{output.kind} (partial)"
        layer.name = free_name(self._viewer, f"{layer.metadata[OF]} {output.kind} (partial)")
        return layer.name

    def _discard(self, run: _Run | None) -> None:
        """Remove the layers of ``run`` (a run that failed or did not start)."""
        if run is not None:
            for output in (run.labels, run.probability):
                if output is not None:
                    self._remove(output.layer)

    def _remove(self, layer) -> None:
        if layer in self._viewer.layers:
            self._viewer.layers.remove(layer)

    def _on_prediction_painted(self, event) -> None:
        event.source.metadata[EDITED] = True

    # --------------------------------------------------------------- worker callbacks
    def _on_tile(self, result) -> None:
        run = self._run
        if isinstance(run, _Run):
            self._on_streamed_tile(run, result)
        else:
            stop = self._large.apply(run, result)
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

    def _on_streamed_tile(self, run: _Run, result) -> None:
        index = run.prefix + result.plane
        run.labels.layer.data[index][result.region] = result.probabilities > run.threshold
        if run.probability is not None:
            run.probability.layer.data[index][result.region] = result.probabilities
        run.total = result.total
        run.done += 1
        run.dirty = True
        self._progress.max = run.total
        self._progress.value = run.done
        if not self._task.cancelling:
            self._status.value = f"tile {run.done}/{run.total}"

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
        if not isinstance(run, _Run):
            self._status.value = self._large.finish(run, outcome)
            return
        outputs = [out for out in (run.labels, run.probability) if out is not None]
        kept = (
            "; the earlier prediction is unchanged"
            if any(out.earlier is not None for out in outputs)
            else ""
        )
        if outcome.error is not None:
            self._discard(run)
            self._status.value = f"failed after {run.done} tile(s){kept}"
        elif outcome.cancelled:
            partial = self._keep_partial(run.labels)
            if run.probability is not None:
                self._keep_partial(run.probability)
            self._status.value = (
                f"cancelled after {run.done}/{run.total} tiles, kept in '{partial}' "
                f"(thresholded, not split into cells){kept}"
            )
        else:
            labels, probabilities = outcome.value
            self._finish(run.labels, labels, run.prefix)
            if run.probability is not None:
                self._finish(run.probability, probabilities, run.prefix)
            cells = int(labels.max(initial=0))
            self._status.value = f"done: {cells} cell(s) in {run.total} tile(s)"

    @staticmethod
    def _place(layer, values: np.ndarray, prefix: tuple[int, ...]) -> None:
        if not prefix:
            layer.data = values
            return
        if values.dtype.itemsize > layer.data.dtype.itemsize:
            layer.data = layer.data.astype(values.dtype)
        layer.data[prefix] = values
        layer.refresh()
