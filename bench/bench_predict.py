"""Benchmark: exact overlap-tile prediction against this process's matmul rate, and against MONAI.

Run ``python bench/bench_predict.py [--quick]``. Everything is measured in one process, side by
side, best of N; before each timed call the script waits (up to ``--wait`` s) for the CPUs to be
idle, since other jobs may share the machine. Sections:

1. torch float32 matmul rate (2048 x 2048 @ 2048 x 2048, best of all samples taken in the run).
2. ``napari_unet.predict(model, image)`` (auto tile) for base 64 and 16 (depth 4, random init):
   seconds, output MP/s, FLOP efficiency = 2 x multiply-adds of the tiles run / time / matmul
   rate, and wasted work = tiled multiply-adds / one untiled same-padded pass.
3. One tile's forward pass: contiguous vs channels_last (float32), and bfloat16 autocast.
4. glibc allocator: ``keep_freed_memory`` on vs off (monkeypatched), user/system CPU time, RSS.
5. MONAI ``sliding_window_inference`` (roi 512, overlap 0.25, gaussian) with the same weights as a
   same-padded network, channels_last, same normalisation and allocator.
6. Peak memory per input pixel per base channel (VmHWM in a fresh subprocess; not ru_maxrss,
   which a child inherits from its parent across fork + exec) against
   ``tiling._BYTES_PER_PIXEL_CHANNEL``, and the page-fault cost of a tile's first pass against
   ``tiling._MULTIPLY_ADDS_PER_FAULTED_BYTE``.

The image is a 2048 x 2048 mosaic of Usiigaci validation images (uint16), random if absent.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import napari_unet
import napari_unet.core.prediction.predict as predict_module
from napari_unet import UNet
from napari_unet.core.image import normalize
from napari_unet.core.prediction.allocator import keep_freed_memory
from napari_unet.core.prediction.tiling import (
    _BYTES_PER_PIXEL_CHANNEL,
    _MULTIPLY_ADDS_PER_FAULTED_BYTE,
    auto_tile,
    plan_tiles,
    tiled_multiply_adds,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "usiigaci" / "val" / "images"
CL = torch.channels_last
MATMUL: list[float] = []  # every matmul sample (FLOP/s); the rate used is the best


# ------------------------------------------------------------------------------ the machine
def proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` in a /proc text file (None where missing)."""
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return proc_field("/proc/cpuinfo", "model name") or "unknown CPU"


def vm_rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    return int((proc_field("/proc/self/status", "VmRSS") or "0 kB").split()[0]) * 1024


def idle_fraction(dt: float = 0.25) -> float:
    """Fraction of all CPUs idle over ``dt`` seconds (1.0 where /proc/stat is missing)."""

    def read():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    try:
        idle0, total0 = read()
        time.sleep(dt)
        idle1, total1 = read()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1)


IDLE: list[float] = []  # idle fraction seen just before each timed call


def wait_idle(limit: float) -> None:
    start = time.perf_counter()
    idle = idle_fraction()
    while idle < 0.9 and time.perf_counter() - start < limit:
        idle = idle_fraction()
    IDLE.append(idle)


