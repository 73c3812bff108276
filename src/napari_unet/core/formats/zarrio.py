"""Large images in and out without reading them whole: TIFF page by page, zarr, OME-Zarr.

:func:`inspect_image` reads a file's header (shape, dtype, pixel size); :meth:`ImageFile.open`
gives an ``(H, W[, C])`` array that reads only the slices asked for (a TIFF through tifffile's
zarr view, a zarr or OME-Zarr array, an NPY memory map). Label images go out as OME-Zarr labels
(NGFF 0.4 on zarr format 2: a multiscale pyramid, the input's pixel size kept, readable by
napari-ome-zarr, ome-zarr-py and Fiji) or as TIFF written band by band (BigTIFF past 4 GiB), both
atomically.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..image import MAX_CHANNELS
from .io import (
    IMAGE_SUFFIXES,
    PREDICTION_SOFTWARE,
    _in_um,
    _part_affixes,
    _remove_stale_parts,
    atomic_path,
    check_writable_folder,
    is_prediction_output,
    read_image,
    read_pixel_size,
    read_tiff_record,
    tiff_record_tag,
    tiff_resolution,
)

__all__ = [
    "ImageFile",
    "inspect_image",
    "is_zarr",
    "is_complete_output",
    "atomic_folder",
    "create_multiscale",
    "mark_complete",
    "read_record",
    "write_labels_zarr",
    "pyramid_shapes",
    "levels",
    "update_levels",
    "write_level",
    "write_tiff_bands",
    "NGFF_VERSION",
]

NGFF_VERSION = "0.4"
METADATA_KEY = "napari-unet"
"""Root attribute of an OME-Zarr napari-unet writes: software, model, normalisation, options."""
_TIFF_BAND_BYTES = 64 * 2**20  # a TIFF is written in bands of rows of about this size


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group or array folder (format 2 or 3)."""
    path = Path(path)
    return path.is_dir() and any(
        (path / name).exists() for name in (".zgroup", ".zarray", "zarr.json")
    )


@dataclass(frozen=True)
class ImageFile:
    """A plane on disk: where and how to open it, and what it holds.

    ``shape`` is ``(H, W)`` or ``(H, W, C)`` (channels last); ``pixel_size`` ``(y, x)`` in
    micrometres, or ``None`` when the file does not say. ``index`` picks the plane out of the
    stored array: per stored axis the position kept (an int: a dropped singleton axis) or
    ``None`` (a plane or channel axis; ``()``: every axis); ``channel`` is the stored axis that
    holds channels.
    """

    path: str
    kind: str  # "tiff", "zarr", "npy" or "other" (read whole)
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: tuple[float, float] | None = None
    component: str = ""
    index: tuple = ()
    channel: int | None = None

    @property
    def stem(self) -> str:
        name = Path(self.path).name
        for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return Path(name).stem

    @contextmanager
    def open(self):
        """Yield the ``(H, W[, C])`` plane as a lazily read, sliceable array."""
        if self.kind == "tiff":
            import tifffile
            import zarr

            store = tifffile.imread(self.path, aszarr=True, level=0)
            try:
                yield _Plane(zarr.open(store, mode="r"), self.index, self.channel)
            finally:
                store.close()
        elif self.kind == "zarr":
            import zarr

            array = zarr.open_array(self.path, path=self.component, mode="r")
            yield _Plane(array, self.index, self.channel)
        elif self.kind == "npy":
            yield _Plane(np.load(self.path, mmap_mode="r"), self.index, self.channel)
        else:
            yield read_image(self.path, max_pixels=None)


class _Plane:
    """``(H, W[, C])`` view of one plane of a stored array; reads only what is sliced."""

    def __init__(self, array, index: tuple, channel: int | None):
        ndim = len(array.shape)
        self.array, self.channel = array, channel
        self.index = tuple(index) or (None,) * ndim
        kept = [a for a in range(ndim) if self.index[a] is None]
        self._spatial = [a for a in kept if a != channel]
        # the channel axis's place among the axes the key keeps, moved last after reading
        self._from = kept.index(channel) if channel is not None else None
        self.shape = tuple(array.shape[a] for a in self._spatial)
        if channel is not None:
            self.shape += (array.shape[channel],)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, region) -> np.ndarray:
        region = region if isinstance(region, tuple) else (region,)
        key = [slice(None) if i is None else i for i in self.index]
        for axis, s in zip(self._spatial, region, strict=False):
            key[axis] = s
        part = np.asarray(self.array[tuple(key)])
        if self._from is not None:
            part = np.moveaxis(part, self._from, -1)
        return part


