"""Reading images as microscopes write them; writing label masks atomically."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet import read_image, write_labels
from napari_unet.core.formats.io import atomic_path, check_writable_folder, read_pixel_size

from .conftest import data_path


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_tiff_compressions_round_trip(tmp_path, rng, compression):
    image = rng.integers(0, 65535, (37, 53), dtype=np.uint16)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, compression=compression)
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)


def test_fiji_style_stack_and_png_and_npy(tmp_path, rng):
    stack = rng.integers(0, 255, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True)
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif"), stack)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    np.save(tmp_path / "f.npy", stack.astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "f.npy"), stack)


def test_real_files_read(tmp_path):
    em = read_image(data_path("isbi2012", "train", "images", "00.png"))
    assert em.shape == (512, 512) and em.dtype == np.uint8
    cells = read_image(data_path("usiigaci", "val", "images", "set46.tif"))
    assert cells.shape == (1022, 1024) and cells.dtype == np.uint16


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported file type \.jpg"):
        read_image(tmp_path / "x.jpg")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="broken.tif"):
        read_image(tmp_path / "broken.tif")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "obj.npy")  # never unpickled


@pytest.mark.parametrize(
    ("suffix", "top", "dtype"),
    [
        (".tif", 70000, np.uint32),
        (".tif", 300, np.uint16),
        (".png", 200, np.uint8),
        (".png", 3000, np.uint16),
        (".npy", 5, np.uint16),
    ],
)
def test_labels_written_in_the_smallest_type_that_fits(tmp_path, suffix, top, dtype):
    labels = np.zeros((10, 12), np.int64)
    labels[2:5, 3:6] = top
    labels[6:8, 1:3] = 1
    path = write_labels(tmp_path / f"l{suffix}", labels)
    back = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)


def test_label_write_errors(tmp_path):
    with pytest.raises(ValueError, match="must be integers"):
        write_labels(tmp_path / "l.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="must not be negative"):
        write_labels(tmp_path / "l.tif", -np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="do not fit a PNG"):
        write_labels(tmp_path / "l.png", np.full((4, 4), 70000, np.uint32))
    with pytest.raises(ValueError, match=r"unsupported suffix \.jpg"):
        write_labels(tmp_path / "l.jpg", np.ones((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_labels(tmp_path / "no" / "l.tif", np.ones((4, 4), np.uint8))
    assert sorted(os.listdir(tmp_path)) == []


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        write_labels(tmp_path / "file" / "l.tif", np.ones((4, 4), np.uint8))


def test_one_check_of_the_folder_to_write_into(tmp_path):
    file = tmp_path / "file"
    file.write_bytes(b"")
    check_writable_folder(tmp_path)
    check_writable_folder(tmp_path / "new" / "deeper", missing_ok=True)  # can be created
    with pytest.raises(FileNotFoundError, match=r"cannot write into .*new: folder .*new does"):
        check_writable_folder(tmp_path / "new")
    with pytest.raises(NotADirectoryError, match=r"^x: .*file is a file, not a folder$"):
        check_writable_folder(file / "sub", missing_ok=True, context="x")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        check_writable_folder(file)
    if os.geteuid() != 0:  # root can write into read-only folders
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match=r"folder .* is not writable"):
                check_writable_folder(tmp_path / "new", missing_ok=True)
        finally:
            tmp_path.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(PermissionError, match="not writable"):
        write_labels(folder / "l.tif", np.ones((4, 4), np.uint8))


def test_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["labels.tif"]


def test_pixel_size_from_ome_imagej_and_plain_tiff(tmp_path):
    image = np.zeros((2, 8, 8), np.uint16)
    tifffile.imwrite(
        tmp_path / "ome.tif",
        image,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 300,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.4,
        },  # no unit: OME's default, micrometres
    )
    assert read_pixel_size(tmp_path / "ome.tif") == pytest.approx((0.4, 0.3))
    tifffile.imwrite(
        tmp_path / "ij.tif",
        image,
        imagej=True,
        resolution=(2.0, 4.0),
        metadata={"unit": "micron", "axes": "ZYX"},
    )
    assert read_pixel_size(tmp_path / "ij.tif") == pytest.approx((0.25, 0.5))
    tifffile.imwrite(
        tmp_path / "cm.tif", image, resolution=(5e3, 5e3), resolutionunit="CENTIMETER"
    )
    assert read_pixel_size(tmp_path / "cm.tif") == pytest.approx((2.0, 2.0))
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "dpi.tif") is None  # desktop DPI, not a calibration
    tifffile.imwrite(tmp_path / "none.tif", image)
    assert read_pixel_size(tmp_path / "none.tif") is None
    np.save(tmp_path / "a.npy", image)
    assert read_pixel_size(tmp_path / "a.npy") is None


@pytest.mark.parametrize("top", [7, 70000])  # uint16 as ImageJ TIFF; uint32 with tags in cm
@pytest.mark.parametrize("shape", [(9, 11), (2, 9, 11)])
def test_label_tiff_keeps_the_pixel_size(tmp_path, top, shape):
    labels = np.zeros(shape, np.uint32)
    labels[..., 2:5, 3:7] = top
    path = write_labels(tmp_path / "l.tif", labels, pixel_size=(0.65, 0.5))
    assert read_pixel_size(path) == pytest.approx((0.65, 0.5))
    np.testing.assert_array_equal(read_image(path), labels)
    with pytest.raises(ValueError, match="pixel_size must be two positive numbers"):
        write_labels(tmp_path / "m.tif", labels, pixel_size=(0, 1))
    with pytest.raises(ValueError, match="needs a TIFF file"):
        write_labels(tmp_path / "m.npy", labels, pixel_size=(1, 1))
    assert sorted(os.listdir(tmp_path)) == ["l.tif"]
