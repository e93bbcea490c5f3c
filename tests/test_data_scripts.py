"""Data preparation scripts end to end: videos -> frames -> CSVs -> datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from torchvision.io import decode_jpeg, read_file

from datasets.csv_io import read_video_csv
from datasets.downstream import ClipDataset
from datasets.pretrain import PretrainDataset
from scripts import build_csv, extract_frames, frame_counts, make_synthetic, reencode_videos


def jpegs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("image_*.jpg"))


def read_rows(path: Path) -> list[list[str]]:
    return pd.read_csv(path, header=None, dtype=str).values.tolist()


def test_mp4_and_avi_through_extraction_csv_and_datasets(tmp_path, write_video_file):
    src, dst = tmp_path / "videos", tmp_path / "frames"
    (src / "walk").mkdir(parents=True)
    (src / "jump").mkdir()
    mp4 = write_video_file(src / "walk" / "clip_a.mp4", 37, codec="h264")
    avi = write_video_file(src / "jump" / "clip_b.avi", 23, codec="mpeg4", width=80, height=60)
    assert extract_frames.main(["--src", str(src), "--dst", str(dst), "--short_side", "30",
                                "--workers", "1"]) == 0

    walk, jump = dst / "walk" / "clip_a", dst / "jump" / "clip_b"
    assert jpegs(walk) == [f"image_{i:05d}.jpg" for i in range(1, mp4 + 1)]
    assert len(jpegs(jump)) == avi
    assert (walk / ".done").read_text().strip() == str(mp4)
    assert decode_jpeg(read_file(str(jump / "image_00001.jpg"))).shape == (3, 30, 40)  # 80x60 -> 40x30
    assert decode_jpeg(read_file(str(walk / "image_00001.jpg"))).shape == (3, 30, 40)  # 64x48 -> 40x30

    csv_dir = tmp_path / "csv"
    assert build_csv.main(["folder", "--frames_root", str(dst), "--out_dir", str(csv_dir)]) == 0
    assert read_rows(csv_dir / "labelled.csv") == [[str(jump), str(avi), "0"],
                                                   [str(walk), str(mp4), "1"]]
    assert read_rows(csv_dir / "pretrain.csv") == [[str(jump), str(avi)], [str(walk), str(mp4)]]
    assert (csv_dir / "classes.txt").read_text() == "0 jump\n1 walk\n"

    pretrain = PretrainDataset(csv_dir / "pretrain.csv", seq=8, sample=2, img_dim=16,
                               validate_files=True)
    assert pretrain[1].shape == (3, 3, 8, 16, 16)
    clips, label = ClipDataset(csv_dir / "labelled.csv", seq=8, img_dim=16, train=False,
                               num_clips=2)[1]
    assert clips.shape == (2, 3, 8, 16, 16) and label == 1


def test_extraction_resumes_and_reports_failures(tmp_path, write_video_file, capsys):
    src, dst = tmp_path / "videos", tmp_path / "frames"
    src.mkdir()
    write_video_file(src / "good.mp4", 9)
    (src / "broken.avi").write_bytes(b"RIFF not really a video")
    (src / "notes.txt").write_text("ignored")
    argv = ["--src", str(src), "--dst", str(dst), "--short_side", "0", "--workers", "1"]
    assert extract_frames.main(argv) == 1
    out, err = capsys.readouterr()
    assert "1 videos extracted (9 frames), 0 already done, 1 failed" in out
    assert "FAILED broken.avi" in err
    assert (dst / "extract_failures.txt").read_text().startswith("broken.avi\t")
    assert not (dst / "broken").exists()  # no half-written folder left behind
    assert decode_jpeg(read_file(str(dst / "good" / "image_00001.jpg"))).shape == (3, 48, 64)

    (src / "broken.avi").unlink()
    assert extract_frames.main(argv) == 0
    assert "0 videos extracted (0 frames), 1 already done, 0 failed" in capsys.readouterr()[0]
    (dst / "good" / ".done").unlink()  # an interrupted video is redone from scratch
    assert extract_frames.main(argv) == 0
    assert "1 videos extracted (9 frames)" in capsys.readouterr()[0]


def test_extraction_to_a_fixed_size(tmp_path, write_video_file):
    src, dst = tmp_path / "videos", tmp_path / "frames"
    src.mkdir()
    write_video_file(src / "wide.mp4", 5, width=64, height=36)
    assert extract_frames.main(["--src", str(src), "--dst", str(dst), "--size", "40x30",
                                "--workers", "1"]) == 0
    assert decode_jpeg(read_file(str(dst / "wide" / "image_00001.jpg"))).shape == (3, 30, 40)
    with pytest.raises(SystemExit):
        extract_frames.main(["--src", str(src), "--dst", str(dst), "--size", "40by30"])


def test_extraction_argument_errors(tmp_path):
    with pytest.raises(SystemExit):
        extract_frames.main(["--src", str(tmp_path / "missing"), "--dst", str(tmp_path)])
    with pytest.raises(SystemExit):
        extract_frames.main(["--src", str(tmp_path), "--dst", str(tmp_path), "--quality", "0"])
    assert extract_frames.main(["--src", str(tmp_path), "--dst", str(tmp_path / "o")]) == 1


def test_ucf101_split_files(tmp_path, make_frame_folder, capsys):
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1\n")
    (splits / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    make_frame_folder("frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", num_frames=5)
    make_frame_folder("frames/v_HandStandPushups_g08_c01", num_frames=7)  # flat layout accepted
    make_frame_folder("frames/HandstandPushups/v_HandStandPushups_g01_c01", num_frames=4)
    out = tmp_path / "csv"
    assert build_csv.main(["ucf101", "--frames_root", str(tmp_path / "frames"), "--splits_dir",
                           str(splits), "--split", "1", "--out_dir", str(out), "--relative"]) == 0
    assert read_rows(out / "ucf101_train_split1.csv") == [
        ["../frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "5", "0"],
        ["../frames/v_HandStandPushups_g08_c01", "7", "1"]]
    assert read_rows(out / "ucf101_test_split1.csv") == [
        ["../frames/HandstandPushups/v_HandStandPushups_g01_c01", "4", "1"]]
    assert read_rows(out / "ucf101_pretrain_split1.csv") == [
        ["../frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "5"],
        ["../frames/v_HandStandPushups_g08_c01", "7"]]
    assert "v_ApplyEyeMakeup_g09_c01: no frame folder" in capsys.readouterr().err
    table = read_video_csv(out / "ucf101_train_split1.csv", labelled=True, validate_files=True)
    assert table["path"].tolist()[1] == str(tmp_path / "frames" / "v_HandStandPushups_g08_c01")

    (splits / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n")
    assert build_csv.main(["ucf101", "--frames_root", str(tmp_path / "frames"), "--splits_dir",
                           str(splits), "--out_dir", str(out)]) == 1
    assert "trainlist01.txt, line 1: label 2 disagrees with classInd.txt" in capsys.readouterr().err


def test_hmdb51_split_files(tmp_path, make_frame_folder):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "wave_test_split2.txt").write_text("w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("b1.avi 2\nb2.avi 1\n")
    (splits / "wave_test_split1.txt").write_text("w1.avi 2\n")  # another split: ignored
    for name in ("wave/w1", "wave/w2", "wave/w3", "brush_hair/b1", "brush_hair/b2"):
        make_frame_folder(f"frames/{name}", num_frames=3)
    out = tmp_path / "csv"
    assert build_csv.main(["hmdb51", "--frames_root", str(tmp_path / "frames"), "--splits_dir",
                           str(splits), "--split", "2", "--out_dir", str(out)]) == 0
    frames = tmp_path / "frames"
    assert read_rows(out / "hmdb51_train_split2.csv") == [
        [str(frames / "brush_hair" / "b2"), "3", "0"], [str(frames / "wave" / "w1"), "3", "1"]]
    assert read_rows(out / "hmdb51_test_split2.csv") == [
        [str(frames / "brush_hair" / "b1"), "3", "0"], [str(frames / "wave" / "w2"), "3", "1"]]
    assert len(read_rows(out / "hmdb51_pretrain_split2.csv")[0]) == 2


def test_kinetics_tree_and_empty_folders(tmp_path, make_frame_folder, capsys):
    root = tmp_path / "k400"
    make_frame_folder("k400/train/b class/v1", num_frames=4)
    make_frame_folder("k400/train/a class/v2", num_frames=6)
    (root / "train" / "a class" / "empty").mkdir()
    make_frame_folder("k400/val/b class/v3", num_frames=5)
    make_frame_folder("k400/val/unknown/v4", num_frames=5)
    out = tmp_path / "csv"
    assert build_csv.main(["kinetics", "--frames_root", str(root), "--out_dir", str(out)]) == 0
    assert read_rows(out / "kinetics400_train.csv") == [
        [str(root / "train" / "a class" / "v2"), "6"], [str(root / "train" / "b class" / "v1"), "4"]]
    assert read_rows(out / "kinetics400_val.csv") == [[str(root / "val" / "b class" / "v3"), "5", "1"]]
    err = capsys.readouterr().err
    assert "empty: no image_%05d.jpg frames" in err and "val/unknown: class not in train/" in err


def test_frame_counts_use_done_markers_and_reject_gaps(tmp_path, make_frame_folder):
    marked = make_frame_folder("marked", num_frames=3)
    Path(marked, ".done").write_text("3\n")
    gap = make_frame_folder("gap", num_frames=4)
    os.remove(os.path.join(gap, "image_00002.jpg"))
    assert frame_counts.scan_video(marked) == (3, "")
    count, reason = frame_counts.scan_video(gap)
    assert count == 0 and "without gaps" in reason


def test_half_extracted_folders_are_left_out_and_named(tmp_path, make_frame_folder, capsys):
    """A folder that extract_frames.py did not finish (no .done among finished ones, or an empty
    last frame) is not listed with its partial count."""
    for name, frames in (("done1", 4), ("done2", 5)):
        Path(make_frame_folder(f"mine/c/{name}", num_frames=frames), ".done").write_text(f"{frames}\n")
    make_frame_folder("mine/c/partial", num_frames=3)  # killed before its .done
    out = tmp_path / "csv"
    assert build_csv.main(["folder", "--frames_root", str(tmp_path / "mine"), "--out_dir", str(out)]) == 0
    assert [Path(p).name for p, _ in read_rows(out / "pretrain.csv")] == ["done1", "done2"]
    assert "partial: no .done marker while 2 other folders have one" in capsys.readouterr().err
    empty_last = make_frame_folder("alone", num_frames=3)
    Path(empty_last, "image_00003.jpg").write_bytes(b"")
    count, reason = frame_counts.scan_video(empty_last)
    assert count == 0 and "image_00003.jpg is empty" in reason


def test_a_truncated_video_whose_header_survived_is_refused(tmp_path, capsys):
    """A half-downloaded mp4 with its index at the front decodes to about half the frames its
    header declares: extract_frames.py fails it, leaves no frames and no .done."""
    import av
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    whole = src / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(120):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = whole.read_bytes()
    (src / "half.mp4").write_bytes(data[: len(data) // 2])
    dst = tmp_path / "frames"
    assert extract_frames.main(["--src", str(src), "--dst", str(dst), "--workers", "1"]) == 1
    assert extract_frames.read_done(str(dst / "whole")) == 120
    assert not (dst / "half").exists()
    assert "of the 120 frames its container declares: the file is truncated" in capsys.readouterr().err


def test_make_synthetic_script(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "syn"), "--num_videos", "8", "--frames", "6", "--size", "16",
            "--num_classes", "2"]
    assert make_synthetic.main(argv) == 0
    assert "synthetic data set in" in capsys.readouterr().out
    train = read_video_csv(tmp_path / "syn" / "train.csv", labelled=True, validate_files=True)
    assert set(train["label"]) == {0, 1} and set(train["num_frames"]) == {6}
    with pytest.raises(SystemExit):
        make_synthetic.main(["--out", str(tmp_path / "x"), "--num_classes", "1"])


@pytest.mark.parametrize("module", [build_csv, extract_frames, make_synthetic, reencode_videos])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as info:
        module.main(["-h"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