def _ngff_attrs(attrs) -> dict:
    attrs = dict(attrs)
    return dict(attrs.get("ome", attrs))  # NGFF 0.5 nests everything under "ome"


def _plane_layout(shape, names: list[str], what: str) -> tuple[tuple, int | None]:
    """``(index, channel axis)`` that picks the one ``(y, x[, c])`` plane of a stored array
    whose axes are ``names``: ``y`` and ``x`` kept, a ``c`` axis of more than one channel kept
    as channels, any other axis of length 1 dropped wherever it is (ValueError for a longer
    one); see :class:`ImageFile`."""
    index, channel = [], None
    for axis, (n, name) in enumerate(zip(shape, names, strict=True)):
        if name in ("y", "x"):
            index.append(None)
        elif name == "c" and n > 1:
            if n > MAX_CHANNELS:
                raise ValueError(
                    f"{what} has {n} channels; distributed prediction takes at most "
                    f"{MAX_CHANNELS} (one (y, x) plane with or without channels)"
                )
            index.append(None)
            channel = axis
        elif n == 1:
            index.append(0)
        else:
            raise ValueError(
                f"{what} holds {n} planes along its {name!r} axis; distributed prediction "
                "takes one (y, x) plane, with or without channels"
            )
    return tuple(index), channel


def _inspect_zarr(path: Path) -> ImageFile:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        names = ["?"] * (node.ndim - 2) + ["y", "x"]
        if node.ndim == 3 and node.shape[-1] <= MAX_CHANNELS:
            names = ["y", "x", "c"]
        return _zarr_file(path, "", node, names, None)
    multiscales = _ngff_attrs(node.attrs).get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} is a zarr group but not an OME-Zarr image (no multiscales)")
    try:
        ms = multiscales[0]
        dataset = ms["datasets"][0]
        array = node[dataset["path"]]
        axes = ms.get("axes") or ["t", "c", "z", "y", "x"][-array.ndim :]
        names = [a["name"] if isinstance(a, dict) else a for a in axes]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
        transforms = dataset.get("coordinateTransformations", [])
        scale = next((t["scale"] for t in transforms if t["type"] == "scale"), None)
        size = None
        if scale is not None and "y" in names and "x" in names:
            um = "micrometer"  # the unit when the axis names none
            y, x = (_in_um(scale[names.index(a)], units[names.index(a)] or um) for a in "yx")
            size = (y, x) if y and x else None
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(
            f"{path} has malformed OME-Zarr metadata ({type(err).__name__}: {err}); expected "
            "multiscales[0] with datasets[0].path naming an array, and axes matching its shape"
        ) from err
    return _zarr_file(path, dataset["path"], array, names, size)


def _zarr_file(path, component, array, names, size) -> ImageFile:
    missing = array.nchunks - array.nchunks_initialized
    if missing:
        raise ValueError(
            f"{path}: {missing} of its {array.nchunks} chunks are missing, and zarr would read "
            f"them as {array.fill_value!r}, changing the normalisation and the cells; this "
            "looks like an incomplete copy (if those regions are truly empty, write them, e.g. "
            "with zarr's write_empty_chunks=True)"
        )
    index, channel = _plane_layout(array.shape, names, str(path))
    plane = _Plane(array, index, channel)
    return ImageFile(str(path), "zarr", plane.shape, plane.dtype, size, component, index, channel)


def inspect_image(path: str | os.PathLike) -> ImageFile:
    """What :meth:`ImageFile.open` will give for ``path``, from its header alone.

    TIFF (series 0; a stack of planes is refused), zarr arrays, OME-Zarr images (level 0 of the
    first multiscale; singleton axes dropped, a ``c`` axis as channels), NPY, PNG. The pixel
    size is :func:`~napari_unet.core.formats.io.read_pixel_size`'s for a TIFF, the scale of level 0
    (in its unit, micrometres when it names none) for an OME-Zarr image.
    """
    path = Path(path)
    if is_zarr(path):
        return _inspect_zarr(path)
    from .io import image_info

    shape, dtype = image_info(path)
    suffix = path.suffix.lower()
    if len(shape) > 3 or (len(shape) == 3 and shape[-1] > MAX_CHANNELS):
        raise ValueError(
            f"{path} is a stack of shape {shape}; distributed prediction of one large image "
            "takes one (H, W[, C]) plane"
        )
    channel = 2 if len(shape) == 3 else None
    kind = {".tif": "tiff", ".tiff": "tiff", ".npy": "npy"}.get(suffix, "other")
    size = read_pixel_size(path)
    return ImageFile(str(path), kind, tuple(shape), dtype, size, channel=channel)


