"""One background run of a dock: claim the model, start, end exactly once, release.

A :class:`Task` drives a core generator (tiles, training steps) in a napari thread worker. Its
worker body never raises: an exception becomes the run's :class:`Outcome`, so napari relays
nothing, no ``RuntimeError`` is turned into a warning that skips ``finished`` (superqt does that),
and the worker always ends with ``returned`` and ``finished``. The generator is closed in the
worker's thread as soon as the run ends, also on Cancel, so nothing it holds (inference mode,
allocator settings, the model's training mode) outlives the run. The dock's ``on_done(outcome)``
runs once, on the main thread, after the model was released, and the error, if any, has been
shown once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari.qt.threading import create_worker

if TYPE_CHECKING:
    from ._session import ModelSession
    from ._ui import Messages

__all__ = ["Outcome", "Task"]

log = logging.getLogger("napari_unet")


@dataclass
class Outcome:
    """How a run ended: ``value`` returned by the generator, ``error`` raised by it, or
    ``cancelled`` (neither)."""

    value: object = None
    error: Exception | None = None
    cancelled: bool = True


def _drive(events: Generator, stop: threading.Event):
    """Worker body: yield what ``events`` yields until it ends or ``stop`` is set; return an
    :class:`Outcome`, never raise; ``events`` is closed here, in the worker's thread."""
    try:
        try:
            while not stop.is_set():
                try:
                    item = next(events)
                except StopIteration as end:
                    return Outcome(value=end.value, cancelled=False)
                yield item
            return Outcome()
        finally:
            events.close()
    except Exception as err:  # shown once by the main thread, see Task._on_returned
        log.debug("background run failed", exc_info=err)
        return Outcome(error=err, cancelled=False)


class Task:
    """Run ``events`` in a thread worker for a dock.

    Parameters
    ----------
    events
        The generator to drive, made (not started) on the main thread.
    messages
        The dock's notifications (a failure is shown once through them).
    on_yielded
        Called on the main thread with each item ``events`` yields.
    on_done
        Called once on the main thread with the :class:`Outcome`, after the model was released.
    session, task
        The session whose model the run uses, and how (``TRAINING``, ``PREDICTING``: see
        :meth:`ModelSession.check_free`); None for none.
    """

    def __init__(
        self,
        events: Generator,
        messages: Messages,
        *,
        on_yielded: Callable[[object], None],
        on_done: Callable[[Outcome], None],
        session: ModelSession | None = None,
        task: str = "",
    ) -> None:
        self._events = events
        self._messages = messages
        self._on_yielded = on_yielded
        self._on_done = on_done
        self._session = session
        self._task = task
        self._stop = threading.Event()
        self._outcome = Outcome()
        self.worker = None

    def start(self) -> bool:
        """Claim the model and start the worker; False (after one message, with the claim
        undone and the generator closed) when the session refuses the task or the start
        failed."""
        if self._session is not None:
            if not self._session.check_free(self._task, self._messages):
                self._events.close()
                return False
            self._session.claim(self._task)
        try:
            self.worker = create_worker(
                _drive,
                self._events,
                self._stop,
                _start_thread=False,
                _connect={
                    "yielded": self._on_yielded,
                    "returned": self._on_returned,
                    "errored": self._on_errored,
                    "finished": self._on_finished,
                },
            )
            self.worker.start()
        except Exception as err:
            self._release()
            self._events.close()
            self._messages.error(f"could not start: {err}")
            return False
        return True

    def cancel(self) -> None:
        """Stop after the current step (the generator is then closed in the worker)."""
        self._stop.set()

    @property
    def cancelling(self) -> bool:
        return self._stop.is_set()

    def _on_returned(self, outcome: Outcome) -> None:
        self._outcome = outcome
        err = outcome.error
        if err is not None:
            self._messages.error(f"failed: {str(err) or type(err).__name__}")

    def _on_errored(self, err: Exception) -> None:  # only if superqt itself fails
        self._on_returned(Outcome(error=err, cancelled=False))

    def _on_finished(self) -> None:
        self._events.close()  # a no-op unless napari's activity dock aborted the worker
        self._release()
        self._on_done(self._outcome)

    def _release(self) -> None:
        if self._session is not None:
            self._session.release(self._task)