def matmul_sample(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    MATMUL.append(2 * n**3 / best)
    return MATMUL[-1]


def rate() -> float:
    return max(MATMUL)


def timed(fn, wait: float) -> tuple[float, float, float, float]:
    """``(wall, user, system, matmul)`` of ``fn()`` after waiting for idle CPUs.

    ``matmul`` is the better matmul rate sampled just before and just after the call: the rate
    under the same contention as the call.
    """
    wait_idle(wait)
    before_rate = matmul_sample()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    around = max(before_rate, matmul_sample())
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, around


def best_of(fns: dict, repeats: int, wait: float) -> dict:
    """Run the callables of ``fns`` in turn, ``repeats`` rounds; the fastest call of each.

    Values are ``(wall, user, system, matmul rate around it, best wall x matmul-rate product)``;
    the last one, divided by a work count, gives the efficiency relative to the matmul rate
    measured under the same load (the best over rounds).
    """
    best = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            result = timed(fn, wait)
            work_time = min(result[0] * result[3], best.get(name, (0,) * 5)[4] or math.inf)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
            best[name] = (*best[name][:4], work_time)
    return best


# ------------------------------------------------------------------------------ work counts
def same_padded_multiply_adds(model: UNet, height: int, width: int) -> int:
    """Multiply-adds of ONE pass of the same U-Net with padding=1 convs on ``(height, width)``."""
    widths = [model.base_channels * 2**k for k in range(model.depth + 1)]
    total, cin, h, w = 0, model.in_channels, height, width
    for k in range(model.depth + 1):
        total += h * w * 9 * (cin * widths[k] + widths[k] * widths[k])
        cin = widths[k]
        if k < model.depth:
            h, w = h // 2, w // 2
    for k in reversed(range(model.depth)):
        h, w = 2 * h, 2 * w
        total += h * w * widths[k + 1] * widths[k]  # 2x2 stride-2 up-convolution
        total += h * w * 9 * (2 * widths[k] * widths[k] + widths[k] * widths[k])
    return total + h * w * widths[0] * model.n_classes


def same_padded_copy(model: UNet) -> UNet:
    """The same weights with padding=1 on every 3x3 conv (skip crops become no-ops)."""
    padded = copy.deepcopy(model)
    for module in padded.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.padding = (1, 1)
    return padded


# ------------------------------------------------------------------------------ the image
def load_image(side: int) -> tuple[np.ndarray, str]:
    """``(side, side)`` uint16 mosaic of real images (mirror-padded to size), else random."""
    paths = sorted(DATA.glob("*.tif"))
    if paths:
        from napari_unet import read_image

        tiles = [read_image(p) for p in paths[:4]]
        if len(tiles) == 4 and side > max(tiles[0].shape):
            h = min(t.shape[0] for t in tiles)
            w = min(t.shape[1] for t in tiles)
            tiles = [t[:h, :w] for t in tiles]
            mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        else:
            mosaic = tiles[0]
        mosaic = mosaic[:side, :side]
        pad = [(0, side - mosaic.shape[0]), (0, side - mosaic.shape[1])]
        return np.pad(mosaic, pad, mode="symmetric"), f"mosaic of {DATA.name}/*.tif"
    rng = np.random.default_rng(0)
    return rng.integers(0, 2**16, (side, side), dtype=np.uint16), "random uint16"


# ------------------------------------------------------------------------------ MONAI
def monai_predict(padded_model: UNet, image: np.ndarray) -> np.ndarray:
    """Foreground probability with MONAI's sliding window (same normalisation and allocator)."""
    from monai.inferers import sliding_window_inference

    def predictor(x):
        return padded_model(x.contiguous(memory_format=CL))

    pixels = torch.from_numpy(normalize(image))[None, None]
    with keep_freed_memory(), torch.inference_mode():
        logits = sliding_window_inference(
            pixels,
            roi_size=(512, 512),
            sw_batch_size=1,
            predictor=predictor,
            overlap=0.25,
            mode="gaussian",
        )
        return (1.0 - torch.softmax(logits, dim=1)[0, 0]).numpy()


# ------------------------------------------------------------------------------ memory model
# VmHWM, not ru_maxrss: a child keeps its parent's ru_maxrss across fork + exec.
PEAK_SCRIPT = """
import sys, time, torch
from napari_unet import UNet
from napari_unet.core.prediction.allocator import keep_freed_memory
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
base, n = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = UNet(base_channels=base).eval().to(memory_format=torch.channels_last)
x = torch.randn(1, 1, n, n).contiguous(memory_format=torch.channels_last)
small = torch.randn(1, 1, 188, 188).contiguous(memory_format=torch.channels_last)
with torch.inference_mode(), keep_freed_memory():
    model(small)
    before = hwm()
    start = time.perf_counter()
    model(x)
    first = time.perf_counter() - start
    after = hwm()
    start = time.perf_counter()
    model(x)
    second = time.perf_counter() - start
    model(x)
    steady = hwm()
per = [(v - before) / (n * n * base) for v in (after, steady)]
print(*per, after - before, first, second, model.multiply_adds(n))
"""


def peak_memory(base: int, side: int) -> tuple[float, ...]:
    """Fresh process: bytes per input px per base channel after one pass and after three, the
    bytes of the first pass, the seconds of the first and second pass, and its multiply-adds."""
    src = str(Path(napari_unet.__file__).resolve().parents[1])  # the package this run imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(base), str(side)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(float(v) for v in out.stdout.split()[-6:])


# ------------------------------------------------------------------------------ sections
def efficiency(multiply_adds: int, timing: tuple) -> tuple[float, float]:
    """FLOP efficiency against the best matmul rate, and against the rate under the same load."""
    return 2 * multiply_adds / timing[0] / rate(), 2 * multiply_adds / timing[4]


def section_predict(model, image, repeats, wait, monai_repeats, other_steps=()):
    """Sections 2 and 5 for one model; returns numbers for the summary."""
    shape = image.shape
    step = auto_tile(shape, model)
    tiles = plan_tiles(shape, model, step)
    sides = sorted({t.input_shape for t in tiles})
    tiled = tiled_multiply_adds(tiles, model)
    same = same_padded_multiply_adds(model, *shape)
    print(
        f"  auto tile: step {step}, {len(tiles)} tile(s) of input "
        f"{' / '.join(f'{h}x{w}' for h, w in sides)}; tiled {tiled / 1e9:.1f} G multiply-adds, "
        f"one same-padded pass {same / 1e9:.1f} G; wasted work {tiled / same:.3f}"
    )
    fns = {"ours": lambda: napari_unet.predict(model, image)}
    for s in other_steps:
        fns[s] = lambda s=s: napari_unet.predict(model, image, tile=s)
    best = best_of(fns, repeats, wait)
    if monai_repeats:
        padded = same_padded_copy(model).eval().to(memory_format=CL)
        monai_predict(padded, image[:512, :512])  # warm up
        best.update(best_of({"monai": lambda: monai_predict(padded, image)}, monai_repeats, wait))
    mp = shape[0] * shape[1] / 1e6
    wall = best["ours"][0]
    eff, eff_load = efficiency(tiled, best["ours"])
    print(
        f"  predict:   {wall:7.2f} s  {mp / wall:6.3f} MP/s  efficiency {eff:4.2f} "
        f"({eff_load:4.2f} against matmul under the same load)  "
        f"user {best['ours'][1]:.1f} s, sys {best['ours'][2]:.1f} s"
    )
    for s in other_steps:
        t = plan_tiles(shape, model, s)
        macs = tiled_multiply_adds(t, model)
        e, e_load = efficiency(macs, best[s])
        print(
            f"  tile={s:<5d}  {best[s][0]:7.2f} s  {mp / best[s][0]:6.3f} MP/s  "
            f"efficiency {e:4.2f} ({e_load:4.2f})  {len(t)} tile(s) of {t[0].input_shape[0]}, "
            f"wasted work {macs / same:.3f}, sys {best[s][2]:.1f} s"
        )
    ratio = None
    if monai_repeats:
        monai = best["monai"][0]
        n = [math.ceil((side - 512) / 384) + 1 for side in shape]
        ratio = wall / monai
        print(
            f"  MONAI:     {monai:7.2f} s  {mp / monai:6.3f} MP/s  ({n[0] * n[1]} windows of 512, "
            f"{n[0] * n[1] * 512 * 512 / (shape[0] * shape[1]):.2f}x the same-padded work); "
            f"ours/MONAI time {ratio:.2f}"
        )
    return step, tiles, eff, eff_load, tiled / same, ratio


def section_overheads(image):
    """What predict does around the network, on the whole plane: normalise, pad, softmax."""
    times = {}
    for _ in range(3):
        start = time.perf_counter()
        pixels = normalize(image)
        mid = time.perf_counter()
        np.pad(pixels[..., None], ((92, 96), (92, 96), (0, 0)), mode="symmetric")
        end = time.perf_counter()
        logits = torch.randn(1, 2, *image.shape).contiguous(memory_format=CL)
        s0 = time.perf_counter()
        (1.0 - torch.softmax(logits, dim=1)[:, 0]).numpy()
        s1 = time.perf_counter()
        for name, t in (("normalize", mid - start), ("np.pad", end - mid), ("softmax", s1 - s0)):
            times[name] = min(times.get(name, math.inf), t)
    print("  " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()) + " (whole plane)")


