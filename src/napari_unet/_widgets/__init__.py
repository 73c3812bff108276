"""Dock widgets: thin layers-in, core-call-in-a-worker, layers-out classes, one per module."""
