"""What the docks of one viewer share: the current model, who uses it, the annotated regions."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer

    from ..core.network.model import UNet
    from ._ui import Messages

__all__ = ["CHANGE", "PREDICTING", "TRAINING", "ModelSession", "session_for"]

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
BUNDLED_DEFAULT = "bundled default"


TRAINING, PREDICTING = "training", "predicting"  # runs that use the model (claim / release)
CHANGE = "change the current model"  # set_model, undo: not a run, but it must wait for one
_ACTIONS = {TRAINING: "start another fine-tuning run", CHANGE: "change the current model"}


class ModelSession:
    """The model the docks of one viewer work with, who is using it, and the regions chosen.

    ``model`` is loaded lazily (the default bundled model) on first use; :meth:`get_model` is
    the one place that turns a missing or damaged bundled model into a message.
    ``claim(task)`` / ``release(task)`` count the runs in flight (:data:`TRAINING`,
    :data:`PREDICTING`). Fine-tuning trains a copy and swaps it in when it ends, so a training
    run blocks only a second training run and changes of the current model (:data:`CHANGE`:
    :meth:`set_model`, :meth:`undo`); predictions share the model (each keeps the model object
    it started with) and block nothing. :meth:`check_free` is the one place that says so to the
    user. A model set with ``undoable=True`` (a fine-tuning result) keeps the model it replaced,
    and :meth:`undo` goes back to it. ``region_for(image)`` is the annotated region the Annotate
    dock chose for an image (None: the whole image), which Fine-tune uses. Signals, all emitted
    on the main thread: ``model_changed()``, ``busy_changed(busy)`` (see :attr:`busy`) and
    ``region_changed(image)``.
    """

    model_changed = Signal()
    busy_changed = Signal(str)
    region_changed = Signal(object)

    def __init__(self) -> None:
        self._model: UNet | None = None
        self.source = ""
        self._runs = {TRAINING: 0, PREDICTING: 0}
        self._previous: tuple[UNet, str] | None = None
        self._regions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def model(self) -> UNet:
        """The current model; loads the default bundled model on first use (may raise
        FileNotFoundError when none ships, ValueError or OSError when it is damaged)."""
        if self._model is None:
            from ..core.network import store

            self._model = store.load_bundled()
            self.source = f"bundled: {store.bundled_models()[0]}"
            self.model_changed.emit()
        return self._model

    def get_model(self, messages: Messages) -> UNet | None:
        """The current model, or None after one notification saying why there is none."""
        from ..core.network import store

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
        ``undoable``: keep the model it replaces for :meth:`undo` (else forget any). Raises
        RuntimeError while a fine-tuning run is in flight."""
        self._check(CHANGE)
        previous = (self._model, self.source) if self._model is not None else None
        self._previous = previous if undoable else None
        self._model, self.source = model, source
        self.model_changed.emit()

    @property
    def can_undo(self) -> bool:
        return self._previous is not None

    def undo(self) -> None:
        """Go back to the model before the last undoable :meth:`set_model`."""
        self._check(CHANGE)
        if self._previous is None:
            raise RuntimeError("nothing to undo")
        (self._model, self.source), self._previous = self._previous, None
        self.model_changed.emit()

    @property
    def busy(self) -> str:
        """:data:`TRAINING` while a fine-tuning run is in flight, else :data:`PREDICTING` while
        a prediction is, else ``""``."""
        return next((task for task, n in self._runs.items() if n), "")

    def refusal(self, task: str) -> str:
        """Why ``task`` (:data:`TRAINING`, :data:`PREDICTING`, :data:`CHANGE`) cannot start
        now, for users; ``""`` if it can."""
        if task in _ACTIONS and self._runs[TRAINING]:
            return (
                f"cannot {_ACTIONS[task]}: the model is busy training (its copy is swapped in "
                "when the run ends); stop it or wait"
            )
        return ""

    def check_free(self, task: str, messages: Messages) -> bool:
        """True if ``task`` can start now; else False after one warning saying why."""
        refusal = self.refusal(task)
        if refusal:
            messages.warning(refusal)
        return not refusal

    def _check(self, task: str) -> None:
        refusal = self.refusal(task)
        if refusal:
            raise RuntimeError(refusal)

    def claim(self, task: str) -> None:
        """Count a run of ``task`` (:data:`TRAINING` or :data:`PREDICTING`) as in flight;
        RuntimeError if it cannot start now (see :meth:`check_free`)."""
        self._check(task)
        busy = self.busy
        self._runs[task] += 1
        if self.busy != busy:
            self.busy_changed.emit(self.busy)

    def release(self, task: str) -> None:
        """The run of ``task`` counted by :meth:`claim` has ended."""
        busy = self.busy
        self._runs[task] = max(self._runs[task] - 1, 0)
        if self.busy != busy:
            self.busy_changed.emit(self.busy)

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
