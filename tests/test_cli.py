"""The napari-unet command end to end on real images, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, load_model, read_image, save_model
from napari_unet.cli import main

from .conftest import data_path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    return save_model(UNet(base_channels=4, depth=3), tmp_path / "model.safetensors")


def test_predict_writes_one_label_tiff_per_image(tmp_path, model_file):
    images = [data_path("isbi2012", "train", "images", f"{i:02d}.png") for i in (20, 21)]
    out = tmp_path / "out"
    result = run(
        "predict",
        *map(str, images),
        "--model",
        str(model_file),
        "--out",
        str(out),
        "--tile",
        "200",
        "--probabilities",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "20_labels.tif",
        "20_probabilities.tif",
        "21_labels.tif",
        "21_probabilities.tif",
    ]
    labels = tifffile.imread(out / "20_labels.tif")
    assert labels.shape == (512, 512) and labels.dtype == np.uint16
    probs = tifffile.imread(out / "20_probabilities.tif")
    assert probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1


def test_flips_average_the_eight_orientations(tmp_path, model_file):
    from napari_unet import predict

    path = data_path("isbi2012", "train", "images", "20.png")
    args = ["predict", str(path), "--model", str(model_file), "--probabilities", "--flips"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    written = tifffile.imread(tmp_path / "20_probabilities.tif")
    model, image = load_model(model_file), read_image(path)
    np.testing.assert_allclose(written, predict(model, image, flips=True), atol=1e-6)
    assert np.abs(written - predict(model, image)).max() > 1e-3


def test_rgb_images_are_converted_to_grey(tmp_path, model_file):
    image = data_path("dsb2018", "color", "images")
    first = sorted(image.iterdir())[0]
    assert main(["predict", str(first), "--model", str(model_file), "--out", str(tmp_path)]) == 0
    labels = read_image(tmp_path / f"{first.stem}_labels.tif")
    assert labels.shape == read_image(first).shape[:2]


def test_weightmap_command(tmp_path):
    labels = data_path("usiigaci", "val", "masks", "set46.tif")
    result = run("weightmap", str(labels), "--out", str(tmp_path / "w.tif"), "--sigma", "4")
    assert result.returncode == 0, result.stderr
    weights = tifffile.imread(tmp_path / "w.tif")
    assert weights.shape == (1022, 1024) and weights.dtype == np.float32 and weights.max() > 5


def test_train_command_saves_a_loadable_model(tmp_path):
    image = tmp_path / "im.tif"
    labels = tmp_path / "lab.tif"
    tifffile.imwrite(
        image,
        tifffile.imread(data_path("usiigaci", "val", "images", "set46.tif"))[300:500, 300:500],
    )
    tifffile.imwrite(
        labels,
        tifffile.imread(data_path("usiigaci", "val", "masks", "set46.tif"))[300:500, 300:500],
    )
    out = tmp_path / "tuned.safetensors"
    result = run(
        "train",
        "--images",
        str(image),
        "--labels",
        str(labels),
        "--steps",
        "3",
        "--model",
        "new",
        "--base-channels",
        "4",
        "--tile",
        "32",
        "--batch-size",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert model.metadata["steps"] == 3 and model.metadata["images"] == [str(image)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "missing.tif", "--out", "o"], "no such image file: missing.tif"),
        (
            ["predict", "{img}", "--model", "nope", "--out", "o"],
            "no bundled model ships|unknown bundled model",
        ),
        (["predict", "{img}", "--model", "{bad}", "--out", "o"], "truncated or not safetensors"),
        (
            ["predict", "{img}", "--model", "{model}", "--out", "{file}/o"],
            "cannot create output folder",
        ),
        (["weightmap", "{img}", "--out", "w.tif"], "labels must be integers"),
        (
            [
                "train",
                "--images",
                "{img}",
                "--labels",
                "{img}",
                "{img}",
                "--steps",
                "1",
                "--out",
                "m.safetensors",
            ],
            "expected one label file per image",
        ),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(tmp_path, model_file, args, message):
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((30, 30)))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    file = tmp_path / "file"
    file.write_bytes(b"")
    args = [a.format(img=img, bad=bad, model=model_file, file=file) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-unet: error: "), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_help_for_each_command():
    for command in ("predict", "train", "weightmap"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: napari-unet " + command in result.stdout
