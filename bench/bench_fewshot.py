"""Few-shot fine-tuning on a kind of image the base model has never seen, as a user would do it.

    python bench/bench_fewshot.py [--protocol usiigaci|isbi|u373|all] [--minutes 1,2,5,10]
                                  [--frames 1,2,4] [--rounds 3] [--set lr=1e-3,tile=256]

Protocols (leave one kind out; data from ``../shared/data`` only):

- ``usiigaci``: touching phase-contrast cells. Base: ``tools/models/unet-dsb-only.safetensors``,
  trained by ``tools/train_bundled.py --kinds dsb`` on DSB nuclei only (never Usiigaci, kept out
  of the package). Fine-tuned on the last ``n`` of ``usiigaci/train`` (set45, set44, ...: the
  frames just before the scored ones, of the same acquisition, as a user annotates frames of the
  experiment they segment; set01-12 and others are cells of 3x the area), scored on
  ``usiigaci/val`` (set46-50). ``--pool first`` takes set01, set02, ... as sessions before
  2026-11-30 did.
- ``isbi``: ISBI 2012 EM, instances = membrane-enclosed regions (4-connected). Base: the bundled
  model (never trained on EM). Fine-tuned on images 0-1 (more frames: 2, 3, ...), scored on
  images 20-29 with the challenge's adapted Rand error beside SEG / F1 / IoU.
- ``u373``: the U-Net paper's second cell set (Cell Tracking Challenge PhC-C2DH-U373, paper SEG
  0.9203). Base: the bundled model (never trained on U373). Fine-tuned on the gold frames
  02_t010 and 02_t017 (more frames: 02_t019, 02_t020, ...), scored on the gold frames that no
  run of the invocation fine-tunes on: the other 17 with ``--frames 2``, 15 with the default
  frames curve (1, 2, 4), the same frames for every point.

Each fine-tune is ``finetune(copy_of_base, frames, steps=10**6, max_seconds=minutes*60)`` with
the library's defaults (or ``--set`` overrides, the levers compared side by side; with
``--rate R``, ``steps=round(minutes * R)`` untimed: equal work on a loaded machine), then
``to_instances(predict(model, image))`` on the test frames (cells sized by the annotations, with
the fixed pixel sizes beside them as ``[fixed px: ...]``). Scores (``bench/scoring.py``,
independent of ``napari_unet.core.metrics``) pool over all reference cells as the Cell Tracking
Challenge pools SEG; F1 counts cells matched at IoU > 0.5.

Output: one line per run, ``--json`` with every run, and ``--plot`` a PNG of SEG against
fine-tuning minutes and against annotated frames, and SEG per round of the correct-and-continue
loop (each round replaces the prediction of one more frame by its ground truth, adds it, and
continues fine-tuning the current model for ``--round-minutes``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from scoring import Pooled

from napari_unet import finetune, predict, to_instances
from napari_unet.core.network.store import open_model

import datasets

ROOT = Path(__file__).resolve().parents[1]
DSB_ONLY = ROOT / "tools" / "models" / "unet-dsb-only.safetensors"


def isbi_frames(indices, root):
    """ISBI slices with 4-connected interiors as instances (the membrane is background)."""
    frames = []
    for name, image, labels in datasets.isbi2012(indices, root):
        frames.append((name, image, ndi.label(labels > 0)[0].astype(np.uint32)))
    return frames


def protocol(name: str, root: Path, base: str | None, pool: str = "last", needed: int = 2):
    """``(base model path/name, training pool, test frames, score the Rand error)``; ``needed``
    is the most frames any run fine-tunes on (u373 scores the gold frames after them)."""
    if name == "usiigaci":
        train = datasets.usiigaci("train", root)
        return (
            base or str(DSB_ONLY),
            train[::-1] if pool == "last" else train,
            datasets.usiigaci("val", root),
            False,
        )
    if name == "isbi":
        return base, isbi_frames(range(0, 20), root), isbi_frames(range(20, 30), root), True
    if name == "u373":
        frames = datasets.u373(root)
        return base, frames, frames[needed:], False
    raise SystemExit(f"unknown protocol {name!r}; expected usiigaci, isbi or u373")


def score(model, test, rand: bool) -> dict:
    """Pooled scores of ``to_instances(predict(model, image))`` (sized by the cells the model
    was fine-tuned on), and SEG / F1 with the fixed pixel sizes beside them (``*_fixed``)."""
    sized, fixed = Pooled(), Pooled()
    for _, image, truth in test:
        prob = predict(model, image)
        sized.add(truth, to_instances(prob), rand=rand)
        fixed.add(truth, to_instances(np.asarray(prob)))
    row = sized.row()
    return {**row, "seg_fixed": fixed.row()["seg"], "f1_fixed": fixed.row()["f1"]}


def tune(model, frames, minutes: float, settings: dict, seed: int, rate: float | None = None):
    """Fine-tune ``model`` in place for ``minutes`` (or the ``steps`` in ``settings``, or
    ``minutes * rate`` steps, at any speed); returns ``(steps, seconds)``."""
    start = time.perf_counter()
    limits = {"steps": 10**6, "max_seconds": minutes * 60}
    if "steps" in settings:
        limits = {"steps": settings["steps"], "max_seconds": None}
    elif rate:
        limits = {"steps": max(1, round(minutes * rate)), "max_seconds": None}
    events = finetune(
        model,
        [(image, labels) for _, image, labels in frames],
        seed=seed,
        **{**limits, **{k: v for k, v in settings.items() if k != "steps"}},
    )
    steps = sum(1 for _ in events)
    return steps, time.perf_counter() - start


def report(results: list, kind: str, **row) -> None:
    row = {"protocol": kind, **row}
    results.append(row)
    extra = f"  adapted Rand error {row['rand_error']:.4f}" if "rand_error" in row else ""
    print(
        f"{kind:9s} {row['run']:28s} SEG {row['seg']:.3f}  F1 {row['f1']:.3f}  "
        f"IoU {row['iou']:.3f}{extra}  [fixed px: SEG {row['seg_fixed']:.3f} "
        f"F1 {row['f1_fixed']:.3f}]  ({row.get('steps', 0)} steps, "
        f"{row.get('seconds', 0) / 60:.1f} min)",
        flush=True,
    )


def run_protocol(kind: str, args, settings: dict, results: list) -> None:
    needed = max([args.frames_fixed + args.rounds, *args.frames])
    base_name, pool, test, rand = protocol(kind, args.data, args.base, args.pool, needed)
    base = open_model(base_name)
    report(results, kind, run="base (no fine-tuning)", curve="base", **score(base, test, rand))
    frames = args.frames_fixed
    for minutes in args.minutes:
        model = copy.deepcopy(base)
        steps, seconds = tune(model, pool[:frames], minutes, settings, args.seed, args.rate)
        report(
            results,
            kind,
            run=f"{frames} frames, {minutes:g} min",
            curve="minutes" + (",frames" if minutes == args.curve_minutes else ""),
            frames=frames,
            minutes=minutes,
            steps=steps,
            seconds=seconds,
            **score(model, test, rand),
        )
    for frames in args.frames:
        if frames == args.frames_fixed and args.curve_minutes in args.minutes:
            continue  # measured above
        model = copy.deepcopy(base)
        steps, seconds = tune(
            model, pool[:frames], args.curve_minutes, settings, args.seed, args.rate
        )
        report(
            results,
            kind,
            run=f"{frames} frames, {args.curve_minutes:g} min",
            curve="frames",
            frames=frames,
            minutes=args.curve_minutes,
            steps=steps,
            seconds=seconds,
            **score(model, test, rand),
        )
    if args.rounds:
        correct_and_continue(kind, base, pool, test, rand, args, settings, results)


def correct_and_continue(kind, base, pool, test, rand, args, settings, results) -> None:
    """Simulated human-in-the-loop: each round adds one more frame, its prediction corrected to
    the ground truth, and continues fine-tuning the current model on all pairs."""
    model = copy.deepcopy(base)
    frames = list(pool[: args.frames_fixed])
    for round_ in range(args.rounds + 1):
        if round_:
            frames.append(pool[args.frames_fixed + round_ - 1])
        steps, seconds = tune(
            model, frames, args.round_minutes, settings, args.seed + round_, args.rate
        )
        report(
            results,
            kind,
            run=f"round {round_}: {len(frames)} frames",
            curve="round",
            round=round_,
            frames=len(frames),
            minutes=args.round_minutes,
            steps=steps,
            seconds=seconds,
            **score(model, test, rand),
        )


PANELS = (
    ("minutes", "fine-tuning minutes (CPU)"),
    ("frames", "annotated frames"),
    ("round", "correct-and-continue round"),
)


def plot(results: list, path: Path) -> None:
    """SEG per curve that has more than one point (the base dotted), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["protocol"] for r in results})

    def points(kind, curve):
        rows = [r for r in results if r["protocol"] == kind and curve in r["curve"]]
        return sorted((r[curve], r["seg"]) for r in rows)

    panels = [p for p in PANELS if any(len(points(k, p[0])) > 1 for k in kinds)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (curve, label) in zip(axes[0], panels, strict=True):
        for kind in kinds:
            if len(points(kind, curve)) < 2:
                continue
            line = ax.plot(*zip(*points(kind, curve), strict=True), "o-", label=kind)[0]
            base = [r["seg"] for r in results if r["protocol"] == kind and r["curve"] == "base"]
            ax.axhline(base[0], color=line.get_color(), ls=":", lw=1)
        ax.set(xlabel=label, ylabel="SEG (pooled over cells)", title=f"SEG vs. {label}")
        ax.grid(alpha=0.3)
        ax.legend(title="dotted: base")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


def parse_settings(text: str) -> dict:
    settings = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        settings[key] = json.loads(value) if value[:1] in "[{tf0123456789.-" else value
    return settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", default="all", choices=["usiigaci", "isbi", "u373", "all"])
    p.add_argument("--data", type=Path, default=datasets.DATA)
    p.add_argument("--base", help="base model (default: per protocol, see above)")
    p.add_argument("--minutes", default="1,2,5,10", help="fine-tuning budgets to compare")
    p.add_argument("--frames", default="1,2,4", help="numbers of annotated frames to compare")
    p.add_argument(
        "--pool",
        default="last",
        choices=["last", "first"],
        help="usiigaci: annotate the train frames nearest the scored ones (last) or set01.. "
        "(first)",
    )
    p.add_argument("--frames-fixed", type=int, default=2, help="frames for the minutes curve")
    p.add_argument("--curve-minutes", type=float, default=5.0, help="minutes for frames curve")
    p.add_argument("--rounds", type=int, default=0, help="correct-and-continue rounds")
    p.add_argument("--round-minutes", type=float, default=2.0)
    p.add_argument(
        "--set",
        default="",
        help="finetune overrides, e.g. lr=1e-3,tile=256; steps=650 runs that many steps whatever "
        "the minutes (equal work on a loaded machine)",
    )
    p.add_argument(
        "--rate",
        type=float,
        help="run minutes x RATE steps instead of timing (equal work on a loaded machine; an "
        "idle 2-core AMD EPYC makes 145 steps a minute)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--plot", type=Path, help="PNG of the curves")
    args = p.parse_args()
    if args.plot:  # before the runs, not after an hour of them
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    args.minutes = [float(m) for m in args.minutes.split(",") if m]
    args.frames = [int(f) for f in args.frames.split(",") if f]
    settings = parse_settings(args.set)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}; finetune overrides: {settings or 'none'}"
    )
    results: list = []
    kinds = ["usiigaci", "isbi", "u373"] if args.protocol == "all" else [args.protocol]
    for kind in kinds:
        run_protocol(kind, args, settings, results)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