def section_memory_format(model, side, repeats, wait, bf16_side):
    x = torch.randn(1, 1, side, side)

    def forward(inputs, fmt, dtype=None):
        def run():
            model.to(memory_format=fmt)
            xx = inputs.contiguous(memory_format=fmt)
            autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
            with keep_freed_memory(), torch.inference_mode(), autocast:
                model(xx)

        return run

    small = torch.randn(1, 1, bf16_side, bf16_side)
    for fmt in (torch.contiguous_format, CL):
        forward(small, fmt)()  # warm up oneDNN on a small input (a big one costs seconds)
    fmts = {"contiguous": forward(x, torch.contiguous_format), "channels_last": forward(x, CL)}
    best = best_of(fmts, repeats, wait)
    pair = {"float32": forward(small, CL), "bfloat16": forward(small, CL, torch.bfloat16)}
    for fn in pair.values():
        fn()
    bf = best_of(pair, 1, wait)
    contig, cl = best["contiguous"][0], best["channels_last"][0]
    eff, eff_load = efficiency(model.multiply_adds(side), best["channels_last"])
    print(
        f"  forward {side}px: contiguous {contig:6.2f} s, channels_last {cl:6.2f} s "
        f"(efficiency {eff:4.2f}, {eff_load:4.2f} under the same load); "
        f"channels_last speed-up {contig / cl:.2f}x"
    )
    print(
        f"  forward {bf16_side}px, channels_last: float32 {bf['float32'][0]:6.3f} s, bfloat16 "
        f"autocast {bf['bfloat16'][0]:6.3f} s ({bf['bfloat16'][0] / bf['float32'][0]:.1f}x slower)"
    )
    model.to(memory_format=torch.contiguous_format)
    return contig / cl


