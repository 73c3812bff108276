"""bioimage.io model packages: validated, passing bioimageio.core's model test, read back."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from napari_unet.core.network.bioimageio import export_bioimageio
from napari_unet.core.network.store import WEIGHTS_NAME, load_bioimageio


@pytest.fixture(scope="module")
def package(tmp_path_factory, whole_sample):
    pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed")
    from napari_unet import UNet

    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3).eval()
    model.metadata = {"source": "tiny test model"}
    path = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    return model, export_bioimageio(
        model, path, authors=["Tester"], test_image=whole_sample[0], test=False
    )


def test_package_passes_the_bioimageio_model_test(package):
    from napari_unet.core.network.bioimageio import test_bioimageio

    summary = test_bioimageio(package[1])
    assert summary.status == "passed", summary.format()


def test_package_output_is_napari_unets_prediction_inside_the_margin(package):
    from napari_unet import predict

    model, path = package
    with zipfile.ZipFile(path) as z, z.open("test_input.npy") as a, z.open("test_output.npy") as b:
        test_in, test_out = np.load(a), np.load(b)
    m = model.margin
    assert test_out.shape[-1] == test_in.shape[-1] - 2 * m
    foreground = predict(model, test_in[0, 0])  # mirror-padded to the input's size
    np.testing.assert_allclose(test_out[0, 1], foreground[m:-m, m:-m], atol=1e-5)


def test_package_is_read_back_by_napari_unet(package, tmp_path):
    model, path = package
    back = load_bioimageio(path)
    assert (
        back.config() == model.config()
        and back.metadata["source"] == "bioimage.io package tiny.zip"
    )
    for a, b in zip(model.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("rdf.yaml", "type: model\n")
    with pytest.raises(ValueError, match=f"has no {WEIGHTS_NAME}"):
        load_bioimageio(foreign)


def test_bad_export_writes_nothing(tmp_path, tiny_unet):
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra is not installed")
    with pytest.raises(ValueError, match=r"\.zip file"):
        export_bioimageio(tiny_unet, tmp_path / "model.yaml", test=False)
    with pytest.raises(ValueError, match="needs 156 x 156 px"):
        export_bioimageio(tiny_unet, tmp_path / "m.zip", test_image=np.ones((64, 64)), test=False)
    assert os.listdir(tmp_path) == []


def test_package_name_is_valid_for_any_label():
    from napari_unet.core.network.bioimageio import NAME_CHARACTERS, NAME_LENGTH, package_name

    label = "round 2: continued from round 1 on 1 pair, 34 steps"
    assert package_name(label) == "napari-unet round 2 continued from round 1 on 1 pair 34 steps"
    for label in ("", ":", "é/ü, ç", "x" * 300, "a: " * 80, "napari-unet (bundled)"):
        name = package_name(label)
        assert NAME_LENGTH[0] <= len(name) <= NAME_LENGTH[1], label
        assert set(name) <= set(NAME_CHARACTERS), label
    assert package_name("napari-unet (bundled)") == "napari-unet (bundled)"


def test_a_refused_package_is_one_line_and_writes_nothing(tmp_path, tiny_unet):
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra is not installed")
    with pytest.raises(ValueError, match="^bioimage.io refuses the package: license: ") as err:
        export_bioimageio(tiny_unet, tmp_path / "m.zip", license="not a licence", test=False)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_card_says_the_input_scale_of_a_model_with_a_cell_size(package):
    from napari_unet.core.network.bioimageio import _card

    model, path = package
    with zipfile.ZipFile(path) as z:
        card = z.read("README.md").decode()
    assert "Input scale" not in card  # the model says no size
    sized = _card("sized", "A model.", model, {"diameter": 24.0})
    text = " ".join(sized.split())
    assert (
        "the network works at cells about 24 px across: resample your image by 24 / (your "
        "cells' median diameter) before the network, and the output back" in text
    )
    assert "napari-unet does it itself" in text
    tuned = _card("tuned", "A model.", model, {"cells": {"median_diameter": 31.6}})
    assert "cells about 32 px across" in " ".join(tuned.split())
