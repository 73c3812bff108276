"""What the Fine-tune dock trains on and how a run is going: pairs of layers, the worker's
generator, the run as the main thread sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._layers import plane_index, spatial_shape

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Layer
    from napari.utils import progress

    from ..core.network.model import UNet

__all__ = ["Pair", "TrainingRun", "clock", "measured", "training_events"]


def training_events(model: UNet, train: list, validation: list, grey: bool, settings: dict):
    """The worker's generator: the :class:`~napari_unet.FinetuneEvent` of each step."""
    from napari_unet import finetune
    from napari_unet.core.image import grey_if_rgb

    if grey:
        train = [(grey_if_rgb(image, model.in_channels), *rest) for image, *rest in train]
        validation = [
            (grey_if_rgb(image, model.in_channels), *rest) for image, *rest in validation
        ]
    yield from finetune(model, train, validation=validation or None, **settings)


def measured(model: UNet) -> str:
    """What a run measured of its annotated cells, from ``model.metadata`` after it: e.g.
    ``"Annotated cells: median diameter 41 px; frames resampled by 0.49 to the model's 20 px. "``
    (the factor only for a model trained at one size, ``"diameter"``); ``""`` when it says
    nothing."""
    metadata = getattr(model, "metadata", None) or {}
    diameter = (metadata.get("cells") or {}).get("median_diameter")
    if diameter is None:
        return ""
    said = f"Annotated cells: median diameter {float(diameter):.0f} px"
    trained = metadata.get("diameter")
    factor = (metadata.get("finetune") or {}).get("scale")
    if trained is not None and factor is not None:
        said += f"; frames resampled by {float(factor):.2f} to the model's {float(trained):.0f} px"
    return said + ". "


def clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


@dataclass(frozen=True)
class Pair:
    """One plane of an image and its annotation (read when training starts)."""

    image: Image
    labels: Labels
    region: Layer | None
    step: tuple[float, ...]  # the image's data coordinates at the plane

    @property
    def plane(self) -> tuple[int, ...]:
        return plane_index(spatial_shape(self.image), self.step)

    @property
    def name(self) -> str:
        plane = self.plane
        where = "" if not plane else f" [z={plane[0]}]" if len(plane) == 1 else f" [{plane}]"
        region = "" if self.region is None else f" in {self.region.name}"
        return f"{self.image.name} / {self.labels.name}{where}{region}"

    def layers(self) -> list[Layer]:
        return [layer for layer in (self.image, self.labels, self.region) if layer is not None]


@dataclass
class TrainingRun:
    """One training run, as the main thread sees it."""

    model: UNet  # the copy being trained
    bar: progress  # napari's activity dock: per cent of the budget (time or steps)
    pairs: int
    seconds: float | None  # the time budget
    round: int  # 1 + the round of the model it continues (1 from a model not tuned here)
    steps: int = 0
    loss: float = float("nan")
    elapsed: float = 0.0
