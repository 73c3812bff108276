from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_unet.core.training.augment import (
    elastic_deform,
    random_cell_contrast,
    random_displacement,
    random_flip_rot,
    random_gamma,
    random_illumination,
    random_intensity,
    random_zoom,
    warp,
)


@pytest.fixture(scope="module")
def crop(whole_sample):
    """A real 384x384 phase-contrast image (uint16) and its instance labels (uint16): the
    sample that ships with the package."""
    image, labels = (a[64:448, 64:448] for a in whole_sample)
    assert len(np.unique(labels)) > 10
    return image, labels


# random_displacement


def test_displacement_shape_dtype_and_zero_sigma():
    field = random_displacement((37, 50), rng=np.random.default_rng(0))
    assert field.shape == (2, 37, 50)
    assert field.dtype == np.float32
    assert field.any()
    zero = random_displacement((37, 50), rng=np.random.default_rng(0), sigma=0)
    assert zero.shape == (2, 37, 50)
    assert not zero.any()


def test_displacement_coarse_nodes_have_std_sigma():
    # With align_corners=True the 3x3 nodes of a 9x9 field sit on pixels 0, 4 and 8.
    rng = np.random.default_rng(1)
    nodes = np.stack([random_displacement((9, 9), rng=rng)[:, ::4, ::4] for _ in range(300)])
    assert abs(nodes.mean()) < 0.5
    assert nodes.std() == pytest.approx(10.0, abs=0.6)


def test_displacement_is_torch_bicubic_of_the_coarse_grid():
    field = random_displacement((64, 80), rng=np.random.default_rng(2), grid=4, sigma=5.0)
    coarse = np.random.default_rng(2).normal(0.0, 5.0, size=(1, 2, 4, 4)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(coarse), size=(64, 80), mode="bicubic", align_corners=True
    )[0].numpy()
    np.testing.assert_allclose(field, expected, atol=1e-4)


def test_displacement_is_smooth():
    rng = np.random.default_rng(3)
    for _ in range(10):
        field = random_displacement((256, 256), rng=rng, sigma=10.0)
        steps = max(np.abs(np.diff(field, axis=1)).max(), np.abs(np.diff(field, axis=2)).max())
        assert steps < 0.05 * 10.0


# warp


def test_warp_constant_shift_follows_sign_convention():
    rng = np.random.default_rng(4)
    image = rng.random((40, 50)).astype(np.float32)
    labels = rng.integers(0, 1000, size=(40, 50)).astype(np.uint16)
    field = np.zeros((2, 40, 50), np.float32)
    field[0], field[1] = 3, -2  # out(y, x) = in(y + 3, x - 2)
    out_image = warp(image, field, order=1)
    out_labels = warp(labels, field, order=0)
    assert out_image.dtype == np.float32
    assert out_labels.dtype == np.uint16
    np.testing.assert_allclose(out_image[:-3, 2:], image[3:, :-2], atol=1e-4)
    np.testing.assert_array_equal(out_labels[:-3, 2:], labels[3:, :-2])
    # Reflection about the edge pixel: row 38 + 3 = 41 reads row 2 * 39 - 41 = 37.
    np.testing.assert_array_equal(out_labels[38, 2:], labels[37, :-2])


def test_warp_nearest_reflects_like_grid_sample():
    # Large displacements on a small array: samples fold back into it, some more than once.
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 100, size=(24, 30)).astype(np.float32)
    field = random_displacement(labels.shape, rng=rng, sigma=20.0)
    h, w = labels.shape
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    grid = np.stack([(xs + field[1]) * 2 / (w - 1) - 1, (ys + field[0]) * 2 / (h - 1) - 1], -1)
    expected = F.grid_sample(
        torch.from_numpy(labels)[None, None],
        torch.from_numpy(grid.astype(np.float32))[None],
        mode="nearest",
        padding_mode="reflection",
        align_corners=True,
    )[0, 0].numpy()
    assert np.abs(field).max() > max(h, w)
    assert np.mean(warp(labels, field, order=0) != expected) < 0.01


