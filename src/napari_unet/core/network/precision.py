"""The one place where the arithmetic precision of the network is chosen.

``precision`` is ``"auto"``, ``"fp32"`` or ``"bf16"`` everywhere it is taken (prediction,
fine-tuning, the blocks of a large image, the CLI, the docks). :func:`resolve_precision` turns
it into what runs on a device: ``"auto"`` is bfloat16 where the processor computes it natively
(a CPU with the ``avx512_bf16`` or ``amx_bf16`` flags, an ARM CPU with the ``bf16`` feature, a
CUDA GPU that supports it) and float32 elsewhere; a CUDA GPU without bfloat16 runs float16
(``"fp16"``, training with a gradient scaler). Explicit ``"bf16"`` runs everywhere (CPUs without
it emulate it, slowly). The weights stay float32 in every case: :func:`autocast` runs the
network's convolutions in the lower precision and the caller computes softmax and loss in
float32, so saved models do not change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from . import PRECISIONS

__all__ = [
    "PRECISIONS",
    "check_precision",
    "cpu_flags",
    "resolve_precision",
    "autocast",
    "dtype_name",
]

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NATIVE_BF16 = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags, ARM feature
CPUINFO = Path("/proc/cpuinfo")


def check_precision(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` or ``"fp16"``; ValueError saying what is
    expected otherwise. Says nothing of the device (see :func:`resolve_precision`)."""
    if not isinstance(precision, str) or precision not in (*PRECISIONS, "fp16"):
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))} "
            f"('fp16' on a CUDA GPU), got {precision!r}"
        )
    return precision


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features`` of ``/proc/cpuinfo``), read once
    per process; empty where the file is not there (macOS, Windows)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def resolve_precision(precision, device: torch.device | str) -> str:
    """What runs on ``device`` for ``precision``: ``"fp32"``, ``"bf16"`` or (a CUDA GPU without
    bfloat16) ``"fp16"``.

    ``"auto"`` is ``"bf16"`` on a CPU whose flags (:func:`cpu_flags`) include ``avx512_bf16``,
    ``amx_bf16`` or ARM's ``bf16``, or on a CUDA GPU that supports bfloat16, ``"fp16"`` on an
    older CUDA GPU, and ``"fp32"`` elsewhere (other CPUs, MPS). ``"bf16"`` on a CUDA GPU without
    bfloat16 is ``"fp16"``. ValueError for a value not in :data:`PRECISIONS`, and for ``"fp16"``
    anywhere but on a CUDA GPU.
    """
    check_precision(precision)
    kind = torch.device(device).type
    if kind == "cuda":
        if precision == "fp32":
            return "fp32"
        if precision == "fp16":
            return "fp16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16":
        raise ValueError(
            f"precision 'fp16' runs on a CUDA GPU only, not on {kind!r}; "
            f"expected one of {', '.join(map(repr, PRECISIONS))}"
        )
    if precision == "auto":
        return "bf16" if kind == "cpu" and cpu_flags() & _NATIVE_BF16 else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str):
    """A context in which ``device``'s network computes at ``precision`` (a resolved one:
    ``"fp32"``, ``"bf16"`` or ``"fp16"``): ``torch.autocast`` for the lower ones, nothing for
    float32. Weights stay float32; outputs of convolutions come out in the lower dtype, so cast
    logits to float32 before softmax or loss."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def dtype_name(precision: str) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: the words of logs and status lines."""
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