def trimmed_rss() -> int:
    """VmRSS after gc and after the allocator handed freed memory back."""
    gc.collect()
    with keep_freed_memory():  # its exit runs malloc_trim(0)
        pass
    return vm_rss()


def section_allocator(model, image, repeats, wait):
    def without():
        saved = predict_module.keep_freed_memory
        predict_module.keep_freed_memory = lambda trim=True: contextlib.nullcontext()
        try:
            napari_unet.predict(model, image)
        finally:
            predict_module.keep_freed_memory = saved

    fns = {"with": lambda: napari_unet.predict(model, image), "without": without}
    best = best_of(fns, repeats, wait)
    mp = image.size / 1e6
    for name, (wall, user, system, _, _) in best.items():
        print(
            f"  {name:7s} keep_freed_memory: {wall:6.2f} s  {mp / wall:6.3f} MP/s  "
            f"user {user:5.2f} s  sys {system:5.2f} s"
        )
    print(f"  speed-up from keep_freed_memory: {best['without'][0] / best['with'][0]:.2f}x")
    base = trimmed_rss()
    out = napari_unet.predict(model, image)
    after = vm_rss()
    del out
    gc.collect()
    collected = vm_rss()
    print(
        f"  VmRSS: before {base / 2**20:.0f} MiB, right after predict {after / 2**20:.0f} MiB "
        f"(result {image.size * 4 / 2**20:.0f} MiB), after del + gc {collected / 2**20:.0f} MiB"
    )


