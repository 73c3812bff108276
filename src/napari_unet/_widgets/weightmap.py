"""Weight map: live preview of the training target and separation weights of an annotation.

The target (cells with carved separation borders) and the weight map of the paper (eq. 2) go to
two image layers ``"<labels> target"`` and ``"<labels> weights"``, made once and then updated in
place, debounced, while w0 / sigma / class balance change, when the annotation is painted and,
for a stack, when the viewer moves to another plane. The annotation layer is only read.

Measured with ``bench/bench_weightmap_preview.py``: a 512x512 preview takes well under the
200 ms budget, so it runs on the main thread; the debounce delay comes on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from .annotate import viewed_plane

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

__all__ = ["WeightMapWidget", "layer_choices"]

DEBOUNCE_MS = 100
PREVIEW_OF = "napari_unet_weightmap"  # metadata key of the preview layers: "target" / "weights"
BALANCE_TIP = (
    "Add the class-balance weight w_c (foreground and background carry equal total weight).\n"
    "Off by default: on sparse images (phase-contrast cells, ~8 % foreground) balancing made a\n"
    "model over-predict cells."
)


def layer_choices(viewer: napari.viewer.Viewer, kind: type):
    """A magicgui ``choices`` callable: ``(name, layer)`` of the viewer's layers of ``kind``."""

    def choices(_widget=None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return choices


class WeightMapWidget(Container):
    """Preview the U-Net training target and separation weights of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._labels = ComboBox(
            label="annotation",
            choices=layer_choices(viewer, Labels),
            tooltip="Instance labels: 0 = background, 1..N = cells (only read, never changed).",
        )
        self._w0 = FloatSlider(
            label="w0",
            min=0,
            max=30,
            value=10,
            tooltip="Height of the border weight between touching cells (paper: 10).",
        )
        self._sigma = FloatSlider(
            label="sigma (px)",
            min=1,
            max=20,
            value=5,
            tooltip="Width of the border weight in pixels (paper: 5).",
        )
        self._balance = CheckBox(text="class balance", value=False, tooltip=BALANCE_TIP)
        self.extend([self._labels, self._w0, self._sigma, self._balance])
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._source: Labels | None = None  # the annotation whose paint events we follow
        self._shown: tuple | None = None  # (labels layer, plane index) of the preview shown
        self._connect_signals()
        self._on_labels_changed()

    def _connect_signals(self) -> None:
        self._labels.changed.connect(self._on_labels_changed)
        for widget in (self._w0, self._sigma, self._balance):
            widget.changed.connect(self._schedule)
        self._timer.timeout.connect(self._update)
        layers = self._viewer.layers.events
        for event in (layers.inserted, layers.removed, layers.renamed, layers.reordered):
            event.connect(self.reset_choices)
        self._viewer.dims.events.current_step.connect(self._on_step)

    def _schedule(self, *_) -> None:
        """(Re)start the debounce timer: the preview updates once changes pause."""
        self._timer.start()

    def _on_labels_changed(self, *_) -> None:
        if self._source is not None:
            self._source.events.paint.disconnect(self._schedule)
            self._source.events.data.disconnect(self._schedule)
        self._source = self._labels.value
        if self._source is not None:
            self._source.events.paint.connect(self._schedule)
            self._source.events.data.connect(self._schedule)
            self._schedule()

    def _on_step(self, *_) -> None:
        labels = self._labels.value
        if labels is None or labels.ndim == 2 or self._shown is None:
            return
        if self._shown != (labels, viewed_plane(labels, self._viewer)):
            self._schedule()

    def _update(self) -> None:
        """Compute target and weights of the current plane and show them (main thread)."""
        from napari_unet.core.weightmap import training_target

        labels = self._labels.value
        if labels is None:
            show_warning(
                "Weight map: no annotation layer. Add a Labels layer (0 = background, "
                "1..N = cells) and pick it as 'annotation'."
            )
            return
        if labels.multiscale:
            show_error(f"Weight map: '{labels.name}' is multiscale; use a single-scale layer.")
            return
        index = viewed_plane(labels, self._viewer)
        plane = np.asarray(labels.data[index])
        try:
            target, weights = training_target(
                plane,
                w0=self._w0.value,
                sigma=self._sigma.value,
                class_balance=self._balance.value,
            )
        except ValueError as err:
            show_error(f"Weight map of '{labels.name}': {err}")
            return
        self._show(labels, "target", target, (0, 1), "gray")
        self._show(labels, "weights", weights, (0, max(float(weights.max()), 1e-6)), "magma")
        self._shown = (labels, index)

    def _show(self, labels: Labels, kind: str, data: np.ndarray, limits, colormap: str) -> None:
        """Put ``data`` into the preview layer ``"<labels> <kind>"``, made on first use."""
        name = f"{labels.name} {kind}"
        layer = next(
            (
                layer
                for layer in self._viewer.layers
                if layer.name == name
                and isinstance(layer, Image)
                and layer.metadata.get(PREVIEW_OF) == kind
            ),
            None,
        )
        if layer is None:
            self._viewer.add_image(
                data,
                name=name,
                colormap=colormap,
                contrast_limits=limits,
                scale=labels.scale[-2:],
                translate=labels.translate[-2:],
                metadata={PREVIEW_OF: kind},
            )
            return
        layer.data = data
        layer.contrast_limits = limits
