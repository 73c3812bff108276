"""What ``predict`` writes, shared by the CLI, the batch runner and the Predict dock (headless).

Inputs expanded from folders and patterns, the output files planned for them (never replacing an
input or a file ``predict`` did not write), the folders a run creates, the ROI set and cell
table written from labels, and the record an output keeps of the model and options it was made
with, by which a rerun resumes.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

log = logging.getLogger("napari_unet")

__all__ = [
    "MARKED",
    "TABLES",
    "NewFolders",
    "expand_inputs",
    "model_record",
    "model_sha256",
    "output_kinds",
    "plan_outputs",
    "resumable",
    "same_file",
    "write_cell_tables",
]


class NewFolders:
    """The output folders a run creates; those still empty are removed if the run fails."""

    def __init__(self):
        self.created: list[Path] = []

    @staticmethod
    def check(path: Path) -> None:
        """Raise OSError unless ``path`` is, or can be created as, a writable folder."""
        from .core.formats.io import check_writable_folder

        check_writable_folder(path, missing_ok=True, context=f"cannot create output folder {path}")

    def make(self, path: Path) -> Path:
        self.check(path)
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"cannot create output folder {path}: {err.strerror}") from err
        self.created.extend(reversed(missing))
        return path

    def remove_empty(self) -> None:
        for folder in reversed(self.created):  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it
                continue


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same file (also through a link); False if either is
    missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def expand_inputs(items: list[str]) -> list[Path]:
    """Files for ``items``: a file or zarr folder as is, a folder's images and zarr folders
    (sorted), a glob pattern's matching images and zarr folders (sorted); FileNotFoundError for
    an item that gives none."""
    from .core.formats.io import IMAGE_SUFFIXES
    from .core.formats.zarrio import is_zarr

    def image(p: Path) -> bool:
        return is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if is_zarr(path) or path.is_file():
            paths.append(path)
        elif path.is_dir():
            paths.extend(
                p for p in sorted(path.iterdir()) if not p.name.startswith(".") and image(p)
            )
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"no such image file, folder or pattern: {item}")
            paths.extend(p for p in map(Path, matches) if image(p))
    if not paths:
        raise FileNotFoundError(f"no images found in {', '.join(items)}")
    return list(dict.fromkeys(paths))


def output_kinds(probabilities: bool, rois: bool, measurements: bool) -> tuple[str, ...]:
    """The output kinds of ``predict`` with ``--probabilities``, ``--rois``, ``--measurements``
    (keys of :func:`plan_outputs`' targets)."""
    kinds = ("labels",) + ("probabilities",) * probabilities
    return kinds + ("rois",) * rois + ("cells",) * measurements


def plan_outputs(images: list[Path], out: Path, kinds: tuple[str, ...]) -> list[tuple]:
    """``(image, {kind: output path})`` per image to segment; raises before anything is written.

    Outputs are ``<stem>_<kind>.tif`` (``<stem>_labels.ome.zarr`` and
    ``<stem>_probabilities.ome.zarr`` for a zarr or OME-Zarr input), the stem without
    ``.ome``; a stem met again gets ``<stem>-2``, ``-3``, ... in the order given. Inputs that
    an earlier ``predict`` wrote are not segmented. An output may replace a file only when an
    earlier ``predict`` wrote it, and never an input: labels and probabilities carry the mark
    of ``predict``; a ROI set or cell table is ours only when the labels beside it record its
    SHA-256 (:func:`write_cell_tables`). ``kinds``: :func:`output_kinds`. Used by the
    in-process and the distributed command alike.
    """
    from .core.formats.zarrio import is_complete_output

    todo = []
    for path in images:
        if is_complete_output(path):
            log.warning("%s: not segmented, napari-unet predict wrote it", path)
        else:
            todo.append(path)
    if not todo:
        raise ValueError("nothing to segment: napari-unet predict wrote every input")
    plan, taken = [], set()
    for path in todo:
        k = 1
        while any(_output_name(path, k, kind) in taken for kind in kinds):
            k += 1
        targets = {kind: out / _output_name(path, k, kind) for kind in kinds}
        taken.update(t.name for t in targets.values())
        if k > 1:
            name = targets[kinds[0]].name
            log.warning("%s -> %s (another input has the name %s)", path, name, _stem(path, 1))
        plan.append((path, targets))
    for path, targets in plan:
        for kind, target in targets.items():
            hit = next((i for i in todo if same_file(target, i)), None)
            if hit is not None:
                raise FileExistsError(
                    f"the output for {path} would replace the input {hit}; choose another --out"
                )
            if os.path.lexists(target) and not _ours(kind, target, targets["labels"]):
                raise FileExistsError(
                    f"{target} exists and napari-unet predict did not write it; refusing to "
                    f"replace it with the output for {path} (move it, or choose another --out)"
                )
    return plan


def _ours(kind: str, target: Path, labels: Path) -> bool:
    """Whether ``predict`` wrote ``target``: a marked, complete output; a table whose SHA-256
    the labels beside it record."""
    from .core.formats.io import file_sha256
    from .core.formats.zarrio import is_complete_output, read_record

    if kind in MARKED:
        return is_complete_output(target)
    if not (target.is_file() and is_complete_output(labels)):
        return False
    tables = (read_record(labels) or {}).get("tables", {})
    return tables.get(kind) is not None and tables[kind] == file_sha256(target)


def _stem(path: Path, k: int) -> str:
    from .core.formats.zarrio import ImageFile

    stem = ImageFile(str(path), "", (), None).stem  # x.ome.tif, x.ome.zarr: x
    return stem if k == 1 else f"{stem}-{k}"


_SUFFIXES = {"rois": ".zip", "cells": ".csv"}
"""Output kinds that are not TIFF files (``<stem>_rois.zip``, ``<stem>_cells.csv``)."""
MARKED = ("labels", "probabilities")
"""Output kinds that carry the mark of ``predict`` (OME-Zarr for a zarr input)."""


def _output_name(path: Path, k: int, kind: str) -> str:
    from .core.formats.zarrio import is_zarr

    suffix = ".ome.zarr" if kind in MARKED and is_zarr(path) else _SUFFIXES.get(kind, ".tif")
    return f"{_stem(path, k)}_{kind}{suffix}"


TABLES = ("rois", "cells")
"""Output kinds made from the labels and the image in memory (:func:`write_cell_tables`)."""


def write_cell_tables(targets: dict, labels, image, pixel_size) -> dict:
    """The ROI set and measurements table of ``predict --rois / --measurements`` (the
    :data:`TABLES` among ``targets``) for ``(H, W)`` ``labels`` of ``image``; returns
    ``{kind: SHA-256}`` of the files written, for the labels' run record (written after them,
    so a rerun knows them for its own)."""
    from .core.formats.io import file_sha256

    if "rois" in targets:
        from .core.formats.rois import write_rois

        write_rois(targets["rois"], labels)
    if "cells" in targets:
        from .core.formats.measure import measure_cells, write_csv

        write_csv(targets["cells"], measure_cells(labels, image, pixel_size))
    return {kind: file_sha256(targets[kind]) for kind in TABLES if kind in targets}


def model_sha256(model) -> str:
    """Hex SHA-256 of ``model``'s weights (names and values): equal for equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_record(label: str | None, model) -> dict:
    """What an output records of the model it was made with (compared when a rerun resumes):
    ``label`` (a file, ``None``: the bundled model) and the weights' SHA-256."""
    return {"model": label or "bundled", "model_sha256": model_sha256(model)}


_COMPARED = {
    "model_sha256": "model",
    "instances_asked": "labelling options",
    "flips": "--flips",
    "diameter_asked": "--diameter",
}
"""The record's keys a rerun compares, and how the line that redoes an output names them."""


def resumable(targets: list[Path], record: dict) -> tuple[bool, str]:
    """Whether the complete outputs ``targets`` may be kept by a rerun made as ``record`` says:
    ``(True, "")``; else ``(False, why)``, ``why`` naming what differs ("" when an output is
    missing or incomplete). Every output records the model and options (OME-Zarr in its
    attributes, TIFF in a tag): the labelling options and the ``--diameter`` asked for
    (``"instances_asked"``, sizes ``None`` where left open; ``"diameter_asked"``, ``None``:
    none), which are compared, besides the diameter used and the options sized by it
    (``"diameter"``, ``"instances"``), which the same inputs give again; one without a record
    (an earlier version's) is redone."""
    from .core.formats.zarrio import is_complete_output, read_record

    if not all(map(is_complete_output, targets)):
        return False, ""
    for target in targets:
        stored = read_record(target)
        if stored is None:
            return False, "made by an earlier version of napari-unet (no record)"
        differ = [said for k, said in _COMPARED.items() if stored.get(k) != record.get(k)]
        if differ:
            return False, "made with another " + ", ".join(differ)
    return True, ""
