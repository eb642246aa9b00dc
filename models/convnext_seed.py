"""The homebrew ConvNeXt of seeds 000/001: 18,166,472 parameters at 224x224, 200 classes (tests/test_models.py).

The LayerNorms normalize over the whole [C, H, W] of a feature map, so the parameter count depends on the input size.
"""

from __future__ import annotations

import torch
from torch import nn

from nn_speedups.models.activations import make_activation
from nn_speedups.models.registry import ModelSpec, image_inputs, register

CHANNELS = (64, 96, 128, 256)
DEPTHS = (3, 3, 9, 3)


class Block(nn.Module):
    """x + [7x7 grouped conv C -> 4C, LayerNorm [4C, H, W], 1x1 4C -> 4C, activation, 1x1 4C -> C](x)."""

    def __init__(self, channels: int, size: int, activation: str) -> None:
        super().__init__()
        wide = 4 * channels
        self.dwconv = nn.Conv2d(channels, wide, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm((wide, size, size))
        self.pw1 = nn.Conv2d(wide, wide, kernel_size=1)
        self.act = make_activation(activation)
        self.pw2 = nn.Conv2d(wide, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))


class ConvNeXtSeed(nn.Module):
    def __init__(self, num_classes: int = 200, image_size: int = 224, activation: str = "gelu-tanh") -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"convnext-seed needs an image size divisible by 32, got {image_size}")
        size = image_size // 4
        self.stem = nn.Sequential(
            nn.Conv2d(3, CHANNELS[0], kernel_size=4, stride=4),
            nn.LayerNorm((CHANNELS[0], size, size)),
        )
        stages: list[nn.Module] = []
        for i, (channels, depth) in enumerate(zip(CHANNELS, DEPTHS)):
            if i > 0:
                stages.append(nn.LayerNorm((CHANNELS[i - 1], size, size)))
                stages.append(nn.Conv2d(CHANNELS[i - 1], channels, kernel_size=2, stride=2))
                size //= 2
            stages.extend(Block(channels, size, activation) for _ in range(depth))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(CHANNELS[-1])
        self.fc = nn.Linear(CHANNELS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = x.mean(dim=(2, 3))  # global average pool: [B, C, H, W] -> [B, C]
        return self.fc(self.head_norm(x))


register(
    ModelSpec(
        name="convnext-seed",
        build=lambda image_size=224, activation="gelu-tanh", num_classes=200: ConvNeXtSeed(
            num_classes=num_classes, image_size=image_size, activation=activation
        ),
        example_inputs=image_inputs,
        default_batch_sizes=(1, 64),
        num_classes=200,
        tags=frozenset({"vision", "conv", "activation-slot"}),
    )
)
