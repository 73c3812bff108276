"""The U-Net, its files (safetensors, bioimage.io packages), its device, the guard on its use.

Importing this package imports nothing (no torch): the constants below serve the docks too.
"""

PRECISIONS = ("auto", "fp32", "bf16")
"""What ``precision`` takes (``"fp16"`` too, on a CUDA GPU only); see
:mod:`~napari_unet.core.network.precision`."""

NEW_BASE_CHANNELS = 16
"""``base_channels`` of a new network to fine-tune from scratch (``train --model new``, the
Fine-tune dock's new network): a quarter of the paper's 64, quick to train on a CPU."""
