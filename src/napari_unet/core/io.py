"""Reading images and writing label masks (TIFF, PNG, NPY), atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["read_image", "write_labels", "write_image", "atomic_path", "LABEL_FORMATS"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
LABEL_FORMATS = ("tif", "png", "npy")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as microscopes and Fiji write it.

    TIFF (uncompressed, LZW, zlib/deflate, ...; multi-page files give a stack), PNG (8 or 16 bit,
    grey or RGB) or NPY (never unpickled). Returns the array with its own dtype and shape,
    e.g. ``(H, W)``, ``(H, W, 3)`` or ``(Z, H, W)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"cannot read {path.name}: unsupported file type {suffix or '(none)'}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        elif suffix == ".png":
            import imageio.v3 as iio

            image = iio.imread(path)
        else:
            image = np.load(path, allow_pickle=False)
    except Exception as err:  # every reader has its own errors; name the file and the cause
        raise ValueError(f"cannot read {path}: {err}") from err
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"{path} holds an empty image (shape {image.shape})")
    return image


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: folder {folder} is not writable")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _label_dtype(labels: np.ndarray, fmt: str) -> np.dtype:
    top = int(labels.max(initial=0))
    if fmt == "png":
        if top > np.iinfo(np.uint16).max:
            raise ValueError(f"label ids up to {top} do not fit a PNG (at most 65535); use TIFF")
        return np.dtype(np.uint8 if top <= 255 else np.uint16)
    if top <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32 if top <= np.iinfo(np.uint32).max else np.uint64)


def _writer(fmt: str) -> Callable[[Path, np.ndarray], None]:
    if fmt == "tif":
        import tifffile

        return lambda p, a: tifffile.imwrite(p, a, compression="zlib")
    if fmt == "png":
        import imageio.v3 as iio

        return lambda p, a: iio.imwrite(p, a, extension=".png")

    def save_npy(p: Path, a: np.ndarray) -> None:
        with open(p, "wb") as f:  # a file object: np.save would append .npy to the name
            np.save(f, a, allow_pickle=False)

    return save_npy


def _format(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    fmt = {".tif": "tif", ".tiff": "tif", ".png": "png", ".npy": "npy"}.get(suffix)
    if fmt not in allowed:
        raise ValueError(
            f"cannot write {path.name}: unsupported suffix {suffix or '(none)'}; expected "
            + ", ".join(f".{f}" for f in allowed)
        )
    return fmt


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a float image (a weight map, probabilities) atomically to ``.tif`` or ``.npy``."""
    path = Path(path)
    fmt = _format(path, ("tif", "npy"))
    with atomic_path(path) as tmp:
        _writer(fmt)(tmp, np.asarray(image))
    return path


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance label mask atomically; the format follows the suffix.

    ``.tif``/``.tiff`` (uint16, or uint32 when ids need it; stacks as multi-page), ``.png``
    (``(H, W)`` only, uint8 or uint16 as the ids need) or ``.npy``. Returns the path.
    """
    path = Path(path)
    fmt = _format(path, LABEL_FORMATS)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"labels are empty (shape {labels.shape}); nothing to write")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"labels must be integers (0 = background), got dtype {labels.dtype}")
    if labels.min(initial=0) < 0:
        raise ValueError(f"labels must not be negative, found {labels.min()}")
    if fmt == "png" and labels.ndim != 2:
        raise ValueError(f"PNG holds one (H, W) plane, labels have shape {labels.shape}; use TIFF")
    data = labels.astype(_label_dtype(labels, fmt), copy=False)
    with atomic_path(path) as tmp:
        _writer(fmt)(tmp, data)
    return path
