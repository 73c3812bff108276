"""Files and what is written from labels: images (TIFF, PNG, NPY, zarr, OME-Zarr), ROI sets and
cell measurements."""
