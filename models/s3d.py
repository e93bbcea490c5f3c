"""S3D (Xie et al., ECCV 2018), CoCLR's backbone, with low/mid/high taps (docs/method.md §2).

Built from torchvision's ``TemporalSeparableConv`` and ``SepInceptionBlock3D`` with a width
multiplier on every channel count. There is no classifier and no fixed-size pooling, so any clip
size the strides allow runs (e.g. 16×112², 8×64²); heads pool adaptively.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn
from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation

from models.backbone import Backbone, init_conv_bn, scale_channels

# Inception blocks as in torchvision / CoCLR: (branch0, branch1 mid, branch1 out,
# branch2 mid, branch2 out, branch3) output channels at width 1.
INCEPTION_SPECS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}


class S3DBackbone(Backbone):
    """S3D returning Mixed_3c / Mixed_4f / Mixed_5c as low / mid / high (docs/method.md §2).

    Output sizes for a T×H×W clip: low 480×T/2×H/8×W/8, mid 832×T/4×H/16×W/16,
    high 1024×T/8×H/32×W/32 (channels × ``width``; e.g. 480×8×28×28, 832×4×14×14, 1024×2×7×7 at
    16×224²). Differences from torchvision's ``S3D``: BatchNorm momentum is PyTorch's 0.1 (the
    0.001 of torchvision/CoCLR mirrors TensorFlow's decay for imported weights and leaves the
    running statistics of a from-scratch run far behind); ``MaxPool_5a`` uses ``ceil_mode``
    (TensorFlow's SAME padding), so odd or unit sizes still run and a 112² clip gives a 4×4
    (not 3×3) high map; convolutions get the ResNets' Kaiming initialisation.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm3d, eps=1e-3)
        c64, c192 = scale_channels(64, width), scale_channels(192, width)
        self.stem = nn.Sequential(
            OrderedDict(
                conv_1a=TemporalSeparableConv(3, c64, 7, 2, 3, norm),
                maxpool_2a=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                conv_2b=Conv3dNormActivation(c64, c64, kernel_size=1, norm_layer=norm),
                conv_2c=TemporalSeparableConv(c64, c192, 3, 1, 1, norm),
                maxpool_3a=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            )
        )
        # Stage "3" ends at Mixed_3c (low), "4" at Mixed_4f (mid), "5" at Mixed_5c (high).
        stages: dict[str, OrderedDict[str, nn.Module]] = {
            "3": OrderedDict(),
            "4": OrderedDict(maxpool_4a=nn.MaxPool3d(3, stride=2, padding=1)),
            "5": OrderedDict(maxpool_5a=nn.MaxPool3d(2, stride=2, ceil_mode=True)),
        }
        stage_channels: dict[str, int] = {}
        in_planes = c192
        for name, spec in INCEPTION_SPECS.items():
            b0, b1m, b1, b2m, b2, b3 = (scale_channels(c, width) for c in spec)
            stage = name[len("mixed_")]
            stages[stage][name] = SepInceptionBlock3D(in_planes, b0, b1m, b1, b2m, b2, b3, norm)
            in_planes = stage_channels[stage] = b0 + b1 + b2 + b3
        self.stage3 = nn.Sequential(stages["3"])
        self.stage4 = nn.Sequential(stages["4"])
        self.stage5 = nn.Sequential(stages["5"])
        self.out_channels = {
            "low": stage_channels["3"],
            "mid": stage_channels["4"],
            "high": stage_channels["5"],
        }
        init_conv_bn(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.stage3(self.stem(x))
        mid = self.stage4(low)
        high = self.stage5(mid)
        return {"low": low, "mid": mid, "high": high}


def s3d(width: float = 1.0) -> S3DBackbone:
    """S3D backbone (CoCLR's), channels × ``width``."""
    return S3DBackbone(width)
