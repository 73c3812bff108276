"""Crafted files, colliding output names, killed writers: nothing a user does destroys a file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, load_model, read_image, save_model, write_labels
from napari_unet.cli import main
from napari_unet.core.formats.io import PREDICTION_SOFTWARE, atomic_path, is_prediction_output
from napari_unet.core.network import store


# ------------------------------------------------------------------------------ crafted files
def crafted_tiff(path, side: int):
    """A 235-byte tiled TIFF whose header declares one ``side`` x ``side`` uint8 tile."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        offsets = [tags[n].valueoffset for n in ("ImageWidth", "ImageLength")]
        offsets += [tags[n].valueoffset for n in ("TileWidth", "TileLength")]
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(struct.pack("<I", side))
    return path


def test_tiny_tiff_declaring_a_huge_image_is_refused_from_its_header(tmp_path):
    path = crafted_tiff(tmp_path / "bomb.tif", 32768)
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match=r"1,073,741,824 pixel values .* limit of 268,435,456"):
        read_image(path)
    with pytest.raises(ValueError, match="limit of 1,000") as err:
        read_image(path, max_pixels=1000)
    assert "raise the pixel limit (max_pixels)" in str(err.value)
    assert "--" not in str(err.value)  # read for napari-unet gui too, which has no such option


def test_npy_header_is_checked_before_loading(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:  # a header declaring 80 GB, and 8 bytes of data
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        f.write(b"\0" * 8)
    with pytest.raises(ValueError, match="truncated: its header declares"):
        read_image(path)
    np.save(tmp_path / "big.npy", np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="10,000 pixel values .* limit of 5,000"):
        read_image(tmp_path / "big.npy", max_pixels=5000)


def test_png_header_is_checked_before_decoding(tmp_path):
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 16, 0, 0, 0, 0)  # 30000 x 30000, 16-bit grey
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"900,000,000 pixel values \(30000x30000 uint16"):
        read_image(path)


def crafted_model(path, architecture: dict):
    """A tiny safetensors file whose napari-unet header claims ``architecture``."""
    from safetensors.torch import save_file

    header = {"format": store.FORMAT, "architecture": json.dumps(architecture)}
    save_file({"down.0.0.weight": torch.zeros(2, 1, 3, 3)}, str(path), metadata=header)
    return path


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"in_channels": 1, "n_classes": 2, "base_channels": 300, "depth": 30}, "depth"),
        (
            {"in_channels": 1, "n_classes": 2, "base_channels": 80, "depth": 4},
            r"weights in 46 tensors\) but the file holds 18 weights in 1 tensors",
        ),
        (  # in range one by one, but 496 million weights: more than a laptop trains or runs
            {"in_channels": 1, "n_classes": 2, "base_channels": 256, "depth": 4},
            r"496,399,874 parameters; at most 67,108,864 are supported",
        ),
        ({"in_channels": 1, "n_classes": 2, "base_channels": 4.5, "depth": 4}, "base_channels"),
        ({"in_channels": 1, "n_classes": 2, "base_channels": 4, "extra": 1}, "keys"),
    ],
)
def test_crafted_model_headers_fail_before_any_network_is_built(tmp_path, architecture, message):
    path = crafted_model(tmp_path / "m.safetensors", architecture)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_model(path)
    assert time.perf_counter() - start < 2  # building the network took 14-20 s


# -------------------------------------------------------------------- output names in predict
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return str(save_model(UNet(base_channels=2, depth=2), path))


def image(path, seed=0):
    data = np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)
    if path.suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(path, data)
    else:
        tifffile.imwrite(path, data)
    return str(path)


