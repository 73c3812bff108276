"""The napari-unet command end to end on real images, run as a user would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, load_model, read_image, save_model
from napari_unet.cli import main


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


def test_predict_writes_one_label_tiff_per_image(tmp_path, model_file, whole_sample):
    images = [tmp_path / "20.png", tmp_path / "21.png"]
    iio.imwrite(images[0], whole_sample[0])  # 16-bit grey PNG
    iio.imwrite(images[1], whole_sample[0][:300, :200])
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
    assert tifffile.imread(out / "21_labels.tif").shape == (300, 200)
    probs = tifffile.imread(out / "20_probabilities.tif")
    assert probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1


def test_flips_average_the_eight_orientations(tmp_path, model_file):
    from napari_unet import predict

    path = resources.files("napari_unet") / "data" / "phase_contrast_cells.tif"
    args = ["predict", str(path), "--model", str(model_file), "--probabilities", "--flips"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    written = tifffile.imread(tmp_path / "phase_contrast_cells_probabilities.tif")
    model, image = load_model(model_file), read_image(path)
    np.testing.assert_allclose(written, predict(model, image, flips=True), atol=1e-6)
    assert np.abs(written - predict(model, image)).max() > 1e-3


def test_rgb_images_are_converted_to_grey(tmp_path, model_file, sample):
    grey = (sample[0] // 256).astype(np.uint8)
    first = tmp_path / "colour.png"
    iio.imwrite(first, np.stack([grey, grey // 2, grey], axis=-1))
    assert main(["predict", str(first), "--model", str(model_file), "--out", str(tmp_path)]) == 0
    labels = read_image(tmp_path / f"{first.stem}_labels.tif")
    assert labels.shape == read_image(first).shape[:2]


def test_weightmap_command(tmp_path):
    labels = resources.files("napari_unet") / "data" / "phase_contrast_cells_labels.tif"
    result = run("weightmap", str(labels), "--out", str(tmp_path / "w.tif"), "--sigma", "4")
    assert result.returncode == 0, result.stderr
    weights = tifffile.imread(tmp_path / "w.tif")
    assert weights.shape == (512, 512) and weights.dtype == np.float32 and weights.max() > 5


def test_train_command_saves_a_loadable_model(tmp_path, sample):
    image = tmp_path / "im.tif"
    labels = tmp_path / "lab.tif"
    tifffile.imwrite(image, sample[0])
    tifffile.imwrite(labels, sample[1])
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
    assert model.metadata["finetune"]["tile"] == 32 and model.metadata["finetune"]["steps"] == 3


def test_train_for_minutes_alone(tmp_path, sample):
    """A time budget without --steps: the budget ends the run."""
    image, labels = tmp_path / "im.tif", tmp_path / "lab.tif"
    tifffile.imwrite(image, sample[0][:96, :96])
    tifffile.imwrite(labels, sample[1][:96, :96])
    args = ["train", "--images", str(image), "--labels", str(labels), "--minutes", "0.01"]
    args += ["--model", "new", "--base-channels", "2", "--tile", "16", "--batch-size", "1"]
    result = run(*args, "--out", str(tmp_path / "m.safetensors"))
    assert result.returncode == 0, result.stderr
    assert 1 <= load_model(tmp_path / "m.safetensors").metadata["steps"] < 10**9


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{img}", "--model", "{model}", "--out", "o", "--device", "foo"], "--device"),
        pytest.param(
            ["predict", "{img}", "--model", "{model}", "--out", "o", "--device", "cuda"],
            "sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
        (["predict", "{img}", "--model", "{model}", "--out", "o", "--tile", "4"], "out of range"),
        (
            ["predict", "{img}", "--model", "{model}", "--out", "o", "--tile", "99999"],
            "out of range",
        ),
        (["weightmap", "{img}", "--out", "{file}/w.tif"], "file is a file, not a folder"),
    ],
)
def test_device_tile_and_folder_errors_before_any_work(
    tmp_path, model_file, capsys, args, message
):
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((30, 30)))
    file = tmp_path / "file"
    file.write_bytes(b"")
    args = [a.format(img=img, model=model_file, file=file) for a in args]
    args = [str(tmp_path / a) if a in ("o", "w.tif") else a for a in args]
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-unet: error: "), lines
    assert __import__("re").search(message, lines[0]), lines[0]
    assert sorted(os.listdir(tmp_path)) == ["file", "img.npy", "model.safetensors"]


def test_help_for_each_command():
    for command in ("predict", "train", "weightmap", "export-model"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: napari-unet " + command in result.stdout


def test_version_and_defaults_in_help(capsys):
    from napari_unet import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0 and capsys.readouterr().out.strip() == f"napari-unet {__version__}"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status 1 for an error (bad usage included)" in text and "2 for" not in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "foreground probability cut, in (0, 0.9): " in text and "0.9 (default: 0.5)" in text
    assert "(default: 268435456)" in text


def test_bad_option_values_are_one_line_before_any_work(capsys):
    for value in ("2", "0", "nan", "x", "0.9", "0.95"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", "missing.tif", "--out", "o", "--threshold", value])
        assert exit_.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        expected = "argument --threshold: expected a probability above 0 and below 0.9 (the "
        expected += f"cells grow from pixels above 0.9), got {value}"
        assert len(err) == 1 and expected in err[0], err
        assert "core" not in err[0]  # an option the CLI does not have
    with pytest.raises(SystemExit):
        main(["predict", "missing.tif", "--out", "o", "--min-size", "-1"])
    assert "expected an integer >= 0, got -1" in capsys.readouterr().err


def test_weightmap_writes_the_map_training_uses(tmp_path):
    from napari_unet import training_target

    labels = resources.files("napari_unet") / "data" / "phase_contrast_cells_labels.tif"
    out = tmp_path / "new" / "folder" / "w.tif"  # created, as predict and train do
    assert main(["weightmap", str(labels), "--out", str(out)]) == 0
    _, expected = training_target(read_image(labels))
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert main(["weightmap", str(labels), "--out", str(out), "--class-balance"]) == 0
    _, paper = training_target(read_image(labels), class_balance=True)
    np.testing.assert_array_equal(tifffile.imread(out), paper)


def test_images_passed_as_labels_are_refused_at_once(tmp_path, model_file, capsys):
    data = resources.files("napari_unet") / "data"
    image = str(data / "phase_contrast_cells.tif")
    assert main(["weightmap", image, "--out", str(tmp_path / "new" / "w.tif")]) == 1
    assert "does not look like a label image" in capsys.readouterr().err
    args = ["train", "--images", image, "--labels", image, "--steps", "1", "--model"]
    assert main([*args, str(model_file), "--out", str(tmp_path / "new" / "m.safetensors")]) == 1
    assert "does not look like a label image" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no output folder left behind
    assert main(["weightmap", image, "--out", image]) == 1
    assert f"--out {image} is the input {image}" in capsys.readouterr().err


def test_outputs_never_replace_an_input_and_say_when_they_replace_a_file(
    tmp_path, model_file, sample, capsys, caplog
):
    image, labels = tmp_path / "im.tif", tmp_path / "lab.tif"
    tifffile.imwrite(image, sample[0])
    tifffile.imwrite(labels, sample[1])
    link = tmp_path / "link.safetensors"
    link.symlink_to(model_file)
    before = {p: p.read_bytes() for p in (image, labels, model_file)}
    args = ["train", "--images", str(image), "--labels", str(labels), "--steps", "1"]
    args += ["--tile", "16", "--batch-size", "1", "--model", str(model_file), "--out"]
    for out in (model_file, link):  # the start model, also through a link
        assert main([*args, str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"napari-unet: error: --out {out} is the input {model_file}: napari-unet "
            "never replaces its inputs; choose another --out"
        ]
    assert {p: p.read_bytes() for p in before} == before
    other = tmp_path / "other.tif"  # an existing file the run does not read: replaced, said
    other.write_bytes(b"old")
    assert main(["weightmap", str(labels), "--out", str(other)]) == 0
    assert caplog.messages == [f"{other} exists: the output will replace it"]
    assert read_image(other).dtype == np.float32
    tuned = tmp_path / "tuned.safetensors"
    tuned.write_bytes(b"old")
    caplog.clear()
    assert main([*args, str(tuned)]) == 0
    assert f"{tuned} exists: the output will replace it" in caplog.messages
    assert load_model(tuned).metadata["steps"] == 1


def test_train_options_are_honest_and_checked_first(tmp_path, capsys):
    data = resources.files("napari_unet") / "data"
    image, labels = (
        str(data / "phase_contrast_cells.tif"),
        str(data / "phase_contrast_cells_labels.tif"),
    )
    args = ["train", "--images", image, "--labels", labels, "--steps", "1"]
    (tmp_path / "m.safetensors").mkdir()
    assert main([*args, "--base-channels", "4", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert (
        "--base-channels sets the width of a new network (--model new)" in capsys.readouterr().err
    )
    assert main([*args, "--out", str(tmp_path / "m.safetensors"), "--model", "new"]) == 1
    assert "is a folder; expected a .safetensors file" in capsys.readouterr().err
    # within the memory of one prediction tile, far beyond that of a training step of 64 crops
    new = ["--model", "new", "--base-channels", "2", "--out", str(tmp_path / "x.safetensors")]
    assert main([*args, *new, "--tile", "512", "--batch-size", "64"]) == 1
    assert (
        "--tile 512 with --batch-size 64 needs about 5.6 GiB to train (64 crops of 700 px, "
        "activations and gradients), more than 2 GiB; choose a smaller --tile or --batch-size"
    ) in capsys.readouterr().err


def test_failed_runs_leave_no_folder_they_created(tmp_path, model_file, capsys):
    image = tmp_path / "nan.npy"
    np.save(image, np.full((30, 30), np.nan, np.float32))
    out = tmp_path / "a" / "b"
    assert main(["predict", str(image), "--model", str(model_file), "--out", str(out)]) == 1
    assert "NaN" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "nan.npy"]


def test_cells_are_counted_per_plane_as_distinct_ids():
    from napari_unet.cli import _count_cells

    stack = np.zeros((2, 6, 6), np.uint16)
    stack[0, :2, :2], stack[0, 4:, 4:], stack[1, :3, :3] = 1, 5, 2
    assert _count_cells(stack) == "3 cells in 2 planes"
    assert _count_cells(stack[0]) == "2 cells"


def test_memory_errors_are_one_line():
    from napari_unet.cli import _error_line

    for allocate in (
        lambda: np.empty(2**58, np.uint8),
        lambda: torch.empty(2**58, dtype=torch.uint8),
    ):
        with pytest.raises((MemoryError, RuntimeError)) as err:
            allocate()
        line = _error_line(err.value)
        assert line.startswith("out of memory (") and "try a smaller --tile" in line
        assert "\n" not in line


def test_a_model_that_cannot_be_saved_is_saved_elsewhere(tmp_path, monkeypatch):
    from napari_unet.cli import _check_free_space, _save_or_rescue

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = UNet(base_channels=2, depth=2)
    with pytest.raises(OSError, match=r"cannot save the model to .*gone.*; saved it to") as err:
        _save_or_rescue(model, tmp_path / "gone" / "m.safetensors", {"steps": 3})
    rescued = err.value.args[0].rsplit("saved it to ", 1)[1].removesuffix(" instead")
    assert load_model(rescued).metadata == {"steps": 3}
    with pytest.raises(OSError, match="not enough free disk space"):
        _check_free_space(tmp_path / "m.safetensors", 2**62)


DISK_FULL_ONCE = """
import resource, signal, sys
from pathlib import Path
import safetensors.torch
from napari_unet import UNet
from napari_unet.cli import _save_or_rescue
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limits = resource.getrlimit(resource.RLIMIT_FSIZE)
write = safetensors.torch.save_file

