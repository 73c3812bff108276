"""Fine-tuning as a generator of progress events.

The paper's recipe: weighted cross-entropy with the separation weight map (touching cells split by
carved background borders), elastic deformation on the fly, loss only on real annotated pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..image import PERCENTILES, check_label_image, normalize, split_channels
from ..network.device import resolve_device
from ..network.guard import FINETUNING, training_step, using
from ..network.precision import autocast, check_precision, dtype_name, resolve_precision
from ..prediction.instances import THRESHOLD, cell_areas, cell_sizes, size_defaults
from ..prediction.scale import rescale_image, rescale_labels, scale_factor, working_diameter
from .augment import (
    random_cell_contrast,
    random_displacement,
    random_flip_rot,
    random_gamma,
    random_illumination,
    random_intensity,
    random_zoom,
    warp,
)
from .weightmap import CLASS_BALANCE, SIGMA, W0, check_labels, check_weight_params, training_target

__all__ = [
    "FinetuneConfig",
    "FinetuneEvent",
    "RunCheck",
    "MIN_GAIN",
    "MIN_STEPS",
    "TrainingSample",
    "prepare_samples",
    "at_model_size",
    "finetune",
    "AUGMENTATIONS",
    "DEFAULT_AUGMENTATIONS",
    "DEFAULT_STEPS",
]

AUGMENTATIONS = ("elastic", "flips", "intensity", "zoom", "gamma", "illumination", "contrast")
DEFAULT_AUGMENTATIONS = ("elastic", "flips", "intensity")  # what augment=True means
DEFAULT_STEPS = 650
"""Steps of a fine-tuning run unless told: twice as many lost on two of three kinds of two
annotated frames (over-fitting) and gained on the third; a fast CPU does 650 in 4-6 minutes
(docs/benchmarks.md, "How long to fine-tune")."""
MAX_LR = 1.0
"""The largest learning rate accepted: Adam's steps are about lr in size, weights about 0.1."""
MIN_STEPS = 200
"""Steps below which a run is too short to be expected to change a model: on the Usiigaci
few-shot protocol (docs/benchmarks.md) 178-184 steps took SEG from 0.07 to 0.33-0.38 of a
0.41-0.43 plateau reached at 500-700 steps; a 1-minute run of 25-34 steps on a busy machine
left 13 touching cells one object."""
log = logging.getLogger(__name__)

