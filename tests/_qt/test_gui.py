"""napari finds the plugin; `napari-unet gui` opens the images and docks the five widgets."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from qtpy.QtWidgets import QDockWidget, QTabBar

from napari_unet.cli import WIDGETS, open_viewer
from napari_unet.core.formats.sample import PIXEL_SIZE_UM


def test_napari_lists_the_plugin_and_its_contributions():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-unet")
    assert {w.display_name for w in manifest.contributions.widgets} == set(WIDGETS)
    assert [s.key for s in manifest.contributions.sample_data] == ["phase_contrast_cells"]
    assert manifest.contributions.writers[0].layer_types == ["labels"]


def test_gui_with_the_sample_data(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 800)
    open_viewer([], viewer)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells annotation"]
    assert viewer.layers["cells"].data.shape == (512, 512)
    docked = {type(w).__name__ for w in viewer.window.dock_widgets.values()}
    expected = {"AnnotateWidget", "WeightMapWidget", "FinetuneWidget", "PredictWidget"}
    assert expected | {"ExportWidget"} <= docked

    # Annotate, the first step, is the tab in front (it was Export, the last one docked)
    tabs = [bar for bar in viewer.window._qt_window.findChildren(QTabBar) if bar.count() == 5]
    assert len(tabs) == 1
    assert tabs[0].tabText(tabs[0].currentIndex()).startswith("Annotate")
    annotate = next(
        w for w in viewer.window.dock_widgets.values() if w.__class__.__name__ == "AnnotateWidget"
    )
    qtbot.waitUntil(annotate.native.isVisible, timeout=2000)

    # The whole image is in view, in a canvas that keeps most of the window
    canvas = viewer.canvas if hasattr(viewer, "canvas") else viewer  # napari < 0.9: _canvas_size
    canvas_h, canvas_w = canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size
    dock = annotate.native
    while not isinstance(dock, QDockWidget):
        dock = dock.parent()
    assert dock.width() < 450  # napari's own docks take ~340 px; ours fit their five tab names
    assert canvas_w > 0.4 * viewer.window._qt_window.width()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    side = 512 * PIXEL_SIZE_UM  # the sample is in micrometres (issue 25 item 4)
    assert camera.center[-2:] == pytest.approx((255.5 * PIXEL_SIZE_UM,) * 2, abs=1)
    assert camera.zoom * side <= min(canvas_h, canvas_w) + 1
    assert camera.zoom * side >= 0.8 * min(canvas_h, canvas_w)  # fitted, not tiny


def test_sample_menu_names_the_plugin_once(make_napari_viewer):
    viewer = make_napari_viewer()

    def titles(menu):
        for action in menu.actions():
            yield action.text()
            if action.menu() is not None:
                yield from titles(action.menu())

    found = [t for t in titles(viewer.window._qt_window.menuBar()) if "Phase-contrast" in t]
    assert found == ["Phase-contrast cells (napari-unet)"]


def test_gui_with_user_images(make_napari_viewer, tmp_path):
    path = tmp_path / "mine.tif"
    tifffile.imwrite(path, np.zeros((40, 50, 3), np.uint8))
    viewer = open_viewer([str(path)], make_napari_viewer())
    assert viewer.layers["mine"].rgb


def test_gui_keeps_the_pixel_size_of_a_calibrated_tiff(make_napari_viewer, tmp_path):
    path = tmp_path / "calibrated.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 40, 50), np.uint16),
        imagej=True,
        resolution=(2.0, 4.0),
        metadata={"unit": "micron", "axes": "ZYX"},
    )
    layer = open_viewer([str(path)], make_napari_viewer()).layers["calibrated"]
    np.testing.assert_allclose(layer.scale, (1.0, 0.25, 0.5))
    assert [str(u) for u in layer.units] == ["pixel", "micrometer", "micrometer"]


def test_the_gui_window_fills_the_screen_and_its_tabs_read_whole(make_napari_viewer, qtbot):
    from qtpy.QtGui import QGuiApplication

    viewer = make_napari_viewer(show=True)
    open_viewer([], viewer, fill_screen=True)
    qtbot.wait(300)
    area = QGuiApplication.primaryScreen().availableGeometry()
    _, _, width, height = viewer.window.geometry()
    assert area.width() >= 1600 and area.height() >= 1000  # pytest-xvfb's screen (pyproject)
    assert width * height >= 0.8 * area.width() * area.height()
    canvas_h, canvas_w = viewer.canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size
    assert canvas_w * canvas_h >= 0.5 * width * height  # the canvas: over half the area
    assert canvas_w >= 0.5 * width
    (tabs,) = [b for b in viewer.window._qt_window.findChildren(QTabBar) if b.count() == 5]
    assert [tabs.tabText(i) for i in range(5)] == list(WIDGETS)
    for i in range(5):  # each name whole: its tab as wide as its text
        text = tabs.fontMetrics().horizontalAdvance(tabs.tabText(i))
        assert tabs.tabRect(i).width() >= text, tabs.tabText(i)


def _stray_windows(viewer) -> list[str]:
    """The visible top-level widgets other than the main window (after the queued events)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # what the event loop does next: queued shows, not deletions
    main = viewer.window._qt_window
    return [
        f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r} at {w.geometry().getRect()}"
        for w in QApplication.topLevelWidgets()
        if w.isVisible() and w is not main
    ]


