"""Annotation parsers: every format is written here as a small fixture file in tmp_path."""

import json
import logging
import os
import re
from pathlib import Path

import pytest

from timeshift.data.formats import (
    AnnotationError,
    SampleRecord,
    kinetics_file_name,
    read_annotations,
    read_class_names,
    read_folder_tree,
    read_hmdb51_split,
    read_kinetics_csv,
    read_rawframe_list,
    read_sthv2,
    read_ucf101_split,
    read_video_list,
    write_rawframe_list,
    write_video_list,
)

RAW = "frame_dir num_frames label"
RAW_OFFSET = "frame_dir offset num_frames label"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error_at(exc_info, path: Path, line: int, expected: str | None = None) -> None:
    """The message names the file and line as ``file:LINE`` (and the expected format)."""
    message = str(exc_info.value)
    assert f"{path}:{line}:" in message, message
    if expected is not None:
        assert expected in message, message


# -- rawframe / reference TSM lists -----------------------------------------------------------


def test_rawframe_reference_list(tmp_path):
    path = _write(
        tmp_path / "train.txt",
        "# reference TSM list\n\nvideo_a 120 2\n   \nvideo_b 37 0\n# trailing comment\nc/d 5 1\n",
    )
    ann = read_rawframe_list(path)
    # relative paths are relative to the list's folder
    assert ann.records == [
        SampleRecord(str(tmp_path / "video_a"), 2, 120, 0),
        SampleRecord(str(tmp_path / "video_b"), 0, 37, 0),
        SampleRecord(str(tmp_path / "c" / "d"), 1, 5, 0),
    ]
    assert [r.line for r in ann.records] == [3, 5, 7]
    assert ann.source == str(path)
    assert len(ann) == 3
    assert ann.classes == ["0", "1", "2"]  # defaulted to str indices up to the largest label


def test_rawframe_root_joined(tmp_path):
    path = _write(tmp_path / "list.txt", "video_a 10 0\nsub/video_b 11 1\n")
    ann = read_rawframe_list(path, root=tmp_path / "frames")
    assert [r.path for r in ann.records] == [
        str(tmp_path / "frames" / "video_a"),
        str(tmp_path / "frames" / "sub" / "video_b"),
    ]
    assert [r.num_frames for r in ann.records] == [10, 11]


def test_rawframe_with_offset(tmp_path):
    path = _write(tmp_path / "mm.txt", "clip_a 3 16 1\nclip_b 0 8 0\n")
    ann = read_rawframe_list(path, with_offset=True, classes=["x", "y"], root="/frames")
    assert ann.records == [
        SampleRecord("/frames/clip_a", 1, 16, 3),
        SampleRecord("/frames/clip_b", 0, 8, 0),
    ]
    assert ann.classes == ["x", "y"]


def test_rawframe_classes_from_list_and_file(tmp_path):
    path = _write(tmp_path / "list.txt", "a 4 0\nb 4 0\n")
    assert read_rawframe_list(path, classes=["cat", "dog", "eel"]).classes == ["cat", "dog", "eel"]
    names = _write(tmp_path / "classes.txt", "cat\ndog\n")
    assert read_rawframe_list(path, classes=names).classes == ["cat", "dog"]
    assert read_rawframe_list(path, classes=str(names)).classes == ["cat", "dog"]


@pytest.mark.parametrize(
    ("line", "with_offset", "expected"),
    [
        ("video_a 10", False, RAW),  # too few fields
        ("video_a 1 10 0", False, RAW),  # too many fields
        ("video_a ten 0", False, RAW),  # num_frames not an integer
        ("video_a 10 zero", False, RAW),  # label not an integer
        ("video_a 10 0", True, RAW_OFFSET),  # offset column missing
        ("video_a x 10 0", True, RAW_OFFSET),  # offset not an integer
    ],
)
def test_rawframe_malformed_line(tmp_path, line, with_offset, expected):
    good = "video_ok 3 4 0" if with_offset else "video_ok 4 0"
    path = _write(tmp_path / "bad_list.txt", f"# header\n{good}\n\n{line}\n{good}\n")
    with pytest.raises(AnnotationError) as exc_info:
        read_rawframe_list(path, with_offset=with_offset)
    _error_at(exc_info, path, 4, f"'{expected}'")
    assert repr(line) in str(exc_info.value)


