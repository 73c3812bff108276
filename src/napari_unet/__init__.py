"""napari-unet: the U-Net of Ronneberger et al. (2015) for napari, and its headless engine.

Everything listed in ``__all__`` is importable from here without importing Qt or napari; the
names are loaded on first use, so ``import napari_unet`` is quick (torch loads with the core).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "UNet": "model",
    "normalize": "image",
    "to_grey": "image",
    "read_image": "io",
    "write_labels": "io",
    "write_image": "io",
    "read_pixel_size": "io",
    "write_rois": "rois",
    "measure_cells": "measure",
    "export_bioimageio": "bioimageio",
    "load_bioimageio": "bioimageio",
    "TileResult": "predict",
    "predict_tiles": "predict",
    "predict": "predict",
    "to_instances": "instances",
    "separation_weight_map": "weightmap",
    "training_target": "weightmap",
    "elastic_deform": "augment",
    "FinetuneConfig": "train",
    "FinetuneEvent": "train",
    "finetune": "train",
    "save_model": "store",
    "load_model": "store",
    "bundled_models": "store",
    "load_bundled": "store",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"napari_unet.core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
