"""Latency of the Weight map widget's live preview on the sample data (512x512, 33 cells).

Builds the widget in a real (hidden) viewer, moves the w0 slider ~20 times and, for each change,
measures (a) the update itself: from the debounce timer firing to both preview layers holding the
new data (target, weights, contrast limits), and (b) the whole slider-to-layers delay seen by a
user, which adds the debounce delay and Qt event handling. Prints medians in ms and the machine.
The budget for (a) is 200 ms; above it the computation would have to move to a worker.

Run: ``xvfb-run -a python bench/bench_weightmap_preview.py``
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_unet._sample_data import phase_contrast_cells
from napari_unet._widgets.weightmap import DEBOUNCE_MS, WeightMapWidget

CHANGES = 20


def _wait(condition, timeout: float = 10.0) -> None:
    app = QApplication.instance()
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the preview did not update")
        app.processEvents()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    viewer = napari.Viewer(show=False)
    for data, kwargs, kind in phase_contrast_cells():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _wait(lambda: "cells annotation weights" in viewer.layers)
    weights = viewer.layers["cells annotation weights"]

    update_ms, total_ms = [], []
    timed_update = widget._update

    def update():
        start = time.perf_counter()
        timed_update()
        update_ms.append(1000 * (time.perf_counter() - start))

    widget._timer.timeout.disconnect(timed_update)
    widget._timer.timeout.connect(update)
    for i in range(CHANGES):
        before = weights.data
        start = time.perf_counter()
        widget._w0.value = 5 + i  # a slider move, as the user makes it
        _wait(lambda before=before: weights.data is not before)
        total_ms.append(1000 * (time.perf_counter() - start))
    w0 = widget._w0.value
    assert 0.5 * w0 < weights.data.max() <= w0 + 1, "weights do not follow w0"

    cpu = _cpu_name()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    print(f"napari {napari.__version__}, image 512x512, {CHANGES} changes of w0")
    print(
        f"update (timer fired -> layers hold new data): median "
        f"{statistics.median(update_ms):.1f} ms (min {min(update_ms):.1f}, "
        f"max {max(update_ms):.1f}); budget 200 ms"
    )
    print(
        f"slider change -> layers, incl. {DEBOUNCE_MS} ms debounce: "
        f"median {statistics.median(total_ms):.1f} ms"
    )
    viewer.close()


if __name__ == "__main__":
    main()
