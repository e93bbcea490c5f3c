"""Backbones by name (docs/method.md §2): ``build_backbone(net, width)`` and ``NETS``."""

from __future__ import annotations

from collections.abc import Callable

from models.backbone import Backbone
from models.resnet3d import r3d_10, r3d_18, r3d_34
from models.s3d import s3d

_BUILDERS: dict[str, Callable[[float], Backbone]] = {
    "r3d_10": r3d_10,
    "r3d_18": r3d_18,
    "r3d_34": r3d_34,
    "s3d": s3d,
}
NETS: tuple[str, ...] = tuple(_BUILDERS)


def build_backbone(net: str = "r3d_18", width: float = 1.0) -> Backbone:
    """The backbone ``net`` with every channel count × ``width``; see ``NETS`` for the names."""
    if net not in _BUILDERS:
        raise ValueError(f"unknown network {net!r}; choose one of: {', '.join(NETS)}")
    return _BUILDERS[net](width)
