"""The U-Net of Ronneberger, Fischer and Brox (2015) and its size arithmetic.

Every 3x3 convolution is unpadded ("valid"), so an input tile of side ``i`` gives an output of side
``o = output_size(i) < i`` that depends only on that input: overlap-tile prediction is exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "check_architecture", "state_shapes", "parameter_count", "LIMITS"]

LIMITS = {
    "in_channels": (1, 64),
    "n_classes": (2, 256),
    "base_channels": (1, 1024),
    "depth": (0, 8),
}
"""Inclusive ``(low, high)`` range of each architecture value napari-unet builds."""

MAX_PARAMETERS = 2**26
"""Largest network napari-unet builds or loads: 67 million weights (256 MiB of float32), twice
the paper's network (31 million, base 64); what a laptop can still fine-tune and run. A file
describing more is refused from its header, before anything is allocated."""


def check_architecture(
    in_channels: int = 1, n_classes: int = 2, base_channels: int = 64, depth: int = 4
) -> dict:
    """The architecture as a dict, checked against ``LIMITS`` and ``MAX_PARAMETERS``.

    Pure arithmetic, so a model file's header can be checked before any network is built.
    Raises ValueError naming the value and its range.
    """
    config = {
        "in_channels": in_channels,
        "n_classes": n_classes,
        "base_channels": base_channels,
        "depth": depth,
    }
    for name, value in config.items():
        low, high = LIMITS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(
                f"UNet {name} must be an integer >= {low} and <= {high}, got {value!r}"
            )
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"a UNet with {config} has {count:,} parameters; at most {MAX_PARAMETERS:,} "
            "are supported (a smaller base_channels or depth)"
        )
    return config


def state_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in the ``state_dict`` of ``UNet(**config)``, computed
    without building it."""
    base, depth = config["base_channels"], config["depth"]
    widths = [base * 2**k for k in range(depth + 1)]
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    for k in range(depth + 1):
        conv(f"down.{k}.0", config["in_channels"] if k == 0 else widths[k - 1], widths[k], 3)
        conv(f"down.{k}.2", widths[k], widths[k], 3)
    for j, k in enumerate(reversed(range(depth))):
        shapes[f"upconv.{j}.weight"] = (widths[k + 1], widths[k], 2, 2)  # (in, out, kh, kw)
        shapes[f"upconv.{j}.bias"] = (widths[k],)
    for j, k in enumerate(reversed(range(depth))):
        conv(f"up.{j}.0", 2 * widths[k], widths[k], 3)
        conv(f"up.{j}.2", widths[k], widths[k], 3)
    conv("head", widths[0], config["n_classes"], 1)
    return shapes


def parameter_count(config: dict) -> int:
    """Number of weights of ``UNet(**config)`` (paper network: 31,030,658), without building it."""
    return sum(math.prod(shape) for shape in state_shapes(config).values())


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with valid 3x3 convolutions, 2x2 max-pooling, 2x2 up-convolutions, cropped skips.

    Parameters
    ----------
    in_channels
        Channels of the input image (1 for grey).
    n_classes
        Output classes; class 1 is the foreground for ``n_classes == 2``.
    base_channels
        Feature maps of the first level, doubled at each pooling (paper: 64).
    depth
        Number of 2x2 poolings (paper: 4).

    Each value must lie in its range in ``LIMITS`` (ValueError otherwise).

    Notes
    -----
    ``UNet()`` is the paper's network: ``output_size(572) == 388``, 31,030,658 parameters. The
    forward pass takes ``(N, in_channels, i, i)`` with ``i`` a valid input size and returns
    ``(N, n_classes, o, o)`` logits, ``o = output_size(i)`` (sides may differ, each valid).
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 2, base_channels: int = 64, depth: int = 4
    ):
        super().__init__()
        check_architecture(in_channels, n_classes, base_channels, depth)
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_channels = base_channels
        self.depth = depth
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList(
            [_double_conv(in_channels, widths[0])]
            + [_double_conv(widths[k - 1], widths[k]) for k in range(1, depth + 1)]
        )
        self.upconv = nn.ModuleList(
            [
                nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2)
                for k in reversed(range(depth))
            ]
        )
        self.up = nn.ModuleList(
            [_double_conv(2 * widths[k], widths[k]) for k in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    # ----------------------------------------------------------------- architecture as a dict
    def config(self) -> dict:
        """The constructor arguments, enough to rebuild this architecture."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "base_channels": self.base_channels,
            "depth": self.depth,
        }

    # ---------------------------------------------------------------------- size arithmetic
    @property
    def multiple(self) -> int:
        """``2**depth``: tiles must start at image offsets that are multiples of this."""
        return 2**self.depth

    def _try_output_size(self, n: int) -> int | None:
        s = n
        for _ in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                return None
            s //= 2
        s -= 4
        if s <= 0:
            return None
        for _ in range(self.depth):
            s = 2 * s - 4
            if s <= 0:
                return None
        return s

    @property
    def margin(self) -> int:
        """Pixels lost on each side: ``(i - output_size(i)) / 2`` for valid ``i`` (paper: 92)."""
        n = self.min_input_size
        return (n - self._try_output_size(n)) // 2

    @property
    def min_input_size(self) -> int:
        """The smallest valid input side."""
        n = 1
        while self._try_output_size(n) is None:
            n += 1
        return n

    def output_size(self, n: int) -> int:
        """Output side for input side ``n``; ValueError naming the nearest valid sizes."""
        out = self._try_output_size(int(n))
        if out is None:
            low = self.min_input_size
            step = self.multiple
            below = low + (max(int(n) - low, 0) // step) * step
            if below > n:
                below = None
            above = low if n < low else below + step
            nearest = f"{below} or {above}" if below is not None else f"{above}"
            raise ValueError(
                f"input size {n} is not valid for a U-Net of depth {self.depth}: every size "
                f"before a 2x2 pooling must be even and positive; nearest valid sizes: {nearest}"
            )
        return out

    def input_size(self, n: int) -> int:
        """Smallest valid input side whose output side is at least ``n``."""
        n = max(int(n), 1)
        low = self.min_input_size
        i = max(low, n + 2 * self.margin)
        # valid inputs are ``low + k * 2**depth``
        k = -(-(i - low) // self.multiple)
        return low + k * self.multiple

    # ------------------------------------------------------------------------ forward pass
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x)
            if k < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = upconv(x)
            dy = (skip.shape[-2] - x.shape[-2]) // 2
            dx = (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def multiply_adds(self, height: int, width: int | None = None) -> int:
        """Multiply-adds of one forward pass on a valid ``(height, width)`` input."""
        width = height if width is None else width
        self.output_size(height), self.output_size(width)
        total = 0
        h, w = height, width

        def conv(h, w, cin, cout, k=3):
            return (h - k + 1) * (w - k + 1) * cin * cout * k * k

        widths = [self.base_channels * 2**k for k in range(self.depth + 1)]
        cin = self.in_channels
        for k in range(self.depth + 1):
            total += conv(h, w, cin, widths[k]) + conv(h - 2, w - 2, widths[k], widths[k])
            h, w, cin = h - 4, w - 4, widths[k]
            if k < self.depth:
                h, w = h // 2, w // 2
        for k in reversed(range(self.depth)):
            h, w = 2 * h, 2 * w
            total += h * w * widths[k + 1] * widths[k]  # 2x2 stride-2 transposed conv
            total += conv(h, w, 2 * widths[k], widths[k]) + conv(
                h - 2, w - 2, widths[k], widths[k]
            )
            h, w = h - 4, w - 4
        return total + h * w * widths[0] * self.n_classes
