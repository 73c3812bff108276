"""Train the bundled U-Net on real data: Usiigaci train (phase contrast) + DSB 2018 train.txt.

    python tools/train_bundled.py --minutes 90 --name unet-cells-nuclei

A release tool, not a benchmark: it writes the weights that ship in the package. ``--kinds``
trains on some of the data sets only; ``--kinds dsb --out tools/models/unet-dsb-only.safetensors``
makes the leave-one-kind-out base model of the few-shot benchmark (it has never seen Usiigaci's
phase-contrast cells and is kept out of the package).

The paper's recipe through the public ``finetune`` generator: separation weight maps, elastic
deformation, percentile normalisation. Training runs in ``--stages`` cosine cycles (warm
restarts), each limited by time; a checkpoint is written every few minutes and at the end of
each stage, and ``--resume`` continues from it (the interrupted stage gets its remaining time).
``--hold-out K`` keeps every K-th DSB training image out of training as a validation set, scored
(foreground IoU) every ``--validate-every`` steps; the best-scoring weights are the ones saved,
so checkpoints are chosen without looking at the test split.
``--diameter D`` resamples every training and validation image so that its median cell diameter
is ``D`` px (each image by its own annotated cells) and stores ``D`` in the model's metadata, so
that ``predict`` and ``finetune`` resample a user's images to the same size.
The final weights go to ``src/napari_unet/models/<name>.safetensors`` (or ``--out``); then run
``bench/bench_accuracy.py --model <name>`` to measure it and fill in the model card.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from napari_unet import UNet, finetune, load_model, save_model
from napari_unet.core.network.store import open_model
from napari_unet.core.prediction.scale import (
    median_diameter,
    rescale_image,
    rescale_labels,
    scale_factor,
)
from napari_unet.core.training.train import AUGMENTATIONS, DEFAULT_AUGMENTATIONS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the data loaders are shared with the benchmarks
import datasets  # noqa: E402

MODELS = ROOT / "src" / "napari_unet" / "models"
KINDS = {
    "usiigaci": "usiigaci/train (45 phase-contrast images, Tsai et al. 2019, MIT)",
    "dsb": "dsb2018/train.txt (53 nuclei images, BBBC038v1, Caicedo et al. 2019)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=datasets.DATA)
    p.add_argument("--name", default="unet-cells-nuclei")
    p.add_argument("--out", type=Path, help="weights file (default: the package's <name>)")
    p.add_argument(
        "--kinds", default=",".join(KINDS), help=f"data sets to train on, from {','.join(KINDS)}"
    )
    p.add_argument("--minutes", type=float, default=90.0, help="total training time")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--w0", type=float, default=10.0, help="border weight height (paper: 10)")
    p.add_argument("--sigma", type=float, default=5.0, help="border weight width, px (paper: 5)")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/bundled-checkpoint.safetensors"))
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", help="start from these weights (bundled name or file), not at random")
    p.add_argument(
        "--dsb-repeat", type=int, default=1, help="list each DSB image this many times (sampling)"
    )
    p.add_argument(
        "--augment",
        default=",".join(DEFAULT_AUGMENTATIONS),
        help=f"comma-separated, from {','.join(AUGMENTATIONS)}",
    )
    p.add_argument(
        "--diameter", type=float, help="resample each image so its median cell is this wide (px)"
    )
    p.add_argument("--hold-out", type=int, default=0, help="validate on every K-th DSB image")
    p.add_argument("--validate-every", type=int, default=500, help="steps between validations")
    args = p.parse_args()
    augment = args.augment.split(",")
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        p.error(f"unknown --kinds {sorted(unknown)}; expected some of {','.join(KINDS)}")

    dsb = datasets.dsb2018("train", args.data) if "dsb" in kinds else []
    held_out = dsb[:: args.hold_out] if args.hold_out else []
    if args.hold_out:
        del dsb[:: args.hold_out]
    usiigaci = datasets.usiigaci("train", args.data) if "usiigaci" in kinds else []
    samples = usiigaci + args.dsb_repeat * dsb
    print(f"{len(samples)} training images, {len(held_out)} held out for validation")
    pairs = [at_diameter(image, labels, args.diameter) for _, image, labels in samples]
    validation = [at_diameter(image, labels, args.diameter) for _, image, labels in held_out]

    state = {"stage": 0, "stage_seconds": 0.0, "steps": 0, "seconds": 0.0, "best": None}
    if args.resume and args.checkpoint.exists():
        model = load_model(args.checkpoint)
        state = {"best": None, **model.metadata["progress"]}
        history = model.metadata.get("continued_from", [])
        print(f"resuming {args.checkpoint}: {state}")
    elif args.init:
        model = open_model(args.init)
        print(f"starting from {args.init}: {model.metadata.get('recipe')}")
        history = [*model.metadata.get("continued_from", []), model.metadata["recipe"]]
    else:
        torch.manual_seed(args.seed)
        model = UNet(base_channels=args.base_channels, depth=args.depth)
        history = []
    # the images are resampled here, each by its own cells: finetune must not resample them again
    model.metadata = {k: v for k, v in (model.metadata or {}).items() if k != "diameter"}
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)

    stage_seconds = args.minutes * 60 / args.stages
    while state["stage"] < args.stages:
        left = stage_seconds - state["stage_seconds"]
        events = finetune(
            model,
            pairs,
            steps=10**7,
            max_seconds=left,
            lr=args.lr,
            batch_size=args.batch_size,
            tile=args.tile,
            w0=args.w0,
            sigma=args.sigma,
            augment=augment,
            validation=validation,
            validate_every=args.validate_every,
            seed=args.seed + 1000 * state["stage"] + state["steps"],
        )
        last_save = time.perf_counter()
        base_seconds, base_steps = state["stage_seconds"], state["steps"]
        bar = tqdm(desc=f"stage {state['stage'] + 1}/{args.stages}", unit="step", mininterval=30)
        for event in events:
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.1e}", refresh=False)
            state["stage_seconds"] = base_seconds + event.elapsed
            state["steps"] = base_steps + event.step
            if event.val_iou is not None:
                bar.write(f"step {state['steps']}: validation IoU {event.val_iou:.4f}")
                if state["best"] is None or event.val_iou > state["best"]["val_iou"]:
                    state["best"] = {
                        "val_iou": event.val_iou,
                        "steps": state["steps"],
                        "seconds": sum_seconds(state, stage_seconds),
                    }
                    save_model(model, best_path(args.checkpoint), {"best": state["best"]})
            if event.done or time.perf_counter() - last_save > args.checkpoint_minutes * 60:
                state["seconds"] = sum_seconds(state, stage_seconds)
                save_model(
                    model,
                    args.checkpoint,
                    {"progress": state, "loss": event.loss, "continued_from": history},
                )
                last_save = time.perf_counter()
        bar.close()
        state = {**state, "stage": state["stage"] + 1, "stage_seconds": 0.0}
        state["seconds"] = sum_seconds(state, stage_seconds)
        save_model(model, args.checkpoint, {"progress": state, "continued_from": history})

    if held_out:  # ship the best validation weights: their steps and time
        print(f"keeping the best validation weights: {state['best']}")
        model = load_model(best_path(args.checkpoint))
        state = {**state, **state["best"]}
    recipe = {
        "steps": state["steps"],
        "minutes": round(state["seconds"] / 60, 1),
        "stages": args.stages,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "tile": args.tile,
        "seed": args.seed,
        "w0": args.w0,
        "sigma": args.sigma,
        "class_balance": False,
        "augment": augment,
        "dsb_repeat": args.dsb_repeat,
        "diameter": args.diameter,
        "held_out": [name for name, _, _ in held_out],
        "best": state["best"],
    }
    metadata = {
        "name": args.name,
        "training_data": [KINDS[kind] for kind in kinds],
        "recipe": recipe,
        "continued_from": history,  # the runs these weights continued, oldest first
        "total_steps": sum(r["steps"] for r in (*history, recipe)),
        "total_minutes": round(sum(r["minutes"] for r in (*history, recipe)), 1),
        "hardware": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "normalisation": "percentiles 1 / 99.8 per image",
    }
    if args.diameter:  # the cell size the model works at: predict / finetune resample to it
        metadata["diameter"] = args.diameter
    out = args.out or MODELS / f"{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    path = save_model(model, out, metadata)
    print(json.dumps(metadata, indent=1))
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")


def at_diameter(image, labels, diameter: float | None):
    """``(image, labels)`` resampled so the median cell is ``diameter`` px across (as they are
    for ``None``)."""
    if diameter is None:
        return image, labels
    factor = scale_factor(diameter, median_diameter(labels))
    return rescale_image(image, factor), rescale_labels(labels, factor)


def best_path(checkpoint: Path) -> Path:
    """Where the best validation weights of a run are kept, beside its checkpoint."""
    return checkpoint.with_name(f"{checkpoint.stem}-best.safetensors")


def sum_seconds(state: dict, stage_seconds: float) -> float:
    """Training seconds so far: finished stages plus the current one."""
    return state["stage"] * stage_seconds + state["stage_seconds"]


if __name__ == "__main__":
    main()
