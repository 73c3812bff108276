"""napari finds the plugin; `napari-unet gui` opens the images and docks the five widgets."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_unet.cli import WIDGETS, open_viewer


def test_napari_lists_the_plugin_and_its_contributions():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-unet")
    assert {w.display_name for w in manifest.contributions.widgets} == set(WIDGETS)
    assert [s.key for s in manifest.contributions.sample_data] == ["phase_contrast_cells"]
    assert manifest.contributions.writers[0].layer_types == ["labels"]


def test_gui_with_the_sample_data(make_napari_viewer):
    viewer = open_viewer([], make_napari_viewer())
    assert [layer.name for layer in viewer.layers] == ["cells", "cells annotation"]
    assert viewer.layers["cells"].data.shape == (512, 512)
    docked = {type(w).__name__ for w in viewer.window.dock_widgets.values()}
    expected = {"AnnotateWidget", "WeightMapWidget", "FinetuneWidget", "PredictWidget"}
    assert expected | {"ExportWidget"} <= docked


def test_gui_with_user_images(make_napari_viewer, tmp_path):
    path = tmp_path / "mine.tif"
    tifffile.imwrite(path, np.zeros((40, 50, 3), np.uint8))
    viewer = open_viewer([str(path)], make_napari_viewer())
    assert viewer.layers["mine"].rgb
