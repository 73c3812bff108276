"""Reading images and writing label masks (TIFF, PNG, NPY), atomically.

Reading checks the image's size from the file's header before decoding anything (``MAX_PIXELS``).
Writing goes to a hidden ``.<stem>.napari-unet-<pid>-<random><suffix>.part`` file beside the
target (``.x.napari-unet-4242-k3j9.tif.part`` for ``x.tif``), which replaces the target only when
it is complete; see :func:`atomic_path`.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "read_image",
    "read_pixel_size",
    "check_pixel_size",
    "tiff_resolution",
    "image_info",
    "write_labels",
    "write_image",
    "atomic_path",
    "work_folder",
    "check_writable_folder",
    "is_prediction_output",
    "LABEL_FORMATS",
    "MAX_PIXELS",
    "PREDICTION_SOFTWARE",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
LABEL_FORMATS = ("tif", "png", "npy")

MAX_PIXELS = 2**28
"""Default limit on the values one image may hold (H x W x channels x planes), checked from the
file's header before decoding: 268 million, e.g. 16384 x 16384, or 64 planes of 2048 x 2048.
Prediction needs several times the decoded image in memory (float32 probabilities, labels)."""

PREDICTION_SOFTWARE = "napari-unet predict"
RECORD_TAG = 65000
"""Private TIFF tag of a ``predict`` output that holds its run record (JSON: the model's
SHA-256, the options, the hashes of the tables written beside it)."""
"""TIFF ``Software`` tag of the files ``napari-unet predict`` writes: a later run recognises them
as its own outputs and may replace them; it never replaces a file without it."""

_PART_TAG = ".napari-unet-"
STALE_SECONDS = 60
"""A ``.part`` file (or folder) of a writer that died is removed by the next write of the same
target once it is this old; one older than a day is removed whatever its pid."""


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        data_start = f.tell()
    if dtype.hasobject:
        raise ValueError("it holds Python objects (napari-unet never unpickles files)")
    needed = math.prod(shape) * dtype.itemsize
    if path.stat().st_size - data_start < needed:
        raise ValueError(
            f"it is truncated: its header declares {shape} {dtype} ({needed:,} bytes) but the "
            f"file holds {path.stat().st_size - data_start:,}"
        )
    return tuple(shape), dtype


def _png_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the IHDR chunk (the first frame; a palette counts as RGBA)."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (no PNG signature and IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    bands = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour, 4)
    shape = (height, width) + ((bands,) if bands > 1 else ())
    return shape, np.dtype(np.uint16 if depth == 16 else np.uint8)


def _checked_path(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"cannot read {path.name}: unsupported file type {suffix or '(none)'}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    return suffix


def image_info(
    path: str | os.PathLike, *, max_pixels: int | None = None
) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of the image :func:`read_image` would return, from the header alone.

    For PNG the shape is an upper bound on the channels (a palette counts as RGBA). An image of
    more than ``max_pixels`` values (``None``: no limit) raises ValueError giving its size.
    """
    path = Path(path)
    shape, dtype = _header(path)
    _check_budget(path, shape, dtype, max_pixels)
    return shape, dtype


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    suffix = _checked_path(path)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(series.shape), np.dtype(series.dtype)
        if suffix == ".png":
            return _png_header(path)
        return _npy_header(path)
    except Exception as err:  # every reader has its own errors; name the file and the cause
        raise ValueError(f"cannot read {path}: {err}") from err


def _check_budget(path: Path, shape, dtype, max_pixels: int | None) -> None:
    n = math.prod(shape)
    if max_pixels is not None and n > max_pixels:
        raise ValueError(
            f"{path} holds {n:,} pixel values ({'x'.join(map(str, shape))} {dtype}, "
            f"{n * dtype.itemsize / 2**30:.1f} GiB decoded), more than the limit of "
            f"{max_pixels:,}; raise the pixel limit (max_pixels) if this machine has the "
            "memory, or segment it block by block (napari-unet predict with workers, or "
            "napari_unet.core.large.distributed)"
        )


