"""The synthetic video-detection set: degraded frames carry no class, boxes, files, caching."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import timeshift.detection.synthetic as synthetic
from timeshift.detection.synthetic import (
    HUES,
    LUMA_WEIGHTS,
    SyntheticDetectionError,
    SyntheticDetectionSpec,
    chroma_direction,
    make_synthetic_detection,
    render_video,
    video_rng,
)
from timeshift.errors import TimeshiftError

# tiny videos: the tests render hundreds of frames
SMALL = {"size": 32, "frames": 8, "object_size": (8, 14), "train_videos": 3, "val_videos": 2}


def _spec(**overrides) -> SyntheticDetectionSpec:
    return SyntheticDetectionSpec(**{**SMALL, **overrides})


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ LUMA_WEIGHTS


# -- what makes temporal context matter ------------------------------------------------------


@pytest.mark.parametrize("degradations", [("grey",), ("grey", "occlude")])
def test_degraded_frames_are_the_same_whatever_the_class(degradations):
    spec = _spec(objects=(1, 1), degraded_fraction=0.5, degradations=degradations)
    degraded_seen = 0
    for seed in range(6):
        videos = [render_video(spec, video_rng(seed, "train", 0), labels=[c]) for c in range(3)]
        flags = np.array([a.flag("degraded")[0] for a in videos[0].annotations])
        degraded_seen += flags.sum()
        for video in videos[1:]:
            # the whole frame, bit for bit: nothing in a degraded frame tells the class
            assert np.array_equal(video.frames[flags], videos[0].frames[flags])
            # a clean frame differs, and only inside the object
            diff = (video.frames[~flags] != videos[0].frames[~flags]).any(-1)
            assert diff.any(axis=(1, 2)).all()
            assert not (diff & ~videos[0].masks[~flags, 0]).any()
            # greyscale carries no class either (up to rounding to uint8)
            assert np.abs(_luma(video.frames) - _luma(videos[0].frames)).max() <= 1.0
    assert degraded_seen >= 6


def test_clean_objects_show_their_class_hue_and_degraded_ones_none():
    spec = _spec(train_videos=0, objects=(1, 3), classes=("red", "green", "blue", "yellow"))
    directions = np.stack([chroma_direction(HUES[c]) for c in spec.classes])
    checked = {True: 0, False: 0}
    for index in range(8):
        video = render_video(spec, video_rng(1, "val", index))
        for t, frame in enumerate(video.annotations):
            image = video.frames[t].astype(np.float64) / 255
            # pixels of each object not covered by an object drawn later
            visible = _visible(video.masks[t])
            for k, (label, degraded) in enumerate(
                zip(frame.labels, frame.flag("degraded"), strict=True)
            ):
                pixels = image[visible[k]]
                if len(pixels) < 10:
                    continue
                chroma = pixels - (pixels @ LUMA_WEIGHTS)[:, None]
                strength = np.abs(chroma).max()
                if degraded:
                    assert strength <= 2 / 255  # grey: only the uint8 rounding is left
                else:
                    assert strength > 0.05
                    assert (chroma @ directions.T).mean(0).argmax() == label
                checked[bool(degraded)] += 1
    assert checked[True] >= 5 and checked[False] >= 20


def _visible(masks: np.ndarray) -> np.ndarray:
    """Each object's pixels not covered by the objects drawn after it."""
    out = masks.copy()
    for k in range(len(masks) - 1):
        out[k] &= ~masks[k + 1 :].any(0)
    return out


def test_equal_luminance_hues():
    for rgb in HUES.values():
        d = chroma_direction(rgb)
        assert abs(LUMA_WEIGHTS @ d) < 1e-12
        assert np.abs(d).max() <= 1.0
        assert np.linalg.norm(d) == pytest.approx(1.0)


def test_degraded_spans_start_after_clean_frames_and_cover_the_fraction():
    spec = _spec(frames=16, degraded_fraction=0.3, degraded_span=(1, 3), clean_start=3)
    flags = []
    for index in range(60):
        video = render_video(spec, video_rng(0, "train", index))
        per_object = np.stack([a.flag("degraded") for a in video.annotations], axis=1)
        for row in per_object:
            assert not row[: spec.clean_start].any()
            # spans of 1..3 frames, each after a clean frame that showed the class
            edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            assert ((ends - starts) >= 1).all() and ((ends - starts) <= 3).all()
        flags.append(per_object.ravel())
    fraction = np.concatenate(flags).mean()
    assert abs(fraction - 0.3) < 0.03
    none = render_video(_spec(degraded_fraction=0.0), video_rng(0, "train", 0))
    assert not any(a.flag("degraded").any() for a in none.annotations)


