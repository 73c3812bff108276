"""The core's generators and threads: no thread state held between steps, one model's users."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from napari_unet import UNet, finetune, predict, predict_tiles
from napari_unet.core.prediction import allocator

CALLER_MODES = [contextlib.nullcontext, torch.no_grad, torch.inference_mode]


def small_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=2, depth=2)


def modes() -> tuple[bool, bool]:
    """This thread's ``(inference mode, grad mode)``."""
    return torch.is_inference_mode_enabled(), torch.is_grad_enabled()


def weights(model) -> list[torch.Tensor]:
    with torch.inference_mode(False):
        return [p.detach().clone() for p in model.parameters()]


def changed(before, model) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def training(model, sample, steps=2):
    return finetune(model, [sample], steps=steps, batch_size=1, tile=16, seed=0)


@pytest.mark.parametrize("caller_mode", CALLER_MODES)
def test_interleaved_generators_leave_the_thread_as_it_was(sample, caller_mode):
    image, _ = sample
    shared, trainee = small_unet(0), small_unet(1)
    before = weights(trainee)
    with caller_mode():
        expected = modes()
        first = predict_tiles(shared, image, tile=16)
        second = predict_tiles(shared, image[::-1], tile=16)
        events = training(trainee, sample, steps=3)
        for generator in (first, events, second, first, events, second, events):
            next(generator)
            assert modes() == expected
        for generator in (first, second, events):
            generator.close()
            assert modes() == expected
    assert changed(before, trainee)  # trained, whatever the caller's mode


def test_finetuning_after_an_abandoned_prediction_on_the_same_thread(sample):
    image, _ = sample
    predictor, trainee = small_unet(0), small_unet(1)
    tiles = predict_tiles(predictor, image, tile=16)
    next(tiles)  # paused and kept, as Cancel leaves it
    before = weights(trainee)
    events = list(training(trainee, sample))
    assert len(events) == 2 and np.isfinite(events[-1].loss) and changed(before, trainee)
    tiles.close()


def test_a_generator_closed_from_another_thread(sample):
    """napari closes an abandoned worker's generator from the main thread: neither thread keeps
    a mode, and the model is free again for the worker thread."""
    image, _ = sample
    model = small_unet()
    with ThreadPoolExecutor(1) as worker:
        tiles = predict_tiles(model, image, tile=16)
        worker.submit(next, tiles).result()
        tiles.close()
        assert modes() == (False, True)
        assert worker.submit(modes).result() == (False, True)
        before = weights(model)
        events = worker.submit(lambda: list(training(model, sample))).result()
    assert len(events) == 2 and changed(before, model)


def test_no_prediction_while_another_thread_finetunes_the_model(sample):
    image, _ = sample
    model = small_unet()
    with ThreadPoolExecutor(1) as worker:
        events = training(model, sample, steps=5)
        worker.submit(next, events).result()
        busy = r"busy fine-tuning \(in thread 'ThreadPoolExecutor.*'\); predicting .*copy"
        with pytest.raises(RuntimeError, match=busy):
            predict(model, image)
        with pytest.raises(RuntimeError, match="two fine-tunings cannot share it"):
            next(training(model, sample))
        worker.submit(next, events).result()  # the refusals did not disturb the run
        events.close()  # from this thread
    assert predict(model, image).shape == image.shape


def test_predictions_share_a_model_and_keep_finetuning_out(sample):
    image, _ = sample
    model = small_unet()
    expected = predict(model, image, tile=16)
    with ThreadPoolExecutor(1) as worker:
        tiles = predict_tiles(model, image, tile=16)
        worker.submit(next, tiles).result()
        np.testing.assert_allclose(predict(model, image, tile=16), expected, atol=1e-6)
        with pytest.raises(RuntimeError, match=r"busy predicting \(1 prediction\(s\) in flight"):
            next(training(model, sample))
        worker.submit(list, tiles).result()  # runs to its end
    assert len(list(training(model, sample))) == 2


def test_the_fine_tuning_thread_may_predict_between_its_steps(sample):
    image, _ = sample
    model = small_unet()
    events = training(model, sample, steps=4)
    next(events)
    assert predict(model, image).shape == image.shape  # as a script checks its progress
    tiles = predict_tiles(model, image, tile=16)
    next(tiles)  # in flight: the next step would change the weights under it
    with pytest.raises(RuntimeError, match="prediction of the model .* still in flight"):
        next(events)
    tiles.close()
    assert predict(model, image).shape == image.shape  # everything released


def test_the_mark_is_released_when_a_generator_fails(sample):
    image, _ = sample
    model = small_unet()
    for generator in (predict_tiles(model, image, tile=16), training(model, sample, steps=5)):
        next(generator)
        with pytest.raises(KeyError):
            generator.throw(KeyError("failed"))
    assert predict(model, image).shape == image.shape


def test_threads_predicting_at_once_give_the_model_back_as_it_was(tiny_unet, rng):
    image = rng.random((60, 70)).astype(np.float32)
    expected = predict(tiny_unet, image, tile=16)
    tiny_unet.train()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: predict(tiny_unet, image, tile=16), range(6)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)
    assert tiny_unet.training
    assert all(p.is_contiguous() for p in tiny_unet.parameters())


def test_no_keep_freed_memory_context_is_open_between_tiles(tiny_unet, rng):
    tiles = predict_tiles(tiny_unet, rng.random((64, 64)), tile=16)
    next(tiles)
    assert allocator._users == 0  # no keep_freed_memory context open across the yield
    tiles.close()