def full_once(*args, **kwargs):  # the first write meets a full disk, the next ones do not
    try:
        return write(*args, **kwargs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)

safetensors.torch.save_file = full_once
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
try:
    _save_or_rescue(UNet(base_channels=4, depth=3), Path(sys.argv[1]), {"steps": 3})
except OSError as err:
    print(err)
"""


def test_a_model_that_meets_a_full_disk_is_saved_beside(tmp_path):
    out = tmp_path / "m.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_ONCE, str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "File too large" in result.stdout and "saved it to" in result.stdout
    rescued = result.stdout.strip().rsplit("saved it to ", 1)[1].removesuffix(" instead")
    assert Path(rescued).parent == tmp_path and not out.exists()
    assert load_model(rescued).metadata == {"steps": 3}


def interrupt_when(args: list[str], marker: str, cwd) -> subprocess.CompletedProcess:
    """Run the command, send SIGTERM once ``marker`` appears on its stderr, wait for the end.

    Bytes, not text: universal newlines would turn progress bars' ``\r`` into line ends.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = b""
    while marker.encode() not in seen:
        char = child.stderr.read(1)
        assert char, f"ended before {marker!r}: {seen}"
        seen += char
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(args, child.returncode, out.decode(), (seen + err).decode())


def test_sigterm_is_one_line_and_removes_what_the_run_started(tmp_path, model_file):
    image = tmp_path / "big.npy"
    np.save(image, np.random.default_rng(0).random((1500, 1500), np.float32))
    args = ["predict", str(image), "--model", str(model_file), "--out", "new", "--tile", "8"]
    result = interrupt_when(args, "%|", tmp_path)  # a tile done, the bar fully set up
    assert result.returncode == 130
    assert result.stderr.strip().splitlines()[-1] == "napari-unet: interrupted"
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["big.npy", "model.safetensors"]


