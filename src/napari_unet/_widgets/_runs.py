"""The Predict dock's runs: one :class:`Run` per route, chosen once when Predict is pressed.

In memory (:class:`~._in_memory.InMemoryRun`: the image read whole, tiles streamed into new
layers), lazy (:class:`~._lazy.LazyRun`: a large image that is not in memory, block by block
into on-disk layers, in this process) or on a dask cluster (:class:`~._cluster.ClusterRun`: a
file block by block, labels opened when complete). The dock drives every run the same way on the
main thread: :meth:`Run.apply` each event of its worker, :meth:`Run.refresh` the layers now and
then, show :attr:`Run.status`, and at the end :meth:`Run.finish` (or :meth:`Run.discard` when
the worker never started, :meth:`Run.drop` when the image was closed during the run: no result
of an image that is gone is added). Nothing here runs Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..core.large.blocks import DEFAULT_BLOCK, SAMPLE_VALUES

if TYPE_CHECKING:
    from ..core.prediction.instances import InstanceConfig
    from ._worker import Outcome

__all__ = ["SAMPLE", "Run", "Settings"]

SAMPLE = (DEFAULT_BLOCK, SAMPLE_VALUES)
"""Block side and most pixels of the normalisation sample, for the lazy and the cluster route
alike: ``segment_large``'s (and so the CLI's) defaults, whatever the block size."""


@dataclass(frozen=True)
class Settings:
    """The dock's choices a run uses."""

    config: InstanceConfig  # every route's: sizes None follow the diameter used
    tile: int  # tile side of the in-memory route; 0: automatic
    block: int  # block side of the lazy and the cluster route; 0: automatic
    flips: bool
    folder: Path | None  # "save labels in"; None: the system's temporary folder
    model_label: str  # how the model is recorded with a cluster's labels
    diameter: float | None = None  # the typed cell diameter (px); None: automatic
    precision: str = "auto"  # the network's arithmetic: "auto", "fp32" or "bf16"


class Run(Protocol):
    """One run of the Predict dock, on the main thread."""

    done: int  # tiles, blocks or tasks done
    total: int  # of as many (0: not known yet)
    dirty: bool  # layers written since the last refresh

    @property
    def status(self) -> str:
        """The progress line, e.g. ``"tile 3/12"``."""

    def apply(self, event) -> str | None:
        """Apply one event of the worker; a message when the run must stop, else None."""

    def refresh(self) -> None:
        """Show what was written since the last refresh."""

    def finish(self, outcome: Outcome) -> str:
        """Place or keep what the run made, as ``outcome`` says it ended; the status line."""

    def discard(self) -> None:
        """Undo what making the run did, when its worker did not start."""

    def drop(self) -> None:
        """Remove what the run made, its image having been closed while it ran."""