def test_ground_truth_beside_the_input_is_never_replaced(tmp_path, model_file, capsys):
    data = resources.files("napari_unet") / "data"
    for name in ("phase_contrast_cells.tif", "phase_contrast_cells_labels.tif"):
        shutil.copy(data / name, tmp_path / name)
    truth = (tmp_path / "phase_contrast_cells_labels.tif").read_bytes()
    before = sorted(os.listdir(tmp_path))
    image_path = str(tmp_path / "phase_contrast_cells.tif")
    for images in ([image_path], [image_path, str(tmp_path / "phase_contrast_cells_labels.tif")]):
        args = ["predict", *images, "--model", model_file, "--out", str(tmp_path)]
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "phase_contrast_cells_labels.tif" in err[0], err
        assert "phase_contrast_cells.tif" in err[0]
        assert sorted(os.listdir(tmp_path)) == before
        assert (tmp_path / "phase_contrast_cells_labels.tif").read_bytes() == truth


def test_inputs_with_the_same_name_write_distinct_outputs(tmp_path, model_file, caplog):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    inputs = [image(tmp_path / "A" / "x.tif"), image(tmp_path / "B" / "x.tif", 1)]
    inputs.append(image(tmp_path / "A" / "x.png", 2))
    out = tmp_path / "out"
    assert main(["predict", *inputs, "--model", model_file, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["x-2_labels.tif", "x-3_labels.tif", "x_labels.tif"]
    assert "x-2_labels.tif (another input has the name x)" in caplog.text
    model = load_model(model_file)
    from napari_unet import predict, to_instances

    for source, name in zip(inputs, ("x", "x-2", "x-3"), strict=True):
        expected = to_instances(predict(model, read_image(source)))
        np.testing.assert_array_equal(read_image(out / f"{name}_labels.tif"), expected)


def test_a_rerun_replaces_its_own_outputs_and_does_not_segment_them(tmp_path, model_file, caplog):
    source = image(tmp_path / "x.tif")
    args = ["predict", source, "--model", model_file, "--out", str(tmp_path), "--probabilities"]
    assert main(args) == 0
    assert is_prediction_output(tmp_path / "x_labels.tif")
    assert is_prediction_output(tmp_path / "x_probabilities.tif")
    first = read_image(tmp_path / "x_labels.tif")
    # the folder's *.tif now holds the outputs too: they are replaced, never segmented
    everything = sorted(str(p) for p in tmp_path.glob("*.tif"))
    assert main(["predict", *everything, "--model", model_file, "--out", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["x.tif", "x_labels.tif", "x_probabilities.tif"]
    assert "x_labels.tif: not segmented, napari-unet predict wrote it" in caplog.text
    np.testing.assert_array_equal(read_image(tmp_path / "x_labels.tif"), first)


def test_an_exported_annotation_is_not_taken_for_an_output(tmp_path, model_file, capsys):
    source = image(tmp_path / "x.tif")
    write_labels(tmp_path / "x_labels.tif", np.ones((24, 24), np.uint16))  # as Export writes
    assert not is_prediction_output(tmp_path / "x_labels.tif")
    assert main(["predict", source, "--model", model_file, "--out", str(tmp_path)]) == 1
    assert "did not write it; refusing to replace it" in capsys.readouterr().err
    write_labels(
        tmp_path / "y_labels.tif", np.ones((4, 4), np.uint16), software=PREDICTION_SOFTWARE
    )
    assert is_prediction_output(tmp_path / "y_labels.tif")


# ------------------------------------------------------------------ replacing files in place
def test_replacing_keeps_mode_owner_symlink_and_hard_links(tmp_path):
    target = tmp_path / "labels.tif"
    write_labels(target, np.ones((4, 4), np.uint8))
    target.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(target, 1234, 1234)
    link = tmp_path / "link.tif"
    link.symlink_to(target.name)
    hard = tmp_path / "hard.tif"
    os.link(target, hard)
    inode = target.stat().st_ino

    write_labels(link, np.full((4, 4), 2, np.uint8))
    assert link.is_symlink() and os.readlink(link) == target.name
    for path in (target, hard, link):
        assert read_image(path).max() == 2
    assert target.stat().st_ino == inode and target.stat().st_nlink == 2
    os.unlink(hard)
    write_labels(target, np.full((4, 4), 3, np.uint8))  # a single link: replaced atomically
    assert read_image(target).max() == 3
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    if os.geteuid() == 0:
        assert (target.stat().st_uid, target.stat().st_gid) == (1234, 1234)
    assert sorted(os.listdir(tmp_path)) == ["labels.tif", "link.tif"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_part_files_of_killed_writers_are_removed(tmp_path):
    target = tmp_path / "m.safetensors"
    stale = tmp_path / f".m.napari-unet-{dead_pid()}-abc.safetensors.part"
    young = tmp_path / f".m.napari-unet-{dead_pid()}-def.safetensors.part"
    alive = tmp_path / f".m.napari-unet-{os.getpid()}-ghi.safetensors.part"
    other = tmp_path / ".m.safetensors.part"  # not a napari-unet name: never touched
    for part in (stale, young, alive, other):
        part.write_bytes(b"half")
    old = time.time() - 120
    for part in (stale, alive, other):
        os.utime(part, (old, old))
    save_model(UNet(base_channels=2, depth=2), target)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [target.name, young.name, alive.name, other.name]
    )


def test_sigkill_leaves_a_part_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "labels.tif"
    code = (
        "import sys, time\n"
        "from napari_unet.core.formats.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half'); print(tmp.name, flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True
    )
    part = tmp_path / child.stdout.readline().strip()
    child.kill()
    child.wait()
    assert part.exists() and part.name.startswith(".labels.napari-unet-")
    old = time.time() - 120
    os.utime(part, (old, old))
    write_labels(target, np.ones((4, 4), np.uint8))
    assert os.listdir(tmp_path) == ["labels.tif"]


def test_sigterm_removes_the_part_file(tmp_path):
    target = tmp_path / "labels.tif"
    code = (
        "import signal, sys\n"
        "from napari_unet.cli import _sigterm_as_interrupt\n"
        "from napari_unet.core.formats.io import atomic_path\n"
        "with _sigterm_as_interrupt(), atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half'); print(tmp.name, flush=True); signal.pause()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    part = tmp_path / child.stdout.readline().strip()
    assert part.exists()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert os.listdir(tmp_path) == []


def test_a_failed_writer_leaves_hard_linked_files_as_they_were(tmp_path):
    target = tmp_path / "a.tif"
    target.write_bytes(b"old")
    os.link(target, tmp_path / "b.tif")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == (tmp_path / "b.tif").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif"]


# ----------------------------------------------------------------- images in place of labels
def test_normalize_makes_no_float64_copy(rng):
    import tracemalloc

    from napari_unet import normalize

    image = rng.integers(0, 65535, (2000, 1000), dtype=np.uint16)
    tracemalloc.start()
    try:
        out = normalize(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32
    assert peak < 1.5 * out.nbytes  # float64 copies made it 3x


def test_an_intensity_image_is_not_taken_for_labels(rng):
    from napari_unet.core.image import check_label_image

    data = resources.files("napari_unet") / "data"
    check_label_image(read_image(data / "phase_contrast_cells_labels.tif"))
    check_label_image(np.zeros((5, 5), np.uint8))
    intensities = rng.integers(0, 40000, (200, 200), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"not look like a label image: [\d,]+ distinct ids"):
        check_label_image(intensities, "a.tif")
    with pytest.raises(ValueError, match="labels must be integers .* non-integer values"):
        check_label_image(rng.random((20, 20)))
    with pytest.raises(ValueError, match="not look like a label image"):
        check_label_image(read_image(data / "phase_contrast_cells.tif"))


def test_a_long_file_name_is_written(tmp_path):
    target = tmp_path / ("x" * 240 + ".tif")  # the temporary name would pass 255 bytes
    write_labels(target, np.ones((4, 4), np.uint8))
    assert os.listdir(tmp_path) == [target.name]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_rewrite_in_place_cut_midway_keeps_the_new_contents(tmp_path, monkeypatch, error):
    """Hard-linked files are rewritten in place; Ctrl-C (or a full disk) midway leaves the
    target partly rewritten, so the complete new contents must survive beside it."""
    target = tmp_path / "a.tif"
    target.write_bytes(b"old" * 1000)
    os.link(target, tmp_path / "b.tif")

    def cut(src, dst, length=0):
        dst.write(src.read(10))
        raise error(28, "No space left on device") if error is OSError else error

    monkeypatch.setattr(shutil, "copyfileobj", cut)
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_bytes(b"new" * 1000)
    kept = tmp_path / "a.tif.napari-unet-new"
    assert kept.read_bytes() == b"new" * 1000
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "a.tif.napari-unet-new", "b.tif"]


# ---------------------------------------------------------------------- numbers out of range
def test_train_refuses_an_absurd_learning_rate_and_writes_nothing(tmp_path, capsys, whole_sample):
    image, labels = tmp_path / "a.tif", tmp_path / "a_labels.tif"
    tifffile.imwrite(image, whole_sample[0][:128, :128])
    tifffile.imwrite(labels, whole_sample[1][:128, :128])
    out = tmp_path / "tuned.safetensors"
    args = ["train", "--images", str(image), "--labels", str(labels), "--model", "new"]
    assert main([*args, "--lr", "1e30", "--steps", "3", "--out", str(out)]) == 1
    assert "lr must be a number in (0, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_a_diverging_run_stops_with_the_weights_of_its_last_finite_step(monkeypatch, whole_sample):
    from napari_unet import finetune
    from napari_unet.core.training import train

    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2)
    real_loss, calls = train.weighted_loss, []

    def loss_that_diverges(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train, "weighted_loss", loss_that_diverges)
    events = finetune(model, [(whole_sample[0][:96, :96], whole_sample[1][:96, :96])], steps=5)
    next(events)
    after_one = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="training diverged .*Lower the learning rate"):
        next(events)
    for p, kept in zip(model.parameters(), after_one, strict=True):
        assert torch.equal(p, kept) and torch.isfinite(p).all()


@pytest.mark.parametrize("w0", ["1e40", "1e308"])
def test_weightmap_refuses_a_weight_that_would_overflow(tmp_path, capsys, whole_sample, w0):
    labels, out = tmp_path / "a_labels.tif", tmp_path / "w.tif"
    tifffile.imwrite(labels, whole_sample[1][:64, :64])
    assert main(["weightmap", str(labels), "--w0", w0, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "w0 must be a finite number in [0, 1000]" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_binary_mask_is_not_taken_for_one_giant_cell(tmp_path, capsys, whole_sample):
    from napari_unet.core.image import check_label_image, mask_to_labels

    image, mask = tmp_path / "a.tif", tmp_path / "a_mask.tif"
    tifffile.imwrite(image, whole_sample[0])
    binary = np.where(whole_sample[1] > 0, 255, 0).astype(np.uint8)
    tifffile.imwrite(mask, binary)
    out = tmp_path / "w.tif"
    assert main(["weightmap", str(mask), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "looks like a binary mask" in err and "--connected-components" in err
    assert not out.exists()
    tuned = tmp_path / "t.safetensors"
    args = ["train", "--images", str(image), "--labels", str(mask), "--model", "new"]
    assert main([*args, "--steps", "1", "--out", str(tuned)]) == 1
    assert "looks like a binary mask" in capsys.readouterr().err and not tuned.exists()
    # what the user meant: the regions as cells, said with a warning
    assert main(["weightmap", str(mask), "--out", str(out), "--connected-components"]) == 0
    assert mask_to_labels(binary).max() > 3
    check_label_image(np.where(whole_sample[1] == 5, 1, 0))  # one cell is one cell


# ------------------------------------------------------------------- bioimage.io zip packages
def _package_with(path, weights: bytes, *, declared: int | None = None):
    """A zip holding ``weights`` as its napari-unet model (its declared size patched)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(store.WEIGHTS_NAME, weights)
    if declared is not None:  # the central directory's uncompressed size of the entry
        data = bytearray(path.read_bytes())
        central = data.rfind(b"PK\x01\x02")
        data[central + 24 : central + 28] = struct.pack("<I", declared)
        path.write_bytes(bytes(data))
    return path


def test_a_bioimageio_zip_bomb_is_refused_before_anything_is_extracted(tmp_path, model_file):
    real = Path(model_file).read_bytes()
    bomb = _package_with(tmp_path / "bomb.zip", real + bytes(300 * 2**20))  # 300 MiB of zeros
    assert bomb.stat().st_size < 2 * 2**20
    start = time.perf_counter()
    with pytest.raises(ValueError, match="declares 314,5.* bytes but its model holds"):
        store.load_bioimageio(bomb)
    assert time.perf_counter() - start < 3
    liar = _package_with(tmp_path / "liar.zip", real, declared=4_000_000_000)
    with pytest.raises(ValueError, match="declares 4,000,000,000 bytes"):
        store.load_bioimageio(liar)
    crafted = crafted_model(
        tmp_path / "m.safetensors",
        {"in_channels": 1, "n_classes": 2, "base_channels": 512, "depth": 4},
    )
    huge = _package_with(tmp_path / "huge.zip", crafted.read_bytes())
    with pytest.raises(ValueError, match="at most 67,108,864 are supported"):
        store.load_bioimageio(huge)
    assert store.load_bioimageio(_package_with(tmp_path / "ok.zip", real)).config()


def test_rois_and_measurements_take_memory_in_cells_not_in_the_largest_id(tmp_path):
    import tracemalloc

    import roifile

    from napari_unet import measure_cells, write_rois

    labels = np.zeros((64, 64), np.uint32)
    labels[5:20, 5:20], labels[30:50, 30:50] = 2**24, 2**31  # two cells, huge ids
    tracemalloc.start()
    table = measure_cells(labels)
    write_rois(tmp_path / "r.zip", labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # was 715 MB, or a MemoryError
    assert table["id"].tolist() == [2**24, 2**31] and table["area_px"].tolist() == [225, 400]
    rois = roifile.roiread(tmp_path / "r.zip")
    assert [r.name for r in rois] == ["cell-0016777216", "cell-2147483648"]
    mask = labels > 0  # a boolean mask: its pixels are cell 1
    assert measure_cells(mask)["area_px"].tolist() == [625]
    write_rois(tmp_path / "m.zip", mask)
    (roi,) = roifile.roiread(tmp_path / "m.zip")  # one cell in two pieces
    assert roi.name == "cell-1"


def test_a_truncated_model_whose_header_length_starts_with_0x80_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2)
    for pad in range(0, 4000, 8):  # a header length whose first byte is 0x80, as a pickle's
        save_model(model, path, {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length of that form")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or not safetensors") as err:
        load_model(path)
    assert "pickle" not in str(err.value)


def test_a_users_own_tables_beside_predicts_labels_are_never_replaced(
    tmp_path, model_file, capsys
):
    image, out = tmp_path / "cells.tif", tmp_path / "out"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8))
    argv = ["predict", str(image), "--out", str(out), "--model", model_file]
    assert main([*argv, "--rois", "--measurements"]) == 0
    assert main([*argv, "--rois", "--measurements"]) == 0  # its own tables are replaced
    for name in ("cells_cells.csv", "cells_rois.zip"):
        mine = out / name
        mine.write_text("my own table\n")  # the user's file, predict's labels beside it
        assert main([*argv, "--rois", "--measurements"]) == 1
        assert "predict did not write it" in capsys.readouterr().err
        assert mine.read_text() == "my own table\n"
        mine.unlink()
