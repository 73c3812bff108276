"""Cell size as an input, measured on every shared kind: zero-shot SEG against the diameter the
image is resampled to, and the diameter estimate against the annotated one.

    python bench/bench_diameter.py [--model NAME_OR_FILE] [--sweep 0,24,32,40,48]
                                   [--estimate] [--sets dsb_test,usiigaci_val,u373]
                                   [--as-diameter D] [--tries FILE] [--rules FILE]

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
``--tries FILE``: only the scale search of each image, its tries (diameter tried, cells found,
their size, confidence) saved with the annotated diameter; ``--rules FILE`` then compares ways
of choosing among the saved tries (``RULES``) without predicting again.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
from scoring import Pooled

from napari_unet import predict, read_image, to_instances
from napari_unet.core.network.store import open_model
from napari_unet.core.prediction import diameter as search
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


def save_tries(model, sets: dict, path: Path) -> None:
    """The scale search's tries of every image of ``sets``, with its annotated diameter."""
    rows = []
    for name, data in sets.items():
        for image_name, image, truth in data:
            tries = estimate_diameter(model, image).tries
            rows.append({"set": name, "image": image_name, "true": median_diameter(truth)})
            rows[-1]["tries"] = [list(map(float, t)) for t in tries]
            print(f"{name:15s} {image_name:14s} {len(tries)} tries", flush=True)
    path.write_text(json.dumps({"known": model_size(model), "images": rows}, indent=0))


def _estimates(tries: list, known: float) -> list[tuple[float, float]]:
    """``(diameter tried, estimate in image px)`` of the tries that found cells."""
    return [(t[0], t[2] * t[0] / known) for t in tries if t[1] >= search.MIN_CELLS]


def _most_shrunk_consistent(tries: list, known: float, within: float = 1.5) -> float:
    """The rule before (2026-12-06 morning): of the tries whose cells are within ``within`` of
    the model's size, the most shrunk (else the closest to it)."""
    found = [(t, t[2] * t[0] / known) for t in tries if t[1] >= search.MIN_CELLS]
    error = {id(t): abs(np.log(t[2] / known)) for t, _ in found}
    consistent = [(t, e) for t, e in found if error[id(t)] <= np.log(within)]
    if consistent:
        return max(consistent, key=lambda c: c[0][0])[1]
    return min(found, key=lambda c: error[id(c[0])])[1]


def _consistent_median(tries: list, known: float) -> float:
    """The median estimate of the tries whose cells are within 1.5x of the model's size."""
    found = [(t, t[2] * t[0] / known) for t in tries if t[1] >= search.MIN_CELLS]
    good = [e for t, e in found if abs(np.log(t[2] / known)) <= np.log(1.5)]
    return float(np.median(good)) if good else _most_shrunk_consistent(tries, known)


def _agreeing(spread: float):
    """The kept rule with tries agreeing within ``spread``."""

    def choose(tries: list, known: float) -> float:
        kept, search.AGREE = search.AGREE, spread
        try:
            return search._choose(tries, known).diameter
        finally:
            search.AGREE = kept

    return choose


RULES = {
    f"kept: longest agreeing run ({search.AGREE}x)": _agreeing(search.AGREE),
    "longest agreeing run (1.2x)": _agreeing(1.2),
    "longest agreeing run (1.5x)": _agreeing(1.5),
    "most shrunk try with cells within 1.5x of D (before)": _most_shrunk_consistent,
    "median of the tries with cells within 1.5x of D": _consistent_median,
}


def compare_rules(path: Path) -> None:
    """Per rule and set: estimates within 1.25x of the annotation, median and worst ratio."""
    saved = json.loads(path.read_text())
    known, images = saved["known"], saved["images"]
    for rule, choose in RULES.items():
        print(rule)
        for name in dict.fromkeys(row["set"] for row in images):
            rows = [r for r in images if r["set"] == name]
            ratios = np.array([choose(r["tries"], known) / r["true"] for r in rows])
            worst = ratios[np.argmax(np.abs(np.log(ratios)))]
            print(
                f"  {name:15s} within 1.25x {np.mean(np.abs(np.log(ratios)) < np.log(1.25)):4.0%}"
                f"  median {np.median(ratios):.2f}  worst {worst:.2f}  ({len(rows)} images)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model name or file (default: the bundled model)")
    p.add_argument("--data", type=Path, default=datasets.DATA)
    p.add_argument("--sets", default="dsb_test,usiigaci_val,u373")
    p.add_argument("--sweep", default="", help="diameters to resample to, px (0: as it comes)")
    p.add_argument("--estimate", action="store_true", help="score the diameter estimate")
    p.add_argument("--as-diameter", type=float, help="lend a model without a size this one")
    p.add_argument("--tries", type=Path, help="save the scale search's tries here, nothing else")
    p.add_argument("--rules", type=Path, help="compare choice rules on saved tries, nothing else")
    args = p.parse_args()
    if args.rules:
        return compare_rules(args.rules)
    model = copy.deepcopy(open_model(args.model))
    if args.as_diameter:
        model.metadata = {**model.metadata, "diameter": args.as_diameter}
    if "diameter" not in model.metadata:
        raise SystemExit("the model has no cell diameter of its own: pass --as-diameter D")
    print(f"model {args.model or 'bundled'}: works at cells {model_size(model):g} px across")
    if args.tries:
        sets = {name: SETS[name](args.data) for name in args.sets.split(",")}
        return save_tries(model, sets, args.tries)
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