# -- boxes -----------------------------------------------------------------------------------


def test_boxes_are_the_drawn_objects_and_inside_the_frame():
    spec = _spec(size=48, frames=12, object_size=(8, 20), speed=(1.0, 3.0))
    for index in range(6):
        video = render_video(spec, video_rng(2, "train", index))
        frames = video.frames.astype(np.int64)
        outside = np.ones(frames.shape[:3], dtype=bool)  # pixels outside every box, per frame
        for t, frame in enumerate(video.annotations):
            assert len(frame) == video.masks.shape[1]
            assert (frame.boxes >= 0).all() and (frame.boxes <= spec.size).all()
            assert (frame.boxes[:, 2:] > frame.boxes[:, :2]).all()
            for box, mask in zip(frame.boxes, video.masks[t], strict=True):
                ys, xs = np.nonzero(mask)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                x1, y1, x2, y2 = box.astype(int)
                outside[t, y1:y2, x1:x2] = False
        # nothing is drawn outside the boxes: there every frame shows the same background
        count = outside.sum(0)
        background = (frames * outside[..., None]).sum(0) // np.maximum(count, 1)[..., None]
        assert ((frames == background[None]).all(-1) | ~outside).all()


def test_boxes_are_tight_around_the_drawn_object():
    # one object, nothing covering it: its outline is a rim darker than anything else drawn
    # (luma < 0.2, background >= 0.3), so the box is exactly the dark pixels' extent
    spec = _spec(size=48, frames=12, object_size=(8, 20), objects=(1, 1))
    for index in range(6):
        video = render_video(spec, video_rng(4, "train", index))
        for frame, image in zip(video.annotations, video.frames, strict=True):
            ys, xs = np.nonzero(_luma(image) < 0.25 * 255)
            assert frame.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_objects_move_and_bounce_inside_the_frame():
    spec = _spec(size=32, frames=40, speed=(2.0, 2.5), objects=(1, 1))
    video = render_video(spec, video_rng(3, "train", 0))
    centres = np.array([(a.boxes[0, :2] + a.boxes[0, 2:]) / 2 for a in video.annotations])
    steps = np.diff(centres, axis=0)
    assert np.abs(steps).sum(1).mean() > 1.5  # moving
    assert (np.diff(np.sign(steps[:, 0])) != 0).any() or (np.diff(np.sign(steps[:, 1])) != 0).any()


# -- files -----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_files_and_videos_independent_of_each_other(tmp_path):
    a = make_synthetic_detection(tmp_path / "a", spec=_spec(), progress=False)
    b = make_synthetic_detection(tmp_path / "b", spec=_spec(), progress=False)
    files = _files(a["root"])
    assert files == _files(b["root"])
    assert "frames/train/video_00002/000007.png" in files
    other_seed = make_synthetic_detection(tmp_path / "c", spec=_spec(seed=1), progress=False)
    first = "frames/train/video_00000/000000.png"
    assert _files(other_seed["root"])[first] != files[first]
    # a video depends on (seed, split, index) only, not on how many videos there are
    more = make_synthetic_detection(tmp_path / "d", spec=_spec(train_videos=5), progress=False)
    assert all(_files(more["root"])[k] == v for k, v in files.items() if k.startswith("frames/"))


def _read_video_json(path: Path, classes):
    """A minimal reader of the COCO-video format, checking every field the format names."""
    data = json.loads(path.read_text())
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == classes
    category = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    videos = {v["id"]: v["name"] for v in data["videos"]}
    assert len(videos) == len(data["videos"])
    images = {}
    for image in data["images"]:
        assert set(image) == {"id", "video_id", "frame_id", "file_name", "width", "height"}
        assert image["video_id"] in videos and image["id"] not in images
        images[image["id"]] = image
    frames = {}
    for image in images.values():
        frames.setdefault(image["video_id"], []).append(image)
    out = {}
    for video_id, rows in frames.items():
        rows.sort(key=lambda r: r["frame_id"])
        assert [r["frame_id"] for r in rows] == list(range(len(rows)))  # 0-based, no gaps
        out[videos[video_id]] = {"images": rows, "objects": [[] for _ in rows]}
    ids = set()
    for ann in data["annotations"]:
        assert {
            "id",
            "image_id",
            "category_id",
            "bbox",
            "instance_id",
            "degraded",
            "iscrowd",
        } <= set(ann)
        assert ann["id"] not in ids and ann["iscrowd"] == 0 and isinstance(ann["degraded"], bool)
        ids.add(ann["id"])
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        video = out[videos[image["video_id"]]]
        video["objects"][image["frame_id"]].append(
            (
                ann["instance_id"],
                category[ann["category_id"]],
                [x, y, x + w, y + h],
                ann["degraded"],
            )
        )
    return out