def is_complete_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished output of ``napari-unet predict`` (TIFF or OME-Zarr).

    Outputs are written atomically, so one that exists with our mark is complete.
    """
    path = Path(path)
    if not is_zarr(path):
        return path.is_file() and is_prediction_output(path)
    import zarr

    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
        return attrs.get(METADATA_KEY, {}).get("software") == PREDICTION_SOFTWARE
    except Exception:  # unreadable or not a group: not one of ours
        return False


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary folder beside ``path`` that replaces it when the block ends without
    error (renamed in one step; a folder already at ``path`` is moved aside first and removed
    after); on error the temporary folder is removed and ``path`` stays as it was. Temporary
    folders that a killed run left are removed first (as
    :func:`~napari_unet.core.formats.io.atomic_path` removes its files).
    """
    path = Path(path)
    check_writable_folder(path.parent, context=f"cannot write {path}")
    _remove_stale_parts(path)
    prefix, suffix = _part_affixes(path)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{pid}-", suffix=suffix))
    old = None
    try:
        yield tmp
        if path.exists():
            old = tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{pid}-old-", suffix=suffix)
            old = Path(old)
            os.replace(path, old / "x")
        os.replace(tmp, path)
    except BaseException:
        if old is not None and (old / "x").exists():
            os.replace(old / "x", path)  # the new one did not take its place: put it back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pyramid_shapes(shape: tuple[int, int], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """``(H, W)`` of each level, halving (nearest) until the plane fits one ``(cy, cx)`` chunk."""
    shapes = [tuple(shape)]
    while any(n > c for n, c in zip(shapes[-1], chunks, strict=True)) and min(shapes[-1]) > 1:
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    return shapes


def create_multiscale(
    path: str | os.PathLike,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    dtype,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    name: str = "labels",
    metadata: dict | None = None,
    label: bool = True,
):
    """An empty multiscale OME-Zarr image (NGFF 0.4, zarr format 2): a label image (``label``
    True, the default) or a plain image (``label=False``, e.g. probabilities).

    Levels ``"0"``, ``"1"``, ... are ``(H, W)`` arrays of ``(cy, cx)`` ``chunks`` (a writer
    that fills level 0 block by block in parallel passes its blocks' size, so that no two
    blocks share a chunk), each half the last (nearest: labels stay ids); level 0 has
    ``pixel_size`` (``(y, x)`` in ``unit``; ``None``: 1 per pixel). The root is both a
    multiscale image and an ``image-label``, so viewers open it as labels; ``metadata`` is
    stored under the ``"napari-unet"`` attribute, without the mark of a complete output
    (:func:`mark_complete` adds it once the levels are written). ``label=False``: a plain
    multiscale image (e.g. probabilities; its levels are subsampled as well). Returns the zarr
    group.
    """
    import zarr

    size = tuple(pixel_size) if pixel_size else (1.0, 1.0)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for level, level_shape in enumerate(pyramid_shapes(shape, chunks)):
        root.create_array(
            str(level),
            shape=level_shape,
            chunks=tuple(min(c, n) for c, n in zip(chunks, level_shape, strict=True)),
            dtype=dtype,
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        scale = [s * 2**level for s in size]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    axis = {"type": "space", **({"unit": unit} if unit else {})}
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": NGFF_VERSION,
                    "name": name,
                    "axes": [{"name": "y", **axis}, {"name": "x", **axis}],
                    "datasets": datasets,
                    "type": "nearest",
                }
            ],
            **({"image-label": {"version": NGFF_VERSION}} if label else {}),
            METADATA_KEY: dict(metadata or {}),
        }
    )
    return root


def mark_complete(root, **record) -> None:
    """Mark the label image ``root`` (from :func:`create_multiscale`) as a complete output of
    ``napari-unet predict`` (what :func:`is_complete_output` looks for), adding ``record`` to
    its metadata; call it once every level is written."""
    root.attrs[METADATA_KEY] = {
        **root.attrs[METADATA_KEY],
        **record,
        "software": PREDICTION_SOFTWARE,
    }


