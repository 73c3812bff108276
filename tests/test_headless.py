"""The public API imports without Qt or napari, and the core never imports them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import napari_unet


def test_public_api_imports_without_qt_or_napari():
    code = (
        "import sys, napari_unet\n"
        "for name in napari_unet.__all__: getattr(napari_unet, name)\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_core_sources_never_import_gui_packages():
    core = Path(napari_unet.__file__).parent / "core"
    for path in core.glob("*.py"):
        text = path.read_text()
        for name in ("napari", "qtpy", "magicgui", "PyQt"):
            assert f"import {name}" not in text and f"from {name}" not in text, path
