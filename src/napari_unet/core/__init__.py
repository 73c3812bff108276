"""The headless engine: numpy, scipy, scikit-image and torch only (never Qt or napari)."""
