"""Detection data: ImageNet-VID and video JSON readers, box-aware transforms, clip dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from timeshift.data.decode import VideoDecodeError
from timeshift.data.formats import AnnotationError
from timeshift.detection.dataset import VideoDetectionDataset, clip_indices, collate_clips
from timeshift.detection.formats import (
    IMAGENET_VID_CLASSES,
    IMAGENET_VID_WNIDS,
    read_detection_data,
    read_imagenet_vid,
    read_video_json,
    write_video_json,
)
from timeshift.detection.structures import DetectionAnnotations, FrameBoxes, VideoRecord
from timeshift.detection.transforms import (
    DetectionCompose,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    boxes_to_input,
    boxes_to_original,
    detection_eval_transforms,
    detection_train_transforms,
)

# --------------------------------------------------------------------------- helpers

# per snippet: frames, each a list of objects (trackid, class index, xmin, ymin, xmax, ymax,
# occluded, generated) with the XML's inclusive integer corners
VID_SNIPPETS = {
    "ILSVRC2015_val_00000000": [
        [(0, 0, 2, 3, 10, 8, 0, 0), (1, 29, 0, 0, 31, 23, 1, 0)],
        [(0, 0, 3, 3, 11, 8, 0, 1)],
        [],
    ],
    "ILSVRC2015_val_00001000": [
        [(4, 7, 5, 6, 5, 6, 0, 0)],  # a one-pixel object
        [(4, 7, 6, 6, 20, 9, 1, 1)],
        [(4, 7, 7, 6, 21, 9, 0, 0), (2, 13, 1, 1, 2, 2, 0, 0)],
    ],
}
VID_SIZE = (24, 32)  # height, width


def _vid_xml(folder: str, frame: int, objects, size=VID_SIZE) -> str:
    parts = [
        f"<annotation>\n  <folder>{folder}</folder>\n  <filename>{frame:06d}</filename>",
        f"  <size>\n    <width>{size[1]}</width>\n    <height>{size[0]}</height>\n  </size>",
    ]
    for track, label, x1, y1, x2, y2, occluded, generated in objects:
        parts.append(
            f"  <object>\n    <trackid>{track}</trackid>\n"
            f"    <name>{IMAGENET_VID_WNIDS[label]}</name>\n"
            f"    <bndbox>\n      <xmax>{x2}</xmax>\n      <xmin>{x1}</xmin>\n"
            f"      <ymax>{y2}</ymax>\n      <ymin>{y1}</ymin>\n    </bndbox>\n"
            f"    <occluded>{occluded}</occluded>\n    <generated>{generated}</generated>\n"
            "  </object>"
        )
    return "\n".join([*parts, "</annotation>\n"])


def _write_vid(root: Path, split: str, snippets: dict, *, size=VID_SIZE) -> None:
    for snippet, frames in snippets.items():
        data = root / "Data" / "VID" / split / snippet
        annotations = root / "Annotations" / "VID" / split / snippet
        data.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for k, objects in enumerate(frames):
            (annotations / f"{k:06d}.xml").write_text(_vid_xml(snippet, k, objects, size))
            image = np.full((*size, 3), 40 * k, np.uint8)
            Image.fromarray(image).save(data / f"{k:06d}.JPEG", format="JPEG")


def _expected_vid_frame(objects) -> FrameBoxes:
    """The documented conversion: inclusive corners -> x2 = xmax + 1, clipped to the frame."""
    height, width = VID_SIZE
    boxes = [
        (x1, y1, min(x2 + 1, width), min(y2 + 1, height)) for _, _, x1, y1, x2, y2, _, _ in objects
    ]
    return FrameBoxes(
        boxes,
        [o[1] for o in objects],
        [o[0] for o in objects],
        {"occluded": [bool(o[6]) for o in objects], "generated": [bool(o[7]) for o in objects]},
    )


def assert_frames_equal(actual: FrameBoxes, expected: FrameBoxes) -> None:
    np.testing.assert_array_equal(actual.boxes, expected.boxes)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_array_equal(actual.track_ids, expected.track_ids)
    assert sorted(actual.flags) == sorted(expected.flags)
    for name in expected.flags:
        np.testing.assert_array_equal(actual.flags[name], expected.flags[name], err_msg=name)


def assert_annotations_equal(actual: DetectionAnnotations, expected: DetectionAnnotations):
    assert actual.classes == expected.classes
    assert [v.video_id for v in actual.videos] == [v.video_id for v in expected.videos]
    for a, e in zip(actual.videos, expected.videos, strict=True):
        assert [Path(f).resolve() for f in a.frames] == [Path(f).resolve() for f in e.frames]
        assert tuple(a.size) == tuple(e.size)
        for fa, fe in zip(a.annotations, e.annotations, strict=True):
            assert_frames_equal(fa, fe)


def _frame_value(video: int, frame: int) -> int:
    return 10 * frame + 100 * video


def _make_json_dataset(
    root: Path, lengths=(5, 3), size=(12, 16), flags: bool = True
) -> DetectionAnnotations:
    """PNG frames whose pixels encode (video, frame); object ``x1`` = frame index."""
    rng = np.random.default_rng(0)
    videos = []
    for v, length in enumerate(lengths):
        folder = root / "frames" / f"video{v}"
        folder.mkdir(parents=True)
        files, frames = [], []
        for k in range(length):
            file = folder / f"{k:05d}.png"
            Image.fromarray(np.full((*size, 3), _frame_value(v, k), np.uint8)).save(file)
            files.append(str(file))
            n = 1 + k % 2
            x1 = np.full(n, float(k))
            y1 = rng.uniform(0, 4, n).astype(np.float32)
            boxes = np.stack([x1, y1, x1 + 4.5, y1 + rng.uniform(1, 6, n)], axis=1)
            frame_flags = {}
            if flags:
                frame_flags = {
                    "degraded": rng.random(n) < 0.5,
                    "ignore": rng.random(n) < 0.3,
                    "occluded": rng.random(n) < 0.3,
                    "truncated": rng.random(n) < 0.5,
                }
            labels = rng.integers(0, 3, n)
            frames.append(FrameBoxes(boxes, labels, np.arange(n) + 10 * v, frame_flags))
        videos.append(VideoRecord(f"video{v}", files, frames, size))
    return DetectionAnnotations(["cat", "dog", "fish"], videos, source=str(root))


# --------------------------------------------------------------------------- ImageNet-VID


def test_imagenet_vid_reads_back_exactly(tmp_path):
    _write_vid(tmp_path, "val", VID_SNIPPETS)
    sets = tmp_path / "ImageSets" / "VID"
    sets.mkdir(parents=True)
    # the devkit's val.txt: "<snippet>/<frame> <global index>", second snippet first
    order = ["ILSVRC2015_val_00001000", "ILSVRC2015_val_00000000"]
    lines = [f"{s}/{k:06d} {i}" for i, (s, k) in enumerate((s, k) for s in order for k in range(3))]
    (sets / "val.txt").write_text("\n".join(lines) + "\n")

    data = read_imagenet_vid(tmp_path, "val")

    assert data.classes == list(IMAGENET_VID_CLASSES) and len(data.classes) == 30
    assert [v.video_id for v in data.videos] == order
    for video in data.videos:
        assert video.size == VID_SIZE
        expected_files = [
            tmp_path / "Data" / "VID" / "val" / video.video_id / f"{k:06d}.JPEG" for k in range(3)
        ]
        assert [Path(f) for f in video.frames] == expected_files
        for frame, objects in zip(video.annotations, VID_SNIPPETS[video.video_id], strict=True):
            assert_frames_equal(frame, _expected_vid_frame(objects))
    # the same through format detection
    assert_annotations_equal(read_detection_data(tmp_path), data)


def test_vid_xml_line_keeping_parse_reads_the_same(tmp_path):
    # files are read with ElementTree; a refused one is parsed again keeping lines: both
    # parses must read a good file alike
    from timeshift.detection.formats import _parse_xml, _vid_frame, read_vid_xml

    for k, objects in enumerate(VID_SNIPPETS["ILSVRC2015_val_00001000"]):
        path = tmp_path / f"{k}.xml"
        path.write_text(_vid_xml("s", k, objects))
        size, fast = read_vid_xml(path)
        slow_size, slow = _vid_frame(_parse_xml(path, path.read_bytes()), path)
        assert size == slow_size == VID_SIZE
        assert_frames_equal(slow, fast)
        assert_frames_equal(fast, _expected_vid_frame(objects))


def test_imagenet_vid_class_order_is_the_devkit_one():
    # FGFA / MMTracking list the synsets in ILSVRC2015_VID_ID order: airplane n02691156 first,
    # zebra n02391049 last, whale n02062744 before it
    assert IMAGENET_VID_WNIDS[0] == "n02691156" and IMAGENET_VID_CLASSES[0] == "airplane"
    assert IMAGENET_VID_WNIDS[28:] == ("n02062744", "n02391049")
    assert IMAGENET_VID_CLASSES[28:] == ("whale", "zebra")
    assert len(set(IMAGENET_VID_WNIDS)) == len(set(IMAGENET_VID_CLASSES)) == 30


def test_imagenet_vid_selects_videos(tmp_path):
    root = tmp_path / "ILSVRC2015"
    train = {
        f"ILSVRC2015_VID_train_0000/ILSVRC2015_train_0000{k}000": VID_SNIPPETS[s]
        for k, s in enumerate(VID_SNIPPETS)
    }
    _write_vid(root, "train", train)
    _write_vid(root, "val", VID_SNIPPETS)
    names = sorted(train)
    # no ImageSets: every snippet folder found (train ones are two levels deep), sorted
    assert [v.video_id for v in read_imagenet_vid(tmp_path, "train").videos] == names
    assert [v.video_id for v in read_imagenet_vid(root, "val").videos] == sorted(VID_SNIPPETS)
    # the devkit's train_<k>.txt: "-1" snippets hold no object of class k
    sets = root / "ImageSets" / "VID"
    sets.mkdir(parents=True)
    (sets / "train_1.txt").write_text(f"{names[0]} -1\n{names[1]} 1\n")
    (sets / "train_2.txt").write_text(f"{names[0]} -1\n{names[1]} -1\n")
    assert [v.video_id for v in read_imagenet_vid(root, "train").videos] == [names[1]]
    # FGFA's VID_val_videos.txt ("val/<snippet> <start> <seg> <count>") and max_videos
    listing = tmp_path / "VID_val_videos.txt"
    listing.write_text("val/ILSVRC2015_val_00001000 1 0 3\nval/ILSVRC2015_val_00000000 4 0 3\n")
    selected = read_imagenet_vid(root, "val", list_file=listing)
    assert [v.video_id for v in selected.videos] == [
        "ILSVRC2015_val_00001000",
        "ILSVRC2015_val_00000000",
    ]
    one = read_imagenet_vid(root, "val", list_file=listing, max_videos=1)
    assert [v.video_id for v in one.videos] == ["ILSVRC2015_val_00001000"]


def _vid_with(tmp_path: Path, text: str) -> Path:
    _write_vid(tmp_path, "val", {"snip": VID_SNIPPETS["ILSVRC2015_val_00000000"]})
    xml = tmp_path / "Annotations" / "VID" / "val" / "snip" / "000001.xml"
    xml.write_text(text)
    return xml


GOOD_XML = _vid_xml("snip", 1, [(0, 0, 2, 3, 10, 8, 0, 0)])


@pytest.mark.parametrize(
    "text, anchor, message",
    [
        (GOOD_XML.replace("      <xmax>10</xmax>\n", ""), "<bndbox>", "<bndbox> has no <xmax>"),
        (GOOD_XML.replace("    <bndbox>", "    <box>").replace("</bndbox>", "</box>"), "<object>",
         "<object> has no <bndbox>"),
        (GOOD_XML.replace(IMAGENET_VID_WNIDS[0], "n99999999"), "<name>", "'n99999999' is not one"),
        (GOOD_XML.replace("<xmin>2</xmin>", "<xmin>two</xmin>"), "<xmin>",
         "<xmin> must be a number, got 'two'"),
        (GOOD_XML.replace("<xmax>10</xmax>", "<xmax>1</xmax>"), "<bndbox>", "xmin <= xmax"),
        (GOOD_XML.replace("<occluded>0<", "<occluded>yes<"), "<occluded>",
         "<occluded> must be 0 or 1"),
        (GOOD_XML.replace("  <size>", "  <dims>").replace("</size>", "</dims>"), "<annotation>",
         "<annotation> has no <size>"),
        ('<!DOCTYPE a [<!ENTITY x "y">]>\n' + GOOD_XML, "<!DOCTYPE", "DOCTYPE"),
    ],
)  # fmt: skip
def test_imagenet_vid_bad_xml_names_file_and_line(tmp_path, text, anchor, message):
    xml = _vid_with(tmp_path, text)
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if anchor in row)
    with pytest.raises(AnnotationError) as info:
        read_imagenet_vid(tmp_path, "val")
    assert str(info.value).startswith(f"{xml}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_imagenet_vid_malformed_xml_line(tmp_path):
    # the parser's line: the first line after the unclosed <bndbox> that closes another tag
    xml = _vid_with(tmp_path, GOOD_XML.replace("</bndbox>", ""))
    expected_line = GOOD_XML.replace("</bndbox>", "").splitlines().index("  </object>") + 1
    with pytest.raises(AnnotationError, match=rf"^{xml}:{expected_line}: malformed XML"):
        read_imagenet_vid(tmp_path, "val")


def test_imagenet_vid_missing_pieces(tmp_path):
    _write_vid(tmp_path, "val", {"snip": VID_SNIPPETS["ILSVRC2015_val_00000000"]})
    gap = tmp_path / "Annotations" / "VID" / "val" / "snip" / "000001.xml"
    gap.unlink()
    with pytest.raises(AnnotationError, match=f"{gap}: missing"):
        read_imagenet_vid(tmp_path, "val")
    with pytest.raises(AnnotationError, match="split folder not found"):
        read_imagenet_vid(tmp_path, "train")
    with pytest.raises(AnnotationError, match="no Data/VID folder"):
        read_imagenet_vid(tmp_path / "Data", "val")
    gap.write_text(_vid_xml("snip", 1, []))
    assert len(read_imagenet_vid(tmp_path, "val").videos[0].annotations[1]) == 0
    listing = tmp_path / "list.txt"
    listing.write_text("snip 1\nother 1\n")
    with pytest.raises(AnnotationError, match=f"{listing}:2: snippet 'other' has no annotation"):
        read_imagenet_vid(tmp_path, "val", list_file=listing)
    listing.write_text("snip 1\n../escape 1\n")
    with pytest.raises(AnnotationError, match=f"{listing}:2: expected"):
        read_imagenet_vid(tmp_path, "val", list_file=listing)


# --------------------------------------------------------------------------- video JSON


def test_video_json_round_trip(tmp_path):
    data = _make_json_dataset(tmp_path)
    path = write_video_json(data, tmp_path / "ann" / "train.json", image_root=tmp_path)
    back = read_video_json(path, image_root=tmp_path)
    assert_annotations_equal(back, data)
    assert back.source == str(path)
    # file names relative to the JSON's folder by default
    write_video_json(data, tmp_path / "default.json")
    stored = json.loads((tmp_path / "default.json").read_text())
    assert stored["images"][0]["file_name"] == "frames/video0/00000.png"
    assert stored["annotations"][0]["bbox"][2] == pytest.approx(4.5)
    assert_annotations_equal(read_detection_data(tmp_path / "default.json"), data)


def test_video_json_reader_conventions(tmp_path):
    data = {
        "categories": [{"id": 7, "name": "zebra"}, {"id": 3, "name": "ant"}],
        "videos": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],
        "images": [
            {"id": 11, "video_id": 5, "frame_id": 1, "file_name": "b/1", "width": 8, "height": 6},
            {"id": 10, "video_id": 5, "frame_id": 0, "file_name": "b/0", "width": 8, "height": 6},
            {"id": 12, "video_id": 2, "frame_id": 0, "file_name": "a/0", "width": 4, "height": 2},
        ],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [1, 2, 3, 4], "track_id": 9,
             "iscrowd": 1, "occluded": True, "kind": "x"},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0.5, 0, 1, 1], "truncated": True},
            {"id": 3, "image_id": 12, "category_id": 3, "bbox": [0, 0, 4, 2], "instance_id": 4},
        ],
    }  # fmt: skip
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    read = read_video_json(path, image_root=tmp_path / "img")
    assert read.classes == ["ant", "zebra"]  # categories sorted by id
    assert [v.video_id for v in read.videos] == ["b", "a"]  # the order of "videos"
    b, a = read.videos
    assert b.frames == [str(tmp_path / "img" / "b" / f"{k}") for k in (0, 1)]
    assert b.size == (6, 8) and a.size == (2, 4)
    assert len(b.annotations[0]) == 0
    expected = FrameBoxes(
        [[1, 2, 4, 6], [0.5, 0, 1.5, 1]],
        [1, 0],
        [9, -1],
        {
            "ignore": [True, False],
            "occluded": [True, False],
            "truncated": [False, True],
        },
    )
    assert_frames_equal(b.annotations[1], expected)
    assert_frames_equal(
        a.annotations[0],
        FrameBoxes([[0, 0, 4, 2]], [0], [4], {k: [False] for k in expected.flags}),
    )


def _json_case(**changes) -> dict:
    data = {
        "categories": [{"id": 1, "name": "cat"}],
        "videos": [{"id": 1, "name": "clip"}, {"id": 2, "name": "other"}],
        "images": [
            {"id": k + 1, "video_id": 1, "frame_id": k, "file_name": f"{k}.png", "width": 8,
             "height": 8}
            for k in range(3)
        ] + [{"id": 9, "video_id": 2, "frame_id": 0, "file_name": "o.png", "width": 4,
              "height": 4}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]},
        ],
    }  # fmt: skip
    for where, value in changes.items():
        key, index, field = where.split("__")
        data[key][int(index)][field] = value
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"annotations__1__bbox": [1, 1, 0, 2]}, "annotations[1].bbox: expected [x, y, w, h]"),
        ({"annotations__1__bbox": [1, 1, 2]}, "annotations[1].bbox: expected"),
        ({"annotations__0__category_id": 4}, "annotations[0].category_id: 4 is not a category"),
        ({"annotations__0__image_id": 40}, "annotations[0].image_id: 40 is not the id of any"),
        ({"images__2__video_id": 3}, "images[2].video_id: 3 is not the id of any entry of videos"),
        ({"images__2__frame_id": 1}, "images[2].frame_id: video 'clip' has frame 1 twice"),
        ({"images__2__frame_id": 5}, "videos[0]: video 'clip' has no image with frame_id 2"),
        ({"images__0__frame_id": -1}, "images[0].frame_id: expected a 0-based frame index"),
        ({"images__1__width": 9}, "images[1]: video 'clip' mixes frame sizes"),
        ({"images__1__id": 1}, "images[1].id: 1 repeats images[0].id"),
        ({"videos__1__name": "clip"}, "videos[1].name: 'clip' repeats videos[0]"),
        ({"annotations__1__iscrowd": "yes"}, "annotations[1].iscrowd: expected true/false or 0/1"),
    ],
)
def test_video_json_bad_entries_name_the_json_path(tmp_path, changes, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_json_case(**changes), indent=1))
    with pytest.raises(AnnotationError) as info:
        read_video_json(path)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert message in str(info.value)


def test_video_json_bad_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_json_case()))  # the base of the bad cases above is good
    assert [v.num_frames for v in read_video_json(path).videos] == [3, 1]
    path.write_text('{\n  "categories": [],\n  "videos": [,]\n}')
    with pytest.raises(AnnotationError, match=rf"^{path}:3: not valid JSON"):
        read_video_json(path)
    path.write_text(json.dumps({"categories": [], "images": []}))
    with pytest.raises(AnnotationError, match="top level: missing 'videos'"):
        read_video_json(path)
    path.write_text("[]")
    with pytest.raises(AnnotationError, match="top level: expected a COCO-video JSON object"):
        read_video_json(path)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        read_video_json(tmp_path / "none.json")
    with pytest.raises(AnnotationError, match="expected an ImageNet-VID folder"):
        read_detection_data(tmp_path / "data.txt")


# --------------------------------------------------------------------------- transforms


def _clip(t=3, height=20, width=30, seed=0):
    """Random frames (the same picture in every frame) and three objects per frame."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(frame[None], t, axis=0)
    boxes = [[2, 3, 10, 9], [15.5, 0, 30, 20], [0, 10, 4, 12]]
    targets = [FrameBoxes(boxes, [0, 1, 2], [1, 2, 3], {"degraded": [True, False, True]})] * t
    return frames, targets


IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3}  # normalisation that keeps 0..255


def test_flip_twice_is_identity_and_flips_boxes():
    frames, targets = _clip()
    width = frames.shape[2]
    once = DetectionCompose([RandomHorizontalFlip(p=1.0)], **IDENTITY)
    twice = DetectionCompose([RandomHorizontalFlip(p=1.0)] * 2, **IDENTITY)
    flipped, fboxes, info = once(frames, targets, random.Random(0))
    np.testing.assert_allclose(flipped.permute(0, 2, 3, 1).numpy(), frames[:, :, ::-1], atol=1e-3)
    original = targets[0].boxes
    expected = np.stack(
        [width - original[:, 2], original[:, 1], width - original[:, 0], original[:, 3]], 1
    )
    np.testing.assert_allclose(fboxes[0].boxes, expected)
    assert info["flip"] is True
    np.testing.assert_allclose(boxes_to_original(fboxes[0].boxes, info), original, atol=1e-5)
    back, bboxes, info = twice(frames, targets, random.Random(0))
    np.testing.assert_allclose(back.permute(0, 2, 3, 1).numpy(), frames, atol=1e-3)
    for frame in bboxes:
        assert_frames_equal(frame, targets[0])
    assert info["flip"] is False


def test_resize_scales_boxes_and_maps_back():
    frames, targets = _clip(height=20, width=30)
    out, boxes, info = detection_eval_transforms((10, 45))(frames, targets, random.Random(0))
    assert out.shape == (3, 3, 10, 45) and out.dtype == torch.float32
    scale = np.array([45 / 30, 10 / 20, 45 / 30, 10 / 20])
    np.testing.assert_allclose(boxes[0].boxes, targets[0].boxes * scale, rtol=1e-6)
    assert info["scale"] == (1.5, 0.5) and info["original_size"] == (20, 30)
    np.testing.assert_allclose(boxes_to_original(boxes[0].boxes, info), targets[0].boxes, atol=1e-5)
    # shorter side, and the longer side capped (FGFA's 600 / 1000 rule)
    assert Resize(10).output_size(20, 30) == (10, 15)
    assert Resize(10, max_size=12).output_size(20, 30) == (8, 12)
    # the pixels are resized like an image (a constant frame stays constant), then normalised
    flat = np.full((1, 20, 30, 3), 200, np.uint8)
    out, _, _ = detection_eval_transforms(10, **IDENTITY)(flat, targets[:1], random.Random(0))
    np.testing.assert_allclose(out.numpy(), 200, atol=1e-3)