def section_memory_model(quick):
    runs = [(16, 700)] if quick else [(16, 876), (16, 1212), (64, 700)]
    for base, side in runs:
        per, steady, peak, first, second, macs = peak_memory(base, side)
        extra = first - second
        estimate = _BYTES_PER_PIXEL_CHANNEL * base * side * side
        print(
            f"  base {base:2d}, input {side}: {per:5.1f} B per input px and base channel after "
            f"one pass ({peak / 2**20:.0f} MiB), {steady:5.1f} after three; fresh pages: first "
            f"pass {first:.2f} s, second {second:.2f} s: {extra / peak * 1e9:.2f} ns/B, "
            f"{extra * macs / second / estimate:.0f} multiply-adds per estimated byte"
        )
    print(
        f"  tiling: _BYTES_PER_PIXEL_CHANNEL = {_BYTES_PER_PIXEL_CHANNEL}, "
        f"_MULTIPLY_ADDS_PER_FAULTED_BYTE = {_MULTIPLY_ADDS_PER_FAULTED_BYTE}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024, fewer repeats (~1 min)")
    parser.add_argument("--wait", type=float, default=5.0, help="max s to wait for idle CPUs")
    args = parser.parse_args()
    quick = args.quick
    side = 1024 if quick else 2048
    repeats = {16: 2 if quick else 3, 64: 1 if quick else 2}
    wall_start = time.perf_counter()

    print(f"napari_unet from {Path(napari_unet.__file__).parent}")
    print(
        f"machine: {cpu_model()}, os.cpu_count {os.cpu_count()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    for _ in range(3):
        matmul_sample()
    print(f"1. matmul float32 2048^3: {rate() / 1e9:.0f} GFLOP/s (best so far)")
    image, source = load_image(side)
    print(f"image: {image.shape} {image.dtype}, {source}")
    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:
        have_monai = False
        print("MONAI not importable: section 5 skipped")

    summary = {}
    for base in (64, 16):
        torch.manual_seed(0)
        model = UNet(base_channels=base, depth=4).eval()
        napari_unet.predict(model, image[:300, :300])  # warm up
        print(f"\n2./5. base_channels {base}, depth 4, {side}x{side}")
        monai_repeats = (1 if base == 64 or quick else 2) if have_monai else 0
        if quick and base == 64:
            monai_repeats = 0  # about 20 s; the full run has it
        other = () if base == 64 or quick else (2048, 688)
        step, tiles, eff, eff_load, waste, ratio = section_predict(
            model, image, repeats[base], args.wait, monai_repeats, other
        )
        print(f"3. memory format, base_channels {base}")
        speedup = section_memory_format(
            model,
            min(tiles[0].input_shape[0], 444) if quick else tiles[0].input_shape[0],
            1 if quick else 2,
            args.wait,
            188 if base == 64 else 364,
        )
        summary[base] = (eff, eff_load, waste, ratio, speedup)
        if base == 16:
            print("4. allocator, base_channels 16")
            section_allocator(model, image, repeats[base], args.wait)
            print("overheads in predict (base-independent)")
            section_overheads(image)
    print("\n6. peak memory of one tile (fresh subprocess, VmHWM rise inside keep_freed_memory)")
    section_memory_model(quick)

    print(f"\nmatmul rate used: {rate() / 1e9:.0f} GFLOP/s (best of {len(MATMUL)} samples)")
    print(
        f"CPUs idle before timed calls: min {min(IDLE):.2f}, median "
        f"{sorted(IDLE)[len(IDLE) // 2]:.2f} (below 0.9: other jobs shared the machine)"
    )
    for base, target in ((64, 0.6), (16, 0.5)):
        eff, eff_load, waste, ratio, speedup = summary[base]
        print(
            f"base {base}: efficiency {eff:.2f} ({eff_load:.2f} under the same load; target >= "
            f"{target}: {'met' if eff >= target else 'MISSED'}), wasted work {waste:.3f} "
            f"(<= 1.3: {'met' if waste <= 1.3 else 'MISSED'}), ours/MONAI "
            + (f"{ratio:.2f}" if ratio is not None else "n/a")
            + f", channels_last {speedup:.2f}x"
        )
    print(f"total bench time {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
