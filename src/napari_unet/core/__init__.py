"""The headless engine (never Qt, napari or magicgui), in parts that import only those below them.

``image`` (arrays: checks, channels, normalisation), ``edit`` (label edits) and ``metrics``
(scores) import no other part; then ``formats`` (files), ``network`` (the U-Net and its files),
``prediction`` (tiles, probabilities, cells), and on top ``training`` and ``large`` (large images
block by block), which do not import each other. Everything needs numpy, scipy, scikit-image
and torch only, but for ``large.distributed`` (dask.distributed, the ``distributed`` extra) and
the OME-Zarr functions (zarr), which import them themselves; importing the core never imports
dask. The rules are docs/design.md's and tests/test_layers.py checks them.
"""
