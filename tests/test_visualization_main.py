"""End to end: the temporal-order probe and its heat maps (docs/method.md §5), on tiny frame folders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import encode_jpeg

from datasets.frames import frame_path
from models import build_backbone, pool_high
from visualization.cam import class_activation_maps, order_pairs, upsample_cam
from datasets.temporal_order import OrderClipDataset
from visualization.main_temporal import build_parser, main

FRAMES, SIZE, SEQ = 12, 32, 8
FADE = 0.25  # brightness of the first frame of a video (the last is 1)
NET = ["--net", "r3d_18", "--width", "0.125"]


def write_videos(root: Path, count: int, seed: int) -> list[str]:
    """``count`` frame folders where time order is visible: a disc glides right over a smooth
    random background while the whole scene fades in (brightness FADE -> 1).

    Why the fade: the test runs a frozen *random* tiny backbone whose high level is one
    1x1x1 cell at 8x32x32; its pooled feature does not separate right from left motion (measured:
    about chance on held-out clips), but a global brightness trend reaches it through any temporal
    filter whose taps do not sum symmetrically, so a working probe must beat chance clearly.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(FRAMES, dtype=torch.float32)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    background = F.interpolate(torch.rand(count, 3, 4, 4, generator=g), size=(SIZE, SIZE),
                               mode="bilinear", align_corners=False) * 0.6 + 0.2
    x0, y0 = torch.rand(2, count, generator=g) * SIZE
    colour = torch.rand(count, 3, generator=g)
    cx = x0[:, None] + 3.0 * t  # (count, FRAMES), wraps around
    dx = torch.remainder(grid - cx[..., None] + SIZE / 2, SIZE) - SIZE / 2  # (count, F, S)
    dy = torch.remainder(grid - y0[:, None] + SIZE / 2, SIZE) - SIZE / 2  # (count, S)
    disc = (6.5 - torch.sqrt(dx[:, :, None, :] ** 2 + dy[:, None, :, None] ** 2)).clamp(0, 1)
    disc = disc[:, :, None]  # (count, F, 1, S, S)
    video = background[:, None] * (1 - disc) + colour[:, None, :, None, None] * disc
    video = video * (FADE + (1 - FADE) * t / (FRAMES - 1)).view(1, FRAMES, 1, 1, 1)
    encoded = encode_jpeg(list((video * 255).round().to(torch.uint8).flatten(0, 1)), quality=95)
    folders = []
    for v in range(count):
        folder = root / f"vid_{v:03d}"
        folder.mkdir(parents=True)
        for i in range(FRAMES):
            Path(frame_path(str(folder), i)).write_bytes(encoded[v * FRAMES + i].numpy().tobytes())
        folders.append(folder.name)
    return folders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("order")
    train = write_videos(root / "train", 24, seed=1)
    val = write_videos(root / "val", 8, seed=2)
    # labels are ignored: an unlabelled train CSV, a labelled val CSV (with a header)
    (root / "train.csv").write_text("".join(f"train/{name},{FRAMES}\n" for name in train))
    (root / "val.csv").write_text("path,num_frames,label\n"
                                  + "".join(f"val/{name},{FRAMES},{i % 3}\n" for i, name in enumerate(val)))
    return {"train": str(root / "train.csv"), "val": str(root / "val.csv"), "root": str(root)}


def common(data: dict[str, str], out: Path) -> list[str]:
    return ["--train_csv", data["train"], "--val_csv", data["val"], "--output_dir", str(out),
            "--seq", str(SEQ), "--img_dim", str(SIZE), "--workers", "0", "--device", "cpu",
            "--no_progress"]