def test_sigterm_during_training_saves_the_model(tmp_path):
    data = resources.files("napari_unet") / "data"
    args = ["train", "--images", str(data / "phase_contrast_cells.tif"), "--labels"]
    args += [str(data / "phase_contrast_cells_labels.tif"), "--steps", "100000", "--model"]
    args += ["new", "--base-channels", "2", "--tile", "16", "--batch-size", "1"]
    result = interrupt_when([*args, "--out", "m.safetensors"], "loss=", tmp_path)
    assert result.returncode == 130, result.stderr
    assert "interrupted: saving the model as trained so far" in result.stdout
    assert load_model(tmp_path / "m.safetensors").metadata["steps"] < 100000
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_predict_writes_rois_and_measurements_of_every_cell(tmp_path, whole_sample):
    import csv

    import roifile

    from napari_unet.core.formats.io import read_pixel_size

    image = tmp_path / "cells.tif"
    crop = whole_sample[0][128:384, 128:384]  # 14 annotated cells
    tifffile.imwrite(image, crop, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    out = tmp_path / "out"
    args = ["predict", str(image), "--out", str(out), "--rois", "--measurements"]
    assert main(args) == 0  # the bundled model
    assert sorted(os.listdir(out)) == ["cells_cells.csv", "cells_labels.tif", "cells_rois.zip"]
    labels = tifffile.imread(out / "cells_labels.tif")
    assert read_pixel_size(out / "cells_labels.tif") == pytest.approx((0.5, 0.5))
    cells = len(np.unique(labels[labels > 0]))
    assert cells > 10
    assert len(roifile.roiread(out / "cells_rois.zip")) == cells
    with open(out / "cells_cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == cells
    assert float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["area_px"]) * 0.25)
    assert main(args) == 0  # its own outputs are replaced
    foreign = tmp_path / "other" / "cells_cells.csv"
    foreign.parent.mkdir()
    foreign.write_text("mine\n")
    assert main([*args[:3], str(foreign.parent), "--measurements"]) == 1
    assert foreign.read_text() == "mine\n" and os.listdir(foreign.parent) == ["cells_cells.csv"]


