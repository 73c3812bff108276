"""What the docks share on screen: one message style, and a dock that stays narrow.

Every notification of a dock starts with its name ("Predict: ...") and says one problem in one
short sentence. :func:`narrow` lets combo boxes elide long layer names and status lines wrap,
so no layer name or message widens a dock and shrinks napari's canvas. :class:`FixedRadioButtons`
keeps its buttons when napari resets a dock's choices.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, Label, RadioButtons
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QComboBox, QSizePolicy

__all__ = ["COMBO_CHARS", "FixedRadioButtons", "Messages", "narrow", "plural", "row"]

COMBO_CHARS = 12  # characters a combo box shows before it elides a longer name
LABEL_MIN_WIDTH = 60  # px; a wrapped label grows in height, not in width
ELIDE = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon


class Messages:
    """napari notifications of the dock ``dock``, each prefixed with its name."""

    def __init__(self, dock: str) -> None:
        self.dock = dock

    def error(self, text: str) -> None:
        show_error(f"{self.dock}: {text}")

    def warning(self, text: str) -> None:
        show_warning(f"{self.dock}: {text}")

    def info(self, text: str) -> None:
        show_info(f"{self.dock}: {text}")


class FixedRadioButtons(RadioButtons):
    """Radio buttons of fixed choices, made once.

    napari resets the choices of a dock's widgets on every change of the layers (and a dock
    that watches the layers resets them too), and magicgui's RadioButtons rebuild their buttons
    on each reset: a button added to the visible group and removed again in the same turn of
    the event loop is shown by Qt as a top-level window (its queued "show") before its deferred
    deletion, at the top-left of the screen, over the main window's menus. Fixed choices are
    made once (magicgui's first reset) and never rebuilt.
    """

    def reset_choices(self, *_) -> None:
        """Make the buttons the first time; later, nothing to reset: the choices are fixed."""
        if not self.choices:
            super().reset_choices()


def narrow(container: Container) -> None:
    """Let ``container``'s combo boxes elide long entries and its labels wrap; nested
    containers (rows of buttons, groups) add no margins of their own."""
    for widget in container:
        if isinstance(widget, Container):
            widget.margins = (0, 0, 0, 0)
            narrow(widget)
        elif isinstance(widget, ComboBox):
            widget.native.setSizeAdjustPolicy(ELIDE)
            widget.native.setMinimumContentsLength(COMBO_CHARS)
        elif isinstance(widget, Label):
            widget.native.setWordWrap(True)
            widget.native.setMinimumWidth(LABEL_MIN_WIDTH)  # else Qt sizes it to the text
            widget.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)


def plural(n: int, word: str) -> str:
    """``"1 cell"``, ``"2 cells"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def row(*widgets) -> Container:
    """``widgets`` side by side, without labels (e.g. two buttons)."""
    return Container(layout="horizontal", labels=False, widgets=widgets)


def precision_box(value: str) -> ComboBox:
    """The precision choice of the Predict and Fine-tune docks."""
    from ..core.network import PRECISIONS

    return ComboBox(
        label="precision",
        choices=PRECISIONS,
        value=value,
        tooltip="Arithmetic of the network: auto is bfloat16 where the processor computes it "
        "natively (CPUs with AVX512-BF16 or AMX, recent GPUs), else float32; bf16 is faster "
        "there and emulated (slower) elsewhere. Weights stay float32.",
    )


def precision_words(asked: str, model) -> str:
    """What ``model`` computes in for the precision ``asked`` ("auto" resolved where its weights
    are), in the words of a status line, e.g. ``"float32"``."""
    from ..core.network.device import resolve_device
    from ..core.network.precision import dtype_name, resolve_precision

    return dtype_name(resolve_precision(asked, resolve_device(None, model)))
