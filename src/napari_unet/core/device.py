"""The one place where the compute device is chosen."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """The device to run ``model`` on: ``device`` if given, else where the model's weights are."""
    if device is not None:
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}; expected 'cpu', 'cuda' or 'mps'"
            ) from err
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
