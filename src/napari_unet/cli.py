"""The ``napari-unet`` command: predict, train and weightmap for batch work; gui for napari.

Errors print one line, ``napari-unet: error: ...``, and exit with status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("napari_unet")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _output_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create output folder {path}: {err.strerror}") from err
    if not path.is_dir():
        raise NotADirectoryError(f"--out {path} exists and is not a folder")
    return path


def _load_image(path: Path, in_channels: int):
    from .core.image import grey_if_rgb
    from .core.io import read_image

    image = read_image(path)
    grey = grey_if_rgb(image, in_channels)
    if grey is not image:
        log.info("%s: RGB converted to grey for a one-channel model", path.name)
    return grey


def _predict(args) -> None:
    from tqdm import tqdm

    from .core.instances import to_instances
    from .core.io import write_image, write_labels
    from .core.predict import predict
    from .core.store import open_model

    images = [Path(p) for p in args.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    model = open_model(args.model, device=args.device)
    out = _output_folder(Path(args.out))
    for path in tqdm(images, desc="images", unit="image", disable=len(images) < 2):
        target = out / f"{path.stem}_labels.tif"
        if target.resolve() == path.resolve():
            raise ValueError(f"refusing to overwrite the input image {path}")
        image = _load_image(path, model.in_channels)
        with tqdm(desc=path.name, unit="tile", leave=False) as bar:

            def progress(result, bar=bar):
                bar.total = result.total
                bar.update(1)

            probabilities = predict(
                model,
                image,
                tile=args.tile,
                device=args.device,
                flips=args.flips,
                progress=progress,
            )
        labels = to_instances(probabilities, args.threshold, args.min_size, expand=args.expand)
        write_labels(target, labels)
        if args.probabilities:
            write_image(out / f"{path.stem}_probabilities.tif", probabilities)
        tqdm.write(f"{path.name}: {int(labels.max())} cells -> {target}")


def _weightmap(args) -> None:
    from .core.io import read_image, write_image
    from .core.weightmap import separation_weight_map

    labels = read_image(args.labels)
    weights = separation_weight_map(
        labels, w0=args.w0, sigma=args.sigma, class_balance=not args.no_class_balance
    )
    write_image(args.out, weights)
    print(f"weight map {weights.shape}, max {weights.max():.2f} -> {args.out}")


def _train(args) -> None:
    from tqdm import tqdm

    from .core.io import read_image
    from .core.model import UNet
    from .core.store import bundled_models, open_model, save_model
    from .core.train import finetune

    if len(args.images) != len(args.labels):
        raise ValueError(
            f"{len(args.images)} image(s) but {len(args.labels)} label file(s); "
            "expected one label file per image, in the same order"
        )
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    _output_folder(out.parent)
    if args.model is None and not bundled_models():
        model = UNet(base_channels=args.base_channels)
        start = f"new UNet(base_channels={args.base_channels})"
    else:
        model = open_model(args.model, device=args.device)
        start = args.model or "bundled default"
    samples = [
        (_load_image(Path(i), model.in_channels), read_image(lab))
        for i, lab in zip(args.images, args.labels, strict=True)
    ]
    events = finetune(
        model,
        samples,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        tile=args.tile,
        augment=not args.no_augment,
        seed=args.seed,
        device=args.device,
        max_seconds=args.minutes * 60 if args.minutes else None,
    )
    last = None
    bar = tqdm(total=args.steps, desc="training", unit="step")
    try:
        for last in events:
            bar.update(1)
            bar.set_postfix(loss=f"{last.loss:.4f}")
    except KeyboardInterrupt:
        events.close()
        tqdm.write("interrupted: saving the model as trained so far")
    finally:
        bar.close()
    steps_done = last.step if last else 0
    metadata = {
        "trained_from": start,
        "steps": steps_done,
        "images": [str(p) for p in args.images],
        "loss": last.loss if last else None,
    }
    save_model(model, out, metadata)
    print(f"{steps_done} steps, final loss {metadata['loss']} -> {out}")


WIDGETS = ("Annotate", "Weight map", "Fine-tune", "Predict", "Export")


def open_viewer(images: list[str], viewer=None):
    """A napari viewer with ``images`` (or the sample data), the five docks tabified with
    Annotate in front, and the view fitted to the images."""
    import napari

    from .core.io import read_image

    viewer = viewer or napari.Viewer()
    if images:
        for path in map(Path, images):
            image = read_image(path)
            viewer.add_image(
                image, name=path.stem, rgb=image.ndim == 3 and image.shape[-1] in (3, 4)
            )
    else:
        viewer.open_sample("napari-unet", "phase_contrast_cells")
    docks = [
        viewer.window.add_plugin_dock_widget("napari-unet", name, tabify=True)[0]
        for name in WIDGETS
    ]
    docks[0].show()
    docks[0].raise_()  # Annotate in front: the first step
    viewer.reset_view()  # the docks took their width from the canvas: fit the images again
    return viewer


def _gui(args) -> None:
    import napari

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    open_viewer(args.images)
    napari.run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet", description="U-Net segmentation of microscopy images."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="segment images into label masks (one TIFF per image)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF, PNG or NPY images")
    p.add_argument("--model", help="bundled model name or .safetensors file (default: bundled)")
    p.add_argument("--out", required=True, help="output folder for IMAGE_labels.tif files")
    p.add_argument(
        "--tile", type=_positive_int, help="output side of a tile in px (default: auto)"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability cut")
    p.add_argument("--min-size", type=int, default=16, help="smallest cell kept, in px")
    p.add_argument("--expand", type=int, default=1, help="grow cells by this many px")
    p.add_argument(
        "--flips",
        action="store_true",
        help="average the 8 flips and quarter turns (8x slower, more accurate)",
    )
    p.add_argument(
        "--probabilities", action="store_true", help="also write IMAGE_probabilities.tif"
    )
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.set_defaults(run=_predict)

    w = sub.add_parser("weightmap", help="write the separation weight map of a label image")
    w.add_argument("labels", metavar="LABELS", help="instance label image (0 = background)")
    w.add_argument("--out", required=True, help="output .tif or .npy file (float32)")
    w.add_argument("--w0", type=float, default=10.0, help="border weight (paper: 10)")
    w.add_argument("--sigma", type=_positive_float, default=5.0, help="border width in px")
    w.add_argument("--no-class-balance", action="store_true", help="w_c = 1 everywhere")
    w.set_defaults(run=_weightmap)

    t = sub.add_parser("train", help="fine-tune a model on images and their instance labels")
    t.add_argument("--images", nargs="+", required=True, metavar="IMAGE")
    t.add_argument("--labels", nargs="+", required=True, metavar="LABELS", help="one per image")
    t.add_argument("--steps", type=_positive_int, required=True)
    t.add_argument("--minutes", type=_positive_float, help="stop after this many minutes")
    t.add_argument("--out", required=True, help="output model file (.safetensors)")
    t.add_argument("--model", help="start model: bundled name or file (default: bundled)")
    t.add_argument(
        "--base-channels",
        type=_positive_int,
        default=16,
        help="width of a new model when no bundled model ships",
    )
    t.add_argument("--lr", type=_positive_float, default=3e-4)
    t.add_argument("--batch-size", type=_positive_int, default=4)
    t.add_argument("--tile", type=_positive_int, default=128, help="output side of a crop in px")
    t.add_argument("--no-augment", action="store_true", help="no elastic/flip/intensity changes")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    t.set_defaults(run=_train)

    g = sub.add_parser("gui", help="open napari with the images (or the sample) and the widgets")
    g.add_argument("images", nargs="*", metavar="IMAGE", help="images to open (default: sample)")
    g.set_defaults(run=_gui)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    try:
        args.run(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"napari-unet: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
