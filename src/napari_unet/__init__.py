"""napari-unet: the U-Net of Ronneberger et al. (2015) for napari, and its headless engine.

Everything listed in ``__all__`` is importable from here without importing Qt or napari; the
names are loaded on first use, so ``import napari_unet`` is quick (torch loads with the core).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "UNet": "network.model",
    "normalize": "image",
    "to_grey": "image",
    "read_image": "formats.io",
    "write_labels": "formats.io",
    "write_image": "formats.io",
    "read_pixel_size": "formats.io",
    "write_rois": "formats.rois",
    "measure_cells": "formats.measure",
    "export_bioimageio": "network.bioimageio",
    "load_bioimageio": "network.store",
    "TileResult": "prediction.predict",
    "predict_tiles": "prediction.predict",
    "predict": "prediction.predict",
    "to_instances": "prediction.instances",
    "InstanceConfig": "prediction.instances",
    "separation_weight_map": "training.weightmap",
    "training_target": "training.weightmap",
    "elastic_deform": "training.augment",
    "FinetuneConfig": "training.train",
    "FinetuneEvent": "training.train",
    "DEFAULT_STEPS": "training.train",
    "finetune": "training.train",
    "save_model": "network.store",
    "load_model": "network.store",
    "bundled_models": "network.store",
    "load_bundled": "network.store",
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