def test_export_model_writes_a_bioimageio_package(tmp_path, model_file, whole_sample, capsys):
    # the package's model test: tests/test_bioimageio.py and the Export dock's test
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra is not installed")
    package = tmp_path / "pkg" / "tiny.zip"
    assert main(["export-model", str(model_file), "--bioimageio", str(package), "--no-test"]) == 0
    assert f"bioimage.io package written -> {package}" in capsys.readouterr().out
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, whole_sample[0][:128, :128])
    out = tmp_path / "out"
    assert main(["predict", str(image), "--model", str(package), "--out", str(out)]) == 0
    by_file = tmp_path / "by_file"
    assert main(["predict", str(image), "--model", str(model_file), "--out", str(by_file)]) == 0
    name = "cells_labels.tif"
    np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(by_file / name))
    assert main(["export-model", str(model_file), "--bioimageio", str(tmp_path / "x.yaml")]) == 1
    assert "--bioimageio must end in .zip" in capsys.readouterr().err


def test_export_model_names_the_package_from_a_fine_tuned_models_label(tmp_path, capsys):
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra is not installed")
    import yaml

    torch.manual_seed(0)
    label = "round 2: continued from round 1 on 1 pair, 34 steps"  # what the docks write
    model = save_model(
        UNet(base_channels=4, depth=3), tmp_path / "m.safetensors", {"source": label}
    )
    package = tmp_path / "round2.zip"
    assert main(["export-model", str(model), "--bioimageio", str(package), "--no-test"]) == 0
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert rdf["name"] == "napari-unet round 2 continued from round 1 on 1 pair 34 steps"
    assert label in rdf["description"]


