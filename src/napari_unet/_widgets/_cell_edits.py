"""Edits of an annotation labels layer that the Annotate dock's keys and buttons make, each one
step of napari's undo."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._ui import Messages

if TYPE_CHECKING:
    from napari.layers import Labels

__all__ = ["cell_at", "delete_cell", "new_cell", "write_changes"]

_say = Messages("Annotate")


def new_cell(annotation: Labels) -> None:
    """Select the next free id (max + 1 over the whole layer) and paint."""
    new_id = int(np.asarray(annotation.data).max(initial=0)) + 1
    if new_id > np.iinfo(annotation.data.dtype).max:
        _say.error(f"annotation '{annotation.name}' has no free id left in its dtype")
        return
    annotation.selected_label = new_id
    annotation.mode = "paint"


def delete_cell(annotation: Labels) -> None:
    """Set the selected id to 0 in the whole layer (every plane of a stack)."""
    cell_id = annotation.selected_label
    index = np.nonzero(np.asarray(annotation.data) == cell_id)
    if cell_id == 0 or index[0].size == 0:
        _say.warning(f"cell {cell_id} is not in '{annotation.name}'; nothing deleted")
        return
    with annotation.block_history():
        annotation.data_setitem(index, 0)


def cell_at(annotation: Labels, position) -> int:
    """The id at the world ``position`` on the viewed plane (0 outside the layer)."""
    value = annotation.get_value(position, world=True)
    return 0 if value is None else int(value)


def write_changes(annotation: Labels, values: np.ndarray, lead: tuple[int, ...] = ()) -> None:
    """Write the pixels of ``values`` that differ from the plane ``lead`` of
    ``annotation`` (the whole layer for ``()``) as one undo step."""
    index = np.nonzero(values != np.asarray(annotation.data)[lead])
    full = tuple(np.full(index[0].size, i) for i in lead) + index
    with annotation.block_history():  # one undo step; paint event after the write
        annotation.data_setitem(full, values[index])
