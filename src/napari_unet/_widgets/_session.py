"""The current model of one viewer, shared by the Fine-tune, Predict and Export widgets."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:
    import napari

    from ..core.model import UNet

__all__ = ["ModelSession", "session_for"]

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelSession:
    """The model the widgets of one viewer work with, and who is using it.

    ``model`` is loaded lazily (the default bundled model) on first use. ``claim(task)`` marks
    the model busy ("training", "predicting") so that two workers never use it at once;
    ``release()`` frees it. Signals: ``model_changed()`` and ``busy_changed(task)`` (``""`` when
    free), both emitted on the main thread.
    """

    model_changed = Signal()
    busy_changed = Signal(str)

    def __init__(self) -> None:
        self._model: UNet | None = None
        self.source = ""
        self.busy = ""

    @property
    def model(self) -> UNet:
        """The current model; loads the default bundled model on first use (may raise)."""
        if self._model is None:
            from ..core.store import bundled_models, load_bundled

            self._model = load_bundled()
            self.source = f"bundled: {bundled_models()[0]}"
        return self._model

    @property
    def has_model(self) -> bool:
        return self._model is not None

    def set_model(self, model: UNet, source: str) -> None:
        """Make ``model`` the current model; ``source`` says where it came from (for users)."""
        if self.busy:
            raise RuntimeError(f"the model is busy {self.busy}; wait or stop it first")
        self._model, self.source = model, source
        self.model_changed.emit()

    def claim(self, task: str) -> bool:
        """Mark the model busy with ``task``; False (and nothing changed) if it already is."""
        if self.busy:
            return False
        self.busy = task
        self.busy_changed.emit(task)
        return True

    def release(self) -> None:
        self.busy = ""
        self.busy_changed.emit("")


def session_for(viewer: napari.viewer.Viewer) -> ModelSession:
    """The one :class:`ModelSession` of ``viewer`` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = ModelSession()
    return session