def read_record(path: str | os.PathLike) -> dict | None:
    """The run record of an output of ``predict``: the ``"napari-unet"`` metadata of an
    OME-Zarr output, the record tag of a TIFF (``None`` when it has none)."""
    if not is_zarr(path):
        return read_tiff_record(path)
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs.get(METADATA_KEY, {}))


def write_labels_zarr(
    path: str | os.PathLike,
    labels: np.ndarray,
    chunks: tuple[int, int],
    *,
    pixel_size: tuple[float, float] | None = None,
    metadata: dict | None = None,
    label: bool = True,
) -> Path:
    """Write ``(H, W)`` ``labels`` in memory as a complete OME-Zarr label image atomically
    (uint32, as :func:`~napari_unet.core.large.distributed.segment_large` writes them;
    ``pixel_size`` ``(y, x)`` in micrometres). ``label=False``: ``labels`` are probabilities,
    written as a float32 OME-Zarr image."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        root = create_multiscale(
            tmp,
            labels.shape,
            chunks,
            np.uint32 if label else np.float32,
            pixel_size=pixel_size,
            unit="micrometer" if pixel_size else None,
            name="labels" if label else "probabilities",
            metadata=metadata,
            label=label,
        )
        root["0"][:] = labels
        for level, shape in enumerate(pyramid_shapes(labels.shape, chunks)[1:], start=1):
            write_level(root, level, (slice(0, shape[0]), slice(0, shape[1])))
        mark_complete(root, **({"cells": int(labels.max(initial=0))} if label else {}))
    return path


def levels(root) -> list:
    """The arrays of the OME-Zarr multiscale group ``root``, finest first (read lazily)."""
    return [root[d["path"]] for d in root.attrs["multiscales"][0]["datasets"]]


def update_levels(root, region: tuple[slice, slice]) -> None:
    """Refresh every coarser level of ``root`` where level-0 ``region`` was written: at level
    ``k`` the pixels ``ceil(start / 2**k) .. ceil(stop / 2**k)`` (every ``2**k``-th pixel)."""
    for level, array in enumerate(levels(root)[1:], start=1):
        f = 2**level
        scaled = tuple(
            slice(-(-s.start // f), min(-(-s.stop // f), n))
            for s, n in zip(region, array.shape, strict=True)
        )
        if all(s.start < s.stop for s in scaled):
            write_level(root, level, scaled)


def write_level(root, level: int, region: tuple[slice, slice]) -> None:
    """Fill ``region`` of pyramid ``level`` (>= 1) from level 0 (every ``2**level``-th pixel)."""
    f = 2**level
    source = root["0"]
    rows, cols = (slice(s.start * f, s.stop * f, f) for s in region)
    root[str(level)][region] = source[rows, cols]


def write_tiff_bands(
    path: str | os.PathLike,
    array,
    *,
    pixel_size: tuple[float, float] | None = None,
    dtype=None,
    software: str = PREDICTION_SOFTWARE,
    record: dict | None = None,
) -> Path:
    """Write the ``(H, W)`` ``array`` (zarr or numpy) to a tiled, zlib TIFF atomically, reading
    it band by band (about 64 MiB at a time); BigTIFF when it needs 4 GiB or more.

    ``dtype``: the TIFF's (default: ``array``'s). ``pixel_size`` ``(y, x)`` in micrometres is
    written as :func:`~napari_unet.core.formats.io.write_labels` writes it (resolution tags in
    pixels per centimetre, which :func:`~napari_unet.core.formats.io.read_pixel_size` reads back).
    """
    path = Path(path)
    height, width = array.shape
    dtype = np.dtype(dtype or array.dtype)
    tile = 256
    rows = max(tile, _TIFF_BAND_BYTES // max(1, width * dtype.itemsize) // tile * tile)

    def tiles():
        for y in range(0, height, rows):
            band = np.asarray(array[y : y + rows]).astype(dtype, copy=False)
            for ty in range(0, band.shape[0], tile):
                for tx in range(0, width, tile):
                    yield band[ty : ty + tile, tx : tx + tile]

    extra = tiff_resolution(pixel_size) if pixel_size is not None else {}
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width),
            dtype=dtype,
            tile=(tile, tile),
            compression="zlib",
            bigtiff=height * width * dtype.itemsize >= 2**32 - 2**25,
            software=software,
            **tiff_record_tag(record),
            **extra,
        )
    return path
