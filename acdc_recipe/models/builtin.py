"""Built-in models for `acdc run`: small, fast, and the CIFAR ResNet-20 of the paper.

`BUILTIN_MODELS` maps the names a recipe's `train.model.name` may use to factories taking the
recipe's `train.model.kwargs`; `factory.build_model` also resolves import paths and
torchvision names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from acdc_recipe.models.paper import PAPER_MODELS


def mlp(
    in_features: int = 64, hidden: int | Sequence[int] = (64,), num_classes: int = 10
) -> nn.Module:
    """Flatten, then Linear+ReLU per hidden width, then a Linear classifier."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    previous = in_features
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, num_classes))
    return nn.Sequential(*layers)


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """Three conv blocks (width, 2x, 4x; pooling after the first two), average pooling to 2x2,
    a Linear classifier. Works for any input of at least 4x4 (8x8 digits, 28x28, 32x32)."""
    return nn.Sequential(
        *_conv_block(in_channels, width),
        nn.MaxPool2d(2),
        *_conv_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * width, num_classes),
    )


class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity, padded (A) or 1x1-conv (B) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _PadShortcut(cout - cin)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-6n+2 for 32x32 inputs (He et al. 2016, section 4.2): 16/32/64 channels."""

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"a CIFAR ResNet needs depth 6n+2 (20, 32, 44, 56, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            layers = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(cin, cout, stride, shortcut))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> nn.Module:
    """CIFAR ResNet-20 (0.27M parameters), as in the paper's CIFAR-10 experiments."""
    return ResNetCifar(20, num_classes, in_channels, shortcut)


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet20": resnet20,
    **PAPER_MODELS,
}