def test_crop_clips_flags_and_drops():
    height, width = 40, 40
    crop = RandomCrop((0.25, 0.25), min_visible=0.5)  # a 20x20 window
    x, y, w, h = crop.window(height, width, random.Random(3))
    assert (w, h) == (20, 20)
    boxes = [
        [x + 2, y + 2, x + 8, y + 8],  # inside: shifted
        [x - 2, y + 1, x + 8, y + 5],  # 80% inside: clipped, kept
        [x + 16, y + 1, x + 26, y + 5],  # 40% inside: clipped, "ignore"
        [x - 10, y - 10, x - 1, y - 1],  # outside (if the window leaves room) or cut to nothing
    ]
    target = FrameBoxes(boxes, [0, 1, 2, 3], [7, 8, 9, 10], {"degraded": [1, 0, 1, 0]})
    frames = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    out, result, info = DetectionCompose([crop], **IDENTITY)(frames, [target] * 2, random.Random(3))
    np.testing.assert_allclose(
        out.permute(0, 2, 3, 1).numpy(), frames[:, y : y + h, x : x + w], atol=1e-3
    )
    expected = FrameBoxes(
        [[2, 2, 8, 8], [0, 1, 8, 5], [16, 1, 20, 5]],
        [0, 1, 2],
        [7, 8, 9],
        {"degraded": [True, False, True], "ignore": [False, False, True]},
    )
    for frame in result:
        assert_frames_equal(frame, expected)
    assert info["offset"] == (-x, -y) and info["input_size"] == (20, 20)
    np.testing.assert_allclose(boxes_to_original(expected.boxes[:1], info), [boxes[0]], atol=1e-5)


