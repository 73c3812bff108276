"""Annotate dock: one annotation labels layer per image, cell helpers, annotated region.

Correcting a prediction: start from it, then merge, split, delete, fill or paint cells; each
edit is one step of napari's undo (Ctrl-Z) on the annotation layer and changes no other layer.
The region chosen here is the image's region in the viewer's session: Fine-tune's pairs of that
image default to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Labels, Shapes
from qtpy.QtCore import QTimer

from ..core.edit import merge_cells, split_cell
from ..core.image import count_ids
from ._cell_edits import cell_at, delete_cell, new_cell, write_changes
from ._layers import (
    WHOLE_IMAGE,
    annotation_of,
    grid_of,
    image_choices,
    predictions_of,
    region_choices,
    spatial_shape,
    viewed_plane,
    watch_layers,
)
from ._session import session_for
from ._ui import Messages, narrow, plural, row

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotateWidget"]

ANNOTATION_DTYPE = np.uint32
_say = Messages("Annotate")

TOOLTIP = """Annotate cells for fine-tuning, or correct a prediction.
Create/pick annotation: finds or makes the labels layer '<image> annotation' (paint mode).
Keys on the annotation layer: N new cell (next free id), H fill holes of the selected cell on
this plane, Shift-D delete the selected cell (the whole layer, every plane), Shift-M merge the
cell under the mouse into the selected cell, Shift-S split the cell under the mouse in two;
napari's own keys still work (E erase, P paint, L pick a cell, Ctrl-Z undo, which also undoes
these helpers). The Merge and Split buttons wait for a click on a cell instead.
Start from prediction: copies a labels layer into the annotation only where the annotation is
0; cells you painted are never overwritten (copied ids are shifted past yours).
Region: the part of the image you annotated (Shapes rectangles/polygons, or a labels mask,
non-zero = annotated); pixels outside it are ignored in training, and Fine-tune's pairs of
this image use it. Default: the whole image."""


class AnnotateWidget(Container):
    """Pair an image with its annotation layer; new-cell, erase, fill and region helpers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._session = session_for(viewer)
        self._image = ComboBox(label="image", choices=image_choices(viewer))
        self._pick = PushButton(
            text="Create/pick annotation",
            tooltip="Find or create the labels layer '<image> annotation' and paint in it",
        )
        self._new_cell = PushButton(text="New cell", tooltip="Next free cell id (key N)")
        self._erase = PushButton(text="Erase", tooltip="Erase mode (key E)")
        self._fill = PushButton(
            text="Fill holes",
            tooltip="Fill the holes of the selected cell on this plane (key H); "
            "other cells are kept",
        )
        self._delete = PushButton(
            text="Delete cell",
            tooltip="Remove the selected cell from the whole layer (key Shift-D; Ctrl-Z undoes)",
        )
        self._merge = PushButton(
            text="Merge",
            tooltip="Click a cell: it joins the selected cell (pick that one first: key L, "
            "click); the thin gap between them is filled. Key: Shift-M on the cell under the "
            "mouse. Ctrl-Z undoes",
        )
        self._split = PushButton(
            text="Split",
            tooltip="Click a cell: it is divided in two on this plane (along its neck, else "
            "across its longest axis); the smaller part gets a new id. Key: Shift-S on the "
            "cell under the mouse. Ctrl-Z undoes",
        )
        self._prediction = ComboBox(
            label="prediction",
            choices=self._prediction_choices,
            nullable=True,
            tooltip="A labels layer to start from (Predict's layers of this image first)",
        )
        self._start = PushButton(
            text="Start from prediction",
            tooltip="Copy the prediction where the annotation is 0; painted cells are kept",
        )
        self._region = ComboBox(
            label="region",
            choices=region_choices(viewer, exclude=self._annotation_layer),
            tooltip="Annotated part of the image: Shapes, a labels mask (non-zero), or all; "
            "Fine-tune uses it for this image",
        )
        self._add_region = PushButton(
            text="Add region layer",
            tooltip="New Shapes layer '<image> annotated region' in rectangle mode",
        )
        self._status = Label(value="")
        helpers = Container(
            labels=False,
            widgets=[
                row(self._new_cell, self._erase),
                row(self._fill, self._delete),
                row(self._merge, self._split),
            ],
        )
        super().__init__(
            widgets=[
                self._image,
                self._pick,
                helpers,
                self._prediction,
                self._start,
                self._region,
                self._add_region,
                self._status,
            ],
            tooltip=TOOLTIP,
        )
        narrow(self)
        self._watched: list = []  # event emitters of the annotation and region layers
        self._armed: tuple | None = None  # (layer, edit, mode before) while a click is awaited
        # napari may emit `paint` before the data is written: count once events have settled
        self._status_timer = QTimer()
        self._status_timer.setSingleShot(True)
        self._status_timer.setInterval(0)
        self._connect_signals()
        self._on_image_changed()

    def _connect_signals(self) -> None:
        watch_layers(self._viewer, self._on_layers_changed)
        self._image.changed.connect(self._on_image_changed)
        self._region.changed.connect(self._on_region_changed)
        self._pick.changed.connect(self._on_pick)
        self._new_cell.changed.connect(self._on_new_cell)
        self._erase.changed.connect(self._on_erase)
        self._fill.changed.connect(self._on_fill_holes)
        self._delete.changed.connect(self._on_delete_cell)
        self._merge.changed.connect(self._on_merge)
        self._split.changed.connect(self._on_split)
        self._start.changed.connect(self._on_start_from_prediction)
        self._add_region.changed.connect(self._on_add_region)
        self._status_timer.timeout.connect(self._update_status)

    # choices -------------------------------------------------------------------------------
    def _prediction_choices(self, _widget=None) -> list[tuple[str, Labels]]:
        """Predict's layers of the image first, then the other labels layers, never the
        image's annotation layer."""
        annotation = self._annotation_layer()
        made = predictions_of(self._viewer, self._image.value)
        others = [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Labels) and layer is not annotation and layer not in made
        ]
        return [(layer.name, layer) for layer in made + others]

    # the layers this widget works on ----------------------------------------------------------
    def _annotation_layer(self) -> Labels | None:
        return annotation_of(self._viewer, self._image.value)

    def _region_layer(self):
        value = self._region.value
        return None if value is None or isinstance(value, str) else value

    def _checked_annotation(self) -> Labels:
        """The image's annotation layer; raises ValueError saying what is missing."""
        image = self._image.value
        if image is None:
            raise ValueError("no image layer: open an image first (File > Open or a sample)")
        annotation = self._annotation_layer()
        if annotation is None:
            raise ValueError(
                f"no annotation layer '{image.name} annotation'; click 'Create/pick annotation'"
            )
        shape = spatial_shape(image)
        if tuple(annotation.data.shape) != shape:
            raise ValueError(
                f"annotation '{annotation.name}' has shape {tuple(annotation.data.shape)}, but "
                f"image '{image.name}' has {shape}; rename or remove it and create a new one"
            )
        return annotation

    # layers, image, region -----------------------------------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        self.reset_choices()
        self._preset_prediction()
        self._on_selection_changed()

    def _on_image_changed(self, value=None) -> None:
        """Another image: its annotation, its region (from the session), its prediction."""
        self._prediction.value = None
        self.reset_choices()  # the choices leave out the image's annotation layer
        self._preset_prediction()
        image = self._image.value
        region = None if image is None else self._session.region_for(image)
        known = region is not None and region in self._viewer.layers
        self._region.value = region if known else WHOLE_IMAGE
        self._on_selection_changed()

    def _preset_prediction(self) -> None:
        """Choose Predict's newest layer of the image while no prediction is chosen."""
        made = predictions_of(self._viewer, self._image.value)
        if self._prediction.value is None and made:
            self._prediction.value = made[0]

    def _on_region_changed(self, value=None) -> None:
        image = self._image.value
        if image is not None:
            self._session.set_region(image, self._region_layer())
        self._on_selection_changed()

    # status ----------------------------------------------------------------------------------
    def _on_selection_changed(self, value=None) -> None:
        for emitter in self._watched:
            emitter.disconnect(self._on_layer_edited)
        annotation, region = self._annotation_layer(), self._region_layer()
        self._watched = []
        if annotation is not None:
            self._watched += [annotation.events.paint, annotation.events.data]
        if isinstance(region, Labels):
            self._watched += [region.events.paint, region.events.data]
        elif isinstance(region, Shapes):
            self._watched.append(region.events.data)
        for emitter in self._watched:
            emitter.connect(self._on_layer_edited)
        self._update_status()

    def _on_layer_edited(self, event=None) -> None:
        self._status_timer.start()

    def _update_status(self) -> None:
        try:
            annotation = self._checked_annotation()
        except ValueError as err:
            self._status.value = str(err)
            return
        cells = plural(count_ids(np.asarray(annotation.data)), "cell")
        region = self._region_layer()
        if region is None:
            self._status.value = f"{cells}, {WHOLE_IMAGE}"
            return
        if isinstance(region, Shapes):
            n_regions = region.nshapes
        else:
            from scipy import ndimage

            n_regions = ndimage.label(np.asarray(region.data) != 0)[1]
        self._status.value = f"{cells} in {plural(n_regions, 'region')}"

    # actions ---------------------------------------------------------------------------------
    def _on_pick(self, value=None) -> None:
        image = self._image.value
        if image is None:
            _say.error("no image layer: open an image first (File > Open or a sample)")
            return
        name = f"{image.name} annotation"
        if name in self._viewer.layers and not isinstance(self._viewer.layers[name], Labels):
            _say.error(f"layer '{name}' exists but is not a labels layer; rename it first")
            return
        if self._annotation_layer() is None:
            if image.multiscale:
                _say.error(f"image '{image.name}' is multiscale; annotate a single-scale image")
                return
            self._viewer.add_labels(
                np.zeros(spatial_shape(image), ANNOTATION_DTYPE),
                name=name,
                **grid_of(image),
            )
        try:
            annotation = self._checked_annotation()
        except ValueError as err:
            _say.error(str(err))
            return
        for key, callback in (
            ("n", new_cell),
            ("h", self._fill_holes_in),
            ("Shift-D", delete_cell),
            ("Shift-M", self._merge_at_cursor),
            ("Shift-S", self._split_at_cursor),
        ):
            annotation.bind_key(key, callback, overwrite=True)
        self._viewer.layers.selection.active = annotation
        annotation.mode = "paint"
        self._on_selection_changed()

    def _annotation_or_error(self) -> Labels | None:
        try:
            return self._checked_annotation()
        except ValueError as err:
            _say.error(str(err))
            return None

    def _on_new_cell(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            new_cell(annotation)

    def _on_erase(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            annotation.mode = "erase"

    def _on_fill_holes(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            self._fill_holes_in(annotation)

    def _on_delete_cell(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            delete_cell(annotation)

    def _fill_holes_in(self, annotation: Labels) -> None:
        """Fill the holes of the selected cell on the current plane, background pixels only."""
        from scipy import ndimage

        cell_id = annotation.selected_label
        lead = viewed_plane(annotation, self._viewer)
        plane = np.asarray(annotation.data[lead])
        cell = plane == cell_id
        if not cell.any():
            _say.warning(f"cell {cell_id} is not on this plane; select a painted cell first")
            return
        rows, cols = np.nonzero(ndimage.binary_fill_holes(cell) & (plane == 0))
        if rows.size == 0:
            _say.info(f"cell {cell_id} has no holes on this plane")
            return
        index = tuple(np.full(rows.size, i) for i in lead) + (rows, cols)
        with annotation.block_history():  # one undo step; paint event after the write
            annotation.data_setitem(index, cell_id)

    # merge and split: the cell under the mouse (keys) or the next one clicked (buttons) ------
    def _on_merge(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            self._arm(annotation, self._merge_cell, f"merge into cell {annotation.selected_label}")

    def _on_split(self, value=None) -> None:
        annotation = self._annotation_or_error()
        if annotation is not None:
            self._arm(annotation, self._split_cell, "split")

    def _arm(self, annotation: Labels, edit, what: str) -> None:
        """Wait for one click on ``annotation`` (pan/zoom mode meanwhile, so the click paints
        nothing), then ``edit(annotation, cell)`` the clicked cell."""
        self._disarm()
        self._armed = (annotation, edit, annotation.mode)
        annotation.mouse_drag_callbacks.append(self._on_click)
        annotation.mode = "pan_zoom"
        self._viewer.layers.selection.active = annotation
        self._status.value = f"click the cell to {what}"

    def _disarm(self) -> None:
        if self._armed is None:
            return
        annotation, _, mode = self._armed
        self._armed = None
        if self._on_click in annotation.mouse_drag_callbacks:
            annotation.mouse_drag_callbacks.remove(self._on_click)
        annotation.mode = mode
        self._update_status()

    def _on_click(self, layer: Labels, event):
        """napari drag callback: the cell under the press is edited on release (the mode is
        restored only then, so napari's own callbacks of this press are left as they were)."""
        position = event.position
        yield
        while event.type == "mouse_move":
            yield
        if self._armed is not None and self._armed[0] is layer:
            edit = self._armed[1]
            self._disarm()
            edit(layer, cell_at(layer, position))

    def _merge_at_cursor(self, annotation: Labels) -> None:
        self._merge_cell(annotation, cell_at(annotation, self._viewer.cursor.position))

    def _split_at_cursor(self, annotation: Labels) -> None:
        self._split_cell(annotation, cell_at(annotation, self._viewer.cursor.position))

    def _merge_cell(self, annotation: Labels, cell: int) -> None:
        """Cell ``cell`` joins the selected cell, in the whole layer."""
        keep = int(annotation.selected_label)
        if cell == 0:
            _say.warning("no cell there: point at (or click) the cell to merge")
            return
        try:
            merged = merge_cells(np.asarray(annotation.data), keep, cell)
        except ValueError as err:
            _say.warning(f"{err}; select the cell to keep first (key L, click it)")
            return
        write_changes(annotation, merged)

    def _split_cell(self, annotation: Labels, cell: int) -> None:
        """Divide cell ``cell`` in two on the viewed plane; the new part gets the next free id."""
        if cell == 0:
            _say.warning("no cell there: point at (or click) the cell to split")
            return
        data = np.asarray(annotation.data)
        lead = viewed_plane(annotation, self._viewer)
        try:
            plane = split_cell(data[lead], cell, new_id=int(data.max()) + 1)
        except ValueError as err:
            _say.warning(str(err))
            return
        write_changes(annotation, plane, lead)

    def _on_start_from_prediction(self, value=None) -> None:
        annotation = self._annotation_or_error()
        prediction = self._prediction.value
        if annotation is None:
            return
        if prediction is None:
            _say.error("no prediction to start from; run Predict, or choose a labels layer")
            return
        data = np.asarray(annotation.data)
        source = np.asarray(prediction.data)
        lead: tuple[int, ...] = ()
        if source.shape != data.shape:
            if source.shape != data.shape[-2:]:
                _say.error(
                    f"prediction '{prediction.name}' has shape {source.shape}; expected the "
                    f"annotation's {data.shape} or one plane {data.shape[-2:]}"
                )
                return
            lead = viewed_plane(annotation, self._viewer)
        target = data[lead]
        fill = (target == 0) & (source != 0)
        offset = int(data.max(initial=0))
        top = int(source.max(initial=0)) + offset
        if top > np.iinfo(data.dtype).max:
            _say.error(f"ids up to {top} do not fit the annotation's dtype {data.dtype}")
            return
        if not fill.any():
            _say.info(f"'{prediction.name}' adds no cell outside the painted ones")
            return
        index = np.nonzero(fill)
        values = source[index].astype(data.dtype) + data.dtype.type(offset)
        full = tuple(np.full(index[0].size, i) for i in lead) + index
        with annotation.block_history():
            annotation.data_setitem(full, values)

    def _on_add_region(self, value=None) -> None:
        image = self._image.value
        if image is None:
            _say.error("no image layer: open an image first (File > Open or a sample)")
            return
        name = f"{image.name} annotated region"
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
        else:
            layer = self._viewer.add_shapes(
                ndim=len(spatial_shape(image)),
                name=name,
                **grid_of(image),
                face_color="transparent",
                edge_color="yellow",
                edge_width=2,
            )
        self._viewer.layers.selection.active = layer
        if isinstance(layer, Shapes):
            layer.mode = "add_rectangle"
        self._region.value = layer
