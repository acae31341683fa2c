"""The sparse U-Net of DESIGN §2 (the paper's Table I).

Five levels of two 3×3 convolutions with ReLU. The encoder C1–C4 pools after C1,
C2 and C3 only, so C4, C5 and C6 share one resolution (Table I's 32, 32 | 32) and
the input size must be divisible by 8. The decoder C6–C9 upsamples before C7, C8
and C9 and concatenates the encoder output of the same resolution. A 1×1
convolution maps C92 to the class logits.

φ, the layers whose activations become features, are the 18 convolution outputs
C11…C92 after ReLU: 1,600 channels at width 1.0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

# Channels of each level's two convolutions at width 1.0: encoder C1..C5, decoder C6..C9.
FULL_WIDTH_CHANNELS = (32, 64, 96, 128, 160, 128, 96, 64, 32)
# Downsampling factor of each level relative to the input (three poolings).
LEVEL_STRIDES = (1, 2, 4, 8, 8, 8, 4, 2, 1)
# Encoder level whose output is concatenated into each decoder level C6..C9.
SKIP_FROM = {6: 4, 7: 3, 8: 2, 9: 1}
DIVISOR = 8


@dataclass(frozen=True)
class LayerSpec:
    """One layer of φ: its name (C11…C92), channel count, stride and first feature index."""

    name: str
    channels: int
    stride: int
    offset: int


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; saved beside its weights.

    Args:
        width: multiplier of every level's channel count (1.0 = Table I, 1,600 channels in φ).
        in_channels: 1 (grey) or 3 (RGB).
        num_classes: output classes of the pixel-wise softmax (2: object / background).
        image_size: the (square) size the model was trained at; inputs of any size
            divisible by 8 work, the indexer resizes to this one.
    """

    width: float = 1.0
    in_channels: int = 1
    num_classes: int = 2
    image_size: int = 32
    arch: str = field(default="unet")

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size % DIVISOR:
            raise ValueError(f"image_size must be divisible by {DIVISOR}, got {self.image_size}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(max(1, round(c * self.width)) for c in FULL_WIDTH_CHANNELS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in ("width", "in_channels", "num_classes", "image_size", "arch") if k in d}
        return cls(**known)


def phi_layers(config: UNetConfig) -> list[LayerSpec]:
    """The layers of φ in feature order, each with its channel offset in the object vector."""
    specs, offset = [], 0
    for level, (ch, stride) in enumerate(zip(config.level_channels, LEVEL_STRIDES), start=1):
        for conv in (1, 2):
            specs.append(LayerSpec(f"C{level}{conv}", ch, stride, offset))
            offset += ch
    return specs


class _Level(nn.Module):
    """Two 3×3 convolutions with ReLU; both outputs are layers of φ."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # without autograd (indexing, queries) the ReLU overwrites the convolution's output instead of
        # allocating another map: the same values, 1.22x the images/s of 64×64 batches of 256 (333 →
        # 406, benchmarks/profile_index.py); training keeps the out-of-place form autograd records
        inplace = not torch.is_grad_enabled()
        a1 = F.relu(self.conv1(x), inplace=inplace)
        a2 = F.relu(self.conv2(a1), inplace=inplace)
        return a1, a2

    def forward_up(self, low: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward(cat([upsample2x(low), skip]))` without making the upsampled map or the concatenation
        (inference only: the same values to float rounding, ~1e-6).

        conv1 is linear in its input, so it splits into its skip channels' convolution plus its
        upsampled channels' one, and a 3×3 convolution of a nearest-upsampled map is, at each of the
        four output parities, a 2×2 convolution of the low-resolution map whose taps sum the 3×3 taps
        that land on the same low-resolution pixel: 16 instead of 36 multiply-adds per pair of channels
        and output pixel, on a map a quarter the size. The whole forward pass of 64×64 batches of 256
        runs 1.28× the images/s of upsampling and concatenating (benchmarks/results/profile_index.md)."""
        c_low = low.shape[1]
        weight = self.conv1.weight
        out = F.conv2d(skip, weight[:, c_low:], self.conv1.bias, padding=1)  # (B, C, 2n, 2n)
        padded = F.pad(low, (1, 1, 1, 1))  # (B, c_low, n + 2, n + 2)
        n_h, n_w = low.shape[2], low.shape[3]
        w_low = weight[:, :c_low]
        for a in (0, 1):  # output rows 2i + a
            rows = _PHASE_TAPS[a]
            for b in (0, 1):  # output columns 2j + b
                cols = _PHASE_TAPS[b]
                kernel = torch.stack([torch.stack([w_low[:, :, r][:, :, :, c].sum(dim=(2, 3)) for c in cols], -1)
                                      for r in rows], -2)  # (C, c_low, 2, 2)
                out[:, :, a::2, b::2] += F.conv2d(padded[:, :, a:a + n_h + 1, b:b + n_w + 1], kernel)
        a1 = F.relu_(out)
        return a1, F.relu(self.conv2(a1), inplace=True)


# Which of a 3×3 kernel's rows (or columns) fall on each of the two low-resolution pixels a 2×2 tap
# reads, for output parity 0 (rows 2i−1 | 2i, 2i+1 → pixels i−1 | i) and 1 (2i, 2i+1 | 2i+2 → i | i+1).
_PHASE_TAPS = {0: ([0], [1, 2]), 1: ([0, 1], [2])}


class SparseUNet(nn.Module):
    """U-Net whose forward returns the logits and the activations of φ in one pass.

    Example:
        >>> net = SparseUNet(UNetConfig(width=0.5))
        >>> logits, acts = net(torch.rand(2, 1, 32, 32))
        >>> logits.shape, len(acts)
        (torch.Size([2, 2, 32, 32]), 18)
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.level_channels
        levels = []
        for level in range(1, 10):
            if level == 1:
                c_in = config.in_channels
            elif level <= 5:
                c_in = ch[level - 2]
            else:  # decoder: previous level's output concatenated with the skip
                c_in = ch[level - 2] + ch[SKIP_FROM[level] - 1]
            levels.append(_Level(c_in, ch[level - 1]))
        self.levels = nn.ModuleList(levels)
        self.head = nn.Conv2d(ch[-1], config.num_classes, 1)
        self.phi = phi_layers(config)
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        return sum(s.channels for s in self.phi)

    def reset_parameters(self) -> None:
        """Xavier (Glorot) uniform weights, zero biases (paper, Appendix A)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def phi_convs(self) -> list[nn.Conv2d]:
        """The 18 convolutions of φ, in feature order."""
        return [conv for lvl in self.levels for conv in (lvl.conv1, lvl.conv2)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, C, H, W), H and W divisible by 8. Returns logits (B, K, H, W) and φ's 18 maps."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % DIVISOR or x.shape[-2] % DIVISOR:
            raise ValueError(f"input height and width must be divisible by {DIVISOR}, got {tuple(x.shape[-2:])}")
        acts: list[torch.Tensor] = []
        outs: dict[int, torch.Tensor] = {}
        h = x
        fused = not torch.is_grad_enabled()  # inference: the decoder's upsampling folded into conv1
        for level, block in enumerate(self.levels, start=1):
            if level in (2, 3, 4):
                h = F.max_pool2d(h, 2)
            if level in (7, 8, 9) and fused:
                a1, h = block.forward_up(h, outs[SKIP_FROM[level]])
            else:
                if level in (7, 8, 9):
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
                if level >= 6:
                    h = torch.cat([h, outs[SKIP_FROM[level]]], dim=1)
                a1, h = block(h)  # (B, C_level, H / stride, W / stride)
            acts.extend((a1, h))
            outs[level] = h
        return self.head(h), acts


def build_model(config: UNetConfig) -> SparseUNet:
    """Factory for backbones; only the paper's U-Net lives here for now."""
    if config.arch != "unet":
        raise ValueError(f"unknown architecture {config.arch!r}; known: unet")
    return SparseUNet(config)
