"""3D ResNets of Hara et al. ("Can spatiotemporal 3D CNNs retrace the history of 2D CNNs and
ImageNet?", CVPR 2018) as used by the paper: R3D-10/18/34 with a width multiplier (docs/method.md §2).

Built from torchvision's ``BasicBlock`` and ``Conv3DSimple``; the layer builder is ours because
``torchvision.models.video.VideoResNet`` hard-codes 64/128/256/512 channels and a (3,7,7) stem.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

from models.backbone import Backbone, init_conv_bn, scale_channels

STAGE_CHANNELS = (64, 128, 256, 512)


def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks of 3×3×3 convs; the first one strides by ``stride`` in time and space
    and, when the shape changes, takes a 1×1×1 conv + BN shortcut (Hara's shortcut type B)."""
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(
            nn.Conv3d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm3d(planes),
        )
    layers = [BasicBlock(in_planes, planes, Conv3DSimple, stride, downsample)]
    layers += [BasicBlock(planes, planes, Conv3DSimple) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet3D(Backbone):
    """Hara et al.'s 3D ResNet with BasicBlocks, returning layer2/3/4 as low/mid/high (docs/method.md §2).

    Stem: Conv3d 7×7×7, stride (1,2,2), padding 3 → BN → ReLU → MaxPool3d (1,3,3), stride (1,2,2).
    ``layer1`` (stride 1) then ``layer2..4`` (stride 2 in time and space), with
    64/128/256/512 × ``width`` channels. For a 16×112×112 clip at width 1 (R3D-18):
    low = layer2 128×8×14×14, mid = layer3 256×4×7×7, high = layer4 512×2×4×4.
    No classifier: the backbone ends at ``layer4``.
    """

    def __init__(self, layers: Sequence[int], width: float = 1.0) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        c1, c2, c3, c4 = (scale_channels(c, width) for c in STAGE_CHANNELS)
        self.stem = nn.Sequential(
            nn.Conv3d(3, c1, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.layer1 = _make_layer(c1, c1, layers[0], stride=1)
        self.layer2 = _make_layer(c1, c2, layers[1], stride=2)
        self.layer3 = _make_layer(c2, c3, layers[2], stride=2)
        self.layer4 = _make_layer(c3, c4, layers[3], stride=2)
        self.out_channels = {"low": c2, "mid": c3, "high": c4}
        init_conv_bn(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.layer2(self.layer1(self.stem(x)))
        mid = self.layer3(low)
        high = self.layer4(mid)
        return {"low": low, "mid": mid, "high": high}


def r3d_10(width: float = 1.0) -> ResNet3D:
    """R3D-10: one BasicBlock per stage."""
    return ResNet3D((1, 1, 1, 1), width)


def r3d_18(width: float = 1.0) -> ResNet3D:
    """R3D-18, the paper's backbone (docs/method.md §2): two BasicBlocks per stage."""
    return ResNet3D((2, 2, 2, 2), width)


def r3d_34(width: float = 1.0) -> ResNet3D:
    """R3D-34: 3/4/6/3 BasicBlocks."""
    return ResNet3D((3, 4, 6, 3), width)