def test_one_random_choice_per_clip():
    frames, targets = _clip(t=4, height=24, width=32)
    transform = detection_train_transforms((16, 20), crop_scale=(0.3, 1.0))
    flips = set()
    for seed in range(12):
        out, boxes, info = transform(frames, targets, random.Random(seed))
        assert out.shape == (4, 3, 16, 20)
        # identical input frames stay identical: one crop, one flip for the whole clip
        for t in range(1, 4):
            torch.testing.assert_close(out[t], out[0])
            assert_frames_equal(boxes[t], boxes[0])
        flips.add(info["flip"])
        # the map in info brings the kept boxes back to the source pixels: the source boxes
        # cut to the crop window (the input frame mapped back)
        height, width = info["input_size"]
        x1, y1, x2, y2 = boxes_to_original([[0, 0, width, height]], info)[0]
        back = boxes_to_original(boxes[0].boxes, info)
        source = targets[0].boxes[np.isin(targets[0].track_ids, boxes[0].track_ids)]
        np.testing.assert_allclose(
            back, np.clip(source, [x1, y1, x1, y1], [x2, y2, x2, y2]), atol=1e-3
        )
        np.testing.assert_allclose(boxes_to_input(back, info), boxes[0].boxes, atol=1e-3)
        # the same draw twice: the same output
        again, _, info_again = transform(frames, targets, random.Random(seed))
        torch.testing.assert_close(again, out)
        assert info_again == info
    assert flips == {True, False}


