"""Benchmark: how long the napari event loop stalls while the U-Net works in a thread.

Run ``xvfb-run -a python bench/bench_responsiveness.py``. A real ``napari.Viewer`` shows the
sample data; a 10 ms ``QTimer`` on the main thread records the gap between consecutive ticks, and
the longest gap (and the 99th percentile) is the longest time the user interface could not react.
Target: longest stall < 100 ms. Measured, in one run:

* idle: the viewer alone (what Xvfb, software OpenGL and the machine's load cost);
* training: ``napari_unet.finetune`` of a ``UNet(base_channels=16)`` for ``--steps`` steps in a
  ``create_worker`` thread, the main thread updating a label with each event;
* prediction through the Predict widget (tiles streaming into a labels layer) with that model, on
  the 512 x 512 sample (tiles of 128 and 64 px) and on a 2048 x 2048 image (the sample tiled
  4 x 4): first into a new layer, then into the reused layer with a refresh after every tile and
  with the widget's refresh throttled to at most one per 100 ms.

The longest stall is attributed to what the main thread was doing (timed widget handlers, the
Predict click that makes the layers) and to the worker's phase at the time (recorded from the
worker thread). Causes seen so far: a new layer costs napari 120-340 ms on the main thread
(``viewer.add_labels``: vispy visuals, overlays, layer controls; later runs reuse the unedited
prediction layer and do not pay it); each refresh of the streamed layer costs 15-25 ms plus a
repaint (30-60 ms with software OpenGL under Xvfb); the first training step imports
``torch._dynamo`` (from ``torch.optim.Adam``), whose import holds the GIL for 100-260 ms at a
time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

TARGET = 0.100  # s


class StallMeter:
    """Gaps between the ticks of a 10 ms timer on the main thread.

    ``marks`` are ``(start, end, what)`` intervals the main thread spent in timed handlers;
    ``phases`` are ``(start, what)`` of the worker's phases (appended from the worker thread).
    """

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[float] = []
        self.marks: list[tuple[float, float, str]] = []
        self.phases: list[tuple[float, str]] = []

    def start(self) -> None:
        self.marks, self.phases = [], []
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def stop(self) -> None:
        self._tick()
        self.timer.stop()

    def phase(self, what: str) -> None:
        self.phases.append((time.perf_counter(), what))

    def timed(self, what: str, func):
        """``func`` wrapped so that each call is recorded as a mark."""

        def wrapper(*args):
            t0 = time.perf_counter()
            try:
                return func(*args)
            finally:
                self.marks.append((t0, time.perf_counter(), what))

        return wrapper

    def _cause(self, start: float, end: float) -> str:
        longest: dict[str, float] = {}
        for s, e, what in self.marks:
            if s < end and e > start:
                longest[what] = max(min(e, end) - max(s, start), longest.get(what, 0.0))
        # the worker phase under way at the start of the gap and those begun during it
        before = [what for t, what in self.phases if t <= start][-1:]
        during = [what for t, what in self.phases if start < t < end]
        worker = list(dict.fromkeys(before + during))
        main = ", ".join(f"{w} {d * 1e3:.0f} ms" for w, d in sorted(longest.items()))
        return (
            f"main thread in [{main or 'nothing timed'}]; "
            f"worker in [{', '.join(worker) or 'idle'}]"
        )

    def summary(self) -> dict:
        ticks = np.asarray(self.ticks)
        gaps = np.diff(ticks)
        worst = int(np.argmax(gaps))
        handlers = [e - s for s, e, _ in self.marks]
        return {
            "max": float(gaps.max()),
            "p99": float(np.percentile(gaps, 99)),
            "over": int((gaps > TARGET).sum()),
            "seconds": float(ticks[-1] - ticks[0]),
            "handler_max": max(handlers, default=0.0),
            "handler_sum": sum(handlers),
            "cause": self._cause(ticks[worst], ticks[worst + 1]),
        }


def run_loop_until(signal) -> None:
    """Run the Qt event loop until ``signal`` fires."""
    from qtpy.QtCore import QEventLoop

    loop = QEventLoop()
    signal.connect(loop.quit)
    loop.exec_()


def idle(meter: StallMeter, seconds: float) -> dict:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    meter.start()
    loop.exec_()
    meter.stop()
    return meter.summary()


def _train_job(model, samples, steps, phase):
    """Fine-tuning in the worker, its phases reported to ``phase``.

    ``finetune`` checks its inputs and prepares the samples (weight maps) before it returns its
    generator, so ``create_worker(finetune, ...)`` would do that on the main thread and give a
    FunctionWorker that never iterates; a generator function runs all of it in the worker.
    """
    from napari_unet import finetune

    phase("preparing samples (weight maps)")
    events = finetune(model, samples, steps=steps, seed=0)
    phase("training step 1")
    for event in events:
        yield event
        phase(f"training step {event.step + 1}")


def train(meter: StallMeter, model, samples, steps: int) -> tuple[dict, float]:
    from napari.qt.threading import create_worker
    from qtpy.QtWidgets import QLabel

    label = QLabel("training…")
    label.show()

    def on_event(event):
        label.setText(f"step {event.step}/{event.total}  loss {event.loss:.3f}")

    worker = create_worker(_train_job, model, samples, steps, meter.phase, _start_thread=False)
    worker.yielded.connect(meter.timed("event handler", on_event))
    t0 = time.perf_counter()
    meter.start()
    worker.start()
    run_loop_until(worker.finished)
    meter.stop()
    label.close()
    return meter.summary(), time.perf_counter() - t0


def instrument(meter: StallMeter, widget) -> None:
    """Record the worker's phases and time the widget's main-thread handlers."""
    from napari_unet._widgets import predict as module

    job = module._predict_job

    def timed_job(*args, **kwargs):
        meter.phase("normalising, padding, tile 1")
        tiles = job(*args, **kwargs)
        while True:
            try:
                result = next(tiles)
            except StopIteration as stop:
                meter.phase("done")
                return stop.value
            yield result
            last = result.index + 1 == result.total
            meter.phase("to_instances" if last else f"tile {result.index + 2}")

    module._predict_job = timed_job
    # the worker's signals connect to these instance attributes
    widget._on_tile = meter.timed("tile handler", widget._on_tile)
    widget._on_returned = meter.timed("final labels", widget._on_returned)
    widget._refresh_layers = meter.timed("layer refresh", widget._refresh_layers)
    widget._on_finished = meter.timed("finished handler", widget._on_finished)


def predict(meter: StallMeter, widget, layer, tile: int, refresh_interval: float):
    """One prediction through the widget; returns the stall summary, seconds and status."""
    from napari_unet._widgets import predict as module

    module.REFRESH_INTERVAL = refresh_interval
    widget._refresh_timer.setInterval(max(1, int(refresh_interval * 1000)))
    widget._image.value = layer
    widget._tile.value = tile
    t0 = time.perf_counter()
    meter.start()
    meter.timed("Predict click (layers made)", widget._predict.native.click)()
    run_loop_until(widget.worker.finished)
    meter.stop()
    seconds = time.perf_counter() - t0
    status = widget._status.value
    return meter.summary(), seconds, status


def report(name: str, s: dict, extra: str = "") -> None:
    verdict = "ok" if s["max"] < TARGET else "ABOVE TARGET"
    print(
        f"{name:<44} longest {s['max'] * 1e3:7.1f} ms  p99 {s['p99'] * 1e3:6.1f} ms  "
        f"gaps>100ms {s['over']:3d}  over {s['seconds']:6.1f} s  {verdict}{extra}"
    )
    print(
        f"{'':<44} main-thread handlers: longest {s['handler_max'] * 1e3:.0f} ms, "
        f"total {s['handler_sum'] * 1e3:.0f} ms"
    )
    if s["max"] >= TARGET:
        print(f"{'':<44} longest stall: {s['cause']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    parser.add_argument(
        "--tiles", type=int, nargs="+", default=[128, 64], help="tile sides for the 512 px image"
    )
    parser.add_argument("--big-tile", type=int, default=256, help="tile side for 2048 px")
    parser.add_argument("--no-big", action="store_true", help="skip the 2048 x 2048 image")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (default: torch's choice)"
    )
    args = parser.parse_args()

    import napari
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from napari_unet import UNet
    from napari_unet._sample_data import phase_contrast_cells
    from napari_unet._widgets._session import session_for
    from napari_unet._widgets.predict import PredictWidget

    (image, image_kwargs, _), (labels, labels_kwargs, _) = phase_contrast_cells()
    viewer = napari.Viewer(show=True)
    cells = viewer.add_image(image, **image_kwargs)
    viewer.add_labels(labels, **labels_kwargs)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    meter = StallMeter()
    instrument(meter, widget)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), napari {napari.__version__}, "
        f"Qt platform {os.environ.get('QT_QPA_PLATFORM', 'xcb')}"
    )
    print(f"target: longest stall of the event loop < {TARGET * 1e3:.0f} ms\n")
    report("idle viewer (3 s)", idle(meter, 3.0))

    torch.manual_seed(0)
    model = UNet(base_channels=16)
    summary, seconds = train(meter, model, [(image, labels)], args.steps)
    report(f"fine-tuning, {args.steps} steps (base 16)", summary, f"  [{seconds:.1f} s]")

    session_for(viewer).set_model(model, "bench: fine-tuned")
    big = viewer.add_image(np.tile(image, (4, 4)), name="cells 2048", visible=False)
    runs = [(cells, tile) for tile in args.tiles]
    runs += [] if args.no_big else [(big, args.big_tile)]
    for layer, tile in runs:
        for other in viewer.layers:  # show only the image predicted and its prediction
            if isinstance(other, napari.layers.Image):
                other.visible = other is layer
        for interval, how in (
            (0.1, "throttled, new layer"),
            (0.0, "refresh per tile"),
            (0.1, "throttled 100 ms"),
        ):
            summary, seconds, status = predict(meter, widget, layer, tile, interval)
            shape = "x".join(map(str, layer.data.shape))
            report(f"predict {shape}, tile {tile}, {how}", summary, f"  [{seconds:.1f} s]")
            print(f"{'':<44} {status}")
    viewer.close()


if __name__ == "__main__":
    main()
