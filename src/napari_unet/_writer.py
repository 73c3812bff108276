"""File > Save Layers for labels layers: TIFF, PNG or NPY, written atomically."""

from __future__ import annotations

from typing import Any


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: save a labels layer's data to ``path``; returns ``[path]``."""
    from .core.formats.io import write_labels

    return [str(write_labels(path, data))]
