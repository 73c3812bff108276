"""Fixtures for widget tests (real napari viewers under Xvfb)."""

from __future__ import annotations

import pytest


@pytest.fixture
def notes():
    """The napari notifications shown during the test (objects with ``.message``)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)
