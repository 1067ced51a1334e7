"""A ResNet-style trunk for the benchmarks, handed to hotswap by import path (bench.models:resnet)."""

from __future__ import annotations

from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return (self.body(x) + self.skip(x)).relu()


def resnet(in_channels: int = 3, widths: list[int] | None = None) -> nn.Module:
    widths = widths or [16, 32, 64]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers.append(_Block(cin, w, 1 if i == 0 else 2))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
