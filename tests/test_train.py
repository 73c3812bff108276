"""Fine-tuning as a generator: it learns from real cells, stops cleanly, checks its input."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from napari_unet import DEFAULT_STEPS, FinetuneConfig, UNet, finetune, predict, training_target
from napari_unet.core.training.train import _learning_rate
from napari_unet.core.training.weightmap import CLASS_BALANCE, SIGMA, W0


def weighted_error(model, image, labels) -> float:
    """Independent check: the pixel-weighted cross-entropy of a whole-image prediction."""
    target, weights = training_target(labels)
    p = np.clip(predict(model, image), 1e-6, 1 - 1e-6)
    ce = -np.where(target == 1, np.log(p), np.log(1 - p))
    return float((weights * ce).sum() / np.count_nonzero(weights))


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return UNet(base_channels=8, depth=3)


def test_finetuning_on_real_cells_lowers_the_loss(small_model, usiigaci_crop):
    image, labels = usiigaci_crop
    before = weighted_error(small_model, image, labels)
    events = list(
        finetune(
            small_model,
            [(image, labels)],
            steps=100,
            lr=1e-2,
            batch_size=2,
            tile=64,
            augment=False,
            seed=0,
        )
    )
    after = weighted_error(small_model, image, labels)
    assert [e.step for e in events] == list(range(1, 101))
    assert events[-1].done and not any(e.done for e in events[:-1])
    assert all(e.total == 100 and np.isfinite(e.loss) for e in events)
    assert after < 0.9 * before
    assert not small_model.training


def test_augmented_training_runs_and_learns(small_model, usiigaci_crop):
    image, labels = usiigaci_crop
    before = weighted_error(small_model, image, labels)
    for _ in finetune(
        small_model, [(image, labels)], steps=40, lr=1e-2, batch_size=2, tile=64, seed=1
    ):
        pass
    assert weighted_error(small_model, image, labels) < before


def test_max_seconds_ends_training_and_fits_the_schedule(sample):
    model = UNet(base_channels=2, depth=2)
    start = time.perf_counter()
    events = list(
        finetune(model, [sample], steps=100_000, max_seconds=2, lr=1e-3, batch_size=1, tile=16)
    )
    assert events[-1].elapsed >= 2 and time.perf_counter() - start < 20
    assert events[-1].done and len(events) < 100_000
    peak = max(e.lr for e in events)
    assert events[0].lr < peak  # warm-up
    assert events[-1].lr < 0.3 * peak  # the cosine decay reached its end in the time given


def test_without_steps_a_run_does_the_default_number():
    """``finetune(model, frames, max_seconds=600)`` is the one-line call: a few annotated
    frames get DEFAULT_STEPS steps (more over-fit them), or fewer when the time runs out."""
    model = UNet(base_channels=2, depth=2)
    labels = np.zeros((48, 48), np.int32)
    labels[8:20, 8:20], labels[26:40, 24:40] = 1, 2
    image = (labels > 0).astype(np.float32)
    events = list(finetune(model, [(image, labels)], batch_size=1, tile=16))
    assert len(events) == DEFAULT_STEPS == model.metadata["finetune"]["steps"]
    assert events[-1].done


def test_learning_rate_schedule():
    assert _learning_rate(1.0, 0.0) == pytest.approx(0.1)
    assert _learning_rate(1.0, 0.05) == pytest.approx(1.0)
    assert _learning_rate(1.0, 1.0) == pytest.approx(0.05)
    values = [_learning_rate(1.0, t) for t in np.linspace(0.05, 1, 50)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_closing_midway_leaves_a_usable_model(small_model, sample, rng):
    events = finetune(small_model, [sample], steps=50, batch_size=1, tile=32)
    next(events), next(events)
    events.close()
    assert not small_model.training
    assert all(torch.isfinite(p).all() for p in small_model.parameters())
    out = predict(small_model, rng.random((50, 50)))
    assert np.isfinite(out).all()


def test_pixels_outside_the_mask_do_not_count(small_model, whole_sample):
    image, labels = (a[:256, :256] for a in whole_sample)
    mask = np.zeros(labels.shape, bool)
    mask[:128, :128] = True
    scribbled = labels.copy()
    scribbled[200:, 200:] = 999  # far from the annotated region (more than the border reach)
    losses = []
    for lab in (labels, scribbled):
        torch.manual_seed(0)
        model = UNet(base_channels=4, depth=2)
        losses.append(
            [
                e.loss
                for e in finetune(
                    model, [(image, lab, mask)], steps=3, seed=3, batch_size=2, tile=48
                )
            ]
        )
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_validation_score_is_reported(small_model, whole_sample):
    image, labels = (a[:256, :256] for a in whole_sample)
    events = list(
        finetune(
            small_model,
            [(image, labels)],
            steps=4,
            validate_every=2,
            validation=[(image[:96, :96], labels[:96, :96])],
            batch_size=1,
            tile=32,
        )
    )
    scores = [e.val_iou for e in events]
    assert scores[0] is None and scores[2] is None
    assert all(0 <= s <= 1 for s in (scores[1], scores[3]))
    assert type(scores[1]) is float  # plain float: goes into JSON metadata as is


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "no training samples"),
        ([np.zeros((8, 8))], r"must be \(image, labels\)"),
        ([(np.zeros((20, 20)), np.zeros((20, 20), np.float32))], "integers"),
        ([(np.zeros((20, 20)), -np.ones((20, 20), np.int32))], "negative"),
        ([(np.zeros((20, 20)), np.ones((20, 21), np.uint8))], "differ in shape"),
        ([(np.zeros((20, 20)), np.zeros((20, 20), np.uint8))], "no annotated cell"),
        ([(np.zeros((2, 20, 20)), np.ones((20, 20), np.uint8))], "one plane"),
        (
            [(np.zeros((20, 20)), np.ones((20, 20), np.uint8), np.zeros((20, 20)))],
            "marks no pixel",
        ),
        ([(np.full((20, 20), np.nan), np.ones((20, 20), np.uint8))], "NaN"),
    ],
)
def test_bad_samples_raise_before_training(small_model, samples, message):
    with pytest.raises(ValueError, match=message):
        finetune(small_model, samples, steps=1)


def test_bad_settings(small_model, sample):
    for kwargs, message in [
        ({"steps": 0}, "steps"),
        ({"steps": 1, "max_seconds": 0}, "max_seconds"),
        ({"steps": 1, "lr": -1}, r"lr must be a number in \(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            finetune(small_model, [sample], **kwargs)


def test_augmentations_can_be_chosen(sample):
    for augment in (
        False,
        ["flips"],
        ("elastic", "intensity"),
        ["zoom", "gamma", "illumination", "contrast"],
        True,
    ):
        model = UNet(base_channels=2, depth=2)
        events = list(finetune(model, [sample], steps=2, augment=augment, tile=16))
        assert len(events) == 2
    with pytest.raises(ValueError, match=r"unknown augmentation\(s\) \['blur'\]"):
        finetune(UNet(base_channels=2, depth=2), [sample], steps=1, augment=["blur"])


def test_validation_is_scored_inside_its_mask(whole_sample):
    image, labels = (a[:256, :256] for a in whole_sample)
    mask = np.zeros(labels.shape, bool)
    mask[:64, :64] = True
    wrong = labels.copy()
    wrong[100:, 100:] = 0  # errors outside the mask must not change the score
    scores = []
    for truth in (labels, wrong):
        torch.manual_seed(0)
        model = UNet(base_channels=2, depth=2)
        events = finetune(
            model, [(image, labels)], steps=1, tile=16, seed=0, validation=[(image, truth, mask)]
        )
        scores.append([e.val_iou for e in events][-1])
    assert scores[0] == pytest.approx(scores[1])


def tiny() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=2, depth=2)


def test_finetune_config_is_checked_in_one_place_and_frozen():
    config = FinetuneConfig()
    assert (config.w0, config.sigma, config.class_balance) == (W0, SIGMA, CLASS_BALANCE)
    assert config.augment == ("elastic", "flips", "intensity")
    assert FinetuneConfig(augment={"zoom", "flips"}).augment == ("flips", "zoom")
    assert FinetuneConfig(augment=False).augment == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    for kwargs, message in [
        ({"validate_every": 0}, "validate_every must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"tile": True}, "tile must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a number in"),
        ({"lr": 1e30}, "lr must be a number in"),
        ({"sigma": 0}, "sigma must be a finite number"),
        ({"w0": -1}, "w0 must be a finite number"),
        ({"seed": -1}, "seed must be None or an integer"),
        ({"class_balance": "yes"}, "class_balance must be True or False"),
        ({"augment": ["blur"]}, r"unknown augmentation\(s\) \['blur'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            FinetuneConfig(**kwargs)


def test_validate_every_zero_is_refused_before_training(sample):
    with pytest.raises(ValueError, match="validate_every must be a positive integer"):
        finetune(tiny(), [sample], steps=2, validate_every=0, validation=[sample])


def test_a_config_trains_as_the_same_keywords_do(sample):
    settings = {"lr": 1e-3, "batch_size": 1, "tile": 16, "augment": ["flips"], "seed": 4}
    by_keywords = [e.loss for e in finetune(tiny(), [sample], steps=3, **settings)]
    config = FinetuneConfig(**settings)
    by_config = [e.loss for e in finetune(tiny(), [sample], steps=3, config=config)]
    np.testing.assert_allclose(by_config, by_keywords, rtol=1e-5)
    with pytest.raises(TypeError, match="either as config=FinetuneConfig"):
        finetune(tiny(), [sample], steps=3, config=config, lr=1e-2)
    default = FinetuneConfig()  # a keyword given with its default value is given all the same
    with pytest.raises(TypeError, match=r"not both \(got config and lr, tile\)"):
        finetune(tiny(), [sample], steps=3, config=config, lr=default.lr, tile=default.tile)


def test_training_defaults_are_those_of_finetune_config():
    import inspect

    from napari_unet.cli import _parser

    keywords = inspect.signature(finetune).parameters
    for name in ("lr", "batch_size", "tile", "augment", "w0", "sigma", "validate_every"):
        assert keywords[name].default is None  # FinetuneConfig's default applies
    train = _parser().parse_args(
        ["train", "--images", "a", "--labels", "b", "--steps", "1", "--out", "m.safetensors"]
    )
    default = FinetuneConfig()
    assert (train.lr, train.batch_size, train.tile) == (
        default.lr,
        default.batch_size,
        default.tile,
    )


def test_the_run_is_recorded_in_the_metadata(sample):
    model = tiny()
    model.metadata = {"name": "mine"}
    config = FinetuneConfig(lr=np.float32(1e-3), batch_size=np.int64(1), tile=16, seed=0)
    events = finetune(model, [sample], steps=5, config=config)
    next(events), next(events)
    events.close()
    from napari_unet.core.network.precision import resolve_precision

    recorded = json.loads(json.dumps(model.metadata))
    assert recorded["name"] == "mine"
    assert recorded["finetune"] == {
        **dataclasses.asdict(config),
        "augment": ["elastic", "flips", "intensity"],
        "precision": resolve_precision("auto", "cpu"),  # what ran, "auto" resolved
        "steps": 2,
        "scale": 1.0,  # a model that does not say its cell diameter trains at the images' size
    }
    _, labels = sample
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    assert recorded["cells"]["count"] == len(areas)
    assert recorded["cells"]["median_area"] == float(np.median(areas))


def test_predictions_carry_the_cells_trained_on_to_to_instances(sample, tmp_path):
    """The cells' size goes from the annotations through the model file into predict's
    output, and to_instances sizes its defaults from it."""
    from napari_unet import load_model, save_model, to_instances

    model = tiny()
    list(finetune(model, [sample], steps=1, batch_size=1, tile=16))
    image, labels = sample
    saved = save_model(model, tmp_path / "m.safetensors", model.metadata)
    prob = predict(load_model(saved), image)
    assert prob.cells == model.metadata["cells"]
    assert predict(tiny(), image).cells is None
    size = max(1, round(0.05 * prob.cells["median_area"]))
    plain = np.asarray(prob)
    assert np.array_equal(to_instances(prob), to_instances(plain, min_size=size, min_core=size))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_model_comes_back_in_its_memory_format(sample, memory_format):
    model = tiny().to(memory_format=memory_format)
    weight = model.down[1][0].weight  # (4, 2, 3, 3): its two layouts differ
    was = weight.is_contiguous()
    list(finetune(model, [sample], steps=2, batch_size=1, tile=16))
    assert weight.is_contiguous() == was == (memory_format == torch.contiguous_format)
    assert model.down[1][0].weight is weight  # the caller's parameters, trained in place


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_model_comes_back_on_its_device(sample):
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    events = list(finetune(model, [sample], steps=3, batch_size=1, tile=16, device="cuda"))
    assert len(events) == 3
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_annotated_cells_are_scored_before_and_after(small_model, whole_sample):
    """Issue 25 item 7: a run measures how its own annotated cells are found, before and
    after, so a run too short to change anything can be told apart."""
    from napari_unet.core.metrics import seg_score
    from napari_unet.core.prediction.instances import to_instances
    from napari_unet.core.training.train import MIN_STEPS, RunCheck

    image, labels = (a[:128, :128] for a in whole_sample)
    mask = np.zeros(labels.shape, bool)
    mask[:64] = True  # partial annotation: the cells with a pixel in the top half
    model_before = UNet(base_channels=8, depth=3)
    model_before.load_state_dict(small_model.state_dict())
    model_before.eval()
    events = list(
        finetune(small_model, [(image, labels, mask)], steps=3, batch_size=1, tile=32, score=True)
    )
    before = {e.seg_before for e in events}
    assert len(before) == 1 and 0 <= before.pop() <= 1
    assert [e.seg_after is None for e in events] == [True, True, False]
    assert type(events[-1].seg_after) is float
    # independent of the scorer: the untrained model on the annotated cells of the whole image
    ids = np.unique(labels[mask])
    truth = np.where(np.isin(labels, ids[ids > 0]), labels, 0)
    found = to_instances(predict(model_before, image))
    summed, n = seg_score(truth, found)
    assert events[0].seg_before == pytest.approx(summed / n, abs=0.1)  # crop vs whole image
    assert all(e.seg_before is None for e in finetune(small_model, [(image, labels)], steps=1))

    check = RunCheck.of(events[-1])
    assert check.steps == 3 and check.seg_before == events[0].seg_before
    assert check.too_short  # 3 steps changed nothing worth saying
    assert check.seconds_needed == pytest.approx(MIN_STEPS * events[-1].elapsed / 3)
    assert not RunCheck(30, 60.0, 0.31, 0.45).too_short  # a clear gain: not too short
    assert RunCheck(30, 60.0, 0.31, 0.30).too_short and RunCheck(30, 60.0).too_short
    long_but_flat = RunCheck(900, 300.0, 0.31, 0.30)
    assert long_but_flat.unchanged and not long_but_flat.too_short
