"""Who is using a model: predictions share it, fine-tuning has it alone.

:func:`using` marks a model for the life of a core generator (from its first step until it
finishes, fails or is closed, from whichever thread closes it). The first user moves the model to
its device in channels-last memory format and eval mode; the last one puts back the device, memory
format and training flag the caller had, so a model comes back from the core as it went in.

Tiles must not mix the weights of different training steps, so:

- a fine-tuning refuses to start while another fine-tuning or a prediction of the same model
  object is in flight;
- a prediction refuses to start while another thread fine-tunes the model (during a step, or
  paused between steps); the thread that runs the fine-tuning's steps may predict between them
  (``for event in finetune(...): predict(model, image)`` works);
- a fine-tuning step refuses to run while a prediction it let in is still in flight.

Each refusal is a :class:`RuntimeError` that says who holds the model and what to do. Nothing
waits, so nothing can deadlock; fine-tune a ``copy.deepcopy(model)`` to keep predicting with the
old weights meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["PREDICTING", "FINETUNING", "using", "training_step"]

PREDICTING, FINETUNING = "predicting", "fine-tuning"
_ADVICE = "or use a copy (copy.deepcopy(model))"

_lock = threading.Lock()
_uses: dict[torch.nn.Module, _Use] = {}


@dataclass
class _Use:
    """Who uses one model, and the state to give back when the last one leaves."""

    device: torch.device
    training: bool
    home: torch.device
    memory_format: torch.memory_format
    predictions: list[str] = field(default_factory=list)  # thread names, one per prediction
    tuner: str = ""  # name of the thread that started or last stepped the fine-tuning
    tuner_id: int | None = None  # its identity (None: no fine-tuning)
    stepping: bool = False  # a fine-tuning step is computing


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
        The network; inside the context it is on ``device`` in channels-last memory format, in
        eval mode for a prediction.
    task
        :data:`PREDICTING` shares the model with other predictions on the same device;
        :data:`FINETUNING` needs it alone (see the module's rules and :func:`training_step`).
    device
        Where the task runs.
    keep_mode
        When the last user leaves, restore the training flag the model came with (``False``:
        leave it in eval mode, as fine-tuning does, even if another user leaves last).

    Raises
    ------
    RuntimeError
        The model is in use by a task it cannot share with, saying which and what to do.
    """
    thread = threading.current_thread()
    name = thread.name  # the thread that leaves may be another one
    with _lock:
        use = _uses.get(model)
        if use is None:
            use = _Use(device, model.training, _home(model), _memory_format(model))
            _move(model, device, torch.channels_last)
            _uses[model] = use
        else:
            _check_shareable(use, task, device, thread)
        if task == FINETUNING:
            use.tuner, use.tuner_id = thread.name, thread.ident
        else:
            use.predictions.append(name)
            model.eval()
    try:
        yield
    finally:
        with _lock:
            if task == FINETUNING:
                use.tuner, use.tuner_id = "", None
            else:
                use.predictions.remove(name)
            use.training = use.training and keep_mode
            if use.tuner_id is None and not use.predictions:
                del _uses[model]
                _move(model, use.home, use.memory_format)
                model.train(use.training)


@contextmanager
def training_step(model: torch.nn.Module) -> Iterator[None]:
    """One step of the fine-tuning that holds ``model`` (inside :func:`using`); RuntimeError if
    a prediction of the model is in flight."""
    thread = threading.current_thread()
    with _lock:
        use = _uses[model]
        if use.predictions:
            raise RuntimeError(
                f"a prediction of the model (started in thread {use.predictions[0]!r}) is still "
                "in flight; the next fine-tuning step would change the weights under it. Let the "
                f"prediction generator end or close it before the next step, {_ADVICE}"
            )
        use.stepping, use.tuner, use.tuner_id = True, thread.name, thread.ident
    try:
        yield
    finally:
        with _lock:
            use.stepping = False


def _check_shareable(use: _Use, task: str, device: torch.device, thread) -> None:
    if use.tuner_id is not None:
        holder = f"the model is busy fine-tuning (in thread {use.tuner!r})"
        if task == FINETUNING:
            raise RuntimeError(
                f"{holder}; two fine-tunings cannot share it. Wait until that generator ends or "
                f"close it, {_ADVICE}"
            )
        if use.stepping or thread.ident != use.tuner_id:
            raise RuntimeError(
                f"{holder}; predicting with it from thread {thread.name!r} would mix the "
                "weights of different training steps. Wait until the fine-tuning generator "
                f"ends or close it, predict between its steps in its own thread, {_ADVICE}"
            )
    elif task == FINETUNING:
        raise RuntimeError(
            f"the model is busy predicting ({len(use.predictions)} prediction(s) in flight, the "
            f"first started in thread {use.predictions[0]!r}); fine-tuning needs it alone. Let "
            f"the prediction generators end or close them first, or fine-tune a copy "
            "(copy.deepcopy(model))"
        )
    if not _same(use.device, device):
        raise RuntimeError(
            f"the model is in use on {use.device}; a {task} on {device} cannot share it. "
            f"Use {use.device}, {_ADVICE}"
        )
