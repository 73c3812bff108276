"""Accuracy of a model on the held-out splits, and the fine-tuning story on ISBI 2012 EM.

    python bench/bench_accuracy.py [--model NAME_OR_PATH] [--finetune-minutes 5]

Held-out splits: ``usiigaci/val`` (5 phase-contrast images) and ``dsb2018/test.txt`` (12 nuclei
images). Scores pooled over each split, instances from ``to_instances``:
- foreground IoU (pixels), F1 of instances matched at IoU >= 0.5,
- SEG, the Cell Tracking Challenge score: Jaccard of each reference cell with the predicted
  cell covering more than half of it (0 if none), averaged over all reference cells.
Post-processing choices (connected components vs. watershed from cores, growing cells by 0-2
px, threshold) are compared side by side on the same probabilities; ``--training-images`` also
compares them on training images, so that the default is not chosen on held-out data alone.
``--flips`` predicts with test-time flips (``predict(..., flips=True)``).
Then: fine-tune a copy of the model on ISBI images 0 and 1 for at most ``--finetune-minutes``
and report foreground IoU on images 20-29 before and after.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import numpy as np
import torch

from napari_unet import finetune, predict, to_instances
from napari_unet.core.metrics import match_counts, seg_score
from napari_unet.core.network.store import open_model

import datasets

POSTPROCESSING = {
    "components": {"method": "components", "expand": 0},
    "watershed, no core filter": {"min_core": 1},
    "watershed, no expansion": {"expand": 0},
    "watershed, expand 2 px": {"expand": 2},
    "watershed, threshold 0.4": {"threshold": 0.4},
    "default (watershed, 1 px)": {},
}


def pooled_scores(pairs) -> dict:
    """Pooled IoU, F1@0.5 and SEG over ``(truth, prediction)`` label pairs."""
    inter = union = tp = n_t = n_p = seg_sum = seg_n = 0
    for truth, pred in pairs:
        t, p = truth > 0, pred > 0
        inter += np.count_nonzero(t & p)
        union += np.count_nonzero(t | p)
        a, b, c = match_counts(truth, pred)
        tp, n_t, n_p = tp + a, n_t + b, n_p + c
        s, n = seg_score(truth, pred)
        seg_sum, seg_n = seg_sum + s, seg_n + n
    return {
        "iou": inter / union if union else 1.0,
        "f1": 2 * tp / (n_t + n_p) if n_t + n_p else 1.0,
        "seg": seg_sum / seg_n if seg_n else 0.0,
    }


def evaluate(model, samples, name: str, flips: bool = False) -> dict:
    start = time.perf_counter()
    probs = [predict(model, image, flips=flips) for _, image, _ in samples]
    seconds = time.perf_counter() - start
    results = {}
    for label, kwargs in POSTPROCESSING.items():
        pairs = [
            (truth, to_instances(p, **kwargs))
            for (_, _, truth), p in zip(samples, probs, strict=True)
        ]
        results[label] = pooled_scores(pairs)
        r = results[label]
        print(
            f"{name:14s} {label:26s} IoU {r['iou']:.3f}  F1@0.5 {r['f1']:.3f}  SEG {r['seg']:.3f}"
        )
    print(f"{name:14s} prediction of {len(samples)} images: {seconds:.1f} s")
    return results


def isbi_story(model, minutes: float, data) -> None:
    train = datasets.isbi2012([0, 1], data)
    test = datasets.isbi2012(range(20, 30), data)

    def iou(m):
        inter = union = 0
        for _, image, truth in test:
            p = predict(m, image) > 0.5
            inter += np.count_nonzero(p & (truth > 0))
            union += np.count_nonzero(p | (truth > 0))
        return inter / union

    before = iou(model)
    tuned = copy.deepcopy(model)
    start = time.perf_counter()
    events = finetune(
        tuned, [(im, lab) for _, im, lab in train], steps=10**6, max_seconds=minutes * 60, seed=0
    )
    steps = sum(1 for _ in events)
    seconds = time.perf_counter() - start
    after = iou(tuned)
    print(
        f"ISBI 2012 foreground IoU on images 20-29: before {before:.3f}, after {after:.3f} "
        f"({steps} steps, {seconds / 60:.1f} min on images 0-1, default finetune settings)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="bundled name or .safetensors file (default: bundled)")
    p.add_argument("--data", default=datasets.DATA)
    p.add_argument("--finetune-minutes", type=float, default=5.0)
    p.add_argument("--skip-isbi", action="store_true")
    p.add_argument(
        "--training-images", action="store_true", help="also score 5 + 11 training images"
    )
    p.add_argument(
        "--flips", action="store_true", help="predict with the 8 flips averaged (predict flips=)"
    )
    args = p.parse_args()
    model = open_model(args.model)
    print(f"model {args.model or 'bundled default'}: {model.config()}, flips {args.flips}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    if args.training_images:
        evaluate(model, datasets.usiigaci("train", args.data)[::9], "usiigaci/train", args.flips)
        evaluate(model, datasets.dsb2018("train", args.data)[::5], "dsb2018/train", args.flips)
    evaluate(model, datasets.usiigaci("val", args.data), "usiigaci/val", args.flips)
    evaluate(model, datasets.dsb2018("test", args.data), "dsb2018/test", args.flips)
    if not args.skip_isbi:
        isbi_story(model, args.finetune_minutes, args.data)


if __name__ == "__main__":
    main()