def test_rawframe_zero_frames(tmp_path):
    path = _write(tmp_path / "zero.txt", "video_a 10 0\nvideo_b 0 1\n")
    with pytest.raises(AnnotationError, match="num_frames >= 1") as exc_info:
        read_rawframe_list(path)
    _error_at(exc_info, path, 2)
    assert RAW in str(exc_info.value)


def test_rawframe_label_out_of_range(tmp_path):
    path = _write(tmp_path / "labels.txt", "video_a 10 0\nvideo_b 10 1\nvideo_c 10 3\n")
    read_rawframe_list(path, classes=["a", "b", "c", "d"])  # 3 < 4 classes: fine
    with pytest.raises(AnnotationError, match=re.escape("label in [0, 3)")) as exc_info:
        read_rawframe_list(path, classes=["a", "b", "c"])
    _error_at(exc_info, path, 3, RAW)
    negative = _write(tmp_path / "negative.txt", "video_a 10 -3\n")
    with pytest.raises(AnnotationError, match="-1 for unknown") as exc_info:
        read_rawframe_list(negative)
    _error_at(exc_info, negative, 1, RAW)


def test_missing_list_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_rawframe_list(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_video_list(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_annotations(missing)


# -- video lists -------------------------------------------------------------------------------


def test_video_list(tmp_path):
    path = _write(tmp_path / "videos.txt", "# comment\na/x.mp4 1\n\nb/y.webm 0\n")
    ann = read_video_list(path, root=tmp_path)
    assert ann.records == [
        SampleRecord(str(tmp_path / "a" / "x.mp4"), 1),
        SampleRecord(str(tmp_path / "b" / "y.webm"), 0),
    ]
    assert ann.records[0].num_frames is None
    assert ann.classes == ["0", "1"]
    assert read_video_list(path, classes=["p", "q", "r"]).classes == ["p", "q", "r"]


@pytest.mark.parametrize("line", ["a.mp4", "a.mp4 1 2", "a b.mp4 1", "a.mp4 one"])
def test_video_list_malformed_line(tmp_path, line):
    path = _write(tmp_path / "vids.txt", f"ok.mp4 0\n{line}\n")
    with pytest.raises(AnnotationError) as exc_info:
        read_video_list(path)
    _error_at(exc_info, path, 2, "'path label'")


def test_video_list_label_out_of_range(tmp_path):
    path = _write(tmp_path / "vids.txt", "ok.mp4 0\nbad.mp4 2\n")
    with pytest.raises(AnnotationError, match=re.escape("label in [0, 2)")) as exc_info:
        read_video_list(path, classes=["a", "b"])
    _error_at(exc_info, path, 2, "path label")


# -- class names -------------------------------------------------------------------------------


def test_class_names_plain(tmp_path):
    path = _write(tmp_path / "names.txt", "# classes\nabseiling\n\nair drumming\nzumba\n")
    assert read_class_names(path) == ["abseiling", "air drumming", "zumba"]


def test_class_names_indexed(tmp_path):
    # UCF101 classInd.txt: 1-based, here written out of order; names may contain spaces
    path = _write(tmp_path / "classInd.txt", "3 Archery\n1 ApplyEyeMakeup\n2 Apply Lipstick\n")
    assert read_class_names(path) == ["ApplyEyeMakeup", "Apply Lipstick", "Archery"]
    zero = _write(tmp_path / "zero.txt", "1 b\n0 a\n")
    assert read_class_names(zero) == ["a", "b"]


def test_class_names_non_consecutive(tmp_path):
    path = _write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n4 Archery\n")
    with pytest.raises(AnnotationError, match="not consecutive") as exc_info:
        read_class_names(path)
    assert str(path) in str(exc_info.value)


# -- Something-Something v2 --------------------------------------------------------------------

STH_LABELS = {
    "Pushing something from left to right": "0",
    "Pushing something from right to left": "1",
    "Putting something onto something": "2",
}


def _sth_files(tmp_path, entries):
    labels = _write(tmp_path / "labels.json", json.dumps(STH_LABELS))
    annotations = _write(tmp_path / "train.json", json.dumps(entries))
    return labels, annotations


def test_sthv2_train(tmp_path):
    labels, annotations = _sth_files(
        tmp_path,
        [
            {
                "id": "78687",
                "label": "pushing a pen from right to left",
                "template": "Pushing [something] from right to left",
                "placeholders": ["a pen"],
            },
            {
                "id": "42326",
                "label": "putting a cup onto a box",
                "template": "Putting [something] onto [something]",
                "placeholders": ["a cup", "a box"],
            },
            {
                "id": "3",
                "label": "pushing a car from left to right",
                "template": "Pushing [something] from left to right",
                "placeholders": ["a car"],
            },
        ],
    )
    ann = read_sthv2(labels, annotations, video_root=tmp_path / "videos")
    assert ann.classes == list(STH_LABELS)
    assert ann.records == [
        SampleRecord(str(tmp_path / "videos" / "78687.webm"), 1),
        SampleRecord(str(tmp_path / "videos" / "42326.webm"), 2),
        SampleRecord(str(tmp_path / "videos" / "3.webm"), 0),
    ]


def test_sthv2_classes_ordered_by_index(tmp_path):
    labels = _write(tmp_path / "labels.json", json.dumps({"b": "1", "c": "2", "a": "0"}))
    annotations = _write(tmp_path / "test.json", json.dumps([{"id": "9"}]))
    assert read_sthv2(labels, annotations).classes == ["a", "b", "c"]


def test_sthv2_test_split_without_labels(tmp_path):
    labels = _write(tmp_path / "labels.json", json.dumps(STH_LABELS))
    annotations = _write(tmp_path / "test.json", json.dumps([{"id": "1420"}, {"id": "5"}]))
    ann = read_sthv2(labels, annotations, extension=".mp4")
    # without video_root the videos are next to the annotation file
    assert ann.records == [
        SampleRecord(str(tmp_path / "1420.mp4"), -1),
        SampleRecord(str(tmp_path / "5.mp4"), -1),
    ]
    assert [r.line for r in ann.records] == [1, 2]


def test_sthv2_unknown_template(tmp_path):
    labels, annotations = _sth_files(
        tmp_path,
        [
            {"id": "1", "template": "Pushing [something] from left to right"},
            {"id": "77", "template": "Juggling [something]"},
        ],
    )
    with pytest.raises(AnnotationError) as exc_info:
        read_sthv2(labels, annotations)
    message = str(exc_info.value)
    assert str(annotations) in message
    assert "entry 2 (id 77)" in message
    assert "'Juggling something'" in message


def test_sthv2_entry_without_id(tmp_path):
    labels, annotations = _sth_files(tmp_path, [{"id": "1"}, {"template": "x"}])
    with pytest.raises(AnnotationError, match="entry 2: expected an object with 'id'"):
        read_sthv2(labels, annotations)


def test_sthv2_invalid_json(tmp_path):
    labels = _write(tmp_path / "labels.json", json.dumps(STH_LABELS))
    annotations = _write(tmp_path / "train.json", '[\n  {"id": "1"},\n  {"id": \n]')
    with pytest.raises(AnnotationError, match="invalid JSON") as exc_info:
        read_sthv2(labels, annotations)
    _error_at(exc_info, annotations, 4)
    broken_labels = _write(tmp_path / "bad_labels.json", '{"a": "0",')
    with pytest.raises(AnnotationError, match=re.escape(f"{broken_labels}:1: invalid JSON")):
        read_sthv2(broken_labels, annotations)


def test_sthv2_bad_structure(tmp_path):
    labels = _write(tmp_path / "labels.json", json.dumps(["a", "b"]))
    annotations = _write(tmp_path / "train.json", json.dumps([{"id": "1"}]))
    with pytest.raises(AnnotationError, match="expected an object"):
        read_sthv2(labels, annotations)
    labels = _write(tmp_path / "labels2.json", json.dumps({"a": "zero"}))
    with pytest.raises(AnnotationError, match="label indices must be integers"):
        read_sthv2(labels, annotations)
    good = _write(tmp_path / "labels3.json", json.dumps(STH_LABELS))
    not_list = _write(tmp_path / "dict.json", json.dumps({"id": "1"}))
    with pytest.raises(AnnotationError, match="expected a list"):
        read_sthv2(good, not_list)


# -- Kinetics ----------------------------------------------------------------------------------

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_kinetics_file_name():
    assert kinetics_file_name("abc", 10, 20) == "abc_000010_000020.mp4"
    assert kinetics_file_name("-x_Y9", "3.0", "13.0", ".webm") == "-x_Y9_000003_000013.webm"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _kinetics(tmp_path):
    root = tmp_path / "videos"
    csv_path = _write(
        tmp_path / "train.csv",
        KINETICS_HEADER + "air drumming,abc,10,20,train\n"
        "air drumming,def,0,10,train\n"
        "abseiling,ghi,5.0,15.0,train\n"
        "zumba,jkl,100,110,train\n",
    )
    a = _touch(root / "air drumming" / "abc_000010_000020.mp4")  # label as written
    b = _touch(root / "air_drumming" / "def_000000_000010.mp4")  # spaces -> underscores
    c = _touch(root / "ghi_000005_000015.mp4")  # flat in the root
    # jkl is absent
    return csv_path, root, (a, b, c)


def test_kinetics_csv_skip_missing(tmp_path, caplog):
    csv_path, root, (a, b, c) = _kinetics(tmp_path)
    with caplog.at_level(logging.WARNING, logger="timeshift.data.formats"):
        ann = read_kinetics_csv(csv_path, video_root=root)
    assert ann.classes == ["abseiling", "air drumming", "zumba"]
    assert ann.records == [
        SampleRecord(str(a), 1),
        SampleRecord(str(b), 1),
        SampleRecord(str(c), 0),
    ]
    assert "1 of 4 videos not found" in caplog.text


def test_kinetics_csv_keep_missing(tmp_path):
    csv_path, root, (a, b, c) = _kinetics(tmp_path)
    ann = read_kinetics_csv(csv_path, video_root=root, missing="keep")
    assert ann.records[:3] == [
        SampleRecord(str(a), 1),
        SampleRecord(str(b), 1),
        SampleRecord(str(c), 0),
    ]
    assert ann.records[3] == SampleRecord(str(root / "zumba" / "jkl_000100_000110.mp4"), 2)


def test_kinetics_csv_raise_missing(tmp_path):
    csv_path, root, _ = _kinetics(tmp_path)
    with pytest.raises(AnnotationError, match="video not found") as exc_info:
        read_kinetics_csv(csv_path, video_root=root, missing="raise")
    _error_at(exc_info, csv_path, 5)
    assert "jkl_000100_000110.mp4" in str(exc_info.value)
    with pytest.raises(ValueError, match="missing must be"):
        read_kinetics_csv(csv_path, video_root=root, missing="ignore")


def test_kinetics_csv_given_classes(tmp_path):
    csv_path, root, _ = _kinetics(tmp_path)
    classes = ["zumba", "air drumming", "abseiling", "yoga"]
    ann = read_kinetics_csv(csv_path, video_root=root, classes=classes, missing="keep")
    assert ann.classes == classes
    assert [r.label for r in ann.records] == [1, 1, 2, 0]
    with pytest.raises(AnnotationError, match="'zumba' is not a known class") as exc_info:
        read_kinetics_csv(csv_path, video_root=root, classes=["air drumming", "abseiling"])
    _error_at(exc_info, csv_path, 5)


def test_kinetics_test_csv_without_label(tmp_path):
    root = tmp_path / "videos"
    csv_path = _write(
        tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,1,11,test\nzz,0,10,test\n"
    )
    video = _touch(root / "abc_000001_000011.mp4")
    ann = read_kinetics_csv(csv_path, video_root=root)
    assert ann.records == [SampleRecord(str(video), -1)]
    assert ann.classes == []


def test_kinetics_csv_bad_header(tmp_path):
    csv_path = _write(tmp_path / "bad.csv", "label,id,start,end,split\na,abc,1,2,train\n")
    with pytest.raises(AnnotationError) as exc_info:
        read_kinetics_csv(csv_path, video_root=tmp_path)
    _error_at(exc_info, csv_path, 1, "label,youtube_id,time_start,time_end,split")
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(AnnotationError, match="empty file"):
        read_kinetics_csv(empty, video_root=tmp_path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("a,abc,1,2", "expected 5 fields"),
        ("a,abc,1,2,train,extra", "expected 5 fields"),
        ("a,abc,one,2,train", "must be numbers"),
    ],
)
def test_kinetics_csv_malformed_row(tmp_path, row, match):
    csv_path = _write(tmp_path / "k.csv", KINETICS_HEADER + "a,ok,1,2,train\n\n" + row + "\n")
    with pytest.raises(AnnotationError, match=match) as exc_info:
        read_kinetics_csv(csv_path, video_root=tmp_path, missing="keep")
    _error_at(exc_info, csv_path, 4)


# -- UCF101 ------------------------------------------------------------------------------------

CLASS_IND = "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n"


def test_ucf101_trainlist(tmp_path):
    class_ind = _write(tmp_path / "classInd.txt", CLASS_IND)
    train = _write(
        tmp_path / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c02.avi 3\n",
    )
    ann = read_ucf101_split(class_ind, train, video_root=tmp_path / "UCF-101")
    assert ann.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert ann.records == [
        SampleRecord(str(tmp_path / "UCF-101" / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"), 0),
        SampleRecord(str(tmp_path / "UCF-101" / "Archery/v_Archery_g01_c02.avi"), 2),
    ]


def test_ucf101_testlist(tmp_path):
    class_ind = _write(tmp_path / "classInd.txt", CLASS_IND)
    test = _write(
        tmp_path / "testlist01.txt",
        "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\n"
        "Archery/v_Archery_g07_c03.avi\r\n"
        "applyeyemakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n",
    )
    ann = read_ucf101_split(class_ind, test)
    assert [r.label for r in ann.records] == [1, 2, 0]
    assert ann.records[0].path == str(tmp_path / "ApplyLipstick/v_ApplyLipstick_g01_c01.avi")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("v_ApplyEyeMakeup_g08_c01.avi 1", re.escape("expected 'ClassName/video.avi [label]'")),
        ("ApplyEyeMakeup/v.avi 1 2", re.escape("expected 'ClassName/video.avi [label]'")),
        ("ApplyEyeMakeup/v.avi one", "is not an integer"),
        ("ApplyEyeMakeup/v.avi 4", "label out of range"),
        ("ApplyEyeMakeup/v.avi 0", "label out of range"),
        ("Bowling/v_Bowling_g01_c01.avi", "class folder 'Bowling' not in"),
    ],
)
def test_ucf101_malformed_line(tmp_path, line, match):
    class_ind = _write(tmp_path / "classInd.txt", CLASS_IND)
    split = _write(tmp_path / "split.txt", f"Archery/v_Archery_g01_c01.avi 3\n{line}\n")
    with pytest.raises(AnnotationError, match=match) as exc_info:
        read_ucf101_split(class_ind, split)
    _error_at(exc_info, split, 2)


# -- HMDB51 ------------------------------------------------------------------------------------


def _hmdb(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    _write(splits / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    _write(splits / "cartwheel_test_split1.txt", "d.avi 2\ne.avi 1\nf.avi 1\n")
    _write(splits / "brush_hair_test_split2.txt", "a.avi 2\nb.avi 1\nc.avi 1\n")
    _write(splits / "cartwheel_test_split2.txt", "d.avi 1\ne.avi 2\nf.avi 0\n")
    return splits


def test_hmdb51_train_and_test(tmp_path):
    splits = _hmdb(tmp_path)
    train = read_hmdb51_split(splits, video_root=tmp_path / "hmdb")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert train.records == [
        SampleRecord(str(tmp_path / "hmdb" / "brush_hair" / "a.avi"), 0),
        SampleRecord(str(tmp_path / "hmdb" / "cartwheel" / "e.avi"), 1),
        SampleRecord(str(tmp_path / "hmdb" / "cartwheel" / "f.avi"), 1),
    ]
    test = read_hmdb51_split(splits, subset="test")  # videos default to the split folder
    assert test.records == [
        SampleRecord(str(splits / "brush_hair/b.avi"), 0),
        SampleRecord(str(splits / "cartwheel/d.avi"), 1),
    ]
    split2 = read_hmdb51_split(splits, split=2, subset="train", video_root="v")
    assert [r.path for r in split2.records] == [
        "v/brush_hair/b.avi",
        "v/brush_hair/c.avi",
        "v/cartwheel/d.avi",
    ]


def test_hmdb51_errors(tmp_path):
    splits = _hmdb(tmp_path)
    with pytest.raises(ValueError, match="subset must be"):
        read_hmdb51_split(splits, subset="val")
    with pytest.raises(FileNotFoundError, match=re.escape("_test_split3.txt")):
        read_hmdb51_split(splits, split=3)
    bad = _write(splits / "dive_test_split1.txt", "x.avi 1\ny.avi 3\n")
    with pytest.raises(AnnotationError, match=re.escape("expected 'video.avi 0|1|2'")) as exc_info:
        read_hmdb51_split(splits)
    _error_at(exc_info, bad, 2)


# -- folder trees and auto-detection -----------------------------------------------------------


def test_folder_tree_videos(tmp_path):
    root = tmp_path / "data"
    b1 = _touch(root / "bowling" / "v2.MP4")
    b0 = _touch(root / "bowling" / "v1.avi")
    _touch(root / "bowling" / "notes.txt")
    (root / "bowling" / "frames_dir").mkdir()
    a0 = _touch(root / "archery" / "x.webm")
    (root / "empty_class").mkdir()
    _touch(root / "README.md")
    ann = read_folder_tree(root)
    assert ann.classes == ["archery", "bowling", "empty_class"]
    assert ann.records == [
        SampleRecord(str(a0), 0),
        SampleRecord(str(b0), 1),
        SampleRecord(str(b1), 1),
    ]
    only_avi = read_folder_tree(root, extensions=(".avi",))
    assert only_avi.records == [SampleRecord(str(b0), 1)]


def test_folder_tree_frames(tmp_path):
    root = tmp_path / "frames"
    (root / "b" / "clip2").mkdir(parents=True)
    (root / "b" / "clip1").mkdir(parents=True)
    (root / "a" / "clip9").mkdir(parents=True)
    _touch(root / "a" / "stray.mp4")
    ann = read_folder_tree(root, frames=True)
    assert ann.classes == ["a", "b"]
    assert ann.records == [
        SampleRecord(str(root / "a" / "clip9"), 0),
        SampleRecord(str(root / "b" / "clip1"), 1),
        SampleRecord(str(root / "b" / "clip2"), 1),
    ]


def test_folder_tree_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        read_folder_tree(tmp_path / "absent")
    _touch(tmp_path / "flat" / "v.mp4")
    with pytest.raises(AnnotationError, match="one sub-folder per class"):
        read_folder_tree(tmp_path / "flat")


def test_read_annotations_auto(tmp_path):
    _touch(tmp_path / "tree" / "cls" / "v.mp4")
    tree = read_annotations(tmp_path / "tree")
    assert tree.classes == ["cls"]
    assert tree.records == [SampleRecord(str(tmp_path / "tree" / "cls" / "v.mp4"), 0)]

    raw = _write(tmp_path / "raw.txt", "# comment\n\nvid_a 12 1\n")
    (tmp_path / "r" / "vid_a").mkdir(parents=True)
    root = tmp_path / "r"
    assert read_annotations(raw, root=root).records == [SampleRecord(str(root / "vid_a"), 1, 12)]
    videos = _write(tmp_path / "videos.txt", "# comment\nx.mp4 1\n")
    _touch(tmp_path / "x.mp4")
    ann = read_annotations(videos, classes=["a", "b"])
    assert ann.records == [SampleRecord(str(tmp_path / "x.mp4"), 1)]
    assert ann.classes == ["a", "b"]

    # explicit formats
    assert read_annotations(raw, format="reference", root=root).records[0].num_frames == 12
    with pytest.raises(AnnotationError, match="'path label'"):
        read_annotations(raw, format="videos")
    with pytest.raises(ValueError, match="format must be"):
        read_annotations(raw, format="csv")


# -- writers -----------------------------------------------------------------------------------


def test_write_rawframe_list_round_trip(tmp_path):
    root = tmp_path / "frames"
    records = [
        SampleRecord(str(root / "a" / "clip1"), 2, 48),
        SampleRecord(str(root / "clip2"), 0, 7),
    ]
    out = tmp_path / "out.txt"
    write_rawframe_list(out, records, root=root)
    assert out.read_text() == "a/clip1 48 2\nclip2 7 0\n"
    ann = read_rawframe_list(out, root=root)
    assert ann.records == records
    # without root: relative to the list's folder when below it, else absolute, so that the
    # reader (which resolves against the list's folder) finds the same paths
    plain = tmp_path / "plain.txt"
    below = SampleRecord(str(tmp_path / "x" / "y"), 1, 3)
    elsewhere = SampleRecord("x/y", 0, 4)  # relative to the current directory
    write_rawframe_list(plain, [below, elsewhere])
    assert plain.read_text() == f"x/y 3 1\n{Path('x/y').resolve()} 4 0\n"
    assert read_rawframe_list(plain).records == [
        below,
        SampleRecord(str(Path("x/y").resolve()), 0, 4),
    ]


def test_write_video_list_round_trip(tmp_path):
    root = tmp_path / "videos"
    records = [SampleRecord(str(root / "k" / "v.mp4"), 3), SampleRecord(str(root / "w.avi"), 0)]
    out = tmp_path / "out.txt"
    write_video_list(out, records, root=root)
    assert out.read_text() == "k/v.mp4 3\nw.avi 0\n"
    assert read_video_list(out, root=root).records == records
    assert read_annotations(out, root=root, check=False).records == records


def test_writers_refuse_what_readers_would_reject(tmp_path):
    out = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="needs num_frames"):
        write_rawframe_list(out, [SampleRecord("a", 0)])
    with pytest.raises(ValueError, match="with_offset"):
        write_rawframe_list(out, [SampleRecord("a", 0, 5, offset=2)])
    with pytest.raises(ValueError, match="spaces"):
        write_video_list(out, [SampleRecord("a b.mp4", 0)])
    inside = SampleRecord(str(tmp_path / "a"), 1, 5, offset=2)
    write_rawframe_list(out, [inside], with_offset=True)
    assert out.read_text() == "a 2 5 1\n"
    assert read_annotations(out, check=False).records == [inside]


# -- encodings: every reader, BOM and non-UTF-8 ------------------------------------------------

BOM = "\ufeff".encode()


def _reader_cases():
    """name -> (files {name: text}, file whose encoding varies, read(folder) -> Annotations or
    class list). Every annotation reader is here: lists, class names, CSV, JSON, split files."""
    sth_entries = [{"id": "7", "template": "Pushing [something] from left to right"}]
    return {
        "video list": (
            {"l.txt": "a.mp4 1\nb.mp4 0\n"},
            "l.txt",
            lambda d: read_video_list(d / "l.txt"),
        ),
        "rawframe list": (
            {"l.txt": "a 4 1\nb 5 0\n"},
            "l.txt",
            lambda d: read_rawframe_list(d / "l.txt"),
        ),
        "auto list": (
            {"l.txt": "a.mp4 1\n"},
            "l.txt",
            lambda d: read_annotations(d / "l.txt", check=False),
        ),
        "class names": ({"c.txt": "Écrire\nb\n"}, "c.txt", lambda d: read_class_names(d / "c.txt")),
        "classInd": ({"c.txt": CLASS_IND}, "c.txt", lambda d: read_class_names(d / "c.txt")),
        "list classes file": (
            {"c.txt": "zebra\nyak\n", "l.txt": "a.mp4 1\n"},
            "c.txt",
            lambda d: read_video_list(d / "l.txt", classes=d / "c.txt"),
        ),
        "kinetics csv": (
            {"k.csv": KINETICS_HEADER + "air drumming,abc,10,20,train\n"},
            "k.csv",
            lambda d: read_kinetics_csv(d / "k.csv", video_root=d, missing="keep"),
        ),
        "sthv2 labels": (
            {"labels.json": json.dumps(STH_LABELS), "a.json": json.dumps(sth_entries)},
            "labels.json",
            lambda d: read_sthv2(d / "labels.json", d / "a.json"),
        ),
        "sthv2 annotations": (
            {"labels.json": json.dumps(STH_LABELS), "a.json": json.dumps(sth_entries)},
            "a.json",
            lambda d: read_sthv2(d / "labels.json", d / "a.json"),
        ),
        "ucf101 classInd": (
            {"classInd.txt": CLASS_IND, "t.txt": "Archery/v_Archery_g01_c01.avi 3\n"},
            "classInd.txt",
            lambda d: read_ucf101_split(d / "classInd.txt", d / "t.txt"),
        ),
        "ucf101 split": (
            {"classInd.txt": CLASS_IND, "t.txt": "Archery/v_Archery_g01_c01.avi 3\n"},
            "t.txt",
            lambda d: read_ucf101_split(d / "classInd.txt", d / "t.txt"),
        ),
        "hmdb51 split": (
            {"s/dive_test_split1.txt": "x.avi 1\ny.avi 2\n"},
            "s/dive_test_split1.txt",
            lambda d: read_hmdb51_split(d / "s"),
        ),
    }


def _write_case(folder: Path, files: dict, varied: str, prefix: bytes = b"", bad_at=None):
    for name, text in files.items():
        data = text.encode("utf-8")
        if name == varied:
            data = prefix + data
            if bad_at is not None:  # a Latin-1 byte in the middle of line `bad_at`
                lines = data.split(b"\n")
                lines[bad_at - 1] = lines[bad_at - 1] + b"\xe9"
                data = b"\n".join(lines)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("case", sorted(_reader_cases()))
def test_every_reader_ignores_a_utf8_bom(tmp_path, case):
    files, varied, read = _reader_cases()[case]
    plain, bom = tmp_path / "plain", tmp_path / "bom"
    _write_case(plain, files, varied)
    _write_case(bom, files, varied, prefix=BOM)
    expected, got = read(plain), read(bom)
    if isinstance(expected, list):  # class names
        assert got == expected and "\ufeff" not in got[0]
        return
    assert got.classes == expected.classes
    assert [(r.path.replace(str(bom), str(plain)), r.label) for r in got.records] == [
        (r.path, r.label) for r in expected.records
    ]
    assert len(got.records) == len(expected.records) > 0


def test_ucf101_classind_with_bom_keeps_first_class(tmp_path):
    # the reported case: with a BOM "1 ApplyEyeMakeup" was not read as an index line
    path = tmp_path / "classInd.txt"
    path.write_bytes(BOM + CLASS_IND.replace("\n", "\r\n").encode())
    assert read_class_names(path) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    listing = tmp_path / "l.txt"
    listing.write_bytes(BOM + b"a.mp4 1\nb.mp4 0\n")
    assert [Path(r.path).name for r in read_video_list(listing).records] == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize("case", sorted(_reader_cases()))
def test_every_reader_names_file_and_line_of_non_utf8_text(tmp_path, case):
    files, varied, read = _reader_cases()[case]
    line = 2 if files[varied].count("\n") >= 2 else 1
    _write_case(tmp_path, files, varied, bad_at=line)
    with pytest.raises(AnnotationError, match="not UTF-8") as exc_info:
        read(tmp_path)
    assert f"{tmp_path / varied}:{line}:" in str(exc_info.value)


def test_annotation_file_that_is_not_a_regular_file(tmp_path):
    # a FIFO would block the read forever; a folder is not a list either
    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)
    with pytest.raises(AnnotationError, match="not a regular file"):
        read_video_list(fifo)
    with pytest.raises(AnnotationError, match="not a regular file"):
        read_class_names(tmp_path)