MIN_GAIN = 0.02
"""The least gain in SEG on the annotated cells that counts as a change (runs of one recipe and
budget differ by about this much, docs/benchmarks.md)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The training settings of :func:`finetune`, checked once, here (ValueError), and their
    defaults, which :func:`finetune`, ``napari-unet train`` and the Fine-tune dock read from here.

    Attributes
    ----------
    lr
        Adam learning rate at its peak (short warm-up, then cosine decay to 5 %). 1e-3 beat
        3e-4 in few-shot fine-tuning on both unseen kinds of bench_fewshot.py (SEG, F1 and
        foreground IoU; docs/benchmarks.md).
    batch_size
        Crops per optimisation step.
    tile
        About the output side (px) of a training crop; rounded up to a valid network size.
    augment
        ``True`` for ``DEFAULT_AUGMENTATIONS``: ``"elastic"`` deformation (paper: 3x3 grid,
        10 px), ``"flips"`` (flips and 90-degree turns), ``"intensity"`` (gain and offset);
        ``False`` for none, or a collection of names from ``AUGMENTATIONS``, which adds
        ``"zoom"`` (0.77-1.3x about the crop centre), ``"gamma"`` (0.67-1.5),
        ``"illumination"`` (a smooth added background of up to 0.4) and ``"contrast"`` (half
        the cells 0.15-1.5x their contrast to the background). Stored as the tuple of the
        chosen names, in the order of ``AUGMENTATIONS``.
    w0, sigma, class_balance
        Separation weight map (see :func:`~napari_unet.training_target`); the defaults are
        ``weightmap.W0``, ``SIGMA`` and ``CLASS_BALANCE``.
    validate_every
        Steps between two validation scores (when validation samples are given).
    seed
        Seed of the crop and augmentation sampling; ``None`` for a fresh one.
    precision
        Arithmetic of the forward pass: ``"auto"`` (bfloat16 where the device computes it
        natively, else float32; see
        :func:`~napari_unet.core.network.precision.resolve_precision`), ``"fp32"`` or
        ``"bf16"`` (``"fp16"`` on a CUDA GPU, with a gradient scaler). Weights, optimiser state
        and loss stay float32; the precision that ran is recorded in
        ``model.metadata["finetune"]["precision"]``.
    """

    lr: float = 1e-3
    batch_size: int = 4
    tile: int = 128
    augment: bool | Collection[str] = True
    w0: float = W0
    sigma: float = SIGMA
    class_balance: bool = CLASS_BALANCE
    validate_every: int = 50
    seed: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, numbers.Real) and 0 < self.lr <= MAX_LR):
            raise ValueError(f"lr must be a number in (0, {MAX_LR:g}], got {self.lr!r}")
        for name in ("batch_size", "tile", "validate_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_weight_params(self.w0, self.sigma)
        if not isinstance(self.class_balance, (bool, np.bool_)):
            raise ValueError(f"class_balance must be True or False, got {self.class_balance!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        check_precision(self.precision)
        # plain Python values: the config goes into the model's JSON metadata as it is
        for name, kind in [("lr", float), ("w0", float), ("sigma", float)] + [
            (name, int) for name in ("batch_size", "tile", "validate_every")
        ]:
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "augment", _augmentations(self.augment))
        object.__setattr__(self, "class_balance", bool(self.class_balance))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _augmentations(augment) -> tuple[str, ...]:
    if augment is True or augment is False:
        return DEFAULT_AUGMENTATIONS if augment else ()
    if isinstance(augment, str):
        augment = [augment]
    try:
        chosen = set(augment)
    except TypeError:
        raise ValueError(
            f"augment must be True, False or a collection of names, got {augment!r}"
        ) from None
    unknown = chosen - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {sorted(unknown)}; expected some of {list(AUGMENTATIONS)}"
        )
    return tuple(name for name in AUGMENTATIONS if name in chosen)


@dataclass(frozen=True)
class FinetuneEvent:
    """Progress after one optimisation step.

    ``step`` counts finished steps (1-based) of ``total`` planned; ``loss`` is the weighted
    cross-entropy of this step's batch; ``lr`` the learning rate used; ``elapsed`` and
    ``remaining`` are seconds (``remaining`` an estimate); ``done`` marks the last event (the step
    budget or ``max_seconds`` is used up); ``val_iou`` is the foreground IoU on the validation
    samples when it was measured at this step, else ``None``. With ``finetune(..., score=True)``,
    ``seg_before`` (every event) is the SEG of the annotated cells of the training samples as
    the model found them before the first step, and ``seg_after`` (the last event) after the
    last one; see :class:`RunCheck`.
    """

    step: int
    total: int
    loss: float
    lr: float
    elapsed: float
    remaining: float
    done: bool
    val_iou: float | None = None
    seg_before: float | None = None
    seg_after: float | None = None


@dataclass(frozen=True)
class RunCheck:
    """Whether a run changed anything, from what it measured: ``steps`` done in ``seconds``,
    and with ``finetune(..., score=True)`` the SEG of the annotated cells of its own training
    samples before the first step and after the last (``None`` when not measured, e.g. a run
    stopped early)."""

    steps: int
    seconds: float
    seg_before: float | None = None
    seg_after: float | None = None

    @property
    def gain(self) -> float | None:
        """SEG after minus before on the annotated cells; None unless both were measured."""
        if self.seg_before is None or self.seg_after is None:
            return None
        return self.seg_after - self.seg_before

    @property
    def unchanged(self) -> bool:
        """The annotated cells are found no better than before (a gain under ``MIN_GAIN``)."""
        return self.gain is not None and self.gain < MIN_GAIN

    @property
    def too_short(self) -> bool:
        """Fewer than ``MIN_STEPS`` steps, and no measured gain to say otherwise."""
        return self.steps < MIN_STEPS and (self.gain is None or self.unchanged)

    @property
    def seconds_needed(self) -> float:
        """About how long ``MIN_STEPS`` steps take at this run's pace (s)."""
        return MIN_STEPS * self.seconds / max(self.steps, 1)

    @classmethod
    def of(cls, event: FinetuneEvent, seg_before: float | None = None) -> RunCheck:
        """The check of a run whose last event was ``event`` (``seg_before`` from an earlier
        event, when ``event`` does not carry it)."""
        before = event.seg_before if event.seg_before is not None else seg_before
        return cls(event.step, event.elapsed, before, event.seg_after)


