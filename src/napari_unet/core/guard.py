"""Who is using a model: predictions share it, fine-tuning has it alone.

:func:`using` marks a model for the life of a core generator (from its first step until it
finishes, fails or is closed, from whichever thread closes it). The first user moves the model to
its device in channels-last memory format and eval mode; the last one puts back the device, memory
format and mode the caller had, so a model comes back from the core as it went in. A fine-tuning
that starts while predictions run on the same model object, or a prediction that starts while it
is fine-tuned, raises :class:`RuntimeError` at once: tiles would otherwise mix the weights of
different steps. Nothing waits, so nothing can deadlock; fine-tune a ``copy.deepcopy(model)`` to
keep predicting with the old weights meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["PREDICTING", "FINETUNING", "using"]

PREDICTING, FINETUNING = "predicting", "fine-tuning"

_lock = threading.Lock()
_uses: dict[torch.nn.Module, _Use] = {}


@dataclass
class _Use:
    """The tasks using one model, and the state to give back when the last one leaves."""

    task: str
    thread: str
    device: torch.device
    count: int
    training: bool
    home: torch.device
    memory_format: torch.memory_format


def _memory_format(model: torch.nn.Module) -> torch.memory_format:
    """Channels-last if the model's first kernel whose two layouts differ is stored so."""
    for p in model.parameters():
        if p.ndim == 4:
            channels_last = p.is_contiguous(memory_format=torch.channels_last)
            if channels_last != p.is_contiguous():
                return torch.channels_last if channels_last else torch.contiguous_format
    return torch.contiguous_format


def _home(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _move(model: torch.nn.Module, device: torch.device, memory_format) -> None:
    # outside inference mode even if the caller's thread is in it: weights converted there
    # would become inference tensors, which training cannot use
    with torch.inference_mode(False), torch.no_grad():
        model.to(device=device, memory_format=memory_format)


@contextmanager
def using(
    model: torch.nn.Module, task: str, device: torch.device, *, keep_mode: bool = True
) -> Iterator[None]:
    """Mark ``model`` as used by ``task`` (:data:`PREDICTING` or :data:`FINETUNING`).

    Parameters
    ----------
    model
        The network; inside the context it is on ``device``, channels-last and in eval mode.
    task
        :data:`PREDICTING` shares the model with other predictions on the same device;
        :data:`FINETUNING` needs it alone.
    device
        Where the task runs.
    keep_mode
        When the last user leaves, restore the training flag the model came with (``False``:
        leave it in eval mode, as fine-tuning does).

    Raises
    ------
    RuntimeError
        The model is in use by a task it cannot share with, saying which and what to do.
    """
    with _lock:
        use = _uses.get(model)
        if use is not None:
            _check_shareable(use, task, device)
            use.count += 1
        else:
            use = _Use(
                task=task,
                thread=threading.current_thread().name,
                device=device,
                count=1,
                training=model.training,
                home=_home(model),
                memory_format=_memory_format(model),
            )
            _move(model, device, torch.channels_last)
            model.eval()
            _uses[model] = use
    try:
        yield
    finally:
        with _lock:
            use.count -= 1
            if use.count == 0:
                del _uses[model]
                _move(model, use.home, use.memory_format)
                model.train(use.training and keep_mode)


def _check_shareable(use: _Use, task: str, device: torch.device) -> None:
    holder = f"{use.task} (started in thread {use.thread!r})"
    if use.task == FINETUNING:
        raise RuntimeError(
            f"the model is busy {holder}; {task} with it now would mix the weights of different "
            "training steps. Wait until the fine-tuning generator ends or close it, or use a "
            "copy (copy.deepcopy(model))"
        )
    if task == FINETUNING:
        running = f"{use.count} prediction(s)"
        raise RuntimeError(
            f"the model is busy {holder}: {running} running; fine-tuning needs it alone. Let the "
            "prediction generators end or close them first, or fine-tune a copy "
            "(copy.deepcopy(model))"
        )
    if not _same(use.device, device):
        raise RuntimeError(
            f"the model is busy {holder} on {use.device}; a prediction on {device} cannot share "
            f"it. Predict on {use.device} or use a copy (copy.deepcopy(model))"
        )
