"""Benchmark: a fine-tuning step's FLOP efficiency against this process's matmul rate.

    python bench/bench_train_step.py [--quick] [--threads N]

For each crop size (output side ``tile``) and batch, side by side in one process:
- ``finetune`` itself (crops, augmentation, forward, backward, Adam) over a few steps after a
  warm-up: seconds per step, steps per minute, output pixels learnt per second;
- the optimisation alone on a fixed batch (forward + backward + Adam), and the forward alone;
- the batch preparation alone (cropping and augmentation).
FLOP efficiency = 3 x 2 x forward multiply-adds (forward + backward is about three forwards) /
time / matmul rate, the rate sampled around each call (``bench_predict.timed``), so other load
on the machine cancels out (for ``finetune``, timed by its own clock, the best matmul rate).
The image is a Usiigaci training image with its labels (random if ``../shared/data`` is
absent).
"""

from __future__ import annotations

import argparse
import copy
import platform

import numpy as np
import torch
from bench_predict import best_of, cpu_model, matmul_sample, rate, wait_idle

from napari_unet import UNet, finetune
from napari_unet.core.training.train import weighted_loss

import datasets

CONFIGS = [(128, 4), (128, 2), (192, 2), (256, 2), (256, 1), (384, 1)]


def sample() -> tuple[np.ndarray, np.ndarray]:
    try:
        _, image, labels = datasets.usiigaci("train")[0]
    except SystemExit:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 4000, (1022, 1024)).astype(np.uint16)
        labels = (rng.random((1022, 1024)) > 0.5).astype(np.uint16)
    return image, labels


def finetune_seconds(model, pair, tile, batch, steps, wait) -> float:
    """Seconds per ``finetune`` step, from its events' clock: the steps after the first (the
    warm-up), so preparing the samples (weight maps) does not count."""
    wait_idle(wait)
    events = list(finetune(model, [pair], steps=steps + 1, tile=tile, batch_size=batch, seed=0))
    return (events[-1].elapsed - events[0].elapsed) / steps


def optimisation(model, side, batch):
    """A callable doing forward + backward + Adam on a fixed random batch."""
    out = model.output_size(side)
    x = torch.randn(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, out, out))
    w = torch.rand(batch, out, out)
    opt = torch.optim.Adam(model.parameters(), 1e-5)

    def run():
        model.train()
        loss = weighted_loss(model(x), y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.inference_mode():
            model.eval()
            model(x)

    return run, forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for idle CPUs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, repeats = (3, 1) if args.quick else (8, 2)
    print(
        f"machine: {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )
    torch.manual_seed(0)
    base = UNet(base_channels=16, depth=4).to(memory_format=torch.channels_last)
    pair = sample()
    print(
        f"{'tile':>5} {'batch':>5} {'input':>5} | {'s/step':>7} {'steps/min':>9} "
        f"{'Mpx/s':>6} {'eff':>5} | {'opt s':>6} {'eff':>5} | {'fwd eff':>7} | prep share"
    )
    for tile, batch in CONFIGS:
        model = copy.deepcopy(base)
        side = model.input_size(tile)
        out = model.output_size(side)
        flops = 3 * 2 * model.multiply_adds(side) * batch
        run, forward = optimisation(model, side, batch)
        timings = best_of({"optimisation": run, "forward": forward}, repeats, args.wait)
        per_step = min(
            finetune_seconds(model, pair, tile, batch, steps, args.wait) for _ in range(repeats)
        )
        matmul_sample()
        opt = timings["optimisation"][0]
        eff = flops / per_step / rate()
        eff_opt = flops / timings["optimisation"][4]
        eff_fwd = flops / 3 / timings["forward"][4]
        prep = max(per_step - opt, 0.0) / per_step
        print(
            f"{tile:5d} {batch:5d} {side:5d} | {per_step:7.3f} {60 / per_step:9.0f} "
            f"{batch * out * out / per_step / 1e6:6.3f} {eff:5.2f} | {opt:6.3f} {eff_opt:5.2f} "
            f"| {eff_fwd:7.2f} | {prep:5.0%}",
            flush=True,
        )
    print(f"matmul rate (best sample): {rate() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
