"""Benchmark: float32 against bfloat16 ("auto" and "bf16") for fine-tuning and prediction.

    python bench/bench_precision.py [--quick] [--steps N] [--side PX] [--threads N]

Side by side in one process, for each precision (``fp32``, ``auto``, ``bf16``):
- steps per minute of the default fine-tuning (the bundled model, ``FinetuneConfig()``'s
  settings) on a Usiigaci training image and its labels, over ``--steps`` steps after a warm-up
  step (the weight maps are prepared before it, so they do not count);
- MP/s of ``predict`` of a ``--side`` x ``--side`` mosaic of Usiigaci validation images with the
  bundled model at the diameter it works at (no resampling, no estimate);
- the fraction of the float32 cells (``to_instances``) matched by the cells of that precision at
  IoU >= 0.9 (``match_counts``), and the largest difference of probabilities.
It prints the CPU, whether its flags include ``avx512_bf16`` / ``amx_bf16`` (ARM: ``bf16``), and
what ``"auto"`` resolves to. On a CPU without them bfloat16 is emulated and slower; "auto" is
float32 there. Before each timed call it waits (up to ``--wait`` s) for idle CPUs. Random data
where ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from bench_predict import cpu_model, load_image, wait_idle
from bench_train_step import sample

from napari_unet import finetune, load_bundled, predict, to_instances
from napari_unet.core.metrics import match_counts
from napari_unet.core.network.precision import cpu_flags, resolve_precision
from napari_unet.core.prediction.scale import model_diameter

PRECISIONS = ("fp32", "auto", "bf16")
NATIVE = ("avx512_bf16", "amx_bf16", "bf16")


def steps_per_minute(pair, steps: int, precision: str, wait: float) -> float:
    """Default fine-tuning of a fresh bundled model: steps per minute over ``steps`` steps after
    the first (the warm-up), from the run's own clock."""
    model = load_bundled()
    wait_idle(wait)
    events = list(finetune(model, [pair], steps=steps + 1, seed=0, precision=precision))
    return 60 * steps / (events[-1].elapsed - events[0].elapsed)


def predicted(model, image, precision: str, wait: float) -> tuple[float, np.ndarray]:
    """``(seconds, probabilities)`` of ``predict`` at the model's own cell size."""
    wait_idle(wait)
    start = time.perf_counter()
    prob = predict(model, image, diameter=model_diameter(model), precision=precision)
    return time.perf_counter() - start, prob


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 steps and a 512 px image")
    p.add_argument("--steps", type=int, help="timed fine-tuning steps (default 20)")
    p.add_argument("--side", type=int, help="side of the predicted image (default 2048)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for idle CPUs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (3 if args.quick else 20)
    side = args.side or (512 if args.quick else 2048)
    native = sorted(set(NATIVE) & cpu_flags())
    print(
        f"machine: {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )
    print(
        f"bfloat16 flags: {', '.join(native) if native else 'none (bfloat16 is emulated)'}; "
        f"'auto' runs {resolve_precision('auto', 'cpu')}"
    )
    pair = sample()
    image, what = load_image(side)
    model = load_bundled()
    print(f"fine-tuning: {steps} steps (+1 warm-up); predict: {side} x {side} px, {what}")
    rows = {}
    for precision in PRECISIONS:  # side by side: fine-tuning, then prediction, per precision
        rate = steps_per_minute(pair, steps, precision, args.wait)
        seconds, prob = predicted(model, image, precision, args.wait)
        rows[precision] = (rate, side * side / seconds / 1e6, prob, to_instances(prob))
    base_rate, base_mps, base_prob, base_cells = rows["fp32"]
    print(
        f"{'precision':>9} {'runs':>5} | {'steps/min':>9} {'x fp32':>6} | {'MP/s':>6} "
        f"{'x fp32':>6} | {'cells':>5} {'IoU>=0.9':>8} {'max |dp|':>8}"
    )
    for precision, (rate, mps, prob, cells) in rows.items():
        matched, n_ref, _ = match_counts(base_cells, cells, 0.9)
        print(
            f"{precision:>9} {resolve_precision(precision, 'cpu'):>5} | {rate:9.1f} "
            f"{rate / base_rate:6.2f} | {mps:6.3f} {mps / base_mps:6.2f} | "
            f"{int(cells.max()):5d} {matched / max(n_ref, 1):8.1%} "
            f"{np.abs(prob - base_prob).max():8.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
