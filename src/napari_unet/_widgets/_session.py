"""What the docks of one viewer share: the current model, who uses it, the annotated regions."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer

    from ..core.model import UNet
    from ._ui import Messages

__all__ = ["ModelSession", "session_for"]

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
BUNDLED_DEFAULT = "bundled default"


class ModelSession:
    """The model the docks of one viewer work with, who is using it, and the regions chosen.

    ``model`` is loaded lazily (the default bundled model) on first use; :meth:`get_model` is
    the one place that turns a missing or damaged bundled model into a message. ``claim(task)``
    marks the model busy ("training", "predicting") so that two workers never use it at once;
    ``release()`` frees it. A model set with ``undoable=True`` (a fine-tuning result) keeps the
    model it replaced, and :meth:`undo` goes back to it. ``region_for(image)`` is the annotated
    region the Annotate dock chose for an image (None: the whole image), which Fine-tune uses.
    Signals, all emitted on the main thread: ``model_changed()``, ``busy_changed(task)``
    (``""`` when free) and ``region_changed(image)``.
    """

    model_changed = Signal()
    busy_changed = Signal(str)
    region_changed = Signal(object)

    def __init__(self) -> None:
        self._model: UNet | None = None
        self.source = ""
        self.busy = ""
        self._previous: tuple[UNet, str] | None = None
        self._regions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def model(self) -> UNet:
        """The current model; loads the default bundled model on first use (may raise
        FileNotFoundError when none ships, ValueError or OSError when it is damaged)."""
        if self._model is None:
            from ..core import store

            self._model = store.load_bundled()
            self.source = f"bundled: {store.bundled_models()[0]}"
            self.model_changed.emit()
        return self._model

    def get_model(self, messages: Messages) -> UNet | None:
        """The current model, or None after one notification saying why there is none."""
        from ..core import store

        try:
            return self.model
        except FileNotFoundError:
            messages.error(
                "no model: no bundled model ships with this installation; load a .safetensors "
                "file (Predict, model 'file…') or fine-tune a new network"
            )
        except (OSError, ValueError) as err:
            name = (store.bundled_models() or ["?"])[0]
            messages.error(
                f"the bundled model '{name}' could not be loaded ({err}); reinstall "
                "napari-unet, or load a .safetensors file (Predict, model 'file…')"
            )
        return None

    @property
    def has_model(self) -> bool:
        return self._model is not None

    @property
    def label(self) -> str:
        """Where the current model comes from, for users (before loading: the bundled one)."""
        return self.source if self.has_model else BUNDLED_DEFAULT

    def set_model(self, model: UNet, source: str, *, undoable: bool = False) -> None:
        """Make ``model`` the current model; ``source`` says where it came from (for users).
        ``undoable``: keep the model it replaces for :meth:`undo` (else forget any)."""
        if self.busy:
            raise RuntimeError(f"the model is busy {self.busy}; wait or stop it first")
        previous = (self._model, self.source) if self._model is not None else None
        self._previous = previous if undoable else None
        self._model, self.source = model, source
        self.model_changed.emit()

    @property
    def can_undo(self) -> bool:
        return self._previous is not None

    def undo(self) -> None:
        """Go back to the model before the last undoable :meth:`set_model`."""
        if self.busy:
            raise RuntimeError(f"the model is busy {self.busy}; wait or stop it first")
        if self._previous is None:
            raise RuntimeError("nothing to undo")
        (self._model, self.source), self._previous = self._previous, None
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

    def region_for(self, image: Image) -> Layer | None:
        """The region layer chosen for ``image`` (None: the whole image)."""
        return self._regions.get(image)

    def set_region(self, image: Image, region: Layer | None) -> None:
        """Choose the annotated region of ``image`` (None: the whole image)."""
        if self._regions.get(image) is region:
            return
        if region is None:
            self._regions.pop(image, None)
        else:
            self._regions[image] = region
        self.region_changed.emit(image)


def session_for(viewer: napari.viewer.Viewer) -> ModelSession:
    """The one :class:`ModelSession` of ``viewer`` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = ModelSession()
    return session