@dataclass(frozen=True)
class TrainingSample:
    """One prepared image: padded ``(C, H', W')`` float32 pixels, ``(H', W')`` target and
    weights (0 on mirrored and unannotated pixels), the image's own ``shape``, the ``(N, 2)``
    coordinates of its annotated pixels and the areas (px) of its annotated cells."""

    pixels: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    shape: tuple[int, int]
    annotated: np.ndarray
    areas: np.ndarray


def _checked_sample(sample, name: str, in_channels: int):
    """``(image, labels, mask)`` of one sample, checked: one plane, matching shapes."""
    if not isinstance(sample, (tuple, list)) or len(sample) not in (2, 3):
        raise ValueError(
            f"{name} must be (image, labels) or (image, labels, mask), got {type(sample).__name__}"
        )
    image, labels, mask = (*sample, None) if len(sample) == 2 else tuple(sample)
    image, has_channels = split_channels(np.asarray(image), in_channels)
    plane = image.shape[:-1] if has_channels else image.shape
    if len(plane) != 2:
        raise ValueError(
            f"{name}: image has shape {image.shape}; expected one plane (H, W) or (H, W, C); "
            "pass the planes of a stack as separate samples"
        )
    labels = check_labels(labels, f"labels of {name}")
    check_label_image(labels, f"labels of {name}")  # not an intensity image, not a binary mask
    if labels.shape != plane:
        raise ValueError(
            f"{name}: image plane {plane} and labels {labels.shape} differ in shape; "
            "expected labels with the image's (H, W)"
        )
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != plane:
            raise ValueError(f"{name}: mask {mask.shape} and image plane {plane} differ in shape")
    return image, labels, mask


def prepare_samples(
    samples: Sequence,
    model,
    *,
    out_side: int,
    w0: float,
    sigma: float,
    class_balance: bool,
    percentiles: tuple[float, float] = PERCENTILES,
) -> list[TrainingSample]:
    """Validate ``(image, labels[, mask])`` samples and precompute padded inputs and targets.

    Each image is normalised on its own, mirror-padded by the network margin (and up to one
    output tile where it is smaller than one); targets and weights are zero-padded, so mirrored
    pixels never count in the loss.
    """
    if samples is None or len(samples) == 0:
        raise ValueError("no training samples; expected a sequence of (image, labels) pairs")
    prepared = []
    for i, sample in enumerate(samples):
        image, labels, mask = _checked_sample(sample, f"sample {i}", model.in_channels)
        plane = labels.shape
        if not (labels > 0).any():
            raise ValueError(f"sample {i} has no annotated cell; expected at least one")
        target, weights = training_target(
            labels, mask, w0=w0, sigma=sigma, class_balance=class_balance
        )
        if not (weights > 0).any():
            raise ValueError(f"sample {i}: its mask marks no pixel; expected annotated pixels")
        pixels = normalize(image, *percentiles)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        m = model.margin
        extra = [max(out_side - n, 0) for n in plane]
        pad = ((m, m + extra[0]), (m, m + extra[1]))
        pixels = np.pad(pixels, (*pad, (0, 0)), mode="symmetric").transpose(2, 0, 1)
        prepared.append(
            TrainingSample(
                pixels=np.ascontiguousarray(pixels),
                target=np.pad(target, pad),
                weights=np.pad(weights, pad),
                shape=plane,
                annotated=np.argwhere(weights > 0),
                areas=cell_areas(labels, mask),
            )
        )
    return prepared