def test_warp_zero_field_is_a_copy():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 50, size=(20, 30)).astype(np.int32)
    zero = np.zeros((2, 20, 30), np.float32)
    out = warp(labels, zero, order=0)
    assert out.dtype == np.int32
    assert not np.shares_memory(out, labels)
    np.testing.assert_array_equal(out, labels)
    image = rng.random((20, 30, 2))
    np.testing.assert_allclose(warp(image, zero, order=1), image, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_warp_nearest_keeps_large_ids_exactly(dtype):
    ids = np.array([0, 2**24 + 1, 2**24 + 2, 2**31 - 1], dtype=dtype)
    labels = np.repeat(np.repeat(ids.reshape(2, 2), 16, axis=0), 16, axis=1)
    field = random_displacement(labels.shape, rng=np.random.default_rng(6), sigma=3.0)
    out = warp(labels, field, order=0)
    assert out.dtype == dtype
    assert set(np.unique(out)) == set(ids)


def test_warp_channels_match_single_channel_warps():
    rng = np.random.default_rng(7)
    image = rng.random((30, 40, 3)).astype(np.float32)
    field = random_displacement((30, 40), rng=rng, sigma=4.0)
    out = warp(image, field, order=1)
    assert out.shape == (30, 40, 3)
    assert out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_allclose(out[..., c], warp(image[..., c], field, order=1), atol=1e-6)
        np.testing.assert_array_equal(
            warp(image, field, order=0)[..., c], warp(image[..., c], field, order=0)
        )


def test_warp_rejects_mismatched_field():
    with pytest.raises(ValueError, match=r"\(2, 20, 30\).*\(20, 31\)"):
        warp(np.zeros((20, 31)), np.zeros((2, 20, 30)), order=1)
    with pytest.raises(ValueError, match="order"):
        warp(np.zeros((20, 30)), np.zeros((2, 20, 30)), order=3)


# elastic_deform


def test_elastic_deform_keeps_label_ids(crop):
    image, labels = crop
    ids = set(np.unique(labels))
    rng = np.random.default_rng(8)
    for _ in range(5):
        out_image, out_labels = elastic_deform(image, labels, rng=rng)
        assert out_image.dtype == np.float32 and out_image.shape == image.shape
        assert out_labels.dtype == labels.dtype and out_labels.shape == labels.shape
        out_ids = set(np.unique(out_labels))
        assert out_ids <= ids
        assert len(out_ids) >= 0.8 * len(ids)
        assert not np.array_equal(out_labels, labels)


def test_elastic_deform_uses_one_field_for_image_and_labels(crop):
    _, labels = crop
    out_image, out_labels = elastic_deform(
        labels.astype(np.float32), labels, rng=np.random.default_rng(9)
    )
    # Linear and nearest interpolation agree everywhere but on cell edges.
    assert np.mean(np.abs(out_image - out_labels) < 1e-3) > 0.9


def test_elastic_deform_is_identity_at_sigma_zero(crop):
    image, labels = crop
    out_image, out_labels = elastic_deform(image, labels, rng=np.random.default_rng(0), sigma=0)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(out_image, image.astype(np.float32), atol=1e-6)


def test_elastic_deform_multichannel_image(crop):
    image, labels = crop
    rgb = np.stack([image, image, image], axis=-1)
    out_image, out_labels = elastic_deform(rgb, labels, rng=np.random.default_rng(10))
    assert out_image.shape == rgb.shape and out_image.dtype == np.float32
    np.testing.assert_array_equal(out_image[..., 0], out_image[..., 2])
    gray, gray_labels = elastic_deform(image, labels, rng=np.random.default_rng(10))
    np.testing.assert_allclose(out_image[..., 1], gray, rtol=1e-6)
    np.testing.assert_array_equal(out_labels, gray_labels)


def test_elastic_deform_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(64, 60\)"):
        elastic_deform(
            np.zeros((64, 64)), np.zeros((64, 60), np.uint16), rng=np.random.default_rng()
        )


# random_flip_rot


def test_flip_rot_same_transform_for_all_arrays():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = (base * 10).astype(np.uint16)
    stacked = np.stack([base, -base], axis=-1)
    rng = np.random.default_rng(11)
    for _ in range(20):
        out, out_labels, out_stacked = random_flip_rot([base, labels, stacked], rng=rng)
        np.testing.assert_array_equal(out_labels, out * 10)
        np.testing.assert_array_equal(out_stacked[..., 0], out)
        np.testing.assert_array_equal(out_stacked[..., 1], -out)
        assert out_labels.dtype == np.uint16
        for a, src in ((out, base), (out_labels, labels), (out_stacked, stacked)):
            assert a.flags.c_contiguous and not np.shares_memory(a, src)


def test_flip_rot_hits_all_eight_transforms():
    square = np.arange(9).reshape(3, 3)
    rng = np.random.default_rng(12)
    seen = {random_flip_rot([square], rng=rng)[0].tobytes() for _ in range(200)}
    assert len(seen) == 8


def test_flip_rot_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        random_flip_rot([np.zeros((3, 4)), np.zeros((4, 3))], rng=np.random.default_rng())


# random_intensity


def test_random_intensity_gain_and_offset():
    image = np.array([[0.0, 1.0]])
    rng = np.random.default_rng(13)
    for _ in range(50):
        out = random_intensity(image, rng=rng, gain=0.2, offset=0.1)
        assert out.dtype == np.float32 and out.shape == image.shape
        offset, gain = out[0, 0], out[0, 1] - out[0, 0]
        assert -0.1 <= offset <= 0.1
        assert 0.8 - 1e-6 <= gain <= 1.2 + 1e-6
    same = random_intensity(image.astype(np.uint8), rng=rng, gain=0, offset=0)
    np.testing.assert_array_equal(same, image)


# random_gamma, random_zoom, random_illumination


def test_random_gamma_bends_mid_tones_and_keeps_the_ends():
    image = np.array([[-0.2, 0.0, 0.25, 1.0]])
    rng = np.random.default_rng(3)
    mids = []
    for _ in range(50):
        out = random_gamma(image, rng=rng, spread=1.5)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out[0, [0, 1, 3]], [-0.2, 0.0, 1.0], atol=1e-6)
        mids.append(out[0, 2])
    assert 0.25**1.5 - 1e-6 <= min(mids) < 0.25 < max(mids) <= 0.25 ** (1 / 1.5) + 1e-6
    with pytest.raises(ValueError, match="spread must be >= 1"):
        random_gamma(image, rng=rng, spread=0.5)


