"""The real data sets beside the clone (``../shared/data``), split as their README fixes.

Each loader returns a list of ``(name, image, labels)``: image ``(H, W)`` (RGB converted to grey
with :func:`napari_unet.to_grey`, the plugin's one conversion), labels ``(H, W)`` instance ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_unet import read_image
from napari_unet.core.image import grey_if_rgb
from napari_unet.core.training.weightmap import largest_piece

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _folder(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    if not path.exists():
        raise SystemExit(f"data not found: {path} (pass --data pointing at shared/data)")
    return path


def usiigaci(split: str, root: Path = DATA):
    """Phase-contrast cells; ``split`` 'train' (45) or 'val' (5). Stray id fragments removed."""
    folder = _folder(root, "usiigaci", split)
    return [
        (p.stem, read_image(p), largest_piece(read_image(folder / "masks" / p.name)))
        for p in sorted((folder / "images").glob("*.tif"))
    ]


def dsb2018(split: str, root: Path = DATA):
    """DSB 2018 nuclei; ``split`` 'train' (53) or 'test' (12), from train.txt / test.txt."""
    folder = _folder(root, "dsb2018")
    names = (folder / f"{split}.txt").read_text().split()
    return [
        (
            Path(n).stem[:12],
            grey_if_rgb(read_image(folder / n), 1),
            read_image(folder / n.replace("images", "masks")),
        )
        for n in names
    ]


U373_FIRST = ("02_t010", "02_t017")
"""The gold frames the u373 protocol fine-tunes on first (its README's split)."""


def u373(root: Path = DATA):
    """PhC-C2DH-U373 gold frames in the order a user would annotate them (its README's split):
    ``U373_FIRST``, then the other gold frames in order (02_t019, 02_t020, ...). Score on the
    frames after the ones fine-tuned on."""
    folder = _folder(root, "u373")
    frames = [
        (p.stem, read_image(folder / "images" / p.name), read_image(p))
        for p in sorted((folder / "masks").glob("*.tif"))
    ]
    first = [f for f in frames if f[0] in U373_FIRST]
    return first + [f for f in frames if f[0] not in U373_FIRST]


def isbi2012(indices, root: Path = DATA):
    """ISBI 2012 EM slices; labels are the connected cell interiors (255 in the label PNGs)."""
    folder = _folder(root, "isbi2012", "train")
    out = []
    for i in indices:
        interior = read_image(folder / "labels" / f"{i:02d}.png") > 127
        out.append(
            (
                f"{i:02d}",
                read_image(folder / "images" / f"{i:02d}.png"),
                ndi.label(interior)[0].astype(np.uint32),
            )
        )
    return out
