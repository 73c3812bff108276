"""What the docks share about layers: choices, planes, annotation pairs, layers they make.

Layers a dock computes (Predict's prediction and probability, the Weight map preview) carry
``metadata[MADE] = <kind>`` and ``metadata[OF] = <name of the layer they come from>``; Predict's
results also ``metadata[MODEL] = <label of the model that made them>``. Images
made by a dock are never offered as input images (:func:`image_choices`), and every layer a dock
adds goes in through :func:`add_quietly`: the user's selection (the annotation being painted)
stays as it was. Pure functions of layers and the viewer; no Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels, Shapes

from ..core.image import check_label_image

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

__all__ = [
    "EDITED",
    "MADE",
    "MODEL",
    "OF",
    "WHOLE_IMAGE",
    "add_quietly",
    "annotation_of",
    "annotation_pair",
    "find_made",
    "free_name",
    "full_resolution",
    "grid_of",
    "image_choices",
    "layer_choices",
    "pixel_size_um",
    "plane_index",
    "predictions_of",
    "region_choices",
    "spatial_shape",
    "viewed_plane",
    "watch_layers",
]

WHOLE_IMAGE = "whole image"
MADE = "napari_unet_made"  # metadata: what a dock made the layer as ("prediction", "weights"...)
OF = "napari_unet_of"  # metadata: name of the layer it was made from
EDITED = "napari_unet_edited"  # metadata: the user painted on a prediction layer
MODEL = "napari_unet_model"  # metadata: the label of the model that made a result


def watch_layers(viewer: napari.viewer.Viewer, callback: Callable) -> None:
    """Call ``callback(event)`` whenever a layer is added, removed, renamed or moved."""
    events = viewer.layers.events
    for event in (events.inserted, events.removed, events.renamed, events.reordered):
        event.connect(callback)


def layer_choices(viewer: napari.viewer.Viewer, kind: type | tuple[type, ...]):
    """A magicgui ``choices`` callable: ``(name, layer)`` of the viewer's layers of ``kind``."""

    def choices(_widget=None) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return choices


def image_choices(viewer: napari.viewer.Viewer):
    """A magicgui ``choices`` callable: the images the user works on, not those a dock made
    (probabilities, weight-map previews)."""

    def choices(_widget=None) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, Image) and MADE not in layer.metadata
        ]

    return choices


def region_choices(viewer: napari.viewer.Viewer, exclude: Callable[[], object] = lambda: None):
    """A magicgui ``choices`` callable: :data:`WHOLE_IMAGE`, then the Shapes and Labels layers
    (a region: non-zero = annotated) other than ``exclude()``."""

    def choices(_widget=None) -> list[tuple[str, object]]:
        left_out = exclude()
        layers = [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, (Shapes, Labels)) and layer is not left_out
        ]
        return [(WHOLE_IMAGE, WHOLE_IMAGE), *layers]

    return choices


def annotation_of(viewer: napari.viewer.Viewer, image: Image | None) -> Labels | None:
    """The labels layer ``"<image> annotation"``, or None."""
    if image is None:
        return None
    name = f"{image.name} annotation"
    layer = next((lay for lay in viewer.layers if lay.name == name), None)
    return layer if isinstance(layer, Labels) else None


def predictions_of(viewer: napari.viewer.Viewer, image: Image | None) -> list[Labels]:
    """Labels layers Predict made from ``image``, newest (top) first."""
    if image is None:
        return []
    return [
        layer
        for layer in reversed(viewer.layers)
        if isinstance(layer, Labels)
        and layer.metadata.get(MADE) == "prediction"
        and layer.metadata.get(OF) == image.name
    ]


def find_made(
    viewer: napari.viewer.Viewer,
    kind: type,
    made: str,
    of: str,
    shape: tuple[int, ...] | None = None,
    reusable: Callable[[Layer], bool] = lambda layer: True,
) -> Layer | None:
    """The newest layer of ``kind`` a dock made as ``made`` from the layer named ``of`` (with
    data of ``shape`` when given) that is ``reusable``; None if there is none."""
    for layer in reversed(viewer.layers):
        if (
            isinstance(layer, kind)
            and layer.metadata.get(MADE) == made
            and layer.metadata.get(OF) == of
            and (shape is None or tuple(layer.data.shape) == tuple(shape))
            and reusable(layer)
        ):
            return layer
    return None