def test_json_follows_the_format_and_matches_the_rendering(tmp_path):
    spec = _spec()
    paths = make_synthetic_detection(tmp_path, spec=spec, progress=False)
    instances = set()
    for split, count in (("train", spec.train_videos), ("val", spec.val_videos)):
        videos = _read_video_json(paths[split], list(spec.classes))
        assert sorted(videos) == [f"video_{i:05d}" for i in range(count)]
        for index in range(count):
            video = videos[f"video_{index:05d}"]
            expected = render_video(spec, video_rng(spec.seed, split, index))
            for t, (image, objects) in enumerate(
                zip(video["images"], video["objects"], strict=True)
            ):
                pixels = np.asarray(Image.open(paths[split].parent / image["file_name"]))
                assert pixels.shape == (image["height"], image["width"], 3)
                assert np.array_equal(pixels, expected.frames[t])  # lossless
                truth = expected.annotations[t]
                assert [o[1] for o in objects] == truth.labels.tolist()
                assert [o[2] for o in objects] == truth.boxes.tolist()
                assert [o[3] for o in objects] == truth.flag("degraded").tolist()
                # one instance id per object, the same in every frame of the video
                ids = [o[0] for o in objects]
                assert len(set(ids)) == len(ids)
                if t == 0:
                    first = ids
                    assert not instances & set(ids)
                    instances |= set(ids)
                assert ids == first
        instances.clear()  # ids are unique within a split
    meta = json.loads(paths["meta"].read_text())
    assert meta["written_by"] == "timeshift.detection.synthetic" and meta["complete"] is True
    assert meta["spec"]["frames"] == spec.frames and meta["classes"] == list(spec.classes)


def test_cached_set_is_reused_and_another_spec_refused(tmp_path, monkeypatch):
    spec = _spec()
    paths = make_synthetic_detection(tmp_path, spec=spec, progress=False)
    before = _files(tmp_path)

    def no_render(*args, **kwargs):
        raise AssertionError("a complete set of the same spec must not be rendered again")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "render_video", no_render)
        assert make_synthetic_detection(tmp_path, spec=spec, progress=False) == paths
    with pytest.raises(SyntheticDetectionError, match=r"frames=8 \(this spec: 6\)") as info:
        make_synthetic_detection(tmp_path, spec=_spec(frames=6), progress=False)
    assert isinstance(info.value, TimeshiftError) and "folder_name" in str(info.value)
    assert _files(tmp_path) == before  # the refused call changed nothing
    # an interrupted run is resumed: missing videos written, the result as if never stopped
    meta = json.loads(paths["meta"].read_text())
    paths["meta"].write_text(json.dumps({**meta, "complete": False}))
    for name in ("frames/val/video_00001", "val.json"):
        target = tmp_path / name
        (target.unlink() if target.is_file() else [p.unlink() for p in target.iterdir()])
    (tmp_path / "frames/val/video_00001").rmdir()
    make_synthetic_detection(tmp_path, spec=spec, progress=False)
    assert _files(tmp_path) == before


def test_files_of_unknown_origin_and_bad_specs_are_refused(tmp_path):
    (tmp_path / "train.json").write_text("{}")
    with pytest.raises(SyntheticDetectionError, match=r"no meta\.json"):
        make_synthetic_detection(tmp_path, spec=_spec(), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text(json.dumps({"format_version": 4, "fps": 8}))
    with pytest.raises(SyntheticDetectionError, match=r"not by timeshift\.detection\.synthetic"):
        make_synthetic_detection(tmp_path / "other", spec=_spec(), progress=False)
    with pytest.raises(SyntheticDetectionError, match=r"'purple'.*expected names from"):
        SyntheticDetectionSpec(classes=("red", "purple"))
    with pytest.raises(SyntheticDetectionError, match="object_size"):
        SyntheticDetectionSpec(size=32, object_size=(12, 22))
    with pytest.raises(SyntheticDetectionError, match="degradations"):
        SyntheticDetectionSpec(degradations=("blur",))
    for labels in ([0, 1], [3]):  # one object; classes 0..2
        with pytest.raises(ValueError, match=r"labels: 1 class indices in 0\.\.2 expected"):
            render_video(_spec(objects=(1, 1)), video_rng(0, "train", 0), labels=labels)


def test_folder_name_differs_per_spec_and_lists_read_as_tuples():
    # a spec from YAML has lists: it is the same spec
    assert _spec(classes=["red", "green", "blue"], speed=[0.05, 2.5]) == _spec()
    assert _spec().folder_name() == _spec().folder_name()
    assert _spec().folder_name() != _spec(degraded_fraction=0.2).folder_name()