def read_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Read an image as microscopes and Fiji write it.

    TIFF (uncompressed, LZW, zlib/deflate, ...; multi-page files give a stack), PNG (8 or 16 bit,
    grey or RGB) or NPY (never unpickled). Returns the array with its own dtype and shape,
    e.g. ``(H, W)``, ``(H, W, 3)`` or ``(Z, H, W)``.

    The size is checked from the header before anything is decoded: an image of more than
    ``max_pixels`` values (``None``: no limit) raises ValueError.
    """
    path = Path(path)
    image_info(path, max_pixels=max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                image = tif.series[0].asarray()  # the series whose size was checked
        elif path.suffix.lower() == ".png":
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


_UM_PER_UNIT = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "um": 1.0,
    "\u00b5m": 1.0,  # micro sign
    "\u03bcm": 1.0,  # Greek mu
    "\\u00b5m": 1.0,  # as ImageJ escapes it in a TIFF description
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "\u00e5": 1e-4,  # angstrom
    "angstrom": 1e-4,
}


def _in_um(value, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres; None for an unknown unit or a non-positive value."""
    factor = _UM_PER_UNIT.get((unit or "").strip().lower())
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not 0 < value < math.inf:
        return None
    return value * factor


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    y, x = (
        _in_um(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "\u00b5m"))
        for a in "YX"
    )
    return (y, x) if y and x else None


def _tiff_pixel_size(tif) -> tuple[float, float] | None:
    from tifffile import RESUNIT

    if tif.is_ome:
        return _ome_pixel_size(tif.ome_metadata or "")
    page = tif.pages.first
    x_per, y_per = page.resolution  # pixels per unit
    if not (x_per > 0 and y_per > 0):
        return None
    if tif.is_imagej:
        unit = (tif.imagej_metadata or {}).get("unit")
    elif page.resolutionunit == RESUNIT.CENTIMETER:
        unit = "cm"
    else:  # inches are desktop DPI (72 px/inch), not a microscope's calibration
        return None
    y, x = _in_um(1 / y_per, unit), _in_um(1 / x_per, unit)
    return (y, x) if y and x else None


def read_pixel_size(path: str | os.PathLike) -> tuple[float, float] | None:
    """The ``(y, x)`` pixel size in micrometres that a TIFF's metadata holds, else None.

    Read from OME-TIFF ``PhysicalSizeY/X`` (with their units), ImageJ TIFFs (resolution tags and
    the ``unit`` of the ImageJ description) or plain TIFF resolution tags in centimetres. Tags in
    inches (desktop DPI), unknown units, PNG and NPY files give None; so does an unreadable file.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _tiff_pixel_size(tif)
    except Exception:  # no metadata worth failing a read for: the image itself reads or says why
        log.debug("%s: no pixel size read", path, exc_info=True)
        return None


def is_prediction_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TIFF written by ``napari-unet predict`` (its Software tag)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.software == PREDICTION_SOFTWARE
    except Exception:  # not a TIFF, unreadable, gone: not one of ours
        return False


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _part_affixes(target: Path) -> tuple[str, str]:
    """Prefix and suffix of ``target``'s temporary names (the stem cut so that they stay short)."""
    return f".{target.stem[:100]}{_PART_TAG}", f"{target.suffix}.part"


def _remove_stale_parts(target: Path) -> None:
    """Remove the ``.part`` files and folders of ``target`` that writers killed by SIGKILL left
    behind."""
    _remove_stale(target.parent, *_part_affixes(target))


