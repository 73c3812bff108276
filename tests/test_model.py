"""The U-Net's architecture and size arithmetic, against the paper."""

from __future__ import annotations

import pytest
import torch

from napari_unet import UNet


def test_paper_network_shapes_and_parameters():
    model = UNet()
    assert model.output_size(572) == 388
    assert model.margin == 92
    n_params = sum(p.numel() for p in model.parameters())
    assert 30.5e6 < n_params < 31.5e6  # the paper's "about 31 million"
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    upconvs = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) + len(upconvs) == 23  # the paper's 23 convolutional layers
    assert sum(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs) == 18
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in upconvs)


@pytest.mark.parametrize("base", [16, 32])
def test_narrow_networks_run_at_valid_sizes(base):
    model = UNet(base_channels=base)
    for side in (188, 204, 252):
        out = model(torch.zeros(1, 1, side, side + 16))
        assert out.shape == (1, 2, model.output_size(side), model.output_size(side + 16))


def test_output_size_matches_forward_for_every_depth():
    for depth in range(0, 6):
        model = UNet(base_channels=2, depth=depth)
        side = model.input_size(5)
        assert model(torch.zeros(1, 1, side, side)).shape[-1] == model.output_size(side) >= 5


def test_invalid_size_names_nearest_valid_sizes():
    model = UNet()
    with pytest.raises(ValueError, match="nearest valid sizes: 556 or 572"):
        model.output_size(570)
    with pytest.raises(ValueError, match="nearest valid sizes: 188"):
        model.output_size(100)


def test_input_size_is_smallest_valid_input_covering_output():
    model = UNet(base_channels=8)
    for n in (1, 4, 5, 100, 388, 389):
        i = model.input_size(n)
        assert model.output_size(i) >= n
        smaller = [j for j in range(model.min_input_size, i) if model._try_output_size(j)]
        assert all(model.output_size(j) < n for j in smaller)
    assert model.input_size(388) == 572


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="base_channels must be an integer >= 1"):
        UNet(base_channels=0)
    with pytest.raises(ValueError, match="n_classes"):
        UNet(n_classes=1)


def test_multiply_adds_count_matches_a_hook_count():
    model = UNet(base_channels=4, depth=2)
    side = model.input_size(20)
    counted = 0

    def hook(module, inputs, output):
        nonlocal counted
        w = module.weight
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel feeds k*k outputs
            counted += inputs[0][0, 0].numel() * w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]
        else:
            counted += output[0, 0].numel() * w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    model(torch.zeros(1, 1, side, side))
    assert model.multiply_adds(side) == counted


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "base_channels", "depth"),
    [(1, 2, 4, 3), (3, 5, 2, 0), (2, 2, 3, 5)],
)
def test_tensor_shapes_are_predicted_without_building(
    in_channels, n_classes, base_channels, depth
):
    from napari_unet.core.network.model import check_architecture, parameter_count, state_shapes

    config = check_architecture(in_channels, n_classes, base_channels, depth)
    model = UNet(**config)
    assert state_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_architecture_limits():
    from napari_unet.core.network.model import check_architecture, parameter_count

    assert parameter_count(check_architecture()) == 31_030_658  # the paper's network
    with pytest.raises(ValueError, match="depth must be an integer >= 0 and <= 8"):
        UNet(depth=9)
    with pytest.raises(ValueError, match="parameters; at most"):
        check_architecture(base_channels=1024)
    with pytest.raises(ValueError, match="in_channels"):
        check_architecture(in_channels=True)
