"""bioimage.io model packages (format 0.5) of napari-unet models: export and import.

The package holds PyTorch state-dict weights with the network's own source file (``model.py``,
torch only) as architecture, so bioimage.io tools run it without napari-unet; the same weights as
``napari-unet.safetensors``, which :func:`.store.load_bioimageio` reads back (never
unpickling); a test input and its output, a cover, and a card (README.md) that states the
pre-processing (percentile normalisation, ``image.PERCENTILES``) and the valid-convolution
sizes: an input of side ``min + k * 2**depth`` gives an output ``2 * margin`` smaller (the output
pixel ``(i, j)`` is the input pixel ``(i + margin, j + margin)``). Export needs the
``bioimageio`` extra (``bioimageio.spec``, and ``bioimageio.core`` for the model test); import
needs nothing more.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import string
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["export_bioimageio", "test_bioimageio"]

PAPER = {
    "text": "Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351:234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
NAME_CHARACTERS = string.ascii_letters + string.digits + "_+- ()"
"""The characters bioimage.io allows in a model's name (format 0.5)."""
NAME_LENGTH = (5, 64)
"""The shortest name bioimage.io accepts, and the longest it accepts without a warning (a name
from :func:`package_name` starts with "napari-unet", so it is never too short)."""
TEST_OUTPUT_SIDE = 64
"""Output side of the package's test pair (its input is ``2 * margin`` larger)."""


def package_name(label: str) -> str:
    """A valid bioimage.io model name made from any label: characters bioimage.io refuses
    (``:``, ``,``, ``/``, accents, ...) become spaces, runs of spaces one, cut at a word to 64
    characters; ``"napari-unet <label>"`` when the label does not say napari-unet already.

    >>> package_name("round 2: continued from round 1 on 1 pair, 34 steps")
    'napari-unet round 2 continued from round 1 on 1 pair 34 steps'
    """
    text = "".join(c if c in NAME_CHARACTERS else " " for c in str(label))
    text = re.sub(r"\s+", " ", text).strip()
    if "napari-unet" not in text.lower():
        text = f"napari-unet {text}".strip()
    longest = NAME_LENGTH[1]
    if len(text) > longest:
        text = text[: longest + 1].rsplit(" ", 1)[0] if " " in text[:longest] else text[:longest]
    return text.rstrip(" -_+(")


