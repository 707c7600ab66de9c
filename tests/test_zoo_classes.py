"""Class-name lists shipped as package data (``timeshift/models/zoo/classes/*.txt``).

Sources (copied from stored public files, one class per line, in label-index order):
- kinetics400.txt: Survai-hrf/Video-Swin-Transformer:demo/label_map_k400.txt
  @12e53ae8281e560302a5d47a41a70f6ed0ba869e (MMAction2's K400 label map; the first 400 lines,
  alphabetical; the stored fork appends 9 stray two-letter lines, not copied).
- sthv2.txt: open-mmlab/mmaction2:tools/data/sthv2/label_map.txt
  @6493d248e79ff39fa2e67ddc52f6979fa20c3dbd (alphabetical = index of the official
  something-something-v2-labels.json; TSM's tools/gen_label_sthv2.py keeps the JSON index).
- sthv1.txt: open-mmlab/mmaction2:tools/data/sthv1/label_map.txt
  @9d7e40f7470c3d4b483cfd2036fb245312f4edac (order of something-something-v1-labels.csv).
  NOTE: the reference TSM (mit-han-lab/temporal-shift-module:tools/gen_label_sthv1.py
  @83c77b72e38cf27bc0cc3e7b3b0795d7d9b39957) applies ``sorted()`` to that CSV, so reference TSM
  Something-V1 checkpoints index classes as ``sorted(sthv1)`` (== sthv2.txt order), not as
  this file.
- jester.txt: open-mmlab/mmaction2:tools/data/jester/label_map.txt
  @c6c1e518e416811cf2d17df921cf4afd00fd6c1d; agrees with SaltedFishLZ/torchstream:
  vdataset/Jester (``__classes__``). Rars-project/mousepy:jester-v1-labels.csv
  @06006bb09869e4b675cade856285fa782d897128 swaps indices 4/5 ("Pulling Hand In" first);
  not followed.
- ucf101.txt: yuxincao22/StyleFool:classInd.txt@8e235d028ff6c9f74814f017fef3bcd4ef62ae14
  (1-based ``index name``), with class 37 spelled "HandstandPushups" (the dataset's folder name)
  as in Rangozhang/Action_recognition_scripts_UCF101:classInd.txt
  @9901b90ac9ec2dafb5a791419462feb0f3635cd1; StyleFool and cnnlstm/GAGCN:classInd.txt write
  "HandStandPushups" (the video file-name spelling).
- hmdb51.txt: SaltedFishLZ/torchstream:vdataset/HMDB51/__init__.py
  @940c5c0d4612ebe15bf941698e0f0430094100ce (``__classes__``, alphabetical folder names).
"""

from __future__ import annotations

import importlib.resources

import pytest

CLASSES = importlib.resources.files("timeshift").joinpath("models", "zoo", "classes")

COUNTS = {
    "kinetics400": 400,
    "sthv1": 174,
    "sthv2": 174,
    "jester": 27,
    "ucf101": 101,
    "hmdb51": 51,
}

# (index, name) pairs read off the source files listed above.
SPOT_CHECKS = {
    "kinetics400": [
        (0, "abseiling"),
        (1, "air drumming"),
        (208, "passing American football (in game)"),
        (399, "zumba"),
    ],
    "sthv2": [
        (0, "Approaching something with your camera"),
        (16, "Holding something"),
        (109, "Putting something on a surface"),
        (173, "Wiping something off of something"),
    ],
    "sthv1": [
        (0, "Holding something"),
        (1, "Turning something upside down"),
        (6, "Approaching something with your camera"),
        (173, "Poking a hole into some substance"),
    ],
    "jester": [
        (0, "Swiping Left"),
        (4, "Pushing Hand Away"),
        (5, "Pulling Hand In"),
        (25, "No gesture"),
        (26, "Doing other things"),
    ],
    "ucf101": [
        (0, "ApplyEyeMakeup"),
        (36, "HandstandPushups"),
        (99, "WritingOnBoard"),
        (100, "YoYo"),
    ],
    "hmdb51": [
        (0, "brush_hair"),
        (6, "climb_stairs"),
        (50, "wave"),
    ],
}


def _raw(name: str) -> bytes:
    return CLASSES.joinpath(f"{name}.txt").read_bytes()


def _names(name: str) -> list[str]:
    return _raw(name).decode("utf-8").splitlines()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_count_and_format(name: str) -> None:
    raw = _raw(name)
    text = raw.decode("utf-8")  # raises if not UTF-8
    assert not text.startswith("\ufeff"), "no byte-order mark"
    assert "\r" not in text, "LF line endings only"
    assert text.endswith("\n") and not text.endswith("\n\n")
    names = text.splitlines()
    assert len(names) == COUNTS[name]
    assert len(set(names)) == len(names), "duplicate class names"
    for line in names:
        assert line, "blank line"
        assert line == line.strip(), f"whitespace-padded line: {line!r}"


@pytest.mark.parametrize("name", sorted(SPOT_CHECKS))
def test_spot_checks(name: str) -> None:
    names = _names(name)
    for index, expected in SPOT_CHECKS[name]:
        assert names[index] == expected


def test_kinetics400_sorted() -> None:
    names = _names("kinetics400")
    assert names == sorted(names)


def test_sthv2_is_alphabetical() -> None:
    names = _names("sthv2")
    assert names == sorted(names)


def test_something_v1_and_v2_share_the_label_set() -> None:
    # Same 174 templates; only the index order differs (CSV order vs JSON index).
    v1, v2 = _names("sthv1"), _names("sthv2")
    assert set(v1) == set(v2)
    assert v1 != v2
    assert sorted(v1) == v2  # what the reference TSM uses for Something-V1


def test_ucf101_follows_classind_order() -> None:
    # classInd.txt is alphabetical ignoring case (HammerThrow after Hammering).
    names = _names("ucf101")
    assert names == sorted(names, key=str.lower)