def test_no_window_but_the_main_one_after_layers_come_and_go(make_napari_viewer, qtbot):
    """Predict's 'current plane / all planes' buttons showed as windows over the menus (issue
    25 item 2): magicgui rebuilt them on every reset of the choices."""
    viewer = make_napari_viewer(show=True)
    open_viewer([], viewer, fill_screen=True)
    qtbot.wait(100)
    for dock in viewer.window.dock_widgets.values():
        native = dock.native
        while not isinstance(native, QDockWidget):
            native = native.parent()
        native.show()
        native.raise_()  # this dock's tab in front: its widgets visible
        qtbot.waitUntil(dock.native.isVisible, timeout=2000)
        stack = viewer.add_image(np.zeros((5, 64, 64), np.uint16), name="stack")
        assert _stray_windows(viewer) == [], type(dock).__name__
        labels = viewer.add_labels(np.zeros((5, 64, 64), np.uint16), name="stack annotation")
        viewer.layers.remove(stack)
        assert _stray_windows(viewer) == [], type(dock).__name__
        viewer.layers.remove(labels)
        assert _stray_windows(viewer) == [], type(dock).__name__


def _dock(viewer, name: str):
    return next(w for w in viewer.window.dock_widgets.values() if type(w).__name__ == name)


def test_a_calibrated_frame_beside_the_sample_and_our_layers_agree_on_units(
    make_napari_viewer, qtbot, notes, tmp_path
):
    """A DIC frame with its 0.19 um pixels, the sample, and the layers the docks make of the
    frame: one unit (um) throughout, each drawn at its real size, and no 'Inconsistent units'
    warning (issue 25 item 4: the sample was in pixels, the annotation and weight map too)."""
    path = tmp_path / "dic.tif"
    frame = np.random.default_rng(0).integers(0, 4000, (96, 128)).astype(np.uint16)
    tifffile.imwrite(
        path, frame, imagej=True, resolution=(1 / 0.19, 1 / 0.19), metadata={"unit": "micron"}
    )
    viewer = make_napari_viewer(show=True)
    open_viewer([str(path)], viewer, fill_screen=True)
    viewer.open_sample("napari-unet", "phase_contrast_cells")
    qtbot.wait(100)
    for name in ("cells", "cells annotation"):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, (PIXEL_SIZE_UM,) * 2)
        assert [str(u) for u in layer.units] == ["micrometer"] * 2
    dic = viewer.layers["dic"]
    np.testing.assert_allclose(dic.scale, (0.19, 0.19))

    annotate = _dock(viewer, "AnnotateWidget")
    annotate._image.value = dic
    annotate._pick.native.click()  # "<frame> annotation"
    annotation = viewer.layers["dic annotation"]
    annotation.data[10:30, 10:30] = 1
    annotate._add_region.native.click()  # "<frame> annotated region"
    weightmap = _dock(viewer, "WeightMapWidget")
    weightmap._annotation_box.value = annotation
    weightmap._preview.value = True
    qtbot.waitUntil(lambda: "dic annotation weights" in viewer.layers, timeout=10_000)
    predict = _dock(viewer, "PredictWidget")
    predict._image.value = dic
    predict._with_probability.value = True
    worker = predict.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not predict.running, timeout=10_000)
    made = [layer for layer in viewer.layers if layer.name.startswith("dic ")]
    assert {layer.name for layer in made} >= {
        "dic annotation",
        "dic annotated region",
        "dic annotation target",
        "dic annotation weights",
        "dic prediction",
        "dic probability",
    }
    for layer in made:
        np.testing.assert_allclose(layer.scale[-2:], (0.19, 0.19), err_msg=layer.name)
        assert [str(u) for u in layer.units[-2:]] == ["micrometer"] * 2, layer.name
    viewer.layers.remove("dic annotated region")
    qtbot.wait(300)  # the canvas draws, and napari checks the units of its layers
    assert not [n for n in notes if "units" in str(n.message).lower()]
    # each at its real size: the sample's 512 px span 444 um, the frame's 128 px 24 um
    assert viewer.layers.extent.world[1][-1] == pytest.approx(511 * PIXEL_SIZE_UM, rel=0.01)


@pytest.mark.skip(
    reason="issue 25 item 9, open: these steps segfault in Mesa's glDrawArrays in 2 of 5 runs "
    "(a canvas repaint forced by the QProgressBar of viewer.open's tqdm loop, inside the "
    "worker's yielded handler), never in 6 runs without a prediction worker; a crash would end "
    "the whole test session, so it is run by hand, this mark removed"
)
def test_layers_removed_during_a_prediction_then_a_stack_opened(
    make_napari_viewer, qtbot, tmp_path
):
    """Issue 25 item 9's steps (a Mesa software-GL segfault once, not reproduced by the user):
    in the gui window, remove layers while a prediction worker runs, then open a 5-plane stack
    and step through it while the canvas draws. No crash, no stray window, no layer of the
    gone image."""
    from napari_unet._widgets._session import session_for

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (5, 300, 400), np.uint8))
    viewer = make_napari_viewer(show=True)
    open_viewer([], viewer, fill_screen=True)
    import torch

    from napari_unet import UNet

    torch.manual_seed(0)
    session_for(viewer).set_model(UNet(base_channels=4, depth=3), "tiny")
    predict = _dock(viewer, "PredictWidget")
    predict._tile.value = 64
    predict._with_probability.value = True
    worker = predict.run()
    removed = []

    def remove_layers(event):
        if not removed and "cells probability (running)" in viewer.layers:
            removed.append(True)
            for name in ("cells probability (running)", "cells annotation", "cells"):
                viewer.layers.remove(name)
            viewer.open(str(path))  # the 5-plane stack, while the worker still runs
            qtbot.wait(50)

    worker.yielded.connect(remove_layers)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not predict.running, timeout=10_000)
    for z in range(5):
        viewer.dims.set_current_step(0, z)
        qtbot.wait(30)  # the canvas draws each plane
    assert removed and [layer.name for layer in viewer.layers] == ["stack"]
    assert predict.status.startswith("dropped")
    assert _stray_windows(viewer) == []