def test_transform_input_checks():
    frames, targets = _clip()
    transform = detection_eval_transforms(8)
    with pytest.raises(ValueError, match="3 frames but 2 FrameBoxes"):
        transform(frames, targets[:2], random.Random(0))
    with pytest.raises(TypeError, match="uint8"):
        transform(torch.zeros(3, 3, 4, 4), targets, random.Random(0))
    tensor_out = transform(torch.from_numpy(frames).permute(0, 3, 1, 2), targets, random.Random(0))
    numpy_out = transform(frames, targets, random.Random(0))
    torch.testing.assert_close(tensor_out[0], numpy_out[0])


# --------------------------------------------------------------------------- dataset


def _decoded(clip: torch.Tensor, video: int) -> list[int]:
    """Frame indices from the pixel values :func:`_make_json_dataset` wrote."""
    return [(int(v) - 100 * video) // 10 for v in clip[:, 0, 0, 0]]


def test_clip_indices_consecutive_strided_padded():
    assert clip_indices(10, length=4, stride=2) == [0, 2, 4, 6]
    assert clip_indices(3, length=5) == [0, 1, 2, 2, 2]
    starts = {clip_indices(20, length=4, stride=3, rng=random.Random(s))[0] for s in range(50)}
    assert starts == set(range(20 - 9))


def test_train_clips_are_consecutive_and_deterministic(tmp_path):
    data = _make_json_dataset(tmp_path, lengths=(9, 3))
    dataset = VideoDetectionDataset(data, num_frames=3, frame_stride=2, seed=5)
    assert len(dataset) == 2
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        clip, targets = dataset[0]
        indices = _decoded(clip, 0)
        assert indices == list(range(indices[0], indices[0] + 6, 2))
        assert len(targets) == 3
        for t, k in enumerate(indices):
            assert_frames_equal(targets[t], data.videos[0].annotations[k])
        starts.add(indices[0])
        again, _ = dataset[0]
        torch.testing.assert_close(again, clip)
        other = VideoDetectionDataset(data, num_frames=3, frame_stride=2, seed=5)
        other.set_epoch(epoch)
        torch.testing.assert_close(other[0][0], clip)
    assert len(starts) > 1  # epochs draw different starts
    # the 3-frame video is padded with its last frame
    clip, targets = dataset[1]
    assert _decoded(clip, 1) == [0, 2, 2]
    assert_frames_equal(targets[2], data.videos[1].annotations[2])


def test_train_loader_with_transform_and_collate(tmp_path):
    data = _make_json_dataset(tmp_path, lengths=(6, 4))
    transform = detection_train_transforms((8, 12), crop_scale=(0.5, 1.0))
    dataset = VideoDetectionDataset(data, num_frames=4, transform=transform, clips_per_video=2)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_clips)
    clips, targets = next(iter(loader))
    assert clips.shape == (4, 4, 3, 8, 12) and clips.dtype == torch.float32
    assert [len(t) for t in targets] == [4] * 4
    assert all(isinstance(f, FrameBoxes) for t in targets for f in t)


