"""Choosing and checking the compute device in one place."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.network.device import resolve_device


def test_the_device_of_the_model_or_the_one_given(tiny_unet):
    assert resolve_device(None, tiny_unet) == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu", tiny_unet) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("foo", r"unknown device 'foo'; expected 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("meta", r"device 'meta': napari-unet runs on 'cpu', 'cuda' or 'mps'"),
        pytest.param(
            "cuda",
            r"device 'cuda': PyTorch .* sees no CUDA GPU on this machine; use 'cpu'",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
        pytest.param(
            "cuda:99",
            r"device 'cuda:99': there are only \d+ CUDA GPU\(s\)",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here"),
        ),
        pytest.param(
            "mps",
            r"device 'mps': Apple's MPS is not available here",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is here"),
        ),
    ],
)
def test_a_device_torch_cannot_use_here_is_refused_saying_why(tiny_unet, device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device, tiny_unet)


def test_predict_and_finetune_check_the_device(tiny_unet, sample):
    from napari_unet import finetune, predict

    with pytest.raises(ValueError, match="unknown device 'foo'"):
        predict(tiny_unet, sample[0], device="foo")
    with pytest.raises(ValueError, match="napari-unet runs on 'cpu', 'cuda' or 'mps'"):
        finetune(tiny_unet, [sample], steps=1, device="meta")