def at_model_size(samples: Sequence, model) -> tuple[list, dict | None, float]:
    """``(samples, cells, factor)``: the ``(image, labels[, mask])`` samples resampled so their
    cells are within reach of the diameter the model works at
    (:func:`~napari_unet.core.prediction.scale.working_diameter` of
    ``model.metadata["diameter"]``; samples as they are for a model that has none), the size of
    their annotated cells in the samples' own pixels
    (:func:`~napari_unet.core.prediction.instances.cell_sizes` pooled over all samples, inside
    their masks; ``None`` when no cell is annotated) and the factor applied. Images are
    resampled with anti-aliasing, labels and masks by nearest neighbour."""
    if samples is None or len(samples) == 0:
        return samples, None, 1.0
    checked = [_checked_sample(s, f"sample {i}", model.in_channels) for i, s in enumerate(samples)]
    areas = np.concatenate([cell_areas(labels, mask) for _, labels, mask in checked])
    cells = cell_sizes(areas) if areas.size else None
    metadata = getattr(model, "metadata", None) or {}
    diameter = metadata.get("trained_diameter", metadata.get("diameter"))  # not the last tuning's
    if cells is None or diameter is None:
        return samples, cells, 1.0
    annotated = cells["median_diameter"]
    factor = scale_factor(working_diameter(diameter, annotated), annotated)
    if factor == 1.0:
        return samples, cells, factor
    resampled = []
    for image, labels, mask in checked:
        image = rescale_image(image, factor, channels_last=image.ndim == 3)
        labels = rescale_labels(labels, factor)
        mask = None if mask is None else rescale_labels(mask, factor)
        resampled.append((image, labels) if mask is None else (image, labels, mask))
    return resampled, cells, factor


