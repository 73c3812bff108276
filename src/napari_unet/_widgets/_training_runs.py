"""What the Fine-tune dock trains on and how a run is going: pairs of layers, the worker's
generator, the run as the main thread sees it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._layers import plane_index, spatial_shape
from ._ui import plural

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer
    from napari.utils import progress

    from ..core.network.model import UNet
    from ..core.training.train import FinetuneEvent, RunCheck

__all__ = ["Pair", "TrainingRun", "clock", "elide", "measured", "training_events", "verdict"]

NAME_CHARS = 40  # characters of a pair's name in the list: they fit the 340-px dock's check box


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
    ``"Annotated cells: median diameter 80 px; frames resampled by 0.70 to 56 px, near the size
    the model knows. "`` (how the frames were used only for a model trained at one size,
    ``"diameter"``); ``""`` when it says nothing."""
    metadata = getattr(model, "metadata", None) or {}
    diameter = (metadata.get("cells") or {}).get("median_diameter")
    if diameter is None:
        return ""
    said = f"Annotated cells: median diameter {float(diameter):.0f} px"
    trained = metadata.get("diameter")
    factor = (metadata.get("finetune") or {}).get("scale")
    if trained is not None and factor is not None and float(factor) != 1.0:
        said += (
            f"; frames resampled by {float(factor):.2f} to {float(trained):.0f} px, near the size "
            "the model knows"
        )
    elif trained is not None and factor is not None:
        said += "; frames used at their own size, near the size the model knows"
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
        """``"<image> / <annotation> in <region> [z=3]"``: the plane last."""
        return self.named(None)

    def named(self, chars: int | None = NAME_CHARS) -> str:
        """:attr:`name` in at most ``chars`` characters (all: None), cut in the middle of the
        layer names, so the plane index at its end stays in sight in the dock's list."""
        plane = self.plane
        where = "" if not plane else f" [z={plane[0]}]" if len(plane) == 1 else f" [{plane}]"
        region = "" if self.region is None else f" in {self.region.name}"
        names = f"{self.image.name} / {self.labels.name}{region}"
        return elide(names, None if chars is None else chars - len(where)) + where

    def layers(self) -> list[Layer]:
        return [layer for layer in (self.image, self.labels, self.region) if layer is not None]

    def gone(self, viewer: napari.viewer.Viewer) -> bool:
        """Whether a layer of the pair was removed from ``viewer``."""
        return any(layer not in viewer.layers for layer in self.layers())


def elide(text: str, chars: int | None) -> str:
    """``text`` cut to ``chars`` characters in its middle, e.g. ``"a very lo…ong name"``; as it
    is when it fits or ``chars`` is None."""
    if chars is None or len(text) <= chars:
        return text
    head = (chars - 1) // 2
    return f"{text[:head]}…{text[len(text) - (chars - 1 - head) :]}"


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
    first_loss: float = float("nan")
    check: RunCheck | None = None  # what the run changed, measured by the core

    def update(self, event: FinetuneEvent) -> None:
        """Take the worker's event of one step."""
        from ..core.training.train import RunCheck

        if not self.steps:
            self.first_loss = event.loss
        self.steps, self.loss, self.elapsed = event.step, event.loss, event.elapsed
        self.check = RunCheck.of(event, self.check.seg_before if self.check else None)


def verdict(run: TrainingRun) -> str:
    """What the run changed, in words (ending in a space), from the core's
    :class:`~napari_unet.core.training.train.RunCheck`: a run too short to change anything
    says so and how long to train here, e.g. ``"Only 30 steps ran (loss 0.52 → 0.49); the
    annotated cells are found no better than before (SEG 0.31 → 0.30): train for at least 7
    min here (200 steps). "``; ``""`` when there is nothing to say."""
    from ..core.training.train import MIN_STEPS

    check = run.check
    if check is None:
        return ""
    seg = "" if check.gain is None else f" (SEG {check.seg_before:.2f} → {check.seg_after:.2f})"
    if check.too_short:
        found = (
            f"the annotated cells are found no better than before{seg}"
            if check.unchanged
            else "too few to change the model much"
        )
        minutes = max(1, math.ceil(check.seconds_needed / 60))
        return (
            f"Only {plural(check.steps, 'step')} ran (loss {run.first_loss:.3g} → "
            f"{run.loss:.3g}); {found}: train for at least {minutes} min here "
            f"({MIN_STEPS} steps). "
        )
    if check.unchanged:
        return (
            f"After {plural(check.steps, 'step')} the annotated cells are found no better than "
            f"before{seg}: check the annotation (whole cells, one id each), add pairs, or "
            "train longer. "
        )
    if check.gain is None:
        return ""
    return f"The run helped: the annotated cells are found better{seg}. "