def test_collate_pads_to_the_largest_frame():
    a = torch.ones(2, 3, 5, 7)
    b = torch.ones(2, 3, 6, 4)
    ta, tb = [FrameBoxes()] * 2, [FrameBoxes([[0, 0, 1, 1]], [0])] * 2
    clips, targets = collate_clips([(a, ta), (b, tb)], size_divisor=4)
    assert clips.shape == (2, 2, 3, 8, 8)
    torch.testing.assert_close(clips[0, :, :, :5, :7], a)
    assert clips[0, :, :, 5:].abs().sum() == 0 and clips[1, :, :, :, 4:].abs().sum() == 0
    assert targets == [ta, tb]
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_clips([(a, ta), (torch.ones(3, 3, 5, 7), ta)])


def test_test_mode_whole_videos_in_order(tmp_path):
    data = _make_json_dataset(tmp_path, lengths=(5, 3), size=(12, 16))
    transform = detection_eval_transforms((6, 24), **IDENTITY)
    dataset = VideoDetectionDataset(data, mode="test", transform=transform)
    assert len(dataset) == 2
    for v in range(2):
        frames, targets, info = dataset[v]
        video = data.videos[v]
        assert frames.shape == (video.num_frames, 3, 6, 24)
        # resizing a constant frame keeps its value: frames in order
        assert [round(float(f[0, 0, 0])) for f in frames] == [
            _frame_value(v, k) for k in range(video.num_frames)
        ]
        assert info["video_id"] == video.video_id and info["frame_range"] == (0, video.num_frames)
        assert info["original_size"] == (12, 16) and info["input_size"] == (6, 24)
        for target, original in zip(targets, video.annotations, strict=True):
            scale = [24 / 16, 6 / 12, 24 / 16, 6 / 12]
            np.testing.assert_allclose(target.boxes, original.boxes * scale, rtol=1e-6)
            np.testing.assert_allclose(
                boxes_to_original(target.boxes, info), original.boxes, atol=1e-5
            )
    # chunks of a long video, in order
    chunked = VideoDetectionDataset(data, mode="test", test_chunk=2)
    assert [chunked[i][2]["frame_range"] for i in range(len(chunked))] == [
        (0, 2), (2, 4), (4, 5), (0, 2), (2, 3)
    ]  # fmt: skip
    frames, targets, info = chunked[1]
    assert frames.dtype == torch.uint8 and _decoded(frames, 0) == [2, 3]
    assert info["video_index"] == 0 and info["num_frames"] == 5


