"""Predict's cell diameter: the control and its line, a ruler to measure cells, and the sizing
the in-memory worker does before its tiles.

A model that says the cell size it works at (``core.prediction.scale.model_diameter``) predicts
an image resampled so its cells have that size. The diameter of the image's cells is
typed (the control, in the image's data pixels; 0 = automatic), else the one the model was
fine-tuned on, else estimated by the worker with the model (a model trained at one size, not
fine-tuned). A model that says no size predicts images as they come, and the control is off.
The worker yields a :class:`Sized` first; the core's tiles (of the resampled plane) then stream
into layers of the resampled grid placed over the image (:func:`resampled_grid`), and the result
goes back on the image's grid when all tiles are in. The large-image routes resample block by
block in the core (:mod:`napari_unet.core.large`), and their workers yield a :class:`Sized` too
(:func:`sized_of`) once the core resolved the diameter, so that every route says the diameter
in use alike: on the control's line and in the status line (:func:`said`). On every route the
cell sizes left automatic follow the diameter in use
(:func:`~napari_unet.core.prediction.predict.instance_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import FloatSpinBox, Label, PushButton
from napari.layers import Shapes

from ..core.prediction.scale import Resampling, model_diameter, scale_factor, tuned_diameter
from ._layers import grid_of
from ._ui import row

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from ..core.network.model import UNet
    from ..core.prediction.instances import InstanceConfig
    from ._ui import Messages

__all__ = [
    "DiameterControl",
    "Sized",
    "cell_size_hint",
    "line_lengths",
    "needs_resampling",
    "resampled_grid",
    "said",
    "sized_of",
    "sizing",
    "sized_options",
]

TYPED, TUNED, ESTIMATED = "typed", "from the model", "estimated"
"""Where the diameter in use came from (``None``: the image as it comes)."""
AS_IT_COMES = "this model predicts images as they come"
MAX_DIAMETER = 4096.0


@dataclass(frozen=True)
class Sized:
    """Every route's first worker event: how the image's planes are resampled (``grid``, the
    core's :class:`Resampling`: factor, the ``(H, W)`` plane and the plane it is resampled to,
    the diameter), where the diameter came from in the dock's words (``source``; ``None``: as
    it comes) and, when a model could not estimate it, why (``note``)."""

    grid: Resampling
    source: str | None
    note: str = ""

    @property
    def diameter(self) -> float | None:
        """The cells' diameter (px of the image) the image is predicted at."""
        return self.grid.diameter


def _factor(model: UNet, diameter: float | None) -> float:
    """The resampling ``model`` needs for cells ``diameter`` px across (1: none); ValueError
    when they are too far from its size."""
    known = model_diameter(model)
    if diameter is None or known is None:
        return 1.0
    return scale_factor(known, float(diameter))


def needs_resampling(model: UNet, typed: float | None) -> bool:
    """Whether predicting for ``model`` with the ``typed`` diameter (``None``: automatic)
    resamples the image (or has to estimate its diameter first); ValueError when a typed
    diameter is out of the model's range, or given to a model that says no size."""
    if model_diameter(model) is None:
        if typed is not None:
            raise ValueError(f"{AS_IT_COMES}; set the cell diameter to 0")
        return False
    diameter = typed if typed is not None else tuned_diameter(model)
    return diameter is None or _factor(model, diameter) != 1.0


def sizing(model: UNet, pixels: np.ndarray, typed: float | None, plane) -> Sized:
    """The worker's :class:`Sized` for ``pixels`` (``(..., H, W[, C])``, the model's channels)
    of ``(H, W)`` ``plane``: the typed diameter, the model's fine-tuned one, or estimated on the
    middle plane (a model trained at one size, not fine-tuned)."""
    from ..core.prediction import predict

    if model_diameter(model) is None:
        return sized_of(model, Resampling.of(plane))
    diameter, source = predict.resolve_diameter(model, pixels, typed)
    return sized_of(model, predict.resampling_for(model, plane, diameter, source))


def sized_of(model: UNet, grid: Resampling) -> Sized:
    """The :class:`Sized` of the core's ``grid`` (how it resampled a plane for ``model``), in
    the dock's words: what every route's worker yields once the diameter is resolved."""
    from ..core.prediction import predict

    words = {predict.GIVEN: TYPED, predict.TUNED: TUNED, predict.ESTIMATED: ESTIMATED}
    note = ""
    if grid.diameter is None and model_diameter(model) is not None:
        note = "no cells found to estimate the diameter"
    source = words.get(grid.source) if grid.diameter is not None else None
    return Sized(grid, source, note)


def said(sized: Sized | None) -> str:
    """``", cells 40 px (typed)"``: the diameter a run predicted at, for the end of its status
    line, alike on every route (``""`` when none)."""
    if sized is None or sized.diameter is None:
        return ""
    return f", cells {sized.diameter:.0f} px ({sized.source})"


def resampled_grid(scale, translate, sized: Sized) -> tuple[tuple, tuple]:
    """napari ``(scale, translate)`` of a layer of ``sized.grid.shape`` planes over an image
    layer of ``scale`` and ``translate``: pixel ``j`` of the resampled plane covers image pixels
    ``[j / f, (j + 1) / f)``, so its centre is at ``(j + 0.5) / f - 0.5`` image pixels."""
    scale, translate = np.asarray(scale, float), np.asarray(translate, float)
    f = np.ones_like(scale)
    f[-2:] = sized.grid.factors
    return tuple(scale / f), tuple(translate + scale * (0.5 / f - 0.5))


