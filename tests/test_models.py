"""Backbones, motion excitation and the multi-level model (docs/method.md §2)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models import (
    LEVELS,
    NETS,
    MultiLevelModel,
    MultiLevelOutput,
    build_backbone,
    build_model,
)
from models.motion_excitation import MotionExcitation

OUTPUT_FIELDS = ("proj", "proj_reversed", "fine_local", "fine_global", "graph")


def tiny_model(**kwargs) -> MultiLevelModel:
    torch.manual_seed(0)
    return build_model(**{"width": 0.25, "channel": 16, "cluster": 10, **kwargs})


def tiny_clips(b: int = 2, n: int = 2, t: int = 16, size: int = 32) -> Tensor:
    return torch.randn(b, n + 1, 3, t, size, size, generator=torch.Generator().manual_seed(1))


def output_tensors(out: MultiLevelOutput) -> list[Tensor]:
    tensors = [out.prototype_scores]
    for field in OUTPUT_FIELDS:
        tensors += list((getattr(out, field) or {}).values())
    return tensors


# --------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("net", ["r3d_10", "r3d_18", "r3d_34"])
def test_r3d_feature_shapes_at_16x112(net: str) -> None:
    with torch.device("meta"):
        backbone = build_backbone(net)
        feats = backbone(torch.empty(2, 3, 16, 112, 112))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "low": (2, 128, 8, 14, 14),
        "mid": (2, 256, 4, 7, 7),
        "high": (2, 512, 2, 4, 4),
    }
    assert backbone.out_channels == {"low": 128, "mid": 256, "high": 512}


def test_r3d18_architecture_and_parameter_count() -> None:
    with torch.device("meta"):
        backbone = build_backbone("r3d_18")
    conv, _, _, pool = backbone.stem
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7, 7), (1, 2, 2), (3, 3, 3))
    assert (pool.kernel_size, pool.stride, pool.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))
    assert backbone.layer3[0].downsample[0].stride == (2, 2, 2)
    assert not hasattr(backbone, "fc")
    # Hara's ResNet-18 (type-A shortcuts + 400-way fc) is 33,235,280 ≈ 33.2M; ours has type-B
    # (1×1×1 conv + BN) shortcuts and no fc.
    assert sum(p.numel() for p in backbone.parameters()) == 33_203_904


@pytest.mark.parametrize(
    ("net", "params"), [("r3d_10", 14_399_424), ("r3d_34", 63_513_536), ("s3d", 7_910_048)]
)
def test_other_parameter_counts(net: str, params: int) -> None:
    with torch.device("meta"):
        backbone = build_backbone(net)
    assert sum(p.numel() for p in backbone.parameters()) == params


def test_width_multiplier_scales_every_stage() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("r3d_18", width=0.25).eval()
    assert backbone.stem[0].out_channels == 16
    assert [backbone.layer1[0].conv1[0].out_channels, *backbone.out_channels.values()] == [
        16,
        32,
        64,
        128,
    ]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 4, 16, 16))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "low": (1, 32, 2, 2, 2),
        "mid": (1, 64, 1, 1, 1),
        "high": (1, 128, 1, 1, 1),
    }


def test_s3d_taps_at_16x224() -> None:
    with torch.device("meta"):
        backbone = build_backbone("s3d")
        feats = backbone(torch.empty(1, 3, 16, 224, 224))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "low": (1, 480, 8, 28, 28),
        "mid": (1, 832, 4, 14, 14),
        "high": (1, 1024, 2, 7, 7),
    }
    assert build_backbone("s3d", width=0.5).out_channels == {"low": 240, "mid": 416, "high": 512}


@pytest.mark.parametrize(
    ("clip", "high"), [((16, 112, 112), (1024, 2, 4, 4)), ((8, 64, 64), (1024, 1, 2, 2))]
)
def test_s3d_runs_on_small_clips(clip: tuple[int, int, int], high: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("s3d").eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *clip))
    assert tuple(feats["high"].shape[1:]) == high
    assert all(torch.isfinite(f).all() for f in feats.values())


def test_unknown_net_and_bad_width_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown network 'r2d_18'") as err:
        build_backbone("r2d_18")
    assert all(net in str(err.value) for net in NETS)
    with pytest.raises(ValueError, match="width must be a positive number"):
        build_backbone("r3d_18", width=0.0)


# --------------------------------------------------------------------------- motion excitation


def _bn2d(bn: torch.nn.BatchNorm3d, y: Tensor) -> Tensor:
    shape = (1, -1, 1, 1)
    return (y - bn.running_mean.view(shape)) / (
        bn.running_var.view(shape) + bn.eps
    ).sqrt() * bn.weight.view(shape) + bn.bias.view(shape)


def reference_motion_excitation(block: MotionExcitation, x: Tensor) -> Tensor:
    """docs/method.md §2 written frame by frame with 2D convs (BatchNorm in eval mode)."""
    frames = x.unbind(2)
    reduced = [_bn2d(block.reduce[1], F.conv2d(f, block.reduce[0].weight[:, :, 0])) for f in frames]
    spatial = [
        F.conv2d(r, block.spatial.weight[:, :, 0], padding=1, groups=r.shape[1]) for r in reduced
    ]
    out = []
    for t, frame in enumerate(frames):
        motion = (
            spatial[t + 1] - reduced[t] if t + 1 < len(frames) else torch.zeros_like(reduced[t])
        )
        pooled = motion.mean(dim=(2, 3), keepdim=True)
        a = (
            torch.sigmoid(_bn2d(block.expand[1], F.conv2d(pooled, block.expand[0].weight[:, :, 0])))
            - 0.5
        )
        out.append(frame + a * frame)
    return torch.stack(out, dim=2)


def test_motion_excitation_matches_frame_loop_reference() -> None:
    torch.manual_seed(0)
    block = MotionExcitation(32).double().eval()
    for bn in (block.reduce[1], block.expand[1]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    assert block.reduce[0].out_channels == 2  # c/16
    x = torch.randn(3, 32, 5, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        motion = block.motion(x)
        expected = reference_motion_excitation(block, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(motion[:, :, -1], torch.zeros_like(motion[:, :, -1]))
    assert (motion[:, :, :-1].abs().sum(dim=(0, 1, 3, 4)) > 0).all()
    assert not torch.allclose(out, x)


# --------------------------------------------------------------------------- multi-level model


def test_full_model_shapes_at_16x112() -> None:
    with torch.device("meta"):
        model = build_model()
        out = model(torch.empty(2, 3, 3, 16, 112, 112), with_graph=True)
    assert isinstance(out, MultiLevelOutput)
    t = dict(zip(LEVELS, (8, 4, 2), strict=True))
    for level in LEVELS:
        assert out.proj[level].shape == (2, 2, 128)
        assert out.fine_local[level].shape == (2, 2, t[level], 128)
        assert out.fine_global[level].shape == (2, t[level], 128)
        assert out.graph[level].shape == (2, 2, 128)
    assert set(out.proj_reversed) == {"low", "mid"}
    assert all(v.shape == (2, 2, 128) for v in out.proj_reversed.values())
    assert out.prototype_scores.shape == (2, 2, 1000)


def test_tiny_model_shapes_and_graph_flag() -> None:
    model = tiny_model(time_steps=(4, 2, 1))
    clips = tiny_clips(b=2, n=3, t=8, size=32)
    out = model(clips)
    assert out.graph is None
    assert out.fine_local["low"].shape == (2, 3, 4, 16)
    assert out.fine_global["high"].shape == (2, 1, 16)
    assert out.prototype_scores.shape == (2, 3, 10)
    assert set(model(clips, with_graph=True).graph) == set(LEVELS)
    with pytest.raises(ValueError, match=r"\(b, n\+1, 3, T, H, W\)"):
        model(clips[:, :1])


def test_global_clip_is_the_last_one() -> None:
    model = tiny_model().eval()
    clips = tiny_clips()
    changed = clips.clone()
    changed[:, -1] = torch.randn_like(changed[:, -1])
    with torch.no_grad():
        a, b = model(clips), model(changed)
    for level in LEVELS:
        torch.testing.assert_close(a.fine_local[level], b.fine_local[level])
        torch.testing.assert_close(a.proj[level], b.proj[level])
        assert not torch.allclose(a.fine_global[level], b.fine_global[level])


def test_reversed_copies_are_time_flipped_local_features() -> None:
    model = tiny_model().eval()  # eval: BatchNorm is per-sample, so rows can be recomputed alone
    b, n = 2, 2
    seen: dict[str, Tensor] = {}
    model.backbone.register_forward_hook(lambda _m, _i, out: seen.update(backbone=out["low"]))
    model.motion["low"].register_forward_pre_hook(lambda _m, args: seen.update(me_input=args[0]))
    with torch.no_grad():
        out = model(tiny_clips(b, n))
        low = seen["backbone"]
        local = low.unflatten(0, (b, n + 1))[:, :n].flatten(0, 1)
        me_input = seen["me_input"]
        # the batch doubles: every clip in normal order first, then every clip time-flipped
        assert me_input.shape[0] == 2 * b * (n + 1)
        assert torch.equal(me_input[: b * (n + 1)], low)
        assert torch.equal(me_input[b * (n + 1) :], torch.flip(low, dims=[2]))

        def proj_of(features: Tensor) -> Tensor:
            """docs/method.md §2 read literally: the MLP per time step, then the mean over time."""
            pooled = F.adaptive_avg_pool3d(model.motion["low"](features), (8, 1, 1))
            steps = pooled.flatten(2).transpose(1, 2)  # (clips, t, c)
            per_step = torch.stack([model.proj["low"](steps[:, k]) for k in range(steps.shape[1])], 1)
            return per_step.mean(dim=1).unflatten(0, (b, n))

        torch.testing.assert_close(out.proj_reversed["low"], proj_of(torch.flip(local, dims=[2])))
        torch.testing.assert_close(out.proj["low"], proj_of(local))
    assert not torch.allclose(out.proj["low"], out.proj_reversed["low"], atol=1e-4)


def test_every_head_receives_a_gradient() -> None:
    model = tiny_model()
    out = model(tiny_clips(), with_graph=True)
    gen = torch.Generator().manual_seed(2)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in output_tensors(out))
    loss.backward()
    heads = ("proj.", "fine.", "graph.", "global_head.", "prototypes.", "motion.", "backbone.")
    named = dict(model.named_parameters())
    assert all(name.startswith(heads) for name in named)
    for name, p in named.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_graph_heads_unused_without_with_graph() -> None:
    model = tiny_model()
    out = model(tiny_clips())
    sum(t.sum() for t in output_tensors(out)).backward()
    assert out.graph is None
    assert all(p.grad is None for p in model.graph.parameters())
    assert all(p.grad is not None for p in model.proj.parameters())


def test_prototypes_are_normalised_and_scores_are_cosines() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.normalize_prototypes()
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(10))
    out = model(tiny_clips())
    assert out.prototype_scores.abs().max() <= 1.0 + 1e-6


def test_config_is_json_and_rebuilds_the_model() -> None:
    model = tiny_model(net="r3d_10", time_steps=[4, 2, 1])
    config = json.loads(json.dumps(model.config))
    assert config == {
        "net": "r3d_10",
        "width": 0.25,
        "channel": 16,
        "cluster": 10,
        "time_steps": [4, 2, 1],
    }
    rebuilt = MultiLevelModel(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_s3d_multilevel_model_runs() -> None:
    model = tiny_model(net="s3d", time_steps=(4, 2, 1))
    out = model(tiny_clips(b=2, n=2, t=8, size=32))
    assert out.fine_local["mid"].shape == (2, 2, 2, 16)
    assert all(torch.isfinite(t).all() for t in output_tensors(out))


def test_bf16_autocast_and_channels_last_3d() -> None:
    model = tiny_model().eval()
    clips = tiny_clips()
    seen: dict[str, Tensor] = {}
    model.motion["mid"].register_forward_hook(lambda _m, _i, out: seen.update(mid=out))
    model.prototypes.register_forward_hook(lambda _m, _i, out: seen.update(scores=out))
    with torch.no_grad():
        reference = model(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(clips)
        assert seen["mid"].dtype == torch.bfloat16
        assert seen["scores"].dtype == torch.float32  # Sinkhorn's input: float32 under autocast
        model.to(memory_format=torch.channels_last_3d)
        channels_last = model(clips)
        assert seen["mid"].is_contiguous(memory_format=torch.channels_last_3d)
    for ref, bf16, cl in zip(
        output_tensors(reference),
        output_tensors(low_precision),
        output_tensors(channels_last),
        strict=True,
    ):
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
        torch.testing.assert_close(bf16, ref, rtol=0.1, atol=0.1)
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_forward_backward() -> None:
    model = tiny_model().cuda().to(memory_format=torch.channels_last_3d)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(tiny_clips().cuda(), with_graph=True)
    sum(t.sum() for t in output_tensors(out)).backward()
    assert all(t.dtype == torch.float32 and t.is_cuda for t in output_tensors(out))
    assert all(p.grad is not None for p in model.parameters())
