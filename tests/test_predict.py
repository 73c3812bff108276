"""Overlap-tile prediction equals whole-image prediction; input layouts and bad input."""

from __future__ import annotations

import inspect
import logging
import re

import numpy as np
import pytest
import torch

from napari_unet import UNet, normalize, predict, predict_tiles
from napari_unet.core.prediction.tiling import largest_step


def sharp(model):
    """Rescale the head so that probabilities spread over (0, 1) (logit difference of about
    unit-3 spread, zero mean on random input): errors in the tiling become visible."""
    side = model.input_size(32)
    x = torch.rand(1, model.in_channels, side, side)
    with torch.no_grad():
        w, b = model.head.weight, model.head.bias
        logits = model(x)
        diff = logits[:, 1] - logits[:, 0]
        k = 3.0 / diff.std()
        w[1] = (w[1] - w[0]) * k
        b[1] = (b[1] - b[0] - diff.mean()) * k
        w[0], b[0] = 0.0, 0.0
    return model


@pytest.fixture
def model():
    torch.manual_seed(1)
    return sharp(UNet(base_channels=4, depth=3)).eval()


def whole_image_reference(model, image, shift=0):
    """Independent reference: one forward pass over the mirror-padded whole image.

    ``shift`` moves the image inside the padded input by that many pixels (0 = the true
    reference; a shift that is not a multiple of 2**depth changes the pooling grid).
    """
    padded, h, w = whole_image_input(model, image, shift)
    with torch.no_grad():
        logits = model(torch.from_numpy(padded)[None, None])
    fg = 1 - torch.softmax(logits, 1)[0, 0].numpy()
    return fg[shift : shift + h, shift : shift + w]


def whole_image_input(model, image, shift=0):
    """The normalised image mirror-padded into one valid network input, and its ``(H, W)``."""
    plane = normalize(image)
    h, w = plane.shape
    m = model.margin + shift
    side_h = model.input_size(h + shift) + shift
    side_w = model.input_size(w + shift) + shift
    side_h = model.input_size(side_h - 2 * model.margin)
    side_w = model.input_size(side_w - 2 * model.margin)
    padded = np.pad(plane, ((m, side_h - h - m), (m, side_w - w - m)), mode="symmetric")
    return padded, h, w


@pytest.mark.parametrize("shape", [(5, 7), (37, 91), (100, 130), (203, 157)])
@pytest.mark.parametrize("tile", [16, 40, 1000, None])
def test_tiled_equals_whole_image(model, rng, shape, tile):
    image = (rng.random(shape) * 4000).astype(np.uint16)
    reference = whole_image_reference(model, image)
    result = predict(model, image, tile=tile)
    assert result.shape == shape and result.dtype == np.float32
    np.testing.assert_allclose(result, reference, atol=1e-5)


def test_the_exactness_check_has_teeth(model, rng):
    """A pooling grid shifted by 4 px gives a visibly different result (so the test above
    would catch tiles that start off the grid)."""
    image = rng.random((64, 64)).astype(np.float32)
    reference = whole_image_reference(model, image)
    shifted = whole_image_reference(model, image, shift=4)
    assert np.abs(shifted - reference).max() > 1e-4  # 10x the tolerance used above


def test_paper_depth_exact_on_real_image(whole_sample):
    torch.manual_seed(2)
    model = sharp(UNet(base_channels=2, depth=4)).eval()
    image = whole_sample[0][:201, :173]
    reference = predict(model, image, tile=4096)
    for tile in (16, 60, 100):
        np.testing.assert_allclose(predict(model, image, tile=tile), reference, atol=1e-5)


def test_tiles_cover_the_plane_once_and_stream_results(model, rng):
    image = rng.random((70, 90)).astype(np.float32)
    results = list(predict_tiles(model, image, tile=16))
    total = results[0].total
    assert [r.index for r in results] == list(range(total)) and total == len(results) > 1
    cover = np.zeros(image.shape, int)
    for r in results:
        assert r.plane == ()
        assert r.probabilities.shape == cover[r.region].shape
        assert r.probabilities.dtype == np.float32
        cover[r.region] += 1
    assert (cover == 1).all()


def test_center_puts_the_nearest_tile_first(model, rng):
    image = rng.random((96, 96)).astype(np.float32)
    first = next(predict_tiles(model, image, tile=16, center=(90, 5)))
    rows, cols = first.region
    assert rows.start <= 90 < rows.stop and cols.start <= 5 < cols.stop


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, bool])
def test_any_integer_or_float_dtype(model, rng, dtype):
    image = (rng.random((40, 50)) * 200).astype(dtype)
    out = predict(model, image, tile=16)
    np.testing.assert_allclose(out, predict(model, image.astype(np.float32), tile=16), atol=1e-5)


def test_channels_last_image_for_a_multichannel_model(rng):
    torch.manual_seed(3)
    model = sharp(UNet(in_channels=3, base_channels=4, depth=2)).eval()
    image = rng.random((45, 38, 3)).astype(np.float32)
    out = predict(model, image, tile=8)
    assert out.shape == (45, 38)
    np.testing.assert_allclose(out, predict(model, image, tile=1000), atol=1e-5)


def test_stack_is_predicted_plane_by_plane(model, rng):
    stack = rng.random((2, 3, 30, 41)).astype(np.float32)
    out = predict(model, stack, tile=16)
    assert out.shape == stack.shape
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(out[idx], predict(model, stack[idx], tile=24), atol=1e-5)


