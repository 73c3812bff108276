"""Cell size as an input, measured on every shared kind: zero-shot SEG against the diameter the
image is resampled to, and the diameter estimate against the annotated one.

    python bench/bench_diameter.py [--model NAME_OR_FILE] [--sweep 0,24,32,40,48]
                                   [--estimate] [--sets dsb_test,usiigaci_val,u373]
                                   [--as-diameter D]

``--sweep``: each image resampled so that its annotated median cell diameter is ``D`` px (``0``:
the image as it comes), predicted with ``predict(model, image, diameter=true diameter)`` (for a
model without a size of its own, ``--as-diameter D`` lends it one), labelled with
``to_instances`` sized by the true diameter; SEG / F1 / IoU pooled per set (``bench/scoring.py``).
``--estimate``: ``estimate_diameter`` of each image against its annotated median diameter (the
ratio), and SEG of ``to_instances(predict(model, image))`` (the estimate, as a user gets it)
beside SEG at the true diameter. Sets: ``dsb_test`` (dsb2018 test.txt), ``usiigaci_val``,
``u373`` (the 17 gold frames the few-shot protocol scores), and the training splits
``dsb_train``, ``usiigaci_train`` (every 5th image of each) and ``u373_silver`` (every 10th
silver frame that has no gold mask) for choosing settings without the scored frames.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
from scoring import Pooled

from napari_unet import predict, read_image, to_instances
from napari_unet.core.network.store import open_model
from napari_unet.core.prediction.instances import Probabilities
from napari_unet.core.prediction.predict import estimate_diameter
from napari_unet.core.prediction.scale import median_diameter, sized_cells

import datasets


def u373_silver(root: Path):
    """Every 10th U373 frame without a gold mask, with its computer-made (silver) mask."""
    folder = root / "u373"
    gold = {p.name for p in (folder / "masks").glob("*.tif")}
    frames = [p for p in sorted((folder / "silver").glob("*.tif")) if p.name not in gold][::10]
    return [(p.stem, read_image(folder / "images" / p.name), read_image(p)) for p in frames]


SETS = {
    "dsb_test": lambda root: datasets.dsb2018("test", root),
    "usiigaci_val": lambda root: datasets.usiigaci("val", root),
    "u373": lambda root: datasets.u373(root)[2:],
    "dsb_train": lambda root: datasets.dsb2018("train", root)[::5],
    "usiigaci_train": lambda root: datasets.usiigaci("train", root)[::5],
    "u373_silver": u373_silver,
}


def sweep(model, data, target: float) -> dict:
    """Pooled scores with each image resampled so its median cell is ``target`` px across."""
    pooled = Pooled()
    for _, image, truth in data:
        true = median_diameter(truth)
        # the model sees cells at target px: the image resampled by target / true (0: not at all)
        diameter = model_size(model) if target == 0 else true * model_size(model) / target
        prob = predict(model, image, diameter=diameter)
        pooled.add(truth, to_instances(Probabilities(np.asarray(prob), sized_cells(true))))
    return pooled.row()


def model_size(model) -> float:
    return float(model.metadata["diameter"])


def estimates(model, data) -> tuple[list, dict, dict]:
    """Per image ``(name, true, estimate, seconds)``, and the pooled scores with the estimate
    (``predict``'s default) and with the true diameter."""
    rows, with_estimate, with_truth = [], Pooled(), Pooled()
    for name, image, truth in data:
        true = median_diameter(truth)
        start = time.perf_counter()
        estimate = estimate_diameter(model, image).diameter
        seconds = time.perf_counter() - start
        rows.append((name, true, estimate, seconds))
        for pooled, diameter in ((with_estimate, estimate), (with_truth, true)):
            pooled.add(truth, to_instances(predict(model, image, diameter=diameter)))
    return rows, with_estimate.row(), with_truth.row()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model name or file (default: the bundled model)")
    p.add_argument("--data", type=Path, default=datasets.DATA)
    p.add_argument("--sets", default="dsb_test,usiigaci_val,u373")
    p.add_argument("--sweep", default="", help="diameters to resample to, px (0: as it comes)")
    p.add_argument("--estimate", action="store_true", help="score the diameter estimate")
    p.add_argument("--as-diameter", type=float, help="lend a model without a size this one")
    args = p.parse_args()
    model = copy.deepcopy(open_model(args.model))
    if args.as_diameter:
        model.metadata = {**model.metadata, "diameter": args.as_diameter}
    if "diameter" not in model.metadata:
        raise SystemExit("the model has no cell diameter of its own: pass --as-diameter D")
    print(f"model {args.model or 'bundled'}: works at cells {model_size(model):g} px across")
    for name in args.sets.split(","):
        data = SETS[name](args.data)
        for target in [float(d) for d in args.sweep.split(",") if d]:
            row = sweep(model, data, target)
            label = "as it comes" if target == 0 else f"cells {target:g} px"
            print(
                f"{name:15s} {label:14s} SEG {row['seg']:.3f}  F1 {row['f1']:.3f}  "
                f"IoU {row['iou']:.3f}",
                flush=True,
            )
        if args.estimate:
            rows, guessed, true = estimates(model, data)
            ratios = np.array([e / t for _, t, e, _ in rows])
            for image, t, e, s in rows:
                print(f"  {image:14s} annotated {t:6.1f} px  estimated {e:6.1f} px  ({s:.1f} s)")
            print(
                f"{name:15s} estimate/annotated: median {np.median(ratios):.2f}, within 1.25x "
                f"{np.mean(np.abs(np.log(ratios)) < np.log(1.25)):.0%}, worst "
                f"{ratios[np.argmax(np.abs(np.log(ratios)))]:.2f}; SEG estimated "
                f"{guessed['seg']:.3f} / annotated {true['seg']:.3f} (F1 {guessed['f1']:.3f} / "
                f"{true['f1']:.3f}, IoU {guessed['iou']:.3f} / {true['iou']:.3f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
