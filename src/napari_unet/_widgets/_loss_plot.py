"""A small loss curve drawn with QPainter (no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Training loss against step: a polyline in auto-scaled axes, the last value as text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: list[tuple[int, float]] = []
        self.setMinimumHeight(90)
        self.setToolTip("Training loss (weighted cross-entropy of each step's batch)")

    @property
    def points(self) -> list[tuple[int, float]]:
        """The ``(step, loss)`` points drawn so far."""
        return list(self._points)

    def add(self, step: int, loss: float) -> None:
        """Append one point (non-finite losses are skipped) and redraw."""
        if math.isfinite(loss):
            self._points.append((step, loss))
            self.update()

    def clear(self) -> None:
        self._points.clear()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(240, 120)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        colour = self.palette().windowText().color()
        painter.setPen(QPen(colour, 1))
        metrics = painter.fontMetrics()
        line = metrics.height()
        if not self._points:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss: no steps yet")
            return
        steps = [s for s, _ in self._points]
        losses = [v for _, v in self._points]
        x0, x1 = min(steps), max(steps)
        y0, y1 = min(losses), max(losses)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5 * abs(y0 or 1), y1 + 0.5 * abs(y1 or 1)
        top_label, bottom_label = f"{y1:.3g}", f"{y0:.3g}"
        left = max(metrics.horizontalAdvance(top_label), metrics.horizontalAdvance(bottom_label))
        area = QRectF(left + 6, line + 4, self.width() - left - 12, self.height() - 2 * line - 8)
        if area.width() <= 1 or area.height() <= 1:
            return
        painter.drawRect(area)
        painter.drawText(QPointF(2, area.top() + metrics.ascent()), top_label)
        painter.drawText(QPointF(2, area.bottom()), bottom_label)
        below = area.bottom() + metrics.ascent() + 2
        painter.drawText(QPointF(area.left(), below), str(x0))
        last_step = str(max(steps))
        right = area.right() - metrics.horizontalAdvance(last_step)
        painter.drawText(QPointF(right, below), last_step)
        step, loss = self._points[-1]
        painter.drawText(
            QRectF(0, 0, area.right(), line + 2),
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
            f"loss {loss:.4g} (step {step})",
        )
        polyline = QPolygonF(
            [
                QPointF(
                    area.left() + (s - x0) / (x1 - x0) * area.width(),
                    area.bottom() - (v - y0) / (y1 - y0) * area.height(),
                )
                for s, v in self._points
            ]
        )
        painter.setPen(QPen(self.palette().highlight().color(), 1.5))
        painter.drawPolyline(polyline)
