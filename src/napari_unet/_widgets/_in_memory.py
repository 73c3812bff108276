"""Predict's in-memory route: the image read whole, its tiles streamed into layers of the run.

Each run streams into layers of its own, made before the worker starts (added without selecting
them: the layer being painted stays selected): the labels on top, the probability (when asked
for) directly over its image, additive. Each tile is shown as soon as it is done (its thresholded
probability, label 1); when all tiles are in, the worker splits the foreground into cells
(:func:`napari_unet.to_instances`) and the instance labels replace the preview.

For a model that works at one cell size the worker first yields the cell size it predicts at
(:class:`~._diameter.Sized`, estimated there when it must be); the layers then take the
resampled grid, placed over the image, and get the image's own grid back with the result.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ._diameter import Sized, resampled_grid, said
from ._layers import EDITED, MADE, MODEL, OF, add_quietly, find_made, free_name, full_resolution

if TYPE_CHECKING:
    import napari

    from ..core.network.model import UNet
    from ._runs import Settings
    from ._worker import Outcome

__all__ = ["InMemoryRun"]


def _predict_job(
    model, pixels, *, grey, shape, tile, center, flips, instance, typed, precision="auto"
):
    """The worker's generator: yield the :class:`~._diameter.Sized` the image is predicted at,
    then each :class:`~napari_unet.TileResult` (of the resampled planes, when resampled), then
    return ``(labels, probabilities)`` of ``shape``: uint16/uint32 instances and float32
    foreground, on the image's grid. ``instance``: the dock's
    :class:`~napari_unet.InstanceConfig` (sizes ``None``: sized by the diameter in use);
    ``typed``: the typed diameter (``None``: automatic); ``precision`` as
    :func:`~napari_unet.predict_tiles` takes it. Closing it closes the tile generator."""
    from contextlib import closing

    from napari_unet.core.image import grey_if_rgb
    from napari_unet.core.prediction.instances import to_instances
    from napari_unet.core.prediction.predict import predict_tiles
    from napari_unet.core.prediction.scale import model_diameter, resize_to

    from ._diameter import sized_options, sizing

    if grey:
        pixels = grey_if_rgb(pixels, model.in_channels)
    sized = sizing(model, pixels, typed, shape[-2:])  # estimates the diameter when it must
    yield sized
    # the core resamples (and places tiles on the resampled plane); the model's own size for
    # "as it comes", so that it does not estimate again
    diameter = sized.diameter if sized.diameter is not None else model_diameter(model)
    probabilities = np.zeros((*shape[:-2], *sized.grid.shape), dtype=np.float32)
    tiles = predict_tiles(
        model,
        pixels,
        tile=tile,
        center=center,
        flips=flips,
        diameter=diameter,
        precision=precision,
    )
    with closing(tiles):
        for result in tiles:
            probabilities[result.plane][result.region] = result.probabilities
            yield result
    probabilities = resize_to(probabilities, shape[-2:])
    labels = to_instances(probabilities, **sized_options(instance, model, sized))
    return labels, probabilities


@dataclass
class _Output:
    """One output of a run: the layer its tiles stream into (``metadata[MADE]`` is
    ``"<kind> (running)"`` meanwhile), the earlier result a complete run replaces, and the
    image's ``scale`` and ``translate``."""

    kind: str  # "prediction" or "probability"
    layer: Labels | Image
    earlier: Labels | Image | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]


def _grid(output: _Output) -> tuple[tuple, tuple]:
    return output.scale, output.translate


def _regrid(layer, plane: tuple[int, int], scale, translate) -> None:
    """Make ``layer`` empty planes of ``plane`` shape placed by ``scale`` and ``translate``."""
    layer.data = np.zeros((*layer.data.shape[:-2], *plane), dtype=layer.data.dtype)
    layer.scale, layer.translate = scale, translate


