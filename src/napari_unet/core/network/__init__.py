"""The U-Net, its files (safetensors, bioimage.io packages), its device, the guard on its use.

Importing this package imports nothing (no torch): the constant below serves the docks too.
"""

NEW_BASE_CHANNELS = 16
"""``base_channels`` of a new network to fine-tune from scratch (``train --model new``, the
Fine-tune dock's new network): a quarter of the paper's 64, quick to train on a CPU."""
