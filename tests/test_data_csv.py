"""CSV reading and validation (docs/method.md §1): formats, path resolution, one clear error per problem."""

from __future__ import annotations

import logging
import os

import pytest

from datasets.csv_io import CsvError, read_video_csv


def test_unlabelled_rows_and_relative_paths(tmp_path, write_video_csv):
    csv_file = write_video_csv("lists/pre.csv", [("videos/a", 40), ("/abs/b", 50)])
    table = read_video_csv(csv_file, labelled=False)
    assert table["path"].tolist() == [str(tmp_path / "lists" / "videos" / "a"), "/abs/b"]
    assert table["num_frames"].tolist() == [40, 50]
    assert table["row"].tolist() == [1, 2]
    assert "label" not in table


def test_data_root_overrides_csv_folder(tmp_path, write_video_csv):
    csv_file = write_video_csv("pre.csv", [("a", 40)])
    table = read_video_csv(csv_file, labelled=False, data_root=str(tmp_path / "root"))
    assert table["path"].tolist() == [str(tmp_path / "root" / "a")]


@pytest.mark.parametrize("header", ["path,num_frames,label", "path/to/video/frame,number_of_frames,label"])
def test_header_is_accepted_and_labels_read(write_video_csv, header):
    csv_file = write_video_csv("train.csv", [("a", 40, 0), ("b", 50, 2)], header=header)
    table = read_video_csv(csv_file, labelled=True, num_classes=3)
    assert table["label"].tolist() == [0, 2]
    assert table["row"].tolist() == [2, 3]  # 1-based lines of the file, header included


def test_unlabelled_read_ignores_a_label_column(write_video_csv):
    table = read_video_csv(write_video_csv("t.csv", [("a", 40, 7)]), labelled=False)
    assert table.columns.tolist() == ["path", "num_frames", "row"]


@pytest.mark.parametrize("rows, labelled, needle", [
    ([("a", 40), ("b", 50, 1, 9)], False, "row 2: expected path,num_frames[,label], got 4"),
    ([("a", 40, 0), ("b", 50)], True, "row 2: expected path,num_frames,label, got 2"),
    ([("a", 40), ("b", "x12")], False, "row 2: num_frames 'x12' is not a positive integer"),
    ([("a", 0)], False, "row 1: num_frames '0' is not a positive integer"),
    ([("a", 40, 0), ("b", 50, -1)], True, "row 2: label '-1' is not an integer in 0..2"),
    ([("a", 40, 0), ("b", 50, 3)], True, "row 2: label '3' is not an integer in 0..2"),
    ([("a", 40, "cat")], True, "row 1: label 'cat'"),
])
def test_malformed_rows_name_file_row_and_fix(write_video_csv, rows, labelled, needle):
    csv_file = write_video_csv("bad.csv", rows)
    with pytest.raises(CsvError) as info:
        read_video_csv(csv_file, labelled=labelled, num_classes=3)
    message = str(info.value)
    assert message.startswith(csv_file) and needle in message and "Fix:" in message


def test_a_bad_count_in_the_first_row_is_an_error_not_a_header(write_video_csv):
    with pytest.raises(CsvError, match=r"row 1: num_frames 'abc' is not a positive integer"):
        read_video_csv(write_video_csv("bad.csv", [("v1", "abc"), ("v2", 50)]), labelled=False)


def test_negative_label_without_num_classes(write_video_csv):
    with pytest.raises(CsvError, match=r"row 1: label '-2' is not an integer >= 0\. Fix: use 0-based"):
        read_video_csv(write_video_csv("neg.csv", [("a", 40, -2)]), labelled=True)


def test_missing_or_empty_csv(tmp_path, write_video_csv):
    with pytest.raises(CsvError, match="CSV file not found"):
        read_video_csv(tmp_path / "nope.csv", labelled=False)
    with pytest.raises(CsvError, match="no video rows"):
        read_video_csv(write_video_csv("empty.csv", [], header="path,num_frames"), labelled=False)


def test_validate_files_reports_missing_folder_and_overclaimed_frames(
        tmp_path, make_frame_folder, write_video_csv):
    make_frame_folder("ok", num_frames=10)
    make_frame_folder("short", num_frames=10)
    csv_file = write_video_csv("v.csv", [("ok", 10), ("short", 11), ("gone", 5)])
    read_video_csv(csv_file, labelled=False)  # the default read never touches the disk
    with pytest.raises(CsvError) as info:
        read_video_csv(csv_file, labelled=False, validate_files=True)
    message = str(info.value)
    assert "2 of 3 rows" in message
    assert "row 2:" in message and "image_00011.jpg" in message and "more than the frames" in message
    assert f"row 3: frame folder {tmp_path / 'gone'} does not exist" in message
    assert "Fix:" in message
    assert len(read_video_csv(write_video_csv("ok.csv", [("ok", 10)]), labelled=False,
                              validate_files=True)) == 1


def test_short_videos_filtered_with_a_count(write_video_csv, caplog):
    csv_file = write_video_csv("v.csv", [("a", 32), ("b", 33), ("c", 10)])
    with caplog.at_level(logging.WARNING, logger="datasets.csv_io"):
        table = read_video_csv(csv_file, labelled=False, min_frames=33)
    assert table["path"].map(os.path.basename).tolist() == ["b"]
    assert "left out 2 of 3 videos with fewer than 33 frames" in caplog.text
    with pytest.raises(CsvError, match="none of the 3 videos has at least 40 frames"):
        read_video_csv(csv_file, labelled=False, min_frames=40)
