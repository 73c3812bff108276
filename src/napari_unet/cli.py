"""The ``napari-unet`` command: predict, train and weightmap for batch work; gui for napari.

Every option and input is checked before any work starts. Exit status: 0 done; 1 an error, bad
usage included (an option missing or out of range), told in one line ``napari-unet: error: ...``
on stderr; 130 interrupted (Ctrl-C, or SIGTERM, which is handled the same way).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .outputs import (
    NewFolders,
    model_record,
    output_kinds,
    plan_outputs,
    same_file,
    write_cell_tables,
)

__all__ = ["main"]

log = logging.getLogger("napari_unet")

NEW_MODEL = "new"
"""``train --model new`` starts a new network of ``--base-channels`` width."""


# ------------------------------------------------------------------------ option value checks
def _number(text: str, kind, ok, expected: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a positive number")


def _non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "a number >= 0")


def _threshold(text: str) -> float:
    """A foreground cut below the probability that seeds cells (``to_instances``' ``core``)."""
    from .core.prediction.instances import CORE

    return _number(
        text,
        float,
        lambda v: 0 < v < CORE,
        f"a probability above 0 and below {CORE} (the cells grow from pixels above {CORE})",
    )


def _checked_device(name: str | None):
    """The torch device of ``--device`` if torch can run on it here (``None`` when not given:
    where the model is); ValueError saying why not."""
    if name is None:
        return None
    from .core.network.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from err


def _checked_precision(name: str, device) -> str:
    """What ``--precision`` runs on ``device`` (``None``: the CPU), ``"auto"`` resolved;
    ValueError saying why not."""
    from .core.network.precision import resolve_precision

    try:
        return resolve_precision(name, device or "cpu")
    except ValueError as err:
        raise ValueError(f"--precision: {err}") from err


def _check_tile(tile: int | None, model) -> None:
    """Refuse a ``--tile`` below the model's pooling step or beyond the memory of one tile."""
    if tile is None:
        return
    from .core.prediction.tiling import DEFAULT_MEMORY, largest_step

    low, high = model.multiple, largest_step(model)
    if not low <= tile <= high:
        raise ValueError(
            f"--tile {tile} is out of range for this model: expected {low} (its pooling step, "
            f"2**depth) to {high} px (one tile's activations within "
            f"{DEFAULT_MEMORY / 2**30:.0f} GiB); leave --tile out to choose it automatically"
        )


BACKWARD_FACTOR = 3
"""Training memory per crop over one forward pass (``tiling.tile_memory``): the activations
kept for the backward pass, their gradients and the forward pass's own peak."""


def _check_train_crops(tile: int, batch_size: int, model) -> None:
    """Refuse ``--tile`` and ``--batch-size`` whose training step would need more than
    ``tiling.DEFAULT_MEMORY`` (an estimate: batch x one crop's forward memory x 3)."""
    from .core.prediction.tiling import DEFAULT_MEMORY, tile_memory

    _check_tile(tile, model)
    side = model.input_size(tile)
    needed = BACKWARD_FACTOR * batch_size * tile_memory(model, (side, side))
    if needed > DEFAULT_MEMORY:
        raise ValueError(
            f"--tile {tile} with --batch-size {batch_size} needs about {needed / 2**30:.1f} GiB "
            f"to train ({batch_size} crops of {side} px, activations and gradients), more than "
            f"{DEFAULT_MEMORY / 2**30:.0f} GiB; choose a smaller --tile or --batch-size"
        )


# -------------------------------------------------------------------------- files and folders
def _checked_images(paths: list[str], max_pixels: int) -> list[Path]:
    """The image paths, each existing and within ``max_pixels`` by its header."""
    from .core.formats.io import image_info

    images = [Path(p) for p in paths]
    missing = [str(p) for p in images if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    for path in images:
        image_info(path, max_pixels=max_pixels)
    return images


def _load_image(path: Path, in_channels: int, max_pixels: int):
    from .core.formats.io import read_image
    from .core.image import grey_if_rgb

    image = read_image(path, max_pixels=max_pixels)
    grey = grey_if_rgb(image, in_channels)
    if grey is not image:
        log.info("%s: RGB converted to grey for a one-channel model", path.name)
    return grey


def _load_labels(path: Path, max_pixels: int, components: bool = False):
    """Labels read and checked; with ``components``, a binary mask's regions become cells."""
    from .core.formats.io import read_image
    from .core.image import check_label_image, mask_to_labels

    labels = read_image(path, max_pixels=max_pixels)
    if components:
        log.warning("%s: its connected regions are cells (touching cells stay merged)", path.name)
        labels = mask_to_labels(labels)
    check_label_image(labels, str(path))
    return labels


def _count_cells(labels) -> str:
    """``"N cells"``: distinct non-zero ids, counted plane by plane in a stack."""
    from .core.image import count_ids

    planes = labels.reshape(-1, *labels.shape[-2:])
    n = sum(count_ids(plane) for plane in planes)
    return f"{n} cells" + (f" in {len(planes)} planes" if len(planes) > 1 else "")


def _check_out_file(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``--out`` file that is one of the run's ``inputs`` (also through a link); say
    on stderr, before any work, that an existing file will be replaced."""
    hit = next((i for i in inputs if same_file(out, i)), None)
    if hit is not None:
        raise FileExistsError(
            f"--out {out} is the input {hit}: napari-unet never replaces its inputs; choose "
            "another --out"
        )
    if os.path.lexists(out):
        log.warning("%s exists: the output will replace it", out)


def _instances(args):
    """The :class:`~napari_unet.InstanceConfig` of ``predict``'s options."""
    from .core.prediction.instances import InstanceConfig

    return InstanceConfig(threshold=args.threshold, min_size=args.min_size, expand=args.expand)


def _sized(instance, model, diameter: float | None, source: str | None) -> dict:
    """``to_instances``' options: sizes left open follow the cells of a given or estimated
    ``diameter`` (the model's fine-tuned cells otherwise), as on every route (``--workers``
    too); an explicit ``--min-size`` wins."""
    from .core.prediction.predict import instance_options

    return instance_options(instance, model, diameter, source)


def _said(diameter: float | None, source: str | None) -> str:
    """The per-image words on the diameter used, e.g. ``"diameter 24.0 px (estimated)"``."""
    if source is None:
        return "diameter: none (image as it comes)"
    return f"diameter {diameter:.1f} px ({source})"


def _predict(args) -> int | None:
    if args.workers or args.scheduler:
        return _predict_on_dask(args)
    if args.block is not None or args.halo is not None:
        raise ValueError("--block and --halo take effect with --workers or --scheduler")
    from tqdm import tqdm

    from .core.formats.io import PREDICTION_SOFTWARE, read_pixel_size, write_image, write_labels
    from .core.network.store import open_model
    from .core.prediction.instances import to_instances
    from .core.prediction.predict import predict, resolve_diameter
    from .core.prediction.scale import model_diameter

    device = _checked_device(args.device)
    precision = _checked_precision(args.precision, device)
    images = _checked_images(args.images, args.max_pixels)
    model = open_model(args.model, device=device)
    instances = _instances(args)
    _check_tile(args.tile, model)
    if args.diameter is not None:
        _check_diameter(model, args.diameter)
    out = Path(args.out)
    NewFolders.check(out)
    kinds = output_kinds(args.probabilities, args.rois, args.measurements)
    plan = plan_outputs(images, out, kinds)
    args.folders.make(out)
    with tqdm(plan, desc="images", unit="image", disable=len(plan) < 2) as jobs:
        for path, targets in jobs:
            image = _load_image(path, model.in_channels, args.max_pixels)
            diameter, source = resolve_diameter(
                model, image, args.diameter, device=device, precision=precision
            )
            with tqdm(desc=path.name, unit="tile", leave=False) as bar:

                def progress(result, bar=bar):
                    bar.total = result.total
                    bar.update(1)

                probabilities = predict(
                    model,
                    image,
                    tile=args.tile,
                    device=device,
                    flips=args.flips,
                    precision=precision,
                    progress=progress,
                    # the model's own size for "as it comes": no second estimate in predict
                    diameter=diameter if diameter is not None else model_diameter(model),
                )
            options = _sized(instances, model, diameter, source)
            labels = to_instances(probabilities, **options)
            pixel_size = read_pixel_size(path)
            record = {**model_record(args.model, model), "instances": options}
            record.update(flips=args.flips, diameter=diameter, diameter_source=source)
            record["precision"] = precision  # what ran ("auto" resolved)
            # what was asked, as --workers/--scheduler record it (they compare it on a rerun)
            record.update(instances_asked=instances.options(), diameter_asked=args.diameter)
            # tables first, labels last: the labels record the tables' hashes and mark the end
            record["tables"] = write_cell_tables(targets, labels, image, pixel_size)
            if args.probabilities:
                write_image(
                    targets["probabilities"],
                    probabilities,
                    software=PREDICTION_SOFTWARE,
                    record=record,
                )
            write_labels(
                targets["labels"],
                labels,
                software=PREDICTION_SOFTWARE,
                pixel_size=pixel_size,
                record=record,
            )
            said = _said(diameter, source)
            tqdm.write(f"{path.name}: {_count_cells(labels)}, {said} -> {targets['labels']}")


def _check_diameter(model, diameter: float) -> None:
    """Refuse ``--diameter`` for a model that says no cell size, or too far from its size."""
    from .core.prediction.scale import model_diameter, scale_factor

    known = model_diameter(model)
    if known is None:
        raise ValueError(
            "--diameter: this model does not say what cell size it works at, so it predicts "
            "images as they come; leave --diameter out, or fine-tune the model first"
        )
    try:
        scale_factor(known, diameter)
    except ValueError as err:
        raise ValueError(f"--diameter: {err}") from err


def _check_dask_sizes(workers: int | None, block: int | None) -> None:
    """``--workers`` at most this machine's cores (a local cluster of more is slower, not
    faster) and ``--block`` at least ``MIN_BLOCK`` px; ValueError otherwise."""
    from .core.large.blocks import MIN_BLOCK

    cores = os.cpu_count() or 1
    if workers is not None and workers > cores:
        raise ValueError(
            f"--workers {workers}: this machine has {cores} cores, and a local cluster of more "
            f"workers than cores is slower, not faster; use --workers {cores} or fewer (or "
            "--scheduler for a larger cluster)"
        )
    if block is not None and block < MIN_BLOCK:
        raise ValueError(f"--block {block}: blocks must be at least {MIN_BLOCK} px on a side")


def _predict_on_dask(args) -> int:
    """``predict --workers/--scheduler``: the batch runner with ``args``' settings."""
    from ._batch import BatchSettings, run
    from .core.network.store import open_model

    if args.diameter is not None:
        _check_diameter(open_model(args.model), args.diameter)
    if args.device not in (None, "cpu"):
        raise ValueError("--device: workers predict on their own CPU (leave --device out)")
    _checked_precision(args.precision, "cpu")
    if args.tile is not None:
        raise ValueError(
            "--tile: with --workers/--scheduler every block chooses its tile automatically "
            "(the result is the same); leave --tile out, or use --block"
        )
    _check_dask_sizes(args.workers, args.block)
    settings = BatchSettings(
        images=tuple(args.images),
        out=Path(args.out),
        model=args.model,
        instance=_instances(args),
        kinds=output_kinds(args.probabilities, args.rois, args.measurements),
        block=args.block,
        halo=args.halo,
        flips=args.flips,
        workers=args.workers,
        scheduler=args.scheduler,
        max_pixels=args.max_pixels,
        diameter=args.diameter,
        precision=args.precision,
    )
    return run(settings, args.folders)


# ------------------------------------------------------------------------------- export-model
def _export_model(args) -> None:
    from .core.network.bioimageio import export_bioimageio
    from .core.network.store import open_model

    out = Path(args.bioimageio)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"--bioimageio must end in .zip, got {out.name}")
    if out.is_dir():
        raise IsADirectoryError(f"--bioimageio {out} is a folder; expected a .zip file")
    images = _checked_images([args.test_image], args.max_pixels) if args.test_image else []
    NewFolders.check(out.parent)
    _check_out_file(out, [Path(args.model), *images])
    model = open_model(args.model)
    test_image = _load_image(images[0], model.in_channels, args.max_pixels) if images else None
    args.folders.make(out.parent)
    export_bioimageio(
        model,
        out,
        name=args.name,
        authors=args.author or (),
        license=args.license,
        test_image=test_image,
        test=not args.no_test,
    )
    checked = "written" if args.no_test else "tested by bioimageio.core and written"
    print(f"bioimage.io package {checked} -> {out}")


# ---------------------------------------------------------------------------------- weightmap
def _weightmap(args) -> None:
    from .core.formats.io import write_image
    from .core.training.weightmap import training_target

    labels_path, out = Path(args.labels), Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff", ".npy"):
        raise ValueError(f"--out must end in .tif or .npy, got {out.name}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a .tif or .npy file")
    _checked_images([args.labels], args.max_pixels)
    NewFolders.check(out.parent)
    _check_out_file(out, [labels_path])
    labels = _load_labels(labels_path, args.max_pixels, args.connected_components)
    args.folders.make(out.parent)
    _, weights = training_target(
        labels, w0=args.w0, sigma=args.sigma, class_balance=args.class_balance
    )
    write_image(out, weights)
    print(f"{_count_cells(labels)}: weight map {weights.shape}, max {weights.max():.2f} -> {out}")


# -------------------------------------------------------------------------------------- train
def _check_model_out(out: Path) -> None:
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a .safetensors file")
    NewFolders.check(out.parent)


def _check_free_space(out: Path, needed: int) -> None:
    existing = next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OSError(
            f"not enough free disk space for {out}: {free / 2**20:.1f} MiB free, the model "
            f"needs {needed / 2**20:.1f} MiB; free some space or choose another --out"
        )


def _rescue_paths(out: Path) -> list[Path]:
    name = f"{out.stem[:100]}-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.safetensors"
    return [out.with_name(name), Path(tempfile.gettempdir()) / name]


def _save_or_rescue(model, out: Path, metadata: dict) -> Path:
    """Save to ``out``; if that fails, save beside it or in the temp folder and raise OSError
    saying where the model went (or that it is lost)."""
    from .core.network.store import save_model

    try:
        return save_model(model, out, metadata)
    except OSError as err:
        reason = " ".join(str(err).split())
        tried = []
        for rescue in _rescue_paths(out):
            try:
                save_model(model, rescue, metadata)
            except OSError as again:
                tried.append(f"{rescue} ({again.strerror or again})")
                continue
            raise OSError(
                f"cannot save the model to {out} ({reason}); saved it to {rescue} instead"
            ) from err
        raise OSError(
            f"cannot save the model to {out} ({reason}), nor to {', '.join(tried)}: "
            "the trained weights are lost"
        ) from err


def _start_model(args, device):
    from .core.network import NEW_BASE_CHANNELS
    from .core.network.model import UNet
    from .core.network.store import bundled_models, open_model

    if args.model == NEW_MODEL:
        width = args.base_channels or NEW_BASE_CHANNELS
        return UNet(base_channels=width), f"new UNet(base_channels={width})"
    if args.base_channels is not None:
        raise ValueError(
            "--base-channels sets the width of a new network (--model new); the start model "
            f"{args.model or 'bundled default'} has its own width"
        )
    if args.model is None and not bundled_models():
        raise FileNotFoundError(
            "no bundled model ships with this installation; start a new network with "
            "--model new (and --base-channels) or pass a model file with --model"
        )
    return open_model(args.model, device=device), args.model or "bundled default"


def _train(args) -> int:
    from tqdm import tqdm

    from .core.network.store import file_size_estimate
    from .core.training.train import DEFAULT_STEPS, finetune

    device = _checked_device(args.device)
    _checked_precision(args.precision, device)
    if len(args.images) != len(args.labels):
        raise ValueError(
            f"{len(args.images)} image(s) but {len(args.labels)} label file(s); "
            "expected one label file per image, in the same order"
        )
    out = Path(args.out)
    _check_model_out(out)
    images = _checked_images(args.images, args.max_pixels)
    label_paths = _checked_images(args.labels, args.max_pixels)
    start_file = [] if args.model in (None, NEW_MODEL) else [Path(args.model)]
    _check_out_file(out, [*images, *label_paths, *start_file])
    model, start = _start_model(args, device)
    _check_train_crops(args.tile, args.batch_size, model)
    _check_free_space(out, file_size_estimate(model.config()))
    samples = [
        (
            _load_image(i, model.in_channels, args.max_pixels),
            _load_labels(lab, args.max_pixels, args.connected_components),
        )
        for i, lab in zip(images, label_paths, strict=True)
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
        device=device,
        precision=args.precision,
        max_seconds=args.minutes * 60 if args.minutes else None,
    )
    args.folders.make(out.parent)
    last, interrupted = None, False
    with tqdm(total=args.steps or DEFAULT_STEPS, desc="training", unit="step") as bar:
        try:
            for last in events:
                bar.update(1)
                bar.set_postfix(loss=f"{last.loss:.4f}")
        except KeyboardInterrupt:
            events.close()
            interrupted = True
            tqdm.write("interrupted: saving the model as trained so far")
    steps_done = last.step if last else 0
    metadata = {
        **getattr(model, "metadata", {}),  # the start model's, and finetune's record of this run
        "trained_from": start,
        "steps": steps_done,
        "images": [str(p) for p in args.images],
        "loss": last.loss if last else None,
    }
    _save_or_rescue(model, out, metadata)
    ran = (getattr(model, "metadata", None) or {}).get("finetune", {}).get("precision")
    print(f"{steps_done} steps in {ran}, final loss {metadata['loss']} -> {out}")
    return 130 if interrupted else 0


WIDGETS = ("Annotate", "Weight map", "Fine-tune", "Predict", "Export")


SCREEN_SHARE = 0.92
"""The share of the screen's width and height that ``napari-unet gui``'s window takes."""
DOCK_SHARE, DOCK_WIDTH = 0.22, (340, 440)
"""The docks' share of the window's width, within ``DOCK_WIDTH`` px: the five tab names fit
whole, and beside napari's layer controls (320 px at the least) the canvas keeps more than half
of the window's area on a 1600x1000 screen."""


def open_viewer(images: list[str], viewer=None, *, fill_screen: bool = False):
    """A napari viewer with ``images`` (or the sample data), the five docks tabified with
    Annotate in front (tabs named by the dock alone, wide enough to read), and the view fitted
    to the images; with ``fill_screen``, a window over most of the screen."""
    import napari

    from .core.formats.io import read_image, read_pixel_size

    viewer = viewer or napari.Viewer()
    if images:
        for path in map(Path, images):
            image = read_image(path)
            rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
            layer = viewer.add_image(image, name=path.stem, rgb=rgb)
            pixel_size = read_pixel_size(path)
            if pixel_size is not None:  # the TIFF's calibration, in um
                layer.scale = (*layer.scale[:-2], *pixel_size)
                layer.units = (*layer.units[:-2], "um", "um")
    else:
        viewer.open_sample("napari-unet", "phase_contrast_cells")
    if fill_screen:
        from qtpy.QtGui import QGuiApplication

        area = QGuiApplication.primaryScreen().availableGeometry()
        viewer.window.resize(int(area.width() * SCREEN_SHARE), int(area.height() * SCREEN_SHARE))
    width = int(min(max(DOCK_SHARE * viewer.window.geometry()[2], DOCK_WIDTH[0]), DOCK_WIDTH[1]))
    docks = []
    for name in WIDGETS:
        dock = viewer.window.add_plugin_dock_widget("napari-unet", name, tabify=True)[0]
        dock.setWindowTitle(name)  # the tab: "Fine-tune", not an elided "Fine-t..."
        dock.setMinimumWidth(width)
        docks.append(dock)
    docks[0].show()
    docks[0].raise_()  # Annotate in front: the first step
    viewer.reset_view()  # the docks took their width from the canvas: fit the images again
    return viewer


def _gui(args) -> None:
    try:
        import napari
    except ImportError as err:
        raise ValueError("napari-unet gui needs napari: pip install 'napari-unet[gui]'") from err
    try:
        import qtpy  # noqa: F401  (raises when no Qt binding is installed)
    except ImportError as err:
        raise ValueError(
            "napari-unet gui needs a Qt binding for napari: pip install 'napari-unet[gui]' "
            "(napari's default, PyQt6) or 'napari[pyqt6]'"
        ) from err

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    open_viewer(args.images, fill_screen=True)
    napari.run()


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error."""

    def error(self, message: str):
        self.exit(1, f"napari-unet: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` for options with a default worth saying."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .core.formats.io import MAX_PIXELS
    from .core.network import NEW_BASE_CHANNELS
    from .core.network.precision import PRECISIONS
    from .core.prediction.instances import CORE, MIN_SIZE, InstanceConfig
    from .core.training.train import FinetuneConfig
    from .core.training.weightmap import CLASS_BALANCE, SIGMA, W0

    defaults = FinetuneConfig()  # the one place that holds the training defaults
    instances = InstanceConfig()  # and the labelling defaults
    parser = _Parser(
        prog="napari-unet",
        description="U-Net segmentation of microscopy images.",
        epilog="Errors are one line on stderr; exit status 1 for an error (bad usage included), "
        "130 when interrupted (Ctrl-C or SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    budget = {
        "type": _positive_int,
        "default": MAX_PIXELS,
        "help": "refuse images of more pixel values (H x W x channels x planes, read from the "
        "file's header before decoding)",
    }
    device = {"help": "torch device: cpu, cuda, cuda:N or mps (default: cpu)"}
    precision = {
        "choices": PRECISIONS,
        "default": defaults.precision,
        "help": "arithmetic of the network: bf16 (bfloat16) is faster where the CPU computes it "
        "natively (avx512_bf16/amx_bf16) or on a GPU, slower elsewhere; auto picks bf16 there "
        "and fp32 elsewhere (the log says which runs); weights and files stay float32",
    }
    components = {
        "action": "store_true",
        "help": "labels are a binary mask: take its connected regions as cells (touching cells "
        "stay merged; label them one id per cell to separate them)",
    }

    p = sub.add_parser(
        "predict",
        help="segment images into label masks (one TIFF per image)",
        formatter_class=_Help,
        description="Segment images into instance label masks, one TIFF per image.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF, PNG or NPY images")
    p.add_argument(
        "--model",
        help="bundled model name, .safetensors file or bioimage.io .zip that napari-unet "
        "exported (default: bundled)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder, created if missing: IMAGE_labels.tif per image (IMAGE-2_labels.tif "
        "for a name met again). Files an earlier napari-unet predict wrote are replaced; any "
        "other existing file, and every input, is never replaced: the run stops before writing",
    )
    p.add_argument(
        "--tile",
        type=_positive_int,
        help="output side of a tile in px, from 2**depth of the model up to what fits the "
        "memory of one tile (default: chosen automatically)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=instances.threshold,
        help=f"foreground probability cut, in (0, {CORE}): cells grow from their pixels above "
        f"{CORE}",
    )
    p.add_argument(
        "--min-size",
        type=_non_negative_int,
        help="smallest cell kept, px (default: 5 %% of the median area of the cells: a disc of "
        "the --diameter given or estimated, else the cells the model was fine-tuned on, else "
        f"{MIN_SIZE})",
    )
    p.add_argument(
        "--expand", type=_non_negative_int, default=instances.expand, help="grow cells by this, px"
    )
    p.add_argument(
        "--diameter",
        type=_positive_float,
        metavar="PX",
        help="median diameter of the images' cells in px: each image is resampled to the cell "
        "size the model works at, and the result back (default: the size of the cells the model "
        "was fine-tuned on, else estimated by the model when it was trained at one size, else "
        "the images as they come); --min-size follows it",
    )
    p.add_argument(
        "--flips",
        action="store_true",
        help="average the 8 flips and quarter turns (8x slower, more accurate)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write IMAGE_probabilities.tif (float32; IMAGE_probabilities.ome.zarr for a "
        "zarr/OME-Zarr input with --workers/--scheduler)",
    )
    p.add_argument(
        "--rois",
        action="store_true",
        help="also write IMAGE_rois.zip: one ImageJ polygon ROI per cell (Fiji's ROI Manager)",
    )
    p.add_argument(
        "--measurements",
        action="store_true",
        help="also write IMAGE_cells.csv: one row per cell (area, centroid, shape, intensity; "
        "in um too when the TIFF has a pixel size)",
    )
    p.add_argument("--device", **device)
    p.add_argument("--precision", **precision)
    p.add_argument("--max-pixels", **budget)
    _distributed_options(p)
    p.set_defaults(run=_predict)

    e = sub.add_parser(
        "export-model",
        help="write a model as a bioimage.io model package",
        formatter_class=_Help,
        description="Write a model as a bioimage.io model package (.zip): weights, a test "
        "input/output pair, the pre-processing, a card and the U-Net citation, validated by "
        "bioimageio.spec and tested by bioimageio.core before it is written. Needs the "
        "bioimageio extra: pip install 'napari-unet[bioimageio]'.",
    )
    e.add_argument("model", metavar="MODEL", help="bundled model name or .safetensors file")
    e.add_argument(
        "--bioimageio",
        required=True,
        metavar="OUT.zip",
        help="the package to write; folder created if missing, an existing file is replaced "
        "(a line on stderr says so)",
    )
    e.add_argument("--name", help="the package's title (default: from the model)")
    e.add_argument(
        "--author", action="append", help="an author's name; repeat for several (default: you)"
    )
    e.add_argument("--license", default="MIT", help="SPDX licence of the weights")
    e.add_argument(
        "--test-image",
        metavar="IMAGE",
        help="image whose centre crop is the package's test input (default: the sample)",
    )
    e.add_argument("--no-test", action="store_true", help="skip bioimageio.core's model test")
    e.add_argument("--max-pixels", **budget)
    e.set_defaults(run=_export_model)

    w = sub.add_parser(
        "weightmap",
        help="write the weight map training uses for a label image",
        formatter_class=_Help,
        description="Write the weight map that training uses and the Weight map dock shows: the "
        "border term w0 * exp(-(d1 + d2)**2 / (2 sigma**2)) on the label image with touching "
        "cells separated by background (carved borders), plus 1 everywhere. The paper's map "
        "(Ronneberger et al. 2015, eq. 2) adds its class-balance term w_c instead of 1: "
        "--class-balance.",
    )
    w.add_argument("labels", metavar="LABELS", help="instance label image (0 = background)")
    w.add_argument(
        "--out",
        required=True,
        help="output .tif or .npy file (float32); folder created if missing. An existing file "
        "is replaced (a line on stderr says so); LABELS itself is never replaced",
    )
    w.add_argument("--w0", type=_non_negative_float, default=W0, help="border weight (paper: 10)")
    w.add_argument(
        "--sigma", type=_positive_float, default=SIGMA, help="border width in px (paper: 5)"
    )
    w.add_argument(
        "--class-balance",
        action=argparse.BooleanOptionalAction,
        default=CLASS_BALANCE,
        help="add the paper's class-balance term w_c (foreground and background weigh the "
        f"same in total) instead of 1 (default: {'on' if CLASS_BALANCE else 'off'})",
    )
    w.add_argument("--max-pixels", **budget)
    w.add_argument("--connected-components", **components)
    w.set_defaults(run=_weightmap)

    t = sub.add_parser(
        "train",
        help="fine-tune a model on images and their instance labels",
        formatter_class=_Help,
        description="Fine-tune a model on images and their instance labels; Ctrl-C (or "
        "SIGTERM) stops and saves the model as trained so far (exit status 130). If the model "
        "cannot be saved to --out, it is saved beside it or in the temp folder, and the error "
        "says where.",
    )
    t.add_argument(
        "--images", nargs="+", required=True, metavar="IMAGE", help="TIFF, PNG or NPY images"
    )
    t.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="LABELS",
        help="instance label images (0 = background), one per image, in the same order",
    )
    t.add_argument("--minutes", type=_positive_float, help="train for this many minutes (e.g. 5)")
    t.add_argument(
        "--steps",
        type=_positive_int,
        help="optimisation steps (default: fine-tuning's own, napari_unet.DEFAULT_STEPS; a few "
        "annotated images over-fit beyond it); --minutes ends the run earlier if time runs out",
    )
    t.add_argument(
        "--out",
        required=True,
        help="output model file (.safetensors); an existing file is replaced (a line on stderr "
        "says so), an input (the start model, an image) never",
    )
    t.add_argument(
        "--model",
        help=f"start model: bundled name, .safetensors file, or '{NEW_MODEL}' for a new, "
        "untrained network (default: the bundled model)",
    )
    t.add_argument(
        "--base-channels",
        type=_positive_int,
        help=f"width of the new network of --model {NEW_MODEL} (default: {NEW_BASE_CHANNELS}); "
        "refused with any other start model, which has its own width",
    )
    t.add_argument("--lr", type=_positive_float, default=defaults.lr, help="peak learning rate")
    t.add_argument(
        "--batch-size", type=_positive_int, default=defaults.batch_size, help="crops per step"
    )
    t.add_argument(
        "--tile",
        type=_positive_int,
        default=defaults.tile,
        help="output side of a crop in px; --batch-size crops of it must fit 2 GiB for training",
    )
    t.add_argument("--no-augment", action="store_true", help="no elastic/flip/intensity changes")
    t.add_argument("--seed", type=int, default=0, help="seed of the crops and augmentations")
    t.add_argument("--device", **device)
    t.add_argument("--precision", **precision)
    t.add_argument("--max-pixels", **budget)
    t.add_argument("--connected-components", **components)
    t.set_defaults(run=_train)

    g = sub.add_parser("gui", help="open napari with the images (or the sample) and the widgets")
    g.add_argument("images", nargs="*", metavar="IMAGE", help="images to open (default: sample)")
    g.set_defaults(run=_gui)
    return parser


def _distributed_options(p: argparse.ArgumentParser) -> None:
    """``--workers`` / ``--scheduler`` (dask.distributed), ``--block`` and ``--halo``."""
    from .core.large.blocks import DEFAULT_BLOCK, DEFAULT_HALO

    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=_positive_int,
        help="run on a local dask cluster of N worker processes: IMAGE may also be a folder or "
        "a glob pattern, zarr/OME-Zarr inputs give IMAGE_labels.ome.zarr, large images run "
        "block by block, complete outputs are skipped (a rerun resumes), and failed files are "
        "listed at the end (needs napari-unet[distributed])",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="as --workers, on the running dask cluster at ADDRESS (e.g. tcp://host:8786)",
    )
    p.add_argument(
        "--block",
        type=_positive_int,
        help="with --workers/--scheduler: block side in px; larger images run block by block "
        f"(default: {DEFAULT_BLOCK})",
    )
    p.add_argument(
        "--halo",
        type=_positive_int,
        help="with --workers/--scheduler: px around a block when labelling cells, larger than "
        f"a cell (default: {DEFAULT_HALO})",
    )


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so that partial
    files are removed and training saves what it learnt."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and (
        type(err).__name__ == "OutOfMemoryError"
        or re.search(r"out of memory|not enough memory|can't allocate memory", str(err), re.I)
        is not None
    )


def _error_line(err: Exception) -> str:
    """The one line that tells the user what went wrong."""
    text = " ".join(str(err).split())
    if _out_of_memory(err):
        return (
            f"out of memory ({text or type(err).__name__}); try a smaller --tile, smaller or "
            "fewer images, or a machine with more memory"
        )
    if isinstance(err, (ValueError, TypeError, OSError)):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text} (run with -v for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    if not args.verbose:  # dask's own INFO lines ("Lost all workers", ...) only with -v
        # worker processes: a failed task is reported once, per file, at the end of the run
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        logging.getLogger("distributed").setLevel(logging.WARNING)
    args.folders = NewFolders()
    try:
        with _sigterm_as_interrupt():
            return args.run(args) or 0
    except KeyboardInterrupt:
        args.folders.remove_empty()
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        args.folders.remove_empty()
        log.debug("napari-unet: traceback", exc_info=True)
        print(f"napari-unet: error: {_error_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