@pytest.fixture(scope="module")
def probe_run(data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("probe")
    metrics = main(common(data, out) + NET + [
        "--epochs", "4", "--lr", "0.1", "--batch_size", "8", "--num_clips", "3",
        "--num_vis", "2", "--seed", "0"])
    return metrics, out


def test_probe_learns_visible_order(probe_run) -> None:
    metrics, out = probe_run
    assert metrics["init"] == "random"
    assert metrics["num_val"] == 8 and metrics["num_val_clips"] == 8 * 3
    # 8 videos x 3 clips x 2 orders = 48 decisions; chance is 50% (measured: 81-100% over
    # --seed 0..5, i.e. over six random backbones)
    assert metrics["temporal_order_acc"] > 70.0, metrics
    assert metrics["temporal_order_acc"] == pytest.approx(
        (metrics["acc_normal"] + metrics["acc_reversed"]) / 2)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(4))
    assert log[-1]["loss"] < log[0]["loss"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["temporal_order_acc"] == pytest.approx(metrics["temporal_order_acc"])
    assert json.loads((out / "args.json").read_text())["epochs"] == 4
    head = torch.load(out / "probe_head.pt", map_location="cpu", weights_only=True)
    assert head["weight"].shape == (2, 64)  # 512 * 0.125 -> 2


def test_heat_map_images(probe_run) -> None:
    metrics, out = probe_run
    records = metrics["visualized"]
    assert [r["index"] for r in records] == [0, 1]
    for r in records:
        assert 0.0 <= r["p_normal_given_normal"] <= 1.0
        with Image.open(r["png"]) as im:
            assert im.format == "PNG"
            # 4 rows of SEQ frames, 2-pixel gaps
            assert im.size == (SEQ * SIZE + (SEQ - 1) * 2, 4 * SIZE + 3 * 2)
            strip = np.asarray(im.convert("RGB")).astype(int)
        with Image.open(r["gif"]) as im:
            assert im.format == "GIF" and im.size == (SIZE, SIZE) and im.n_frames == SEQ
        # row 2 (reversed frames) is row 0 (frames) read right to left
        tile = SIZE + 2
        first = strip[:SIZE, :SIZE]
        last_of_reversed = strip[2 * tile:2 * tile + SIZE, (SEQ - 1) * tile:(SEQ - 1) * tile + SIZE]
        assert np.array_equal(first, last_of_reversed)
        # the overlay rows differ from the frame rows (a heat map was blended in)
        assert np.abs(strip[tile:tile + SIZE] - strip[:SIZE]).mean() > 5
    assert Path(records[0]["png"]).name.startswith("0000_vid_000")


def test_pretrained_checkpoint_and_chosen_videos(data, tmp_path) -> None:
    backbone = build_backbone("r3d_10", 0.125)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "model_config": {"net": "r3d_10", "width": 0.125}}, ckpt)
    out = tmp_path / "run"
    metrics = main(common(data, out) + ["--pretrained", str(ckpt), "--epochs", "1",
                                        "--batch_size", "16", "--num_clips", "1",
                                        "--videos", "5", "2"])
    assert metrics["init"] == "pretrained" and metrics["net"] == "r3d_10"
    assert metrics["num_val_clips"] == 8
    assert [r["index"] for r in metrics["visualized"]] == [5, 2]
    assert sorted(os.listdir(out / "cam")) == sorted(
        ["0005_vid_005.png", "0005_vid_005.gif", "0002_vid_002.png", "0002_vid_002.gif"])


def test_bad_video_index_is_a_clear_error(data, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(common(data, tmp_path / "bad") + NET + ["--epochs", "1", "--videos", "8"])
    assert exc.value.code == 2
    assert "--videos [8]" in capsys.readouterr().err


def test_help_explains() -> None:
    text = " ".join(build_parser().format_help().split())  # undo the line wrapping
    for flag in ("--pretrained", "--train_csv", "--val_csv", "--num_vis", "--videos", "--seq",
                 "--img_dim", "--device", "--epochs", "--lr", "--batch_size", "--seed"):
        assert flag in text
    assert "reversed copy" in text and "RANDOMLY INITIALISED" in text


def test_cam_on_backbone_features_matches_pooled_head(data) -> None:
    """docs/method.md §5: the CAM of a real backbone's high map averages to the probe's logits, and
    upsamples to the clip's own (T, H, W) for any input size."""
    torch.manual_seed(0)
    backbone = build_backbone("r3d_18", 0.125).eval()
    head = torch.nn.Linear(backbone.out_channels["high"], 2, bias=False)
    for seq, img_dim in ((FRAMES, 64), (8, 40)):
        clips = OrderClipDataset(data["val"], seq=seq, img_dim=img_dim, train=False, num_clips=2)[3][0]
        inputs, _ = order_pairs(clips)
        with torch.no_grad():
            features = backbone(inputs)["high"]
            cam = class_activation_maps(features, head.weight)
            logits = head(pool_high(features))
        assert cam.shape == (4, 2, *features.shape[2:])
        torch.testing.assert_close(cam.mean(dim=(2, 3, 4)), logits, atol=1e-5, rtol=0)
        assert upsample_cam(cam, inputs.shape[2:]).shape == (4, 2, seq, img_dim, img_dim)
    assert features.shape[2:] == (1, 2, 2)  # (8, 40, 40) input: more than one cell in space


def test_videos_shorter_than_a_clip_are_left_out(data, tmp_path) -> None:
    """A clip of a short video would end in repeated frames and its reversed copy start with
    them, a static cue for the order: such videos are not in the probe's data."""
    csv_file = tmp_path / "mixed.csv"
    csv_file.write_text(f"train/vid_000,{FRAMES}\ntrain/vid_001,{SEQ - 1}\n")
    assert len(OrderClipDataset(csv_file, SEQ, SIZE, data_root=data["root"])) == 1
    assert len(OrderClipDataset(csv_file, SEQ // 2, SIZE, ds=2, data_root=data["root"])) == 2


def test_a_rerun_starts_a_fresh_log(data, tmp_path) -> None:
    out = tmp_path / "rerun"
    for epochs in ("2", "1"):
        main(common(data, out) + NET + ["--epochs", epochs, "--num_clips", "1", "--num_vis", "0"])
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0]