def free_name(viewer: napari.viewer.Viewer, base: str) -> str:
    """``base``, or ``"<base> [n]"`` with the smallest n >= 2 no layer is named yet."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    n = 2
    while f"{base} [{n}]" in names:
        n += 1
    return f"{base} [{n}]"


def add_quietly(viewer: napari.viewer.Viewer, layer: Layer, *, index: int | None = None):
    """Add ``layer`` without selecting it: the user's selection stays as it was.

    ``index``: where to insert it in ``viewer.layers`` (0 = bottom); None: on top. A layer
    computed from another one goes next to it (the Weight map preview directly under its
    annotation, Predict's probability directly over its image), never under an opaque image.
    """
    layers = viewer.layers
    index = len(layers) if index is None else index
    selected, active = set(layers.selection), layers.selection.active
    layers.insert(index, layer)
    if active is None:
        layers.selection.clear()
    else:
        layers.selection.active = active
    layers.selection.update(selected)
    return layer


def grid_of(layer: Layer, ndim: int | None = None) -> dict:
    """``scale``, ``translate`` and ``units`` of ``layer``'s last ``ndim`` axes (all: None), as
    keyword arguments of a new layer laid over it: a layer a dock makes from an image or an
    annotation takes its pixel size *and* its units, so napari never finds units that disagree
    ("Inconsistent units across layers") between the user's layer and ours."""
    n = len(layer.scale) if ndim is None else ndim
    return {
        "scale": tuple(layer.scale[-n:]),
        "translate": tuple(layer.translate[-n:]),
        "units": tuple(layer.units[-n:]),
    }


def pixel_size_um(layer: Layer) -> tuple[float, float] | None:
    """``(y, x)`` size of the layer's pixels in micrometres, from its ``scale`` and ``units``;
    None when its last two units are not lengths (napari's default unit is the pixel)."""
    from pint.errors import DimensionalityError

    try:
        return tuple(
            float((scale * unit).to("um").magnitude)
            for scale, unit in zip(layer.scale[-2:], layer.units[-2:], strict=True)
        )
    except DimensionalityError:
        return None


def spatial_shape(layer: Layer) -> tuple[int, ...]:
    """The layer's data shape without an RGB(A) channel axis, e.g. ``(H, W)`` or
    ``(Z, H, W)``."""
    shape = tuple(layer.data.shape)
    return shape[:-1] if isinstance(layer, Image) and layer.rgb else shape


def plane_index(shape: tuple[int, ...], step: Sequence[float]) -> tuple[int, ...]:
    """The indices of the leading (non-plane) axes of ``shape`` at ``step``, clipped."""
    if len(step) < len(shape):
        raise ValueError(f"step {tuple(step)} has fewer axes than the image {shape}")
    lead = step[len(step) - len(shape) : len(step) - 2]
    return tuple(
        min(max(round(float(s)), 0), n - 1) for s, n in zip(lead, shape[:-2], strict=True)
    )


def viewed_plane(layer: Layer, viewer: napari.viewer.Viewer) -> tuple[int, ...]:
    """Index, along the leading (non-plane) axes of ``layer``, of the plane the viewer shows."""
    return plane_index(spatial_shape(layer), layer.world_to_data(viewer.dims.point))


def _check_grid(layer: Layer, image_layer: Image) -> None:
    """Raise unless ``layer`` has the image's scale and translate on their common axes."""
    n = min(layer.ndim, image_layer.ndim)
    if not (
        np.allclose(layer.scale[-n:], image_layer.scale[-n:])
        and np.allclose(layer.translate[-n:], image_layer.translate[-n:])
    ):

        def grid(lay: Layer) -> str:
            scale = " x ".join(f"{float(s):.4g}" for s in lay.scale[-n:])
            offset = ", ".join(f"{float(t):.4g}" for t in lay.translate[-n:])
            return f"pixel size {scale}, offset ({offset})"

        raise ValueError(
            f"layer '{layer.name}' is not on the pixel grid of '{image_layer.name}' "
            f"({grid(layer)} against {grid(image_layer)}); pick the image's own annotation, "
            "or give the layer the image's scale and translate"
        )


def _region_plane(region_layer: Layer, shape: tuple[int, ...], lead: tuple[int, ...]):
    """``(H, W) bool`` annotated pixels of the plane ``lead`` of an image of ``shape``."""
    name = region_layer.name
    if isinstance(region_layer, Shapes):
        if region_layer.ndim == 2:
            mask = region_layer.to_labels(shape[-2:]) != 0
        elif region_layer.ndim == len(shape):
            mask = region_layer.to_labels(shape)[lead] != 0
        else:
            raise ValueError(
                f"region '{name}' has {region_layer.ndim} axes; expected 2 or {len(shape)}"
            )
    elif isinstance(region_layer, Labels):
        if region_layer.multiscale:
            raise ValueError(f"region '{name}' is multiscale; use a single-scale labels layer")
        data = np.asarray(region_layer.data)
        if data.shape == shape:
            data = data[lead]
        elif data.shape != shape[-2:]:
            raise ValueError(
                f"region '{name}' has shape {data.shape}; expected the image's {shape} "
                f"or one plane {shape[-2:]}"
            )
        mask = data != 0
    else:
        raise ValueError(f"region '{name}' must be a Shapes or Labels layer")
    if not mask.any():
        raise ValueError(
            f"region '{name}' marks no pixel on this plane; draw a rectangle around the cells "
            f"you annotated, or choose '{WHOLE_IMAGE}'"
        )
    return mask


def annotation_pair(
    image_layer: Image,
    labels_layer: Labels,
    region_layer: Layer | None,
    step: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The training sample of one image plane, as numpy arrays.

    Parameters
    ----------
    image_layer, labels_layer
        The image and its annotation, of the same spatial shape ``(..., H, W)`` and pixel grid.
    region_layer
        ``None`` (the whole plane is annotated), a Shapes layer (its shapes, 2-D or with the
        image's axes) or a Labels layer (non-zero = annotated; the image's shape or one plane).
    step
        Position of the plane: the image's data index, or ``viewer.dims.current_step`` (the
        last entries are used, as napari aligns layers on their last axes).

    Returns
    -------
    image : ``(H, W)`` or ``(H, W, C)`` array, the image's dtype
    labels : ``(H, W)`` integer instance labels, 0 = background
    mask : ``(H, W) bool`` annotated pixels, or ``None`` for the whole plane

    Raises
    ------
    ValueError
        If the layers do not fit together, the region is empty on this plane, or the annotation
        is not instance labels (an intensity image converted to labels, a binary mask:
        :func:`~napari_unet.core.image.check_label_image`).
    """
    for layer in (image_layer, labels_layer):
        if layer.multiscale:
            raise ValueError(f"'{layer.name}' is multiscale; use a single-scale layer")
    shape = spatial_shape(image_layer)
    if len(shape) < 2:
        raise ValueError(f"image '{image_layer.name}' has shape {shape}; expected (..., H, W)")
    if tuple(labels_layer.data.shape) != shape:
        raise ValueError(
            f"annotation '{labels_layer.name}' has shape {tuple(labels_layer.data.shape)}, "
            f"but image '{image_layer.name}' has {shape}; they must match"
        )
    _check_grid(labels_layer, image_layer)
    lead = plane_index(shape, step)
    mask = None
    if region_layer is not None:
        _check_grid(region_layer, image_layer)
        mask = _region_plane(region_layer, shape, lead)
    image = np.array(image_layer.data[lead], copy=True)
    labels = np.array(labels_layer.data[lead], copy=True)
    check_label_image(labels, f"annotation '{labels_layer.name}'")  # the CLI's rule, here too
    return image, labels, mask


def full_resolution(layer):
    """The layer's full-resolution data: level 0 of a multiscale layer, else its data (as it
    is: a dask or zarr array stays lazy)."""
    return layer.data[0] if layer.multiscale else layer.data
