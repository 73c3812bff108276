"""Weight map dock: preview the training target and separation weights of an annotation.

Nothing is shown until "show preview" is ticked. Then the target (cells with carved separation
borders) and the weight map training uses
(:func:`~napari_unet.core.training.weightmap.training_target`:
1 + the paper's border term w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on the carved labels; the
paper's eq. 2 has the class-balance weight w_c in place of the 1, which the "class balance" box
turns on) go to two image layers ``"<labels> target"`` and ``"<labels> weights"``: placed
directly under the annotation layer they come from (over its image, under the annotation),
additive (they brighten the image, never hide it), never selected (the annotation stays the
layer being painted), and never offered as images by the other docks. They update in place,
debounced, while w0 / sigma / class balance change, when the annotation is painted and, for a
stack, when the viewer moves to another plane; unticking removes them. The annotation layer is
only read.

Measured with ``bench/bench_weightmap_preview.py``: a 512x512 preview takes well under the
200 ms budget, so it runs on the main thread; the debounce delay comes on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..core.training.weightmap import CLASS_BALANCE, SIGMA, W0
from ._layers import (
    MADE,
    OF,
    add_quietly,
    grid_of,
    layer_choices,
    viewed_plane,
    watch_layers,
)
from ._ui import Messages, narrow

if TYPE_CHECKING:
    import napari

__all__ = ["WeightMapWidget"]

DEBOUNCE_MS = 100
PREVIEW = ("target", "weights")  # the kinds of preview layers, metadata[MADE]
PREVIEW_OPACITY = 0.7
BALANCE_TIP = (
    "Add the class-balance weight w_c (foreground and background carry equal total weight).\n"
    "Off by default: on sparse images (phase-contrast cells, ~8 % foreground) balancing made a\n"
    "model over-predict cells."
)
_say = Messages("Weight map")


class WeightMapWidget(Container):
    """Preview the U-Net training target and separation weights of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._annotation_box = ComboBox(
            label="annotation",
            choices=layer_choices(viewer, Labels),
            tooltip="Instance labels: 0 = background, 1..N = cells (only read, never changed).",
        )
        self._w0 = FloatSpinBox(
            label="w0",
            min=0,
            max=50,
            step=1,
            value=W0,
            tooltip=f"Height of the border weight between touching cells (paper: {W0:g}); "
            "Fine-tune trains with the default.",
        )
        self._sigma = FloatSpinBox(
            label="sigma (px)",
            min=0.5,
            max=30,
            step=0.5,
            value=SIGMA,
            tooltip=f"Width of the border weight in pixels (paper: {SIGMA:g}); "
            "Fine-tune trains with the default.",
        )
        self._balance = CheckBox(text="class balance", value=CLASS_BALANCE, tooltip=BALANCE_TIP)
        self._preview = CheckBox(
            text="show preview",
            value=False,
            tooltip="Show the target and the weights as two layers over the image "
            "(additive, under the annotation); untick to remove them.",
        )
        self._status = Label(value="")
        super().__init__(
            widgets=[
                self._annotation_box,
                self._w0,
                self._sigma,
                self._balance,
                self._preview,
                self._status,
            ]
        )
        narrow(self)
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._source: Labels | None = None  # the annotation whose paint events we follow
        self._shown: tuple | None = None  # (labels layer, plane index) of the preview shown
        self._problem = ""  # the last problem notified: told once, not on every change
        self._connect_signals()
        self._on_labels_changed()

    def _connect_signals(self) -> None:
        watch_layers(self._viewer, self._on_layers_changed)
        self._annotation_box.changed.connect(self._on_labels_changed)
        for widget in (self._w0, self._sigma, self._balance):
            widget.changed.connect(self._on_input_changed)
        self._preview.changed.connect(self._on_preview_toggled)
        self._timer.timeout.connect(self._update)
        self._viewer.dims.events.current_step.connect(self._on_step)

    def _on_layers_changed(self, _event=None) -> None:
        self.reset_choices()

    def _on_input_changed(self, *_) -> None:
        """(Re)start the debounce timer: the preview updates once changes pause."""
        if self._preview.value:
            self._timer.start()

    def _on_preview_toggled(self, show: bool) -> None:
        if show:
            self._update()
            return
        self._timer.stop()
        for layer in self._preview_layers():
            self._viewer.layers.remove(layer)
        self._shown = None
        self._problem = self._status.value = ""

    def _on_labels_changed(self, *_) -> None:
        if self._source is not None:
            self._source.events.paint.disconnect(self._on_input_changed)
            self._source.events.data.disconnect(self._on_input_changed)
        self._source = self._annotation_box.value
        if self._source is not None:
            self._source.events.paint.connect(self._on_input_changed)
            self._source.events.data.connect(self._on_input_changed)
        self._on_input_changed()

    def _on_step(self, *_) -> None:
        labels = self._annotation_box.value
        if labels is None or labels.ndim == 2 or self._shown is None:
            return
        if self._shown != (labels, viewed_plane(labels, self._viewer)):
            self._on_input_changed()

    def _preview_layers(self) -> list[Image]:
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Image) and layer.metadata.get(MADE) in PREVIEW
        ]

    def _update(self) -> None:
        """Compute target and weights of the current plane and show them (main thread)."""
        from napari_unet.core.image import check_label_image
        from napari_unet.core.training.weightmap import training_target

        if not self._preview.value:
            return
        labels = self._annotation_box.value
        if labels is None:
            self._report("no annotation layer; add a labels layer (0 = background, 1..N = cells)")
            return
        if labels.multiscale:
            self._report(f"'{labels.name}' is multiscale; use a single-scale layer")
            return
        index = viewed_plane(labels, self._viewer)
        plane = np.asarray(labels.data[index])
        try:
            check_label_image(plane, "it")  # not an intensity image, not a binary mask
            target, weights = training_target(
                plane,
                w0=self._w0.value,
                sigma=self._sigma.value,
                class_balance=self._balance.value,
            )
        except ValueError as err:
            self._report(f"'{labels.name}': {err}")
            return
        self._problem = ""
        for layer in self._preview_layers():  # the preview of another annotation
            if layer.metadata.get(OF) != labels.name:
                self._viewer.layers.remove(layer)
        low = float(weights.min())  # shown black: adds nothing to the image
        top = max(float(weights.max()), low + 1e-6)
        self._show(labels, "target", target, (0, 1), "gray")
        self._show(labels, "weights", weights, (low, top), "magma")
        self._shown = (labels, index)
        self._status.value = (
            f"weights from {low:.2g} to {top:.3g}"
            if plane.any()
            else f"'{labels.name}' is empty here: paint cells (ids 1..N) to see their weights"
        )

    def _report(self, problem: str) -> None:
        """Show ``problem`` in the status line; notify it once, not on every change."""
        self._status.value = problem
        if problem != self._problem:
            _say.warning(problem)
        self._problem = problem

    def _show(self, labels: Labels, kind: str, data: np.ndarray, limits, colormap: str) -> None:
        """Put ``data`` into the preview layer of ``kind``, made on first use."""
        layer = next(
            (lay for lay in self._preview_layers() if lay.metadata.get(MADE) == kind), None
        )
        if layer is None:
            add_quietly(
                self._viewer,
                Image(
                    data,
                    name=f"{labels.name} {kind}",
                    colormap=colormap,
                    contrast_limits=limits,
                    blending="additive",
                    opacity=PREVIEW_OPACITY,
                    **grid_of(labels, 2),
                    metadata={MADE: kind, OF: labels.name},
                ),
                index=self._viewer.layers.index(labels),  # right under the annotation
            )
            return
        layer.data = data
        layer.contrast_limits = limits