def test_random_zoom_scales_about_the_centre():
    """A warped disc keeps its centre and changes its area by the square of one factor."""
    yy, xx = np.mgrid[:101, :101]
    disc = ((yy - 50) ** 2 + (xx - 50) ** 2 <= 20**2).astype(np.uint8)
    rng = np.random.default_rng(5)
    areas = []
    for _ in range(20):
        field = random_zoom(disc.shape, rng=rng, max_zoom=1.3)
        zoomed = warp(disc, field, order=0)
        ys, xs = np.nonzero(zoomed)
        assert abs(ys.mean() - 50) < 0.5 and abs(xs.mean() - 50) < 0.5
        areas.append(zoomed.sum() / disc.sum())
    assert 1 / 1.3**2 - 0.05 < min(areas) < 0.9 and 1.1 < max(areas) < 1.3**2 + 0.05
    assert not random_zoom((8, 8), rng=rng, max_zoom=1.0).any()
    with pytest.raises(ValueError, match="max_zoom must be >= 1"):
        random_zoom((8, 8), rng=rng, max_zoom=0.9)


def test_random_illumination_adds_one_smooth_bounded_background():
    """The same slowly varying glow on every channel, within [0, strength], varying per draw."""
    image = np.random.default_rng(0).random((96, 80, 3)).astype(np.float32)
    rng = np.random.default_rng(7)
    peaks = []
    for _ in range(30):
        out = random_illumination(image, rng=rng, strength=0.4)
        assert out.dtype == np.float32 and out.shape == image.shape
        glow = out - image
        np.testing.assert_allclose(glow[..., 1], glow[..., 0], atol=1e-6)
        np.testing.assert_allclose(glow[..., 2], glow[..., 0], atol=1e-6)
        assert glow.min() >= -0.03 and glow.max() <= 0.43
        steps = max(np.abs(np.diff(glow[..., 0], axis=a)).max() for a in (0, 1))
        assert steps < 0.02  # smooth: no pixel-scale structure that could look like a cell
        peaks.append(glow.max())
    assert min(peaks) < 0.1 < 0.3 < max(peaks)
    grey = random_illumination(image[..., 0], rng=rng)
    assert grey.shape == (96, 80)
    np.testing.assert_array_equal(random_illumination(image, rng=rng, strength=0), image)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        random_illumination(image, rng=rng, strength=-1)


def test_random_cell_contrast_scales_each_cell_against_the_background():
    """Two separate cells on a flat background: each cell's contrast changes by its own factor
    (some by none), pixels far from every cell stay, and the change stays within the factors."""
    image = np.full((64, 64, 1), 0.1, np.float32)
    target = np.zeros((64, 64), np.uint8)
    target[10:22, 10:22] = target[40:52, 40:52] = 1
    image[target == 1] = 0.9
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(40):
        out = random_cell_contrast(image, target, rng=rng, fraction=0.5, low=0.2, high=1.5)
        assert out.dtype == np.float32 and out.shape == image.shape
        np.testing.assert_allclose(out[30, 30], 0.1, atol=1e-6)  # background far from cells
        ratio = [(out[16, 16, 0] - 0.1) / 0.8, (out[46, 46, 0] - 0.1) / 0.8]
        assert all(0.2 - 1e-4 <= r <= 1.5 + 1e-4 for r in ratio)
        ratios.append(ratio)
    ratios = np.array(ratios)
    unchanged = np.isclose(ratios, 1, atol=1e-4)
    assert 0.2 < unchanged.mean() < 0.8  # about half the cells picked
    assert (ratios < 0.5).any() and (ratios > 1.2).any()  # dimmer and brighter both occur
    assert (np.abs(ratios[:, 0] - ratios[:, 1]) > 0.05).any()  # each cell its own factor
    empty = np.zeros_like(target)
    np.testing.assert_array_equal(random_cell_contrast(image, empty, rng=rng), image)
    with pytest.raises(ValueError, match="0 < low <= high"):
        random_cell_contrast(image, target, rng=rng, low=0)