def _refusal(err) -> str:
    """One short line from a pydantic ValidationError: which field bioimage.io refused, and why
    (a value outside a list of allowed ones is named, not the list)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p)) or "the package"
    why = first.get("msg", str(err)).splitlines()[0]
    if first.get("type") == "literal_error" or len(why) > 200:
        why = f"{first.get('input')!r} is not a value bioimage.io accepts there"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"bioimage.io refuses the package: {where}: {why}{more}"


def _first_failure(summary) -> str:
    """One line from a failed ``bioimageio.core`` test summary: its first failing check."""
    for detail in summary.details:
        if detail.status == "failed":
            reason = detail.errors[0].msg.splitlines()[0][:200] if detail.errors else "failed"
            return f"{detail.name}: {reason}"
    return str(summary.status)


def _needs_spec():
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as err:
        raise ImportError(
            "bioimage.io export needs bioimageio.spec and bioimageio.core: "
            'pip install "napari-unet[bioimageio]"'
        ) from err
    return v0_5


def _test_pair(model, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(1, C, S, S)`` float32 input (raw intensities) and its ``(1, n_classes, s, s)`` class
    probabilities, computed as napari-unet computes them (percentiles of the input)."""
    import torch

    from ..image import normalize, split_channels

    if image is None:
        from ..formats.sample import sample_cells

        image = sample_cells()[0]
    image, channels_last = split_channels(image, model.in_channels)
    spatial = image.ndim - channels_last
    plane = image[(0,) * (spatial - 2)]  # the first plane of a stack
    side = model.input_size(TEST_OUTPUT_SIDE)
    if min(plane.shape[:2]) < side:
        raise ValueError(
            f"the test image is {plane.shape[0]} x {plane.shape[1]} px; the model's test input "
            f"needs {side} x {side} px"
        )
    top, left = ((n - side) // 2 for n in plane.shape[:2])
    crop = np.asarray(plane[top : top + side, left : left + side], np.float32)
    crop = crop.reshape(side, side, -1)
    param = next(model.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(normalize(crop)).permute(2, 0, 1)[None]
        probabilities = torch.softmax(model(x.to(param)), dim=1).float().cpu().numpy()
    return crop.transpose(2, 0, 1)[None].copy(), probabilities


def _cover(path: Path, test_in: np.ndarray, test_out: np.ndarray, margin: int) -> None:
    """A 2:1 PNG: the input (its output region) beside the foreground probability."""
    import imageio.v3 as iio

    from ..image import normalize

    side = test_out.shape[-1]
    image = normalize(test_in[0, 0, margin : margin + side, margin : margin + side])
    fg = 1 - test_out[0, 0]
    both = np.concatenate([np.clip(image, 0, 1), fg], axis=1)
    iio.imwrite(path, (both * 255).astype(np.uint8), extension=".png")


def _input_scale(metadata: dict) -> str:
    """The card's paragraph on the cell size the network works at ("" when it says none): the
    diameter it was trained at (``"diameter"``), else that of the cells it was fine-tuned on, as
    ``core.prediction.scale.model_diameter`` reads them (``network`` cannot import it)."""
    diameter = metadata.get("diameter")
    if diameter is None:
        diameter = (metadata.get("cells") or {}).get("median_diameter")
    if diameter is None:
        return ""
    diameter = float(diameter)
    return f"""

Input scale: the network works at cells about {diameter:.0f} px across: resample your image by
{diameter:.0f} / (your cells' median diameter) before the network, and the output back
(napari-unet does it itself: `predict(model, image, diameter=...)`, `napari-unet predict
--diameter`)."""


def _card(name: str, description: str, model, metadata: dict) -> str:
    from ..image import PERCENTILES
    from .store import WEIGHTS_NAME

    low, high = PERCENTILES
    lo_in = model.min_input_size
    return f"""# {name}

{description}

A U-Net (Ronneberger et al. 2015) with valid 3x3 convolutions, made with napari-unet
(`{metadata.get("source", "napari-unet")}`): depth {model.depth}, base width
{model.base_channels}, {model.in_channels} input channel(s), {model.n_classes} classes
(channel 0 background, channel 1 cell).

## Input
`raw`: `(batch, channel, y, x)` float32 raw intensities; each side must be
{lo_in} + k * {model.multiple} px (k >= 0).

Pre-processing: percentile normalisation of each channel of each image, `(x - p{low:g}) /
(p{high:g} - p{low:g})` without clipping (`scale_range`). napari-unet takes the percentiles of
the whole image; normalise a large image once and predict it in tiles to get napari-unet's
result exactly.{_input_scale(metadata)}

## Output
`probabilities`: `(batch, channel, y, x)` class probabilities (softmax over the channels),
{2 * model.margin} px smaller than the input on each axis: output pixel `(i, j)` belongs to input
pixel `(i + {model.margin}, j + {model.margin})`. Instances: threshold channel 1 and label the
connected regions, or open the package in napari-unet
(`napari_unet.load_bioimageio`) for its watershed post-processing.

## Validation
The test pair in this package checks that a tool reproduces the network's output; it says
nothing about accuracy: check the model on held-out images of your own before relying on it.

## Files
`weights.pt` (PyTorch state dict) with `model.py` (architecture, torch only);
`{WEIGHTS_NAME}`, the same weights for napari-unet (no pickle).
"""


def export_bioimageio(
    model,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: list[str] | tuple[str, ...] = (),
    license: str = "MIT",
    test_image: np.ndarray | None = None,
    test: bool = True,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (``.zip``), atomically.

    Parameters
    ----------
    model
        A :class:`~napari_unet.core.network.model.UNet`.
    path
        The ``.zip`` to write.
    name, description
        The card's title and summary (default: from the model's ``metadata["source"]``, its
        label); the name is made valid for bioimage.io by :func:`package_name`, and the label
        (or ``name`` as given, when it had to change) goes into the description.
    authors
        Author names (default: the current user's login name).
    license
        SPDX licence identifier of the weights.
    test_image
        ``(H, W)`` or ``(H, W, C)`` image (or a stack: its first plane) whose centre crop becomes
        the test input; default the bundled sample image.
    test
        Run ``bioimageio.core``'s model test on the package before writing it (needs
        ``bioimageio.core``); a failure raises ValueError and nothing is written.
    metadata
        Kept in the package's napari-unet weights (default: the model's ``metadata``, if any);
        its ``"source"`` names the model on the card.

    The package is validated by ``bioimageio.spec`` before anything is written. Returns the path.
    """
    import torch

    from ..formats.io import atomic_path
    from . import model as model_module
    from .model import UNet
    from .store import WEIGHTS_NAME, save_model

    v0_5 = _needs_spec()
    from bioimageio.spec import save_bioimageio_package

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file, got {path.name}")
    if not isinstance(model, UNet):
        raise TypeError(f"expected a napari_unet.UNet, got {type(model).__name__}")
    if metadata is None:
        metadata = getattr(model, "metadata", None)
    metadata = dict(metadata or {})
    label = name or str(metadata.get("source", "U-Net"))
    name = package_name(label)
    description = description or "U-Net cell segmentation model made with napari-unet."
    if name != label:
        description = f"{description} Model: {label}"[:1000]  # bioimage.io: 1,024 at most
    model = copy.deepcopy(model).to("cpu").eval()  # the caller's model stays as it is
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as folder:
        folder = Path(folder)
        test_in, test_out = _test_pair(model, test_image)
        np.save(folder / "test_input.npy", test_in)
        np.save(folder / "test_output.npy", test_out)
        _cover(folder / "cover.png", test_in, test_out, model.margin)
        (folder / "model.py").write_text(inspect.getsource(model_module), encoding="utf-8")
        torch.save(model.state_dict(), folder / "weights.pt")
        save_model(model, folder / WEIGHTS_NAME, metadata)
        (folder / "README.md").write_text(
            _card(name, description, model, metadata), encoding="utf-8"
        )
        descr = _description(v0_5, model, folder, name, description, authors, license)
        if test:
            summary = test_bioimageio(descr)
            if summary.status != "passed":
                raise ValueError(f"the bioimage.io model test failed: {_first_failure(summary)}")
        with atomic_path(path) as tmp:
            save_bioimageio_package(descr, output_path=tmp)
    return path


def _description(v0_5, model, folder: Path, name, description, authors, license):
    """The validated ``ModelDescr`` of the files in ``folder``; ValueError if it is invalid."""
    import getpass

    import torch
    from pydantic import ValidationError

    from ... import __version__
    from ..image import PERCENTILES
    from .store import WEIGHTS_NAME

    channels = [f"c{i}" for i in range(model.in_channels)]
    classes = ["background", "cell"] if model.n_classes == 2 else None
    classes = classes or [f"class{i}" for i in range(model.n_classes)]
    size = v0_5.ParameterizedSize(min=model.min_input_size, step=model.multiple)
    out_size = {"tensor_id": "raw", "offset": -2 * model.margin}
    try:
        return v0_5.ModelDescr(
            name=name,
            description=description,
            authors=[{"name": a} for a in (authors or [getpass.getuser()])],
            cite=[PAPER],
            license=license,
            documentation={"source": folder / "README.md"},
            covers=[{"source": folder / "cover.png"}],
            tags=["unet", "segmentation", "cells", "2d", "pytorch", "napari-unet"],
            inputs=[
                v0_5.InputTensorDescr(
                    id="raw",
                    axes=[
                        v0_5.BatchAxis(),
                        v0_5.ChannelAxis(channel_names=channels),
                        v0_5.SpaceInputAxis(id="y", size=size),
                        v0_5.SpaceInputAxis(id="x", size=size),
                    ],
                    test_tensor={"source": folder / "test_input.npy"},
                    data={"type": "float32"},
                    preprocessing=[
                        {
                            "id": "scale_range",
                            "kwargs": {
                                "axes": ["y", "x"],
                                "min_percentile": PERCENTILES[0],
                                "max_percentile": PERCENTILES[1],
                            },
                        }
                    ],
                )
            ],
            outputs=[
                v0_5.OutputTensorDescr(
                    id="probabilities",
                    axes=[
                        v0_5.BatchAxis(),
                        v0_5.ChannelAxis(channel_names=classes),
                        v0_5.SpaceOutputAxis(id="y", size={**out_size, "axis_id": "y"}),
                        v0_5.SpaceOutputAxis(id="x", size={**out_size, "axis_id": "x"}),
                    ],
                    test_tensor={"source": folder / "test_output.npy"},
                    data={"type": "float32", "range": (0.0, 1.0)},
                    postprocessing=[{"id": "softmax", "kwargs": {"axis": "channel"}}],
                )
            ],
            weights={
                "pytorch_state_dict": {
                    "source": folder / "weights.pt",
                    "architecture": {
                        "source": folder / "model.py",
                        "callable": "UNet",
                        "kwargs": model.config(),
                    },
                    "pytorch_version": torch.__version__.split("+")[0],
                }
            },
            attachments=[{"source": folder / WEIGHTS_NAME}],
            config={"napari-unet": {"version": __version__, "weights": WEIGHTS_NAME}},
        )
    except ValidationError as err:
        raise ValueError(_refusal(err)) from err


def test_bioimageio(source):
    """``bioimageio.core.test_model`` of a package path or description; its summary
    (``.status == "passed"``, ``.format()`` for the details)."""
    try:
        from bioimageio.core import test_model
    except ImportError as err:
        raise ImportError(
            "testing a bioimage.io package needs bioimageio.core: "
            'pip install "napari-unet[bioimageio]"'
        ) from err
    return test_model(source)
