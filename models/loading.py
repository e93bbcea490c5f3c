"""Backbone weights in and out of train.py checkpoints (docs/method.md §5: probes and fine-tuning start
from the pretrained backbone).

A checkpoint is a dict whose ``"model"`` entry is the full :class:`MultiLevelModel` state dict
(keys possibly prefixed by ``module.`` from DDP or ``_orig_mod.`` from ``torch.compile``) and whose
``"model_config"`` entry is ``model.config``. A plain backbone state dict is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.backbone import Backbone
from models.registry import build_backbone
from utils.checkpoint import CheckpointError, load_checkpoint

BACKBONE_PREFIX = "backbone."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 20


class BackboneLoadError(RuntimeError):
    """A checkpoint that cannot be read or does not match the backbone it is loaded into."""


def _strip_wrappers(key: str) -> str:
    """Remove any chain of ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile)."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _backbone_entries(state: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone part of a model or backbone state dict, keys without wrapper prefixes and
    without ``backbone.``; a state dict with no ``backbone.`` key is taken as a backbone's own."""
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        return {
            k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)
        }
    return state


def backbone_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The backbone's state dict of a :class:`MultiLevelModel` (also DDP- or compile-wrapped),
    keys without the ``backbone.`` prefix."""
    return _backbone_entries(model.state_dict())


def _read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_checkpoint(path)  # the versioned weights-only reader of every checkpoint
    except CheckpointError as err:
        raise BackboneLoadError(f"{path}: not a readable weights-only checkpoint ({err})") from err


def _state_from_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    state = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    non_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise BackboneLoadError(
            f"{path}: neither a checkpoint with a 'model' state dict nor a state dict "
            f"(non-tensor entries: {', '.join(map(str, non_tensors[:_MAX_LISTED]))})"
        )
    return _backbone_entries(state)


def _listed(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _load_into(backbone: nn.Module, obj: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Strict load of the backbone part of checkpoint ``obj`` that names every missing,
    unexpected and wrongly shaped key."""
    state = _state_from_checkpoint(obj, path)
    expected = backbone.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{what} ({len(keys)}): {_listed(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise BackboneLoadError(
            f"{path}: the checkpoint does not fit this {type(backbone).__name__} — "
            + "; ".join(problems)
            + f". Build the backbone with the checkpoint's model_config "
            f"({obj.get('model_config', 'absent')}); build_backbone_from_checkpoint() does."
        )
    backbone.load_state_dict(state)


def load_pretrained_backbone(backbone: nn.Module, checkpoint_path: str | os.PathLike[str]) -> None:
    """Load the backbone weights of a train.py checkpoint (or of a plain backbone state dict)
    into ``backbone``; raises :class:`BackboneLoadError` listing missing/unexpected keys."""
    _load_into(backbone, _read_checkpoint(checkpoint_path), checkpoint_path)


def build_backbone_from_checkpoint(path: str | os.PathLike[str]) -> tuple[Backbone, dict[str, Any]]:
    """The pretrained backbone of a train.py checkpoint, built from its ``model_config``
    (``net``, ``width``), and that config."""
    obj = _read_checkpoint(path)
    config = obj.get("model_config")
    if not isinstance(config, Mapping) or "net" not in config:
        raise BackboneLoadError(
            f"{path}: no 'model_config' with a 'net' entry; build the backbone with "
            "build_backbone(net, width) and call load_pretrained_backbone() instead"
        )
    backbone = build_backbone(config["net"], config.get("width", 1.0))
    _load_into(backbone, obj, path)
    return backbone, dict(config)


RANDOM_INIT_BANNER = (
    "!" * 78 + "\n"
    "!! NO --pretrained CHECKPOINT: the backbone is RANDOMLY INITIALISED.\n"
    "!! These numbers are the random-init baseline, not a pretrained model's.\n"
    + "!" * 78
)


def pretraining_args(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The flags a ``train.py`` checkpoint was pretrained with (its ``"args"``; ``{}`` for a
    plain state dict or a checkpoint without them)."""
    saved = _read_checkpoint(path).get("args")
    return dict(saved) if isinstance(saved, Mapping) else {}


def build_eval_backbone(pretrained: str | None, net: str | None = None,
                        width: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone an evaluation evaluates (docs/method.md §5) and a description of it (``net``,
    ``width``, ``init``, ``pretrained``).

    - ``pretrained`` and no ``net``: built from the checkpoint's ``model_config`` and loaded
      (:func:`build_backbone_from_checkpoint`);
    - ``pretrained`` and ``net``: ``build_backbone(net, width)`` then the checkpoint's backbone
      weights (a plain state dict needs this; a mismatch raises naming the keys);
    - no ``pretrained``: ``build_backbone(net or "r3d_18", width or 1.0)``, random init
      (``init = "random"``; print :data:`RANDOM_INIT_BANNER`).

    The backbone comes in ``channels_last_3d``, as in ``train.py`` (faster convolutions).
    """
    if pretrained is None:
        net, width = net or "r3d_18", 1.0 if width is None else width
        backbone = build_backbone(net, width)
        described = {"net": net, "width": width, "init": "random", "pretrained": None}
    else:
        if net is None:
            backbone, config = build_backbone_from_checkpoint(pretrained)
            net, width = config["net"], config.get("width", 1.0)
        else:
            width = 1.0 if width is None else width
            backbone = build_backbone(net, width)
            load_pretrained_backbone(backbone, pretrained)
        described = {"net": net, "width": width, "init": "pretrained", "pretrained": str(pretrained)}
    return backbone.to(memory_format=torch.channels_last_3d), described