def _discs(shape=(160, 160), radius=20, spacing=64):
    """``shape`` uint16 image of bright discs of ``radius`` on a grid, and their labels."""
    from skimage.draw import disk

    labels = np.zeros(shape, np.uint16)
    for n, (y, x) in enumerate(
        (y, x)
        for y in range(spacing // 2, shape[0], spacing)
        for x in range(spacing // 2, shape[1], spacing)
    ):
        labels[disk((y, x), radius, shape=shape)] = n + 1
    return ((labels > 0) * 200 + 20).astype(np.uint16), labels


@pytest.fixture
def sized_file(tmp_path):
    """A tiny model trained (so it says) at cells 20 px across, and an image of 40 px discs."""
    torch.manual_seed(0)
    model = save_model(
        UNet(base_channels=4, depth=3), tmp_path / "sized.safetensors", {"diameter": 20.0}
    )
    image = tmp_path / "discs.tif"
    tifffile.imwrite(image, _discs()[0])
    return model, image


def test_diameter_resamples_each_image_and_sizes_its_cells(tmp_path, sized_file, capsys):
    from napari_unet import predict, to_instances
    from napari_unet.core.prediction.instances import size_defaults
    from napari_unet.core.prediction.scale import sized_cells

    model_path, image_path = sized_file
    out = tmp_path / "out"
    args = ["predict", str(image_path), "--model", str(model_path), "--out", str(out)]
    assert main([*args, "--diameter", "40", "--probabilities"]) == 0
    assert "discs.tif: " in (said := capsys.readouterr().out)
    assert "diameter 40.0 px (given)" in said
    model, image = load_model(model_path), read_image(image_path)
    written = tifffile.imread(out / "discs_probabilities.tif")
    assert written.shape == image.shape  # back on the image's grid
    np.testing.assert_allclose(written, predict(model, image, diameter=40), atol=1e-6)
    size = size_defaults(sized_cells(40))[0]  # 5 % of a 40 px disc: 63 px
    expected = to_instances(written, min_size=size, min_core=size)
    np.testing.assert_array_equal(tifffile.imread(out / "discs_labels.tif"), expected)

    assert main([*args, "--diameter", "40", "--probabilities", "--min-size", "0"]) == 0
    labels = tifffile.imread(out / "discs_labels.tif")  # an explicit --min-size wins
    np.testing.assert_array_equal(labels, to_instances(written, min_size=0, min_core=size))


def test_the_diameter_used_is_said_with_its_source(tmp_path, sized_file, capsys, monkeypatch):
    from napari_unet.core.prediction import predict as predict_module
    from napari_unet.core.prediction.diameter import DiameterEstimate

    model_path, image_path = sized_file
    out = str(tmp_path / "out")
    seen = []

    def estimate(model, image, *, device=None, precision="auto"):
        seen.append(image.shape)
        return DiameterEstimate(diameter=30.0, cells=4, confidence=0.9, tries=())

    monkeypatch.setattr(predict_module, "estimate_diameter", estimate)
    assert main(["predict", str(image_path), "--model", str(model_path), "--out", out]) == 0
    assert "diameter 30.0 px (estimated)" in capsys.readouterr().out
    assert seen == [(160, 160)]  # once, by the CLI; predict does not estimate again

    cells = {"median_area": 1256.6, "median_diameter": 40.0, "count": 4}
    metadata = {"diameter": 20.0, "cells": cells}
    tuned = save_model(load_model(model_path), tmp_path / "t.safetensors", metadata)
    assert main(["predict", str(image_path), "--model", str(tuned), "--out", out]) == 0
    assert "diameter 40.0 px (the model's fine-tuning)" in capsys.readouterr().out

    plain = save_model(UNet(base_channels=4, depth=3), tmp_path / "p.safetensors")
    assert main(["predict", str(image_path), "--model", str(plain), "--out", out]) == 0
    assert "diameter: none (image as it comes)" in capsys.readouterr().out
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--diameter", "0"], "argument --diameter: expected a positive number, got 0"),
        (["--diameter", "abc"], "argument --diameter: expected a positive number, got abc"),
        (["--diameter", "1000"], "--diameter: cells 1000 px across are too far"),
        (["--diameter", "30", "--model", "{plain}"], "--diameter: this model does not say"),
        (["--diameter", "1000", "--workers", "1"], "--diameter: cells 1000 px across are too far"),
        (
            ["--diameter", "30", "--model", "{plain}", "--scheduler", "tcp://localhost:1"],
            "--diameter: this model does not say",
        ),
    ],
)
def test_diameter_errors_are_one_line_before_any_work(
    tmp_path, sized_file, model_file, capsys, extra, message
):
    model_path, image_path = sized_file
    extra = [a.format(plain=model_file) for a in extra]
    out = tmp_path / "o"
    args = ["predict", str(image_path), "--model", str(model_path), "--out", str(out), *extra]
    try:
        status = main(args)
    except SystemExit as end:  # a bad option value: argparse's exit
        status = end.code
    assert status == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-unet: error: "), lines
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not out.exists()
