"""The paper's models that torchvision lacks: MobileNetV1 and WideResNet-28-10."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(
    in_ch: int, out_ch: int, stride: int, groups: int = 1, kernel: int = 3
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017) for 224x224 ImageNet, width multiplier 1."""

    # (output channels, stride) of each depthwise-separable block
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers, channels = [_conv_bn(in_channels, 32, 2)], 32
        for out_ch, stride in self.BLOCKS:
            layers += [_conv_bn(channels, channels, stride, groups=channels),
                       _conv_bn(channels, out_ch, 1, kernel=1)]  # fmt: skip
            channels = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class _WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.relu = nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WideResNet-depth-width (Zagoruyko & Komodakis 2016) for 32x32 inputs."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 100,
                 dropout: float = 0.3, in_channels: int = 3) -> None:  # fmt: skip
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 16, 22, 28, 40), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, channels = [], widths[0]
        for index, out_ch in enumerate(widths[1:]):
            stride = 1 if index == 0 else 2
            for block in range(blocks):
                stages.append(_WideBlock(channels, out_ch, stride if block == 0 else 1, dropout))
                channels = out_ch
        self.blocks = nn.Sequential(*stages)
        self.bn, self.relu = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


def mobilenet_v1(**kwargs: object) -> MobileNetV1:
    return MobileNetV1(**kwargs)  # type: ignore[arg-type]


def wide_resnet28_10(**kwargs: object) -> WideResNet:
    return WideResNet(**{"depth": 28, "width": 10, **kwargs})  # type: ignore[arg-type]


PAPER_MODELS = {"mobilenet_v1": mobilenet_v1, "wide_resnet28_10": wide_resnet28_10}