def test_dataset_reads_imagenet_vid_frames(tmp_path):
    _write_vid(tmp_path, "val", VID_SNIPPETS)
    data = read_imagenet_vid(tmp_path, "val")
    dataset = VideoDetectionDataset(data, mode="test")
    frames, targets, info = dataset[0]
    assert frames.shape == (3, 3, *VID_SIZE)
    # JPEG is lossy: the written grey levels come back within a few steps
    np.testing.assert_allclose(frames.float().mean((1, 2, 3)).numpy(), [0, 40, 80], atol=3)
    assert_frames_equal(targets[0], _expected_vid_frame(VID_SNIPPETS[info["video_id"]][0]))


def test_dataset_frame_errors_name_the_file(tmp_path):
    data = _make_json_dataset(tmp_path, lengths=(4,))
    missing = Path(data.videos[0].frames[2])
    missing.unlink()
    dataset = VideoDetectionDataset(data, mode="test")
    with pytest.raises(VideoDecodeError, match=f"{missing}: frame 2 of video video0 missing"):
        dataset[0]
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(missing)
    with pytest.raises(VideoDecodeError, match=f"{missing}: the frame is 5x5 but the annotations"):
        dataset[0]
    missing.write_bytes(b"not a png")
    with pytest.raises(VideoDecodeError, match=f"{missing}: cannot decode image"):
        dataset[0]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(missing)
    small = VideoDetectionDataset(data, mode="test", max_frame_pixels=100)
    with pytest.raises(VideoDecodeError, match=str(Path(data.videos[0].frames[0]))):
        small[0]
