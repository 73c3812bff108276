"""Models on disk: safetensors weights with the architecture and metadata in the header.

Files are never unpickled. ``napari_unet/models/<name>.safetensors`` are the bundled models.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from importlib import resources
from pathlib import Path

from ..formats.io import atomic_path
from .model import UNet, check_architecture, parameter_count, state_shapes

__all__ = [
    "save_model",
    "load_model",
    "load_bioimageio",
    "file_size_estimate",
    "bundled_models",
    "load_bundled",
    "open_model",
]

FORMAT = "napari-unet/1"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_HEADER_BYTES = 64 * 1024  # more than the JSON header of any napari-unet model needs
WEIGHTS_NAME = "napari-unet.safetensors"
"""The file of a bioimage.io package that holds its napari-unet model (:func:`load_bioimageio`)."""


def save_model(model: UNet, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save ``model`` to a ``.safetensors`` file, atomically.

    The header holds the architecture (``UNet.config()``) and ``metadata`` (any JSON-serialisable
    dict: training data, steps, scores). Returns the path. A failed write (disk full, file too
    large) raises OSError, as any other file error, and leaves no file behind.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model files end in .safetensors, got {path.name}")
    if not isinstance(model, UNet):
        raise TypeError(f"save_model expects a napari_unet.UNet, got {type(model).__name__}")
    try:
        meta_json = json.dumps(metadata or {})
    except TypeError as err:
        raise ValueError(f"metadata must be JSON-serialisable: {err}") from err
    header = {
        "format": FORMAT,
        "architecture": json.dumps(model.config()),
        "metadata": meta_json,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except OSError:
            raise
        except Exception as err:  # safetensors' own error type, also for a full disk
            if "I/O error" not in str(err):
                raise
            raise _os_error(str(err)) from err
    return path


def _os_error(text: str) -> OSError:
    """OSError with the errno of a safetensors message ("I/O error: ... (os error 28)")."""
    code = re.search(r"\(os error (\d+)\)", text)
    return OSError(int(code[1]), text) if code else OSError(text)


def file_size_estimate(architecture: dict) -> int:
    """Bytes that :func:`save_model` writes for a UNet of ``architecture`` (an upper bound)."""
    return 4 * parameter_count(architecture) + _HEADER_BYTES


def _looks_pickled(path: Path) -> bool:
    """torch's zip container, or a bare pickle (protocol 2-5: ``0x80`` then the protocol) that
    is not a safetensors file (8 bytes of header length, then its JSON ``{``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return False
    protocol = head[1] if len(head) > 1 else 0
    return head[:2] == b"PK" or (head[:1] == b"\x80" and 2 <= protocol <= 5)


def _pickle_error(path: Path) -> ValueError:
    return ValueError(
        f"{path.name} looks like a PyTorch pickle; napari-unet never unpickles files (they can "
        "run code). If you trust it, convert it once: model = napari_unet.UNet(...); "
        "model.load_state_dict(torch.load(path, weights_only=True)); "
        "napari_unet.save_model(model, 'model.safetensors')"
    )


def _read_header(path: Path) -> tuple[dict, dict[str, tuple[tuple[int, ...], str]]]:
    """The header's metadata and ``{name: (shape, dtype)}`` of its tensors, nothing loaded."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a .safetensors model file")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        if _looks_pickled(path):
            raise _pickle_error(path)
        raise ValueError(
            f"{path.name} is not a model file napari-unet reads; expected a .safetensors file "
            "saved with napari_unet.save_model"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            names = f.keys()
            tensors = {}
            for name in names:
                piece = f.get_slice(name)
                tensors[name] = (tuple(piece.get_shape()), piece.get_dtype())
    except Exception as err:  # safetensors raises its own error types for damaged files
        if _looks_pickled(path):
            raise _pickle_error(path) from err
        raise ValueError(
            f"{path} is not a readable model file (truncated or not safetensors): {err}"
        ) from err
    return header, tensors


def _parse_header(path: Path, header: dict) -> tuple[dict, dict]:
    if header.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not a napari-unet model (no '{FORMAT}' header); "
            "save models with napari_unet.save_model"
        )
    try:
        architecture = json.loads(header["architecture"])
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has a damaged napari-unet header: {err}") from err
    if not isinstance(architecture, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{path} has a damaged napari-unet header: expected JSON objects")
    return architecture, metadata


def _checked_architecture(path: Path, architecture: dict, tensors: dict) -> dict:
    """The header's architecture, checked against its ranges and against the file's tensors."""
    expected_keys = set(check_architecture())
    if set(architecture) != expected_keys:
        raise ValueError(
            f"{path} has a damaged napari-unet header: architecture keys "
            f"{sorted(architecture)}, expected {sorted(expected_keys)}"
        )
    try:
        config = check_architecture(**architecture)
    except ValueError as err:
        raise ValueError(f"{path} has an impossible architecture: {err}") from err
    expected = state_shapes(config)
    found = {name: shape for name, (shape, _) in tensors.items()}
    if found != expected:
        n_found = sum(math.prod(shape) for shape in found.values())
        wrong = sorted(set(found) ^ set(expected)) or sorted(
            n for n in expected if found[n] != expected[n]
        )
        raise ValueError(
            f"{path} does not hold a consistent napari-unet model: its header describes "
            f"{config} ({parameter_count(config):,} weights in {len(expected)} tensors) but "
            f"the file holds {n_found:,} weights in {len(found)} tensors "
            f"(first difference: {wrong[0]})"
        )
    odd = sorted(name for name, (_, dtype) in tensors.items() if dtype not in _FLOAT_DTYPES)
    if odd:
        raise ValueError(
            f"{path} does not hold a consistent napari-unet model: tensor {odd[0]} has dtype "
            f"{tensors[odd[0]][1]}; expected floating-point weights"
        )
    return config


def load_model(path: str | os.PathLike, device=None) -> UNet:
    """Rebuild the :class:`UNet` saved in ``path``; its ``metadata`` dict is attached to it.

    The header is checked first (each architecture value in range, every tensor's name and
    shape as the architecture predicts), so a damaged or crafted file costs no memory.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header, tensors = _read_header(path)
    architecture, metadata = _parse_header(path, header)
    config = _checked_architecture(path, architecture, tensors)
    try:
        model = UNet(**config)
        model.load_state_dict(load_file(str(path), device="cpu"))
    except Exception as err:
        raise ValueError(f"{path} does not hold a consistent napari-unet model: {err}") from err
    model.metadata = metadata
    model.eval()
    return model.to(device) if device is not None else model


def _models_folder():
    return resources.files("napari_unet") / "models"


def bundled_models() -> list[str]:
    """Names of the models shipped in ``napari_unet/models`` (file stems), sorted."""
    folder = _models_folder()
    if not folder.is_dir():
        return []
    suffix = ".safetensors"
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def load_bundled(name: str | None = None, device=None) -> UNet:
    """Load a bundled model by name; ``None`` loads the default (the first listed)."""
    names = bundled_models()
    if not names:
        raise FileNotFoundError(
            "no bundled model ships with this installation of napari-unet "
            "(napari_unet/models/*.safetensors is empty); load a file with load_model(path)"
        )
    if name is None:
        name = names[0]
    if name not in names:
        raise ValueError(f"unknown bundled model {name!r}; available: {', '.join(names)}")
    with resources.as_file(_models_folder() / f"{name}.safetensors") as path:
        return load_model(path, device=device)


def open_model(name_or_path: str | os.PathLike | None = None, device=None) -> UNet:
    """A model file's path, a bundled model's name, or ``None`` for the default bundled model;
    a ``.zip`` is a bioimage.io package napari-unet exported (:func:`load_bioimageio`)."""
    if name_or_path is None:
        return load_bundled(device=device)
    path = Path(name_or_path)
    if path.suffix.lower() == ".zip":
        return load_bioimageio(path, device=device)
    if path.suffix or path.exists() or len(path.parts) > 1:
        return load_model(path, device=device)
    return load_bundled(str(name_or_path), device=device)


def _checked_entry(path: Path, package: zipfile.ZipFile, entry: zipfile.ZipInfo) -> int:
    """The size in bytes of the model in ``entry``, from its safetensors header read out of the
    zip (architecture and tensors checked as :func:`load_model` checks a file); ValueError
    before anything is extracted when the header is damaged, describes a model napari-unet does
    not load, or the entry declares another size."""
    with package.open(entry) as source:
        length = int.from_bytes(source.read(8), "little")
        if not 0 < length <= _HEADER_BYTES:
            raise ValueError(f"{path}: its {WEIGHTS_NAME} has no napari-unet model header")
        try:
            header = json.loads(source.read(length))
            tensors = {
                name: (tuple(t["shape"]), t["dtype"], t["data_offsets"][1])
                for name, t in header.items()
                if name != "__metadata__"
            }
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise ValueError(f"{path}: its {WEIGHTS_NAME} has a damaged header: {err}") from err
    name = Path(f"{path.name}:{WEIGHTS_NAME}")
    architecture, _ = _parse_header(name, header.get("__metadata__") or {})
    _checked_architecture(name, architecture, {k: v[:2] for k, v in tensors.items()})
    size = 8 + length + max((end for *_, end in tensors.values()), default=0)
    if entry.file_size != size:
        raise ValueError(
            f"{path}: its {WEIGHTS_NAME} declares {entry.file_size:,} bytes but its model "
            f"holds {size:,}; not extracted"
        )
    return size


def _copy_at_most(package: zipfile.ZipFile, entry: zipfile.ZipInfo, out: Path, limit: int):
    """Write ``entry`` of ``package`` to ``out``, refusing (ValueError) once it exceeds
    ``limit`` bytes whatever the zip declared."""
    written = 0
    with package.open(entry) as source, open(out, "wb") as target:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise ValueError(
                    f"{entry.filename} in {package.filename} holds more than the {limit:,} "
                    "bytes its header describes; not extracted"
                )
            target.write(chunk)


def load_bioimageio(path: str | os.PathLike, device=None):
    """The :class:`~napari_unet.core.network.model.UNet` of a bioimage.io package that napari-unet
    exported (its ``napari-unet.safetensors``, checked as any model file; nothing unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such bioimage.io package: {path}")
    try:
        with zipfile.ZipFile(path) as package:
            names = package.namelist()
            if WEIGHTS_NAME not in names:
                raise ValueError(
                    f"{path} has no {WEIGHTS_NAME}: napari-unet opens the bioimage.io packages it "
                    "exported; open others with bioimageio.core"
                )
            entry = package.getinfo(WEIGHTS_NAME)
            size = _checked_entry(path, package, entry)
            with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as folder:
                weights = Path(folder) / WEIGHTS_NAME
                _copy_at_most(package, entry, weights, size)
                model = load_model(weights, device=device)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path} is not a readable bioimage.io package (damaged zip): "
            f"{err or type(err).__name__}"
        ) from err
    model.metadata = {**model.metadata, "source": f"bioimage.io package {path.name}"}
    return model