def _crop(sample: TrainingSample, side: int, out_side: int, rng: np.random.Generator):
    """A random ``side``-pixel input crop centred near an annotated pixel; returns
    ``(C, side, side)`` pixels and the ``(side, side)`` target and weights aligned with it."""
    h, w = sample.shape
    cy, cx = sample.annotated[rng.integers(len(sample.annotated))]
    y0 = int(np.clip(cy - out_side // 2, 0, max(h - out_side, 0)))
    x0 = int(np.clip(cx - out_side // 2, 0, max(w - out_side, 0)))
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    return sample.pixels[(slice(None), *window)], sample.target[window], sample.weights[window]


def _augmented_batch(samples, n: int, side: int, out_side: int, margin: int, augment, rng):
    """``(n, C, side, side)`` inputs, ``(n, o, o)`` targets and weights for one step."""
    pixels, targets, weights = [], [], []
    inner = slice(margin, margin + out_side)
    for _ in range(n):
        sample = samples[rng.integers(len(samples))]
        image, target, weight = _crop(sample, side, out_side, rng)
        image = image.transpose(1, 2, 0)  # (side, side, C) for the augment functions
        field = np.zeros((2, side, side), np.float32)
        if "elastic" in augment:
            field += random_displacement((side, side), rng=rng)
        if "zoom" in augment:
            field += random_zoom((side, side), rng=rng)
        if field.any():
            image = warp(image, field, order=1)
            target = warp(target, field, order=0)
            weight = warp(weight, field, order=1)
        if "flips" in augment:
            image, target, weight = random_flip_rot([image, target, weight], rng=rng)
        if "contrast" in augment:
            image = random_cell_contrast(image, target, rng=rng)
        if "gamma" in augment:
            image = random_gamma(image, rng=rng)
        if "illumination" in augment:
            image = random_illumination(image, rng=rng)
        if "intensity" in augment:
            image = random_intensity(image, rng=rng)
        pixels.append(image.transpose(2, 0, 1))
        targets.append(target[inner, inner])
        weights.append(weight[inner, inner])
    return (
        torch.from_numpy(np.stack(pixels).astype(np.float32)),
        torch.from_numpy(np.stack(targets).astype(np.int64)),
        torch.from_numpy(np.stack(weights).astype(np.float32)),
    )


def _learning_rate(base: float, progress: float) -> float:
    """Short linear warm-up, then cosine decay to 5 % of ``base`` at ``progress == 1``."""
    warmup = 0.05
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor):
    """Pixel-weighted cross-entropy averaged over pixels with weight > 0.

    ``logits`` (N, K, o, o), ``target`` (N, o, o) int64, ``weights`` (N, o, o) float32.
    """
    ce = F.cross_entropy(logits, target, reduction="none")
    counted = (weights > 0).sum().clamp(min=1)
    return (ce * weights).sum() / counted


def finetune(
    model,
    samples: Sequence,
    *,
    steps: int | None = None,
    max_seconds: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    tile: int | None = None,
    augment: bool | Collection[str] | None = None,
    w0: float | None = None,
    sigma: float | None = None,
    class_balance: bool | None = None,
    validation: Sequence | None = None,
    validate_every: int | None = None,
    device=None,
    seed: int | None = None,
    config: FinetuneConfig | None = None,
    score: bool = False,
    precision: str | None = None,
) -> Iterator[FinetuneEvent]:
    """Train ``model`` in place on a few annotated images; a generator of :class:`FinetuneEvent`.

    Parameters
    ----------
    model
        A :class:`~napari_unet.UNet`, trained in place. When the generator ends (finished,
        closed or failed) the model is in eval mode, on the device and memory format it came
        with, ``model.metadata["finetune"]`` holds the settings of the run as a JSON-able
        dict with ``"steps"``, the steps done, and ``model.metadata["cells"]`` the size of the
        annotated cells (:func:`~napari_unet.core.prediction.instances.cell_sizes`), which
        ``to_instances(predict(model, image))`` uses (other metadata keys are kept).
    samples
        Sequence of ``(image, labels)`` or ``(image, labels, mask)``: image ``(H, W)`` or
        ``(H, W, C)`` of any integer or float dtype; labels ``(H, W)`` integer instance ids
        (0 = background); mask ``(H, W)`` bool, the pixels whose labels count (partial
        annotation; weight 0 elsewhere).
    steps
        Optimisation steps; ``None`` for :data:`DEFAULT_STEPS`.
    max_seconds
        Stop after this much time even if steps remain; the learning-rate schedule follows
        whichever of steps and time runs out first.
    lr, batch_size, tile, augment, w0, sigma, class_balance, validate_every, seed, precision
        The training settings, see :class:`FinetuneConfig` (which checks them and holds their
        defaults); those left ``None`` keep the default.
    validation
        Optional ``(image, labels[, mask])`` held out; their foreground IoU (inside the mask,
        if any) is reported every ``validate_every`` steps and at the end, in
        ``FinetuneEvent.val_iou``.
    device
        Torch device to train on (default: where the model is).
    config
        The training settings as one :class:`FinetuneConfig`, instead of the keywords above
        (TypeError if any of them is given too).
    score
        Measure the SEG of the training samples' annotated cells (:func:`annotated_seg`)
        before the first step and after the last (``FinetuneEvent.seg_before`` /
        ``seg_after``): two predictions of the annotated part of each sample, outside the
        time budget. :class:`RunCheck` says from them whether the run changed anything.

    Inputs are checked before the generator is returned, so bad samples or settings raise
    ValueError here. From its first step until it ends or is closed (from any thread), the run
    holds the model (see :mod:`napari_unet.core.network.guard`): another fine-tuning of the same
    model object, or a prediction from another thread, raises RuntimeError; the thread that runs
    the steps may predict between them, but a step raises RuntimeError if a prediction is still in
    flight; and the run itself raises RuntimeError at its first step if predictions of the
    model are in flight. Stop early with ``events.close()`` (or drop the generator) to give the
    model back. A step whose loss or weights come out not finite raises FloatingPointError
    (training diverged), the model keeping its weights from before that step. Each step runs
    with gradients on, whatever the calling thread's inference or no-grad mode, and leaves that
    mode as it was.
    """
    keywords = {
        "lr": lr,
        "batch_size": batch_size,
        "tile": tile,
        "augment": augment,
        "w0": w0,
        "sigma": sigma,
        "class_balance": class_balance,
        "validate_every": validate_every,
        "seed": seed,
        "precision": precision,
    }
    given = {name: value for name, value in keywords.items() if value is not None}
    if config is None:
        config = FinetuneConfig(**given)
    elif not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    elif given:
        raise TypeError(
            "give the training settings either as config=FinetuneConfig(...) or as keywords, "
            f"not both (got config and {', '.join(given)})"
        )
    steps = DEFAULT_STEPS if steps is None else steps
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    side = model.input_size(config.tile)
    out_side = model.output_size(side)
    samples, cells, factor = at_model_size(samples, model)
    prepared = prepare_samples(
        samples,
        model,
        out_side=out_side,
        w0=config.w0,
        sigma=config.sigma,
        class_balance=config.class_balance,
    )
    held_out = _validation_pairs(validation, model)
    scored = _scored_crops(samples, model) if score else []
    device = resolve_device(device, model)
    precision = resolve_precision(config.precision, device)
    log.info("fine-tuning on %s in %s", device, dtype_name(precision))
    return _finetune(
        model,
        prepared,
        held_out,
        config,
        (int(steps), max_seconds),
        (side, out_side),
        (device, precision),
        (cells, factor),
        scored,
    )


def _validation_pairs(validation, model):
    pairs = []
    for i, sample in enumerate(validation or ()):
        image, labels, mask = _checked_sample(sample, f"validation sample {i}", model.in_channels)
        pairs.append((image, labels > 0, mask))
    return pairs


def _foreground_iou(model, pairs, device, precision: str) -> float:
    from ..metrics import foreground_counts
    from ..prediction.predict import predict_held

    inter = union = 0
    for image, truth, region in pairs:  # partial annotation: score only the annotated pixels
        pred = predict_held(model, image, device, precision) > THRESHOLD
        i, u = foreground_counts(truth, pred, region)
        inter, union = inter + i, union + u
    return float(inter / union) if union else 1.0


def _scored_crops(samples: Sequence, model) -> list:
    """``(image, truth, sizes)`` of each sample (at the model's size) for :func:`annotated_seg`:
    the part of the image around its annotated cells (those with a pixel in its mask), with a
    margin of two median cell diameters, their labels there, and ``(min_size, min_core)`` of
    :func:`to_instances` for cells of their size."""
    crops = []
    for i, sample in enumerate(samples):
        image, labels, mask = _checked_sample(sample, f"sample {i}", model.in_channels)
        cells = labels if mask is None else np.where(np.isin(labels, labels[mask]), labels, 0)
        found = np.argwhere(cells > 0)
        if not found.size:
            continue
        areas = cell_areas(cells)
        margin = int(2 * cell_sizes(areas)["median_diameter"])
        low = np.maximum(found.min(0) - margin, 0)
        high = np.minimum(found.max(0) + margin + 1, cells.shape)
        window = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        crops.append((image[window], cells[window], size_defaults(cell_sizes(areas))))
    return crops


def annotated_seg(model, crops: list, device, precision: str = "fp32") -> float:
    """SEG (Cell Tracking Challenge, pooled over cells) of the model's cells on the annotated
    cells of ``crops`` (:func:`_scored_crops`), predicted at the resolved ``precision``; leaves
    the model in eval mode."""
    from ..metrics import seg_score
    from ..prediction.instances import to_instances
    from ..prediction.predict import predict_held

    total = count = 0
    for image, truth, (min_size, min_core) in crops:
        probabilities = predict_held(model, image, device, precision)
        found = to_instances(probabilities, min_size=min_size, min_core=min_core)
        summed, n = seg_score(truth, found)
        total, count = total + summed, count + n
    return total / count if count else 0.0


def _finetune(
    model,
    samples: list[TrainingSample],
    held_out: list,
    config: FinetuneConfig,
    budget: tuple[int, float | None],
    crop: tuple[int, int],
    where: tuple[torch.device, str],
    size: tuple[dict | None, float],
    scored: list,
) -> Iterator[FinetuneEvent]:
    """The run: ``budget`` is ``(steps, max_seconds)`` (``None``: no time limit), ``crop`` the
    network input side of a training crop and the output side it gives, ``where`` the device
    and the precision resolved for it, ``size`` the annotated
    cells' sizes and the factor the samples were resampled by (:func:`at_model_size`),
    ``scored`` the crops whose SEG is measured before and after (none: not measured)."""
    rng = np.random.default_rng(config.seed)
    steps, max_seconds = budget
    device, precision = where
    step = 0
    with using(model, FINETUNING, device, keep_mode=False):
        seg_before = annotated_seg(model, scored, device, precision) if scored else None
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        # float16 gradients underflow without a scale; bfloat16 has float32's range
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        start = time.perf_counter()
        try:
            while True:
                elapsed = time.perf_counter() - start
                progress = step / steps
                if max_seconds is not None:
                    progress = max(progress, elapsed / max_seconds)
                rate = _learning_rate(config.lr, progress)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                with training_step(model):
                    loss = _train_step(
                        model, (optimizer, scaler), samples, config, crop, where, rng
                    )
                    step += 1
                    elapsed = time.perf_counter() - start
                    done = step >= steps or (max_seconds is not None and elapsed >= max_seconds)
                    val_iou = seg_after = None
                    if held_out and (done or step % config.validate_every == 0):
                        val_iou = _foreground_iou(model, held_out, device, precision)
                    if scored and done:
                        seg_after = annotated_seg(model, scored, device, precision)
                remaining = (steps - step) * elapsed / step
                if max_seconds is not None:
                    remaining = min(remaining, max(max_seconds - elapsed, 0.0))
                yield FinetuneEvent(
                    step=step,
                    total=steps,
                    loss=loss,
                    lr=rate,
                    elapsed=elapsed,
                    remaining=0.0 if done else remaining,
                    done=done,
                    val_iou=val_iou,
                    seg_before=seg_before,
                    seg_after=seg_after,
                )
                if done:
                    return
        finally:
            optimizer.zero_grad(set_to_none=True)
            if step:
                _record(model, config, step, *size, precision)


def _train_step(model, optimizing, samples, config: FinetuneConfig, crop, where, rng):
    """One optimisation step with gradients on, whatever the thread's grad or inference mode
    (restored on return); returns the batch's loss as a float.

    ``optimizing`` is ``(optimizer, scaler)`` (a ``torch.amp.GradScaler`` for float16, else
    ``None``), ``where`` the device and the resolved precision: the forward pass runs in
    :func:`~napari_unet.core.network.precision.autocast`, the loss in float32 on float32
    logits, the weights and their update in float32."""
    optimizer, scaler = optimizing
    device, precision = where
    with torch.inference_mode(False), torch.enable_grad():
        model.train()
        side, out_side = crop
        x, y, w = _augmented_batch(
            samples, config.batch_size, side, out_side, model.margin, config.augment, rng
        )
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x)
        loss = weighted_loss(logits.float(), y.to(device), w.to(device))
        if not torch.isfinite(loss):
            raise _diverged(config, f"loss {float(loss.detach())}")
        optimizer.zero_grad(set_to_none=True)
        before = [p.detach().clone() for p in model.parameters()]
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # skips the step when the scaled gradients overflow, and lowers the scale
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            with torch.no_grad():  # the model keeps the weights it had before this step
                for p, kept in zip(model.parameters(), before, strict=True):
                    p.copy_(kept)
            raise _diverged(config, "weights not finite after the step")
        return float(loss.detach())


def _diverged(config: FinetuneConfig, what: str) -> FloatingPointError:
    return FloatingPointError(
        f"training diverged ({what}); the model keeps its weights from before this step. "
        f"Lower the learning rate (it is {config.lr:g}; the default is {FinetuneConfig.lr:g})"
    )


def _record(
    model, config: FinetuneConfig, steps: int, cells: dict | None, factor: float, precision: str
):
    """Put the run's settings (with the ``precision`` that ran, ``"auto"`` resolved), ``steps``
    done and the ``factor`` its images were resampled by into ``model.metadata["finetune"]``,
    the size of the annotated cells (in the images' own pixels) into
    ``model.metadata["cells"]``, and for a sized model the diameter it was fine-tuned at into
    ``model.metadata["diameter"]`` (the size it was trained at kept as ``"trained_diameter"``,
    so that rounds of fine-tuning keep the working range of the base and do not drift)."""
    metadata = dict(getattr(model, "metadata", None) or {})
    run = dataclasses.asdict(config)
    metadata["finetune"] = {
        **run,
        "augment": list(config.augment),
        "precision": precision,
        "steps": steps,
        "scale": factor,
    }
    if cells is not None:  # cells only outside the masks say nothing of their size
        metadata["cells"] = cells
        if metadata.get("diameter") is not None:  # the size the model now knows best; the
            metadata.setdefault("trained_diameter", metadata["diameter"])  # range stays its base's
            metadata["diameter"] = float(cells["median_diameter"] * factor)
    model.metadata = metadata
