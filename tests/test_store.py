"""Model files: safetensors round trip, atomic saves, refusing pickles, bundled models."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_unet import UNet, bundled_models, load_bundled, load_model, predict, save_model
from napari_unet.core.network import store


def test_round_trip_gives_bit_identical_predictions(tmp_path, rng):
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3, in_channels=1)
    path = save_model(model, tmp_path / "m.safetensors", {"steps": 12, "data": ["a.tif"]})
    loaded = load_model(path)
    assert loaded.config() == model.config()
    assert loaded.metadata == {"steps": 12, "data": ["a.tif"]}
    image = rng.random((60, 70)).astype(np.float32)
    np.testing.assert_array_equal(predict(loaded, image), predict(model, image))
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_a_model_used_for_prediction_saves_too(tmp_path, rng):
    model, image = UNet(base_channels=2, depth=2), rng.random((20, 20))
    expected = predict(model, image)  # leaves the weights in channels_last
    back = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert np.array_equal(predict(back, image), expected)


def test_pickles_are_refused_with_a_conversion_hint(tmp_path):
    model = UNet(base_channels=2, depth=2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="never unpickles.*save_model"):
        load_model(tmp_path / "w.pt")
    os.rename(tmp_path / "w.pt", tmp_path / "w.safetensors")  # a pickle in disguise
    with pytest.raises(ValueError, match="PyTorch pickle"):
        load_model(tmp_path / "w.safetensors")


def test_truncated_and_foreign_files(tmp_path):
    path = save_model(UNet(base_channels=2, depth=2), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not safetensors"):
        load_model(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a napari-unet model"):
        load_model(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")


def test_header_with_wrong_weights_is_reported(tmp_path):
    from safetensors.torch import save_file

    header = {"format": store.FORMAT, "architecture": json.dumps(UNet(depth=2).config())}
    save_file({"x": torch.zeros(3)}, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="consistent napari-unet model"):
        load_model(tmp_path / "bad.safetensors")


def test_save_errors(tmp_path):
    model = UNet(base_channels=2, depth=2)
    with pytest.raises(ValueError, match=r"end in \.safetensors"):
        save_model(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_model(model, tmp_path / "m.safetensors", {"x": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(model, tmp_path / "nope" / "m.safetensors")
    assert os.listdir(tmp_path) == []


FILE_TOO_LARGE = """
import resource, signal, sys
from napari_unet import UNet, save_model
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_model(UNet(base_channels=4, depth=3), sys.argv[1])
except OSError as err:
    print(err.errno, err)
"""


def test_a_failed_write_is_an_os_error_and_leaves_no_file(tmp_path):
    """safetensors raises its own error type for a full disk; callers that rescue a model
    (napari-unet train, the Export dock) catch OSError."""
    run = [sys.executable, "-c", FILE_TOO_LARGE, str(tmp_path / "m.safetensors")]
    result = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    code, message = result.stdout.strip().split(" ", 1)
    assert int(code) == errno.EFBIG and "File too large" in message
    assert os.listdir(tmp_path) == []


def test_bundled_mechanism(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_models_folder", lambda: tmp_path)
    assert bundled_models() == []
    with pytest.raises(FileNotFoundError, match="no bundled model ships"):
        load_bundled()
    save_model(UNet(base_channels=2, depth=2), tmp_path / "cells.safetensors")
    save_model(UNet(base_channels=3, depth=2), tmp_path / "nuclei.safetensors")
    assert bundled_models() == ["cells", "nuclei"]
    assert load_bundled().base_channels == 2
    assert load_bundled("nuclei").base_channels == 3
    with pytest.raises(ValueError, match="unknown bundled model 'nope'; available: cells, nuclei"):
        load_bundled("nope")
    assert store.open_model("nuclei").base_channels == 3
    assert store.open_model(tmp_path / "cells.safetensors").base_channels == 2


def test_empty_files_are_called_empty_not_pickles(tmp_path):
    for name in ("w.pt", "m.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
            load_model(tmp_path / name)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a model file napari-unet reads"):
        load_model(tmp_path / "text.pt")


def test_file_size_estimate_bounds_the_saved_file(tmp_path):
    for model in (UNet(base_channels=2, depth=2), UNet(base_channels=8, depth=4)):
        size = save_model(model, tmp_path / "m.safetensors").stat().st_size
        assert size <= store.file_size_estimate(model.config()) < size + 2**17