def _remove_stale(folder: Path, prefix: str, suffix: str) -> None:
    """Remove the files and folders ``<prefix><pid>-*<suffix>`` in ``folder`` whose writer is
    gone (and that are ``STALE_SECONDS`` old), or that are a day old whatever their pid."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[^/]*" + re.escape(suffix))
    now = time.time()
    for part in folder.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        match = pattern.fullmatch(part.name)
        try:
            age = now - part.lstat().st_mtime
            if match and (age > 86400 or (age > STALE_SECONDS and not _pid_alive(int(match[1])))):
                if part.is_dir() and not part.is_symlink():
                    shutil.rmtree(part)
                else:
                    part.unlink()
                log.info("removed %s, left behind by a killed writer", part)
        except OSError:  # gone meanwhile, or not ours to remove
            continue


_WORK_PREFIX = ".napari-unet-work-"


@contextmanager
def work_folder(parent: str | os.PathLike):
    """Yield a hidden scratch folder ``.napari-unet-work-<pid>-<random>`` in ``parent``,
    removed at the end; those that killed runs left are removed first
    (:func:`remove_stale_work`)."""
    parent = Path(parent)
    remove_stale_work(parent)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_WORK_PREFIX}{os.getpid()}-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_work(parent: str | os.PathLike) -> None:
    """Remove the scratch folders of :func:`work_folder` that killed runs left in ``parent``
    (as ``.part`` files are: their process gone and :data:`STALE_SECONDS` old, or a day old)."""
    if Path(parent).is_dir():
        _remove_stale(Path(parent), _WORK_PREFIX, "")


def _keeps_owner(tmp: Path, old: os.stat_result) -> bool:
    """Give ``tmp`` the owner and group of ``old``; False where that is not allowed."""
    new = tmp.stat()
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return True
    try:
        os.chown(tmp, old.st_uid, old.st_gid)
    except PermissionError:
        return False
    return True


def _install(tmp: Path, target: Path) -> None:
    """Put the complete file ``tmp`` in place of ``target``, keeping what ``target`` was.

    A new file gets the usual mode (umask); an existing one keeps its mode and owner. A file
    with several hard links, or one whose owner cannot be given to the new file, is rewritten
    in place (same inode) from the complete ``tmp``; if that copy fails or is interrupted
    (KeyboardInterrupt), the new contents are kept beside it under ``<name>.napari-unet-new``
    and the error (or a logged warning) says so.
    """
    try:
        old = target.stat()
    except FileNotFoundError:
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
        return
    if old.st_nlink == 1 and _keeps_owner(tmp, old):
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, target)
        return
    try:
        dst = open(target, "r+b")  # noqa: SIM115 - closed below
    except PermissionError:  # not writable in place: replace it, the mode kept
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, target)
        return
    try:
        with dst, open(tmp, "rb") as src:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.truncate()
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException as err:  # an I/O error, or Ctrl-C / SIGTERM midway
        kept = target.with_name(f"{target.name}.napari-unet-new")
        os.replace(tmp, kept)
        why = err.strerror or err if isinstance(err, OSError) else "interrupted"
        said = f"{target} is partly rewritten ({why}); its complete new contents are in {kept}"
        if isinstance(err, OSError):
            raise OSError(err.errno, said) from err
        log.warning("%s", said)
        raise
    tmp.unlink()


def check_writable_folder(
    folder: str | os.PathLike, *, missing_ok: bool = False, context: str | None = None
) -> None:
    """Raise OSError unless files can be written into ``folder``.

    Parameters
    ----------
    folder
        The folder to write into.
    missing_ok
        Also accept a folder that does not exist yet when its nearest existing parent is a
        writable folder, so that it can be created.
    context
        What the caller was doing, the start of each message (e.g. ``"cannot write x.tif"``);
        default ``"cannot write into <folder>"``.

    Raises
    ------
    FileNotFoundError
        ``"<context>: folder <folder> does not exist"`` (unless ``missing_ok``).
    NotADirectoryError
        ``"<context>: <path> is a file, not a folder"``.
    PermissionError
        ``"<context>: folder <path> is not writable"``.
    """
    folder = Path(folder) if str(folder) else Path(".")
    context = context or f"cannot write into {folder}"
    existing = folder
    if missing_ok:
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.exists():
        raise FileNotFoundError(f"{context}: folder {existing} does not exist")
    if not existing.is_dir():
        raise NotADirectoryError(f"{context}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{context}: folder {existing} is not writable")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On any error (KeyboardInterrupt included) the temporary file is removed and ``path`` is left
    as it was, except in the one step that rewrites a file in place (below): there ``path`` may
    be partly rewritten and its new contents are kept in ``<name>.napari-unet-new``. A replaced
    file keeps its mode and owner; a symbolic link stays a link and its target is replaced; a
    file with several hard links is rewritten in place after the new contents are complete, so
    every link sees them (see :func:`_install`). The temporary file is
    ``.<stem>.napari-unet-<pid>-<random><suffix>.part``; one that a killed writer left behind is
    removed by the next write of the same target (``STALE_SECONDS``).
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    folder = target.parent
    check_writable_folder(folder, context=f"cannot write {path}")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    _remove_stale_parts(target)
    prefix, suffix = _part_affixes(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{prefix}{os.getpid()}-", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before it replaces anything
            os.fsync(f.fileno())
        _install(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def tiff_resolution(pixel_size: tuple[float, float], array: np.ndarray | None = None) -> dict:
    """tifffile arguments for a ``(y, x)`` pixel size in micrometres, which
    :func:`read_pixel_size` reads back: an ImageJ description (unit micron) where the ImageJ
    format holds ``array`` (uint8/uint16, 2-D or 3-D), else (and without ``array``, for a file
    written tile by tile) resolution tags in pixels per centimetre."""
    y, x = check_pixel_size(pixel_size)
    if array is not None and array.dtype in (np.uint8, np.uint16) and array.ndim in (2, 3):
        axes = "ZYX" if array.ndim == 3 else "YX"
        return {
            "imagej": True,
            "resolution": (1 / x, 1 / y),
            "metadata": {"unit": "um", "axes": axes},
        }
    return {"resolution": (1e4 / x, 1e4 / y), "resolutionunit": "CENTIMETER"}


def check_pixel_size(pixel_size) -> tuple[float, float]:
    """``pixel_size`` as two positive finite floats ``(y, x)``; ValueError otherwise."""
    try:
        y, x = (float(v) for v in pixel_size)
    except (TypeError, ValueError):
        y = x = math.nan
    if not (0 < y < math.inf and 0 < x < math.inf):
        raise ValueError(f"pixel_size must be two positive numbers (y, x) in um, got {pixel_size}")
    return y, x


def tiff_record_tag(record: dict | None) -> dict:
    """tifffile arguments that store ``record`` (JSON) in :data:`RECORD_TAG`."""
    if record is None:
        return {}
    return {"extratags": [(RECORD_TAG, "s", 0, json.dumps(record, sort_keys=True), True)]}


def read_tiff_record(path: str | os.PathLike) -> dict | None:
    """The run record of a TIFF that ``predict`` wrote (:data:`RECORD_TAG`), or ``None``."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(RECORD_TAG)
            return None if tag is None else dict(json.loads(tag.value))
    except Exception:  # not a TIFF, no record, damaged: no record
        return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _writer(
    fmt: str,
    software: str | None = None,
    pixel_size: tuple[float, float] | None = None,
    record: dict | None = None,
) -> Callable[[Path, np.ndarray], None]:
    if fmt == "tif":
        import tifffile

        extra = {"software": software} if software else {}
        extra.update(tiff_record_tag(record))
        if pixel_size is not None:
            check_pixel_size(pixel_size)
            return lambda p, a: tifffile.imwrite(
                p, a, compression="zlib", **extra, **tiff_resolution(pixel_size, a)
            )
        return lambda p, a: tifffile.imwrite(p, a, compression="zlib", **extra)
    if software or pixel_size is not None or record is not None:
        raise ValueError(f"a Software tag, pixel size or record needs a TIFF file, got .{fmt}")
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


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    software: str | None = None,
    record: dict | None = None,
) -> Path:
    """Write a float image (a weight map, probabilities) atomically to ``.tif`` or ``.npy``.

    ``software`` sets a TIFF's Software tag (e.g. ``PREDICTION_SOFTWARE``), ``record`` its run
    record (:data:`RECORD_TAG`).
    """
    path = Path(path)
    fmt = _format(path, ("tif", "npy"))
    write = _writer(fmt, software, record=record)
    with atomic_path(path) as tmp:
        write(tmp, np.asarray(image))
    return path


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    software: str | None = None,
    pixel_size: tuple[float, float] | None = None,
    record: dict | None = None,
) -> Path:
    """Write an instance label mask atomically; the format follows the suffix.

    ``.tif``/``.tiff`` (uint16, or uint32 when ids need it; stacks as multi-page), ``.png``
    (``(H, W)`` only, uint8 or uint16 as the ids need) or ``.npy``. ``software`` sets a TIFF's
    Software tag (e.g. ``PREDICTION_SOFTWARE``); ``pixel_size`` ``(y, x)`` in micrometres its
    resolution, as Fiji reads it (:func:`read_pixel_size` reads it back); ``record`` a TIFF's
    run record (:data:`RECORD_TAG`, read by :func:`read_tiff_record`). Returns the path.
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
    write = _writer(fmt, software, pixel_size, record)
    with atomic_path(path) as tmp:
        write(tmp, data)
    return path
