"""The synthetic temporal dataset: pairs are time reversals; files, lists, determinism."""

import math

import numpy as np
import pytest

from timeshift.cli import main
from timeshift.data import open_video, read_video_list
from timeshift.data.synthetic import (
    FAMILIES,
    SyntheticSpec,
    _background,
    class_names,
    make_synthetic,
    render_clip,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pair_classes_are_exact_time_reversals(family):
    forward = render_clip(family, reverse=False, rng=_rng(5), size=32, frames=8)
    backward = render_clip(family, reverse=True, rng=_rng(5), size=32, frames=8)
    assert np.array_equal(backward, forward[::-1])
    assert not np.array_equal(forward, backward)  # and the motion is visible


def _foreground(family, seed):
    """Shape masks of a forward clip: the background is the clip's first random draw."""
    clip = render_clip(family, reverse=False, rng=_rng(seed)).astype(float) / 255
    background = _background(_rng(seed), 64)
    return [np.abs(frame - background).sum(-1) > 0.3 for frame in clip]


def _centroids(family, seed):
    out = []
    for mask in _foreground(family, seed):
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def test_forward_classes_move_as_named():
    seeds = range(8)
    for seed in seeds:
        left = _centroids("horizontal", seed)
        assert left[-1, 0] < left[0, 0] - 10  # "moving left"
        up = _centroids("vertical", seed)
        assert up[-1, 1] < up[0, 1] - 10  # "moving up" (image y decreases)
        grow = [m.sum() for m in _foreground("scale", seed)]
        assert grow[-1] > 4 * grow[0]  # "growing"
        fade = [m.sum() for m in _foreground("fade", seed)]
        assert fade[-1] > 3 * max(fade[0], 1)  # "fading in"
        orbit = _centroids("orbit", seed)
        angles = np.unwrap([math.atan2(y - 32, x - 32) for x, y in orbit])
        assert angles[-1] > angles[0] + 1.0  # clockwise on screen (y down)


def test_class_names_come_in_pairs():
    names = class_names()
    assert len(names) == 2 * len(FAMILIES)
    assert names[:4] == ["moving left", "moving right", "moving up", "moving down"]
    assert class_names(["fade"]) == ["fading in", "fading out"]


def test_make_synthetic_files_lists_and_determinism(tmp_path):
    spec = SyntheticSpec(
        videos_per_class=2,
        val_videos_per_class=1,
        size=32,
        frames=8,
        families=("horizontal", "rotation"),
    )
    a = make_synthetic(tmp_path / "a", spec, progress=False)
    b = make_synthetic(tmp_path / "b", spec, progress=False)
    train = read_video_list(a["train"], root=a["root"], classes=a["classes"])
    assert train.classes == [
        "moving left",
        "moving right",
        "rotating clockwise",
        "rotating anticlockwise",
    ]
    assert [r.label for r in train.records] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(read_video_list(a["val"], root=a["root"]).records) == 4
    for rel in (
        "videos/train/moving_right/moving_right_00001.mp4",
        "videos/val/rotating_clockwise/rotating_clockwise_00000.mp4",
    ):
        with open_video(a["root"] / rel) as ra, open_video(b["root"] / rel) as rb:
            assert ra.num_frames == 8 and ra.size == (32, 32)
            assert np.array_equal(ra.get_frames(range(8)), rb.get_frames(range(8)))
    # resumable: existing videos are kept
    video = a["root"] / "videos/train/moving_left/moving_left_00000.mp4"
    stamp = video.stat().st_mtime_ns
    make_synthetic(tmp_path / "a", spec, progress=False)
    assert video.stat().st_mtime_ns == stamp
    other_seed = make_synthetic(
        tmp_path / "c", SyntheticSpec(**{**spec.__dict__, "seed": 1}), progress=False
    )
    with open_video(a["root"] / rel) as ra, open_video(other_seed["root"] / rel) as rc:
        assert not np.array_equal(ra.get_frames([0]), rc.get_frames([0]))


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        main(
            [
                "data",
                "synth",
                str(out),
                "--videos-per-class",
                "2",
                "--size",
                "32",
                "--frames",
                "6",
                "--families",
                "fade",
            ]
        )
        == 0
    )
    assert "train list" in capsys.readouterr().out
    assert len((out / "train.txt").read_text().split("\n")) == 5  # 4 lines + trailing newline
    assert (out / "classes.txt").read_text().split("\n")[:2] == ["fading in", "fading out"]


def test_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        make_synthetic(tmp_path, SyntheticSpec(families=("teleporting",)), progress=False)
    with pytest.raises(ValueError, match="even"):
        make_synthetic(tmp_path, SyntheticSpec(size=33), progress=False)