@dataclass
class InMemoryRun:
    """A prediction of an image (or one plane of it, ``prefix``) read into memory."""

    viewer: napari.viewer.Viewer
    labels: _Output
    probability: _Output | None
    prefix: tuple[int, ...]  # index of the predicted plane in the layer ("current plane")
    threshold: float
    shape: tuple[int, ...]  # the image's spatial shape, the layers' when the run ends
    sized: Sized | None = None  # the worker's first event
    done: int = 0
    total: int = 0
    dirty: bool = False  # tiles written since the last refresh

    @classmethod
    def start(
        cls,
        viewer: napari.viewer.Viewer,
        layer: Image,
        model: UNet,
        layout: tuple[tuple[int, ...], bool, tuple[int, ...]],
        center: tuple[float, float],
        settings: Settings,
        probability: bool,
    ):
        """Copy the pixels, make the output layers; ``(run, generator)``. ``layout``: the
        spatial shape, whether to convert RGB to grey, the index of the plane (``()``: all);
        ``probability``: also a probability layer."""
        shape, grey, prefix = layout
        data = full_resolution(layer)
        pixels = np.array(data[prefix] if prefix else data)  # the worker's copy
        made = {OF: layer.name, MODEL: settings.model_label}
        labels = _output(viewer, layer, shape, "prediction", made)
        extra = _output(viewer, layer, shape, "probability", made) if probability else None
        run = cls(
            viewer,
            labels=labels,
            probability=extra,
            prefix=prefix,
            threshold=settings.config.threshold,
            shape=tuple(shape),
        )
        return run, _predict_job(
            model,
            pixels,
            grey=grey,
            shape=shape[len(prefix) :],
            tile=settings.tile or None,
            center=center,
            flips=settings.flips,
            instance=settings.config,
            typed=settings.diameter,
            precision=settings.precision,
        )

    @property
    def status(self) -> str:
        if self.sized is not None and not self.total:
            return "predicting…"
        return f"tile {self.done}/{self.total}"

    def _outputs(self) -> list[_Output]:
        return [out for out in (self.labels, self.probability) if out is not None]

    def apply(self, result) -> str | None:
        if not any(out.layer in self.viewer.layers for out in self._outputs()):
            return "the run's layers were removed; the run stops"
        if isinstance(result, Sized):
            self.sized = result
            if result.grid.resampled:  # the tiles stream into the resampled grid, over the image
                for output in self._outputs():
                    _regrid(
                        output.layer, result.grid.shape, *resampled_grid(*_grid(output), result)
                    )
            return
        index = self.prefix + result.plane
        self.labels.layer.data[index][result.region] = result.probabilities > self.threshold
        if self.probability is not None:
            self.probability.layer.data[index][result.region] = result.probabilities
        self.total = result.total
        self.done += 1
        self.dirty = True

    def refresh(self) -> None:
        for output in self._outputs():
            if output.layer in self.viewer.layers:  # a removed layer has no visual to update
                output.layer.refresh()

    def discard(self) -> None:
        """Remove the run's layers (a run that failed or did not start)."""
        for output in self._outputs():
            _remove(self.viewer, output.layer)

    drop = discard  # its image was closed: nothing of the run stays

    def finish(self, outcome: Outcome) -> str:
        kept = (
            "; the earlier prediction is unchanged"
            if any(out.earlier is not None for out in self._outputs())
            else ""
        )
        if outcome.error is not None:
            self.discard()
            return f"failed after {self.done} tile(s){kept}"
        if outcome.cancelled and not any(
            out.layer in self.viewer.layers for out in self._outputs()
        ):
            return f"stopped after {self.done} tile(s): its layers were removed{kept}"
        if outcome.cancelled:
            partial = self._keep_partial(self.labels)
            if self.probability is not None:
                self._keep_partial(self.probability)
            return (
                f"cancelled after {self.done}/{self.total} tiles, kept in '{partial}' "
                f"(thresholded, not split into cells){kept}"
            )
        labels, probabilities = outcome.value
        if self.sized is not None and self.sized.grid.resampled:  # back on the image's grid
            for output in self._outputs():
                _regrid(output.layer, self.shape[-2:], *_grid(output))
        self._place_result(self.labels, labels)
        if self.probability is not None:
            self._place_result(self.probability, probabilities)
        cells = int(labels.max(initial=0))
        return f"done: {cells} cell(s) in {self.total} tile(s){said(self.sized)}"

    def _place_result(self, output: _Output, values: np.ndarray) -> None:
        """Put a complete result into the earlier layer (if it is still there, unedited) and
        remove the run's layer; else the run's layer becomes the result."""
        earlier, layer = output.earlier, output.layer
        if (
            earlier is not None
            and earlier in self.viewer.layers
            and not earlier.metadata.get(EDITED)
            and earlier.data.shape == layer.data.shape
        ):
            _place(earlier, values, self.prefix)
            earlier.metadata[MODEL] = layer.metadata[MODEL]
            _remove(self.viewer, layer)
            return
        _place(layer, values, self.prefix)
        layer.metadata[MADE] = output.kind
        if output.kind == "prediction":
            layer.metadata[EDITED] = False
            layer.events.paint.connect(_on_prediction_painted)
        # last: the docks watching renamed layers (Annotate's prediction box) see the result
        layer.name = free_name(self.viewer, f"{layer.metadata[OF]} {output.kind}")

    def _keep_partial(self, output: _Output) -> str:
        """Rename the run's layer ``"<image> <kind> (partial)"`` (never reused); its name."""
        layer = output.layer
        layer.metadata[MADE] = f"{output.kind} (partial)"
        layer.name = free_name(self.viewer, f"{layer.metadata[OF]} {output.kind} (partial)")
        return layer.name


def _output(viewer, image: Image, shape: tuple[int, ...], kind: str, made: dict) -> _Output:
    """A new layer for the tiles of ``kind`` ("prediction", "probability") and the earlier
    result of ``image`` it replaces when the run completes (an unedited one of ``shape``);
    ``made``: the layer's metadata ``OF`` (the image's name) and ``MODEL``."""
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
        "metadata": {MADE: f"{kind} (running)", **made},
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
    return _Output(kind, layer, earlier, tuple(common["scale"]), tuple(common["translate"]))


def _remove(viewer, layer) -> None:
    if layer in viewer.layers:
        viewer.layers.remove(layer)


def _on_prediction_painted(event) -> None:
    event.source.metadata[EDITED] = True


def _place(layer, values: np.ndarray, prefix: tuple[int, ...]) -> None:
    if not prefix:
        layer.data = values
        return
    if values.dtype.itemsize > layer.data.dtype.itemsize:
        layer.data = layer.data.astype(values.dtype)
    layer.data[prefix] = values
    layer.refresh()
