"""The one place where the compute device is chosen and checked."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(
    device: str | torch.device | None, model: torch.nn.Module | None = None
) -> torch.device:
    """The device to run ``model`` on: ``device`` if given, else where the model's weights are
    (the CPU without a model).

    A given ``device`` must be one torch can run on here: ValueError saying why not (an unknown
    name, no CUDA GPU or no such GPU index, MPS not available, a device type napari-unet does
    not run on).
    """
    if device is None:
        param = next(model.parameters(), None) if model is not None else None
        return param.device if param is not None else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {device!r}: PyTorch {torch.__version__} sees no CUDA GPU on this "
                "machine; use 'cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r}: there are only {count} CUDA GPU(s) (0-{count - 1})"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: Apple's MPS is not available here; use 'cpu'")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r}: napari-unet runs on 'cpu', 'cuda' or 'mps'")
    return resolved