def sized_options(config: InstanceConfig, model: UNet, sized: Sized | None) -> dict:
    """``to_instances``' options: sizes left ``None`` follow the cells of a typed or estimated
    diameter, else those the model was fine-tuned on, as on every route
    (:func:`~napari_unet.core.prediction.predict.instance_options`)."""
    from ..core.prediction import predict

    if sized is None:
        return predict.instance_options(config, model, None, None)
    words = {TYPED: predict.GIVEN, TUNED: predict.TUNED, ESTIMATED: predict.ESTIMATED}
    return predict.instance_options(config, model, sized.diameter, words.get(sized.source))


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


def line_lengths(shapes: Shapes, image: Image) -> np.ndarray:
    """Lengths of the lines (and paths) of ``shapes`` in ``image``'s data pixels (their last two
    axes, through both layers' scales); 1-D float."""
    ratio = np.asarray(shapes.scale[-2:], float) / np.asarray(image.scale[-2:], float)
    lengths = []
    for data, kind in zip(shapes.data, shapes.shape_type, strict=True):
        if kind not in ("line", "path"):
            continue
        steps = np.diff(np.asarray(data, float)[:, -2:], axis=0) * ratio
        lengths.append(float(np.sqrt((steps**2).sum(axis=1)).sum()))
    return np.asarray(lengths, float)


class DiameterControl:
    """The dock's "cell diameter (px)" (0 = automatic), a line saying the diameter in use and
    where it came from, and "measure": lines drawn across cells in a Shapes layer ``"<image>
    diameter"`` set the diameter to their mean length. ``image`` gives the dock's image layer."""

    def __init__(
        self, viewer: napari.viewer.Viewer, image: Callable[[], Image | None], say: Messages
    ) -> None:
        self._viewer, self._image, self._say = viewer, image, say
        self._model: UNet | None = None
        self._last: Sized | None = None
        self.value = FloatSpinBox(
            label="cell diameter (px)",
            min=0,
            max=MAX_DIAMETER,
            step=1,
            value=0,
            tooltip="Median diameter of the image's cells in its pixels; the image is resampled "
            "so they have the size the model works at. 0: automatic (the size the model was "
            "fine-tuned on, else estimated when you predict)",
        )
        self._measure = PushButton(
            text="measure",
            tooltip="Adds a Shapes layer '<image> diameter' to draw lines across a few cells; "
            "press again to set the diameter to their mean length",
        )
        self.said = Label(value="")
        self.widgets = [self.value, self.said, row(self._measure)]
        self.value.changed.connect(self._on_value)
        self._measure.clicked.connect(self.measure)

    @property
    def typed(self) -> float | None:
        """The typed diameter (px), ``None`` for automatic or a model that says no size."""
        return float(self.value.value) if self.value.enabled and self.value.value > 0 else None

    def show_model(self, model: UNet | None) -> None:
        """Say what a run with ``model`` (``None``: not known yet) will use."""
        self._model, self._last = model, None
        self._update()

    def show_used(self, sized: Sized) -> None:
        """Say what the run used (the worker's :class:`Sized`)."""
        self._last = sized
        self._update()

    def refresh(self) -> None:
        """Say it again (e.g. after a run enabled every control of the dock)."""
        self._update()

    def _on_value(self, _value=None) -> None:
        self._last = None
        self._update()

    def _update(self) -> None:
        model, last = self._model, self._last
        sized = model is None or model_diameter(model) is not None
        self.value.enabled = self._measure.enabled = sized
        if not sized:
            self.said.value = AS_IT_COMES
        elif self.typed is not None:
            self.said.value = f"{TYPED}: {self.typed:g} px"
        elif last is not None and last.source == ESTIMATED:
            self.said.value = f"{ESTIMATED}: {last.diameter:.0f} px"
        elif last is not None and last.note:
            self.said.value = f"{last.note}: the image as it came"
        elif model is not None and tuned_diameter(model) is not None:
            self.said.value = f"{TUNED}: {tuned_diameter(model):.0f} px"
        elif model is not None:
            self.said.value = f"automatic: {ESTIMATED} when you predict"
        else:
            self.said.value = "automatic"

    def measure(self, _value=None) -> None:
        """Add (or select) the ruler layer of the image; with lines drawn on it, set the
        diameter to their mean length in the image's pixels."""
        image = self._image()
        if image is None:
            self._say.warning("add or open an image layer to measure its cells")
            return
        name = f"{image.name} diameter"
        ruler = next((lay for lay in self._viewer.layers if lay.name == name), None)
        lengths = line_lengths(ruler, image) if isinstance(ruler, Shapes) else np.empty(0)
        if lengths.size:
            self.value.value = min(max(1.0, round(float(lengths.mean()), 1)), MAX_DIAMETER)
            self._say.info(
                f"cell diameter {self.value.value:g} px: the mean of {lengths.size} line(s)"
            )
            return
        if not isinstance(ruler, Shapes):
            ruler = self._viewer.add_shapes(
                name=name,
                ndim=len(image.scale),
                **grid_of(image),
                edge_color="yellow",
                edge_width=2,
            )
        self._viewer.layers.selection.active = ruler
        ruler.mode = "add_line"
        self._say.info(f"draw lines across a few cells in '{name}', then press measure again")
