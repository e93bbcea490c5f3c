"""Backbone weights from train.py checkpoints (models/loading.py; /work/interfaces.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from models import (
    BackboneLoadError,
    backbone_state_dict,
    build_backbone,
    build_backbone_from_checkpoint,
    build_model,
    load_pretrained_backbone,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(net="r3d_10", width=0.125, channel=8, cluster=5)


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def save_checkpoint(path: Path, model: torch.nn.Module, prefix: str = "") -> Path:
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(
        {"model": state, "model_config": model.config, "epoch": 3, "args": {"lr": 1e-3}}, path
    )
    return path


def test_backbone_state_dict_has_unprefixed_backbone_keys(model: torch.nn.Module) -> None:
    state = backbone_state_dict(model)
    assert_same_state(state, model.backbone.state_dict())
    assert not any(k.startswith(("backbone.", "proj.", "prototypes")) for k in state)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_round_trip_through_a_checkpoint_file(
    tmp_path: Path, model: torch.nn.Module, prefix: str
) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pth", model, prefix)
    backbone, config = build_backbone_from_checkpoint(path)
    assert config == model.config
    assert_same_state(backbone.state_dict(), backbone_state_dict(model))

    fresh = build_backbone("r3d_10", width=0.125)
    load_pretrained_backbone(fresh, path)
    assert_same_state(fresh.state_dict(), backbone_state_dict(model))


def test_plain_backbone_state_dict_is_accepted(tmp_path: Path, model: torch.nn.Module) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(backbone_state_dict(model), path)
    fresh = build_backbone("r3d_10", width=0.125)
    load_pretrained_backbone(fresh, path)
    assert_same_state(fresh.state_dict(), backbone_state_dict(model))


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, model: torch.nn.Module) -> None:
    state = dict(model.state_dict())
    del state["backbone.layer4.0.conv2.1.weight"]
    state["backbone.layer5.0.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state, "model_config": model.config}, path)
    with pytest.raises(BackboneLoadError) as err:
        load_pretrained_backbone(build_backbone("r3d_10", width=0.125), path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): layer4.0.conv2.1.weight" in message
    assert "unexpected keys (1): layer5.0.weight" in message


def test_wrong_network_lists_shape_mismatches(tmp_path: Path, model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pth", model)
    expected = (
        r"shape mismatches \(60\): "
        r"layer1\.0\.conv1\.0\.weight \(checkpoint \(8, 8, 3, 3, 3\), model \(16, 16,"
    )
    with pytest.raises(BackboneLoadError, match=expected) as err:
        load_pretrained_backbone(build_backbone("r3d_10", width=0.25), path)
    assert "(40 more)" in str(err.value)
    assert "model_config ({'net': 'r3d_10', 'width': 0.125" in str(err.value)
    with pytest.raises(BackboneLoadError, match=r"missing keys \(\d+\): layer1\.1\."):
        load_pretrained_backbone(build_backbone("r3d_18", width=0.125), path)


def test_unusable_files_give_clear_errors(tmp_path: Path, model: torch.nn.Module) -> None:
    backbone = build_backbone("r3d_10", width=0.125)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained_backbone(backbone, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneLoadError, match="not a readable weights-only checkpoint"):
        load_pretrained_backbone(backbone, corrupt)
    no_state = tmp_path / "no_state.pth"
    torch.save({"epoch": 3, "optimizer": {}}, no_state)
    with pytest.raises(BackboneLoadError, match="non-tensor entries: epoch, optimizer"):
        load_pretrained_backbone(backbone, no_state)
    no_config = tmp_path / "no_config.pth"
    torch.save({"model": model.state_dict()}, no_config)
    with pytest.raises(BackboneLoadError, match="no 'model_config'"):
        build_backbone_from_checkpoint(no_config)