def test_model_mode_is_restored(model, rng):
    model.train()
    predict(model, rng.random((20, 20)).astype(np.float32))
    assert model.training


def test_closing_the_generator_early_is_harmless(model, rng):
    image = rng.random((64, 64)).astype(np.float32)
    tiles = predict_tiles(model, image, tile=16)
    next(tiles)
    tiles.close()
    np.testing.assert_allclose(predict(model, image, tile=16), predict(model, image), atol=1e-5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros(10), r"expected at least \(H, W\)"),
        (np.zeros((20, 20, 3)), "has 3 channels on its last axis but the model takes 1.*to_grey"),
        (np.full((20, 20), np.nan), "NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
    ],
)
def test_bad_images_say_what_is_wrong(model, image, message):
    with pytest.raises(ValueError, match=message):
        predict(model, image)


def test_wrong_channel_count_for_a_multichannel_model(rng):
    model = UNet(in_channels=2, base_channels=2, depth=2)
    with pytest.raises(ValueError, match=r"has 3 channel\(s\) but the model takes 2"):
        predict(model, rng.random((20, 20, 3)))
    with pytest.raises(ValueError, match=r"has 1 channel\(s\) but the model takes 2"):
        predict(model, rng.random((20, 20)))


def test_bad_arguments(model, rng):
    image = rng.random((20, 20))
    with pytest.raises(ValueError, match="tile must be a positive"):
        predict(model, image, tile=0)
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        predict(model, image, batch_size=0)
    with pytest.raises(TypeError, match="napari_unet.UNet"):
        predict(torch.nn.Conv2d(1, 2, 3), image)


def test_batched_tiles_give_the_same_result(model, rng):
    image = rng.random((100, 100)).astype(np.float32)
    np.testing.assert_allclose(
        predict(model, image, tile=16, batch_size=5), predict(model, image, tile=16), atol=1e-5
    )


def test_flips_average_the_eight_orientations(model, rng):
    """Reference: the whole mirror-padded input turned and flipped 8 ways, each output mapped
    back, averaged. Tiled flips equal it; it differs from no flips."""
    image = rng.random((37, 52)).astype(np.float32)
    padded, h, w = whole_image_input(model, image)
    total = 0
    with torch.no_grad():
        for k in range(8):
            x = torch.rot90(torch.from_numpy(padded)[None, None], k % 4, dims=(2, 3))
            x = x.flip(3) if k >= 4 else x
            fg = 1 - torch.softmax(model(x), 1)[0, 0]
            fg = fg.flip(1) if k >= 4 else fg
            total = total + torch.rot90(fg, -(k % 4), dims=(0, 1)).numpy()
    reference = (total / 8)[:h, :w]
    for tile in (16, None):
        flipped = predict(model, image, flips=True, tile=tile)
        np.testing.assert_allclose(flipped, reference, atol=1e-5)
    assert np.abs(flipped - predict(model, image)).max() > 1e-3


def is_channels_last(model) -> bool:
    weight = model.down[1][0].weight  # a 3x3 kernel with several input channels
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_model_comes_back_in_its_memory_format(model, rng, memory_format):
    model.to(memory_format=memory_format)
    was = is_channels_last(model)
    for _ in predict_tiles(model, rng.random((40, 40)), tile=16):
        assert is_channels_last(model)  # what the tiles run with
    assert is_channels_last(model) == was == (memory_format == torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_model_comes_back_on_its_device(model, rng):
    image = rng.random((40, 40))
    reference = predict(model, image)
    np.testing.assert_allclose(predict(model, image, device="cuda"), reference, atol=1e-2)
    assert all(p.device.type == "cpu" for p in model.parameters())
    model.cuda()
    np.testing.assert_allclose(predict(model, image, device="cpu"), reference, atol=1e-2)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_predict_shows_the_arguments_of_predict_tiles():
    tiles = inspect.signature(predict_tiles).parameters
    shown = inspect.signature(predict).parameters
    assert list(shown) == [*tiles, "progress"]
    assert all(shown[name].default == tiles[name].default for name in tiles)


def test_a_tile_over_the_memory_budget_is_made_smaller(model, caplog):
    image = np.zeros((4500, 4500), np.uint8)
    cap = largest_step(model)
    with caplog.at_level(logging.INFO, logger="napari_unet.core.prediction.predict"):
        tiles = predict_tiles(model, image, tile=100_000)
    assert f"over the budget of 2.00 GiB (batch of 1); using tile {cap} px" in caplog.text
    rows, cols = re.search(r"of up to (\d+) x (\d+) px", caplog.text).groups()
    assert max(int(rows), int(cols)) <= cap
    tiles.close()


def test_a_batch_shares_the_memory_budget(model, caplog):
    image = np.zeros((2000, 2000), np.uint8)
    with caplog.at_level(logging.WARNING, logger="napari_unet.core.prediction.predict"):
        predict_tiles(model, image, tile=1000).close()
        assert not caplog.text
        predict_tiles(model, image, tile=1000, batch_size=16).close()
    assert "batch of 16" in caplog.text


def test_a_tiny_tile_warns_and_the_log_says_the_step_used(model, rng, caplog):
    image = rng.random((64, 64)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="napari_unet.core.prediction.predict"):
        result = predict(model, image, tile=1)
    assert "tile 1 px does" in caplog.text and "the work of the automatic tile" in caplog.text
    assert "64 tile(s) of up to 8 x 8 px" in caplog.text  # rounded to 2**depth, as run
    np.testing.assert_allclose(result, predict(model, image), atol=1e-5)
