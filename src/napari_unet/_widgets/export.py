"""Export dock: labels layers to TIFF / PNG / NPY label files, ImageJ ROI sets or per-cell
measurement tables, and the current model to a napari-unet ``.safetensors`` file or a
bioimage.io model package.

A TIFF keeps the layer's pixel size (its ``scale`` in a length unit) as Fiji reads it; the
measurements are in micrometres too then, and become the layer's ``features`` (napari shows them
on hover), next to the user's own features, which are never dropped. Every layer and the
destination are checked before any file is written.

The model saved is the viewer's current model, with the label the other docks show for it
(``metadata["source"]``): after a fine-tuning run the fine-tuned copy, after "Undo fine-tuning"
the model before it. Saving works while a fine-tuning run trains its copy: it saves the current
model, not the one in training. A bioimage.io package is written in a background run (the
model test of ``bioimageio.core`` takes seconds), atomically: a failed export leaves no file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Select
from napari.layers import Labels

from ..core.formats.io import check_writable_folder
from ._layers import full_resolution, image_choices, layer_choices, pixel_size_um, watch_layers
from ._session import PREDICTING, session_for
from ._ui import Messages, narrow
from ._worker import Outcome, Task

if TYPE_CHECKING:
    import napari

__all__ = ["ExportWidget", "safe_file_name"]

FORMATS = {
    "TIFF": "tif",
    "PNG": "png",
    "NPY": "npy",
    "ImageJ ROIs (zip)": "zip",
    "measurements (CSV)": "csv",
}
_SUFFIXES = {
    "tif": (".tif", ".tiff"),
    "png": (".png",),
    "npy": (".npy",),
    "zip": (".zip",),
    "csv": (".csv",),
}
MODEL_FORMATS = {
    "napari-unet (safetensors)": "safetensors",
    "bioimage.io model package (zip)": "zip",
}
_MODEL_SUFFIXES = {ext: (f".{ext}",) for ext in MODEL_FORMATS.values()}
_SAVE_MODEL = "Save model"
_PNG_MAX_ID = np.iinfo(np.uint16).max
_say = Messages("Export")
_FEATURES = "napari-unet measurements"  # layer.metadata: the feature columns the dock set


def safe_file_name(name: str) -> str:
    """``name`` with characters that file systems reject (``/ \\ : * ? " < > |``...) as ``_``."""
    name = re.sub(r"[^\w\-. ()]+", "_", name).strip(" .")
    return name or "labels"


def _file_with_format(path: Path, ext: str, suffixes: dict = _SUFFIXES) -> Path:
    """``path`` ending in the suffix of ``ext``; raises if it ends in another format's suffix
    (``suffixes``: format -> the suffixes of its files)."""
    suffix = path.suffix.lower()
    if suffix in suffixes[ext]:
        return path
    if any(suffix in known for known in suffixes.values()):
        raise ValueError(
            f"the file name {path.name} ends in {suffix}, but the format is .{ext}; "
            "change the file name or the format"
        )
    return path.with_name(f"{path.name}.{ext}")


def _labels_data(layer: Labels, ext: str) -> np.ndarray:
    """The layer's ids as an array, checked against what format ``ext`` can hold."""
    data = np.asarray(full_resolution(layer))
    if data.size and data.min() < 0:
        raise ValueError(f"layer '{layer.name}' holds negative ids; label files hold ids >= 0")
    if ext == "png":
        if data.ndim != 2:
            raise ValueError(
                f"layer '{layer.name}' has shape {data.shape}: a PNG holds one 2-D plane; "
                "choose TIFF (it holds stacks)"
            )
        if data.max(initial=0) > _PNG_MAX_ID:
            raise ValueError(
                f"layer '{layer.name}' has ids up to {data.max()}: a PNG holds ids up to "
                f"{_PNG_MAX_ID}; choose TIFF"
            )
    return data


def _payload(layer: Labels, ext: str, image) -> object:
    """What is written for ``layer`` in format ``ext``, checked: its ids, or for ``csv`` its
    measurements table (with the intensities of the ``image`` layer, if any)."""
    from ..core.image import label_planes

    data = _labels_data(layer, ext)
    if ext == "zip":
        label_planes(data, f"layer '{layer.name}'")
    if ext != "csv":
        return data
    from ..core.formats.measure import measure_cells

    intensities = None if image is None else np.asarray(full_resolution(image))
    try:
        return measure_cells(data, intensities, pixel_size_um(layer))
    except ValueError as err:
        raise ValueError(f"cannot measure layer '{layer.name}': {err}") from err


def _write(path: Path, layer: Labels, payload, ext: str) -> Path:
    if ext == "csv":
        from ..core.formats.measure import write_csv

        return write_csv(path, payload)
    if ext == "zip":
        from ..core.formats.rois import write_rois

        return write_rois(path, payload)
    from ..core.formats.io import write_labels

    return write_labels(path, payload, pixel_size=pixel_size_um(layer) if ext == "tif" else None)


def _set_features(layer: Labels, table: dict, path: Path) -> str:
    """Show the measurements ``table`` on hover as ``layer``'s ``features``; what to tell the
    user about it (``""``: nothing).

    Features that this dock set earlier (their columns are listed in ``layer.metadata``) are
    replaced. The user's own features are kept: the measurements become new columns of their
    rows, matched by id (napari's ``index`` column, else row ``i`` is id ``i``), with rows added
    for cells they lack; a column name they already use keeps their values. Nothing changes
    when an id has several rows (a stack's planes, or the user's table).
    """
    import pandas as pd

    ids = np.asarray(table["id"])
    if len(np.unique(ids)) != len(ids):
        return (
            f"'{layer.name}' repeats ids across planes: its measurements are in {path}, "
            "not shown on hover"
        )
    earlier = list(layer.metadata.get(_FEATURES, ()))
    theirs = layer.features.drop(columns=[c for c in earlier if c != "index"], errors="ignore")
    if theirs.columns.empty or (list(theirs.columns) == ["index"] and "index" in earlier):
        layer.features = {"index": ids, **table}
        layer.metadata[_FEATURES] = ["index", *table]
        return ""
    their_ids = theirs["index"] if "index" in theirs else pd.RangeIndex(len(theirs))
    if not pd.Index(their_ids).is_unique:
        return (
            f"'{layer.name}' has features with several rows for one id: they were left as they "
            f"were; its measurements are in {path}"
        )
    ours = pd.DataFrame(table, index=ids)
    kept = [name for name in ours.columns if name in theirs.columns]
    ours = ours.drop(columns=kept)
    merged = theirs.set_axis(pd.Index(their_ids))
    merged = merged.reindex(merged.index.append(ours.index.difference(merged.index)))
    merged["index"] = merged.index  # the rows added for cells the user's table lacks
    merged[list(ours.columns)] = ours.reindex(merged.index)
    layer.features = merged.reset_index(drop=True)
    layer.metadata[_FEATURES] = list(ours.columns)
    note = f"'{layer.name}' already had features: the measurements were added next to them"
    if kept:
        note += f"; {', '.join(kept)} kept their values (the measured ones are in {path})"
    return note


class ExportWidget(Container):
    """Write labels layers as label masks, and save the current model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._session = session_for(viewer)
        self._layers = Select(
            label="labels",
            choices=layer_choices(viewer, Labels),
            tooltip="Labels layers to export (Ctrl/Shift-click for several)",
        )
        self._format = ComboBox(label="format", choices=list(FORMATS), value="TIFF")
        self._intensities = ComboBox(
            label="intensities",
            choices=image_choices(viewer),
            nullable=True,
            value=None,
            visible=False,
            tooltip="Image whose intensities the measurements include (same shape as the labels)",
        )
        self._destination = FileEdit(
            label="save to",
            mode="w",
            tooltip="A file for one layer; a folder for several ('<layer name>.<format>' each)",
        )
        self._export = PushButton(text="Export labels")
        self._model_format = ComboBox(
            label="model format",
            choices=list(MODEL_FORMATS),
            value="napari-unet (safetensors)",
            tooltip="napari-unet's own file, or a bioimage.io package that other tools open",
        )
        self._model_path = FileEdit(label="model file", mode="w", filter="*.safetensors")
        self._save_model = PushButton(
            text=_SAVE_MODEL,
            tooltip="Save the current model (weights and metadata) in the model format",
        )
        self._task: Task | None = None
        super().__init__(
            widgets=[
                self._layers,
                self._format,
                self._intensities,
                self._destination,
                self._export,
                self._model_format,
                self._model_path,
                self._save_model,
            ]
        )
        narrow(self)
        self._connect_signals()

    def _connect_signals(self) -> None:
        watch_layers(self._viewer, self._on_layers_changed)
        self._layers.changed.connect(self._on_selection_changed)
        self._format.changed.connect(self._on_format_changed)
        self._export.changed.connect(self._on_export)
        self._model_format.changed.connect(self._on_model_format_changed)
        self._save_model.changed.connect(self._on_save_model)

    def _on_layers_changed(self, _event=None) -> None:
        self.reset_choices()

    def _on_selection_changed(self, value=None) -> None:
        self._destination.mode = "d" if len(self._layers.value) > 1 else "w"

    def _on_format_changed(self, value=None) -> None:
        self._intensities.visible = FORMATS[self._format.value] == "csv"

    def _on_model_format_changed(self, value=None) -> None:
        self._model_path.filter = f"*.{MODEL_FORMATS[self._model_format.value]}"

    def _targets(self, layers: list[Labels], ext: str) -> list[tuple[Path, object]]:
        """``(path, what to write)`` for every layer; raises before anything is written."""
        destination = Path(self._destination.value)
        if str(destination) in ("", "."):
            raise ValueError("choose where to save: a file for one layer, a folder for several")
        if len(layers) == 1 and not destination.is_dir():
            paths = [_file_with_format(destination, ext)]
        elif destination.is_dir():
            paths, used = [], set()
            for layer in layers:
                stem, n = safe_file_name(layer.name), 1
                while f"{stem}.{ext}".lower() in used:  # names that sanitise alike
                    n += 1
                    stem = f"{safe_file_name(layer.name)}-{n}"
                used.add(f"{stem}.{ext}".lower())
                paths.append(destination / f"{stem}.{ext}")
        else:
            raise FileNotFoundError(
                f"{destination} is not an existing folder; several layers are written as "
                f"'<layer name>.{ext}' into a folder"
            )
        image = self._intensities.value if ext == "csv" else None
        data = [_payload(layer, ext, image) for layer in layers]
        for path in paths:
            check_writable_folder(path.parent, context=f"cannot write {path}")
        return list(zip(paths, data, strict=True))

    def _on_export(self, value=None) -> None:
        layers = list(self._layers.value)
        if not layers:
            _say.error("select one or more labels layers to export")
            return
        ext = FORMATS[self._format.value]
        written: list[Path] = []
        try:
            for layer, (path, payload) in zip(layers, self._targets(layers, ext), strict=True):
                written.append(_write(path, layer, payload, ext))
                note = _set_features(layer, payload, path) if ext == "csv" else ""
                if note:
                    _say.info(note)
        except (OSError, ValueError) as err:
            done = ", ".join(map(str, written))
            message = f"{err} (already written: {done})" if written else f"nothing exported: {err}"
            _say.error(message)
            return
        _say.info(f"wrote {len(written)} file(s): {', '.join(map(str, written))}")

    def _on_save_model(self, value=None) -> None:
        from ..core.network.store import save_model

        ext = MODEL_FORMATS[self._model_format.value]
        path = Path(self._model_path.value)
        try:
            path = self._model_file(path, ext)
        except (OSError, ValueError, ImportError) as err:
            _say.error(f"nothing saved: {err}")
            return
        model = self._session.get_model(_say)
        if model is None:
            return
        source = self._session.source
        metadata = dict(getattr(model, "metadata", None) or {})
        metadata["source"] = source
        if ext == "zip":
            self._export_package(model, path, metadata)
            return
        try:
            save_model(model, path, metadata)
        except (OSError, ValueError) as err:
            _say.error(f"could not save the model: {err}")
            return
        _say.info(f"saved the model ({source}) to {path}")

    @staticmethod
    def _model_file(path: Path, ext: str) -> Path:
        """The file to save the model to in format ``ext``, checked; raises (with the reason)
        before anything is written."""
        if str(path) in ("", "."):
            raise ValueError(f"choose a model file to save to (*.{ext})")
        path = _file_with_format(path, ext, _MODEL_SUFFIXES)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; choose a file name")
        check_writable_folder(path.parent, context=f"cannot write {path}")
        if ext == "zip":
            _check_bioimageio_extra()
        return path

    def _export_package(self, model, path: Path, metadata: dict) -> None:
        """Write the bioimage.io package of ``model`` in a background run."""
        self._task = Task(
            _package_job(model, path, metadata),
            _say,
            on_yielded=self._on_package_step,
            on_done=lambda outcome: self._on_package_done(outcome, path, metadata["source"]),
            session=self._session,
            task=PREDICTING,  # reads the model as a prediction does; blocks nothing
        )
        self._save_model.enabled = False
        self._save_model.text = "Exporting…"
        if not self._task.start():
            self._on_package_done(None, path, "")

    def _on_package_step(self, step: str) -> None:
        self._save_model.text = step

    def _on_package_done(self, outcome: Outcome | None, path: Path, source: str) -> None:
        self._task = None
        self._save_model.enabled = True
        self._save_model.text = _SAVE_MODEL
        if outcome is not None and outcome.error is None and not outcome.cancelled:
            _say.info(
                f"wrote the bioimage.io package of the model ({source}) to {path}; "
                "bioimageio.core's model test passed"
            )


def _check_bioimageio_extra() -> None:
    """Raise ImportError (saying how to install them) unless the packages that a bioimage.io
    export needs are installed; imports nothing."""
    from importlib.util import find_spec

    for name in ("bioimageio.spec", "bioimageio.core"):
        try:
            found = find_spec(name) is not None
        except ModuleNotFoundError:  # no bioimageio namespace at all
            found = False
        if not found:
            raise ImportError(
                f'a bioimage.io package needs {name}: pip install "napari-unet[bioimageio]"'
            )


def _package_job(model, path: Path, metadata: dict):
    """Worker generator: write and test the bioimage.io package; returns its path."""
    from ..core.network.bioimageio import export_bioimageio

    yield "Writing and testing the package…"
    return export_bioimageio(model, path, metadata=metadata)
