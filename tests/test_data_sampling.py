import itertools
import random

import numpy as np
import pytest

from timeshift.data import segment_indices


def test_short_video_test_mode_reference_vector():
    # MMAction2's SampleFrames(num_clips=8, test_mode) on 6 frames: [1,2,2,3,4,5,5,6] (1-based)
    assert segment_indices(6, 8, mode="test") == [[0, 1, 1, 2, 3, 4, 4, 5]]


def test_val_centres_twice_and_clips():
    assert segment_indices(80, 8, mode="val") == [[5, 15, 25, 35, 45, 55, 65, 75]]
    assert segment_indices(80, 8, mode="test", twice=True) == [
        [5, 15, 25, 35, 45, 55, 65, 75],
        [0, 10, 20, 30, 40, 50, 60, 70],
    ]
    assert segment_indices(80, 8, mode="test", clips=2) == [
        [2, 12, 22, 32, 42, 52, 62, 72],
        [7, 17, 27, 37, 47, 57, 67, 77],
    ]
    # tick 37 / 8 = 4.625: int(2.3125 + 4.625 i)
    assert segment_indices(37, 8, mode="val") == [[2, 6, 11, 16, 20, 25, 30, 34]]


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_train_one_random_frame_per_segment(make_rng):
    n, t = 83, 8
    avg = n // t
    draws = [segment_indices(n, t, mode="train", rng=make_rng(s))[0] for s in range(50)]
    for clip in draws:
        assert len(clip) == t
        assert all(i * avg <= f < (i + 1) * avg for i, f in enumerate(clip))
    assert len({tuple(c) for c in draws}) > 40  # random
    assert segment_indices(n, t, mode="train", rng=make_rng(3)) == segment_indices(
        n, t, mode="train", rng=make_rng(3)
    )  # deterministic given the rng


def test_train_short_video_repeats_sorted_frames():
    for seed in range(20):
        (clip,) = segment_indices(5, 8, mode="train", rng=random.Random(seed))
        assert clip == sorted(clip) and all(0 <= f < 5 for f in clip)


def test_dense_sampling():
    # 30 frames < 64: window at 0, stride 64 // 8 = 8, wrapping around
    assert segment_indices(30, 8, mode="train", dense=True, rng=random.Random(0)) == [
        [0, 8, 16, 24, 2, 10, 18, 26]
    ]
    (clip,) = segment_indices(200, 8, mode="train", dense=True, rng=random.Random(1))
    assert [b - a for a, b in itertools.pairwise(clip)] == [8] * 7
    assert 0 <= clip[0] <= 200 - 64
    tests = segment_indices(200, 8, mode="test", dense=True)
    assert len(tests) == 10
    assert [c[0] for c in tests] == np.linspace(0, 136, 10, dtype=int).tolist()
    assert segment_indices(200, 8, mode="val", dense=True) == [[68 + 8 * i for i in range(8)]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"mode": "eval"}, "mode must be one of"),
        ({"mode": "train", "clips": 2}, "one clip"),
        ({"num_segments": 0}, "num_segments"),
        ({"rng": 3}, "rng must be"),
    ],
)
def test_errors(kwargs, match):
    args = {"num_frames": 10, "num_segments": 4, "mode": "train", **kwargs}
    n, t = args.pop("num_frames"), args.pop("num_segments")
    with pytest.raises((ValueError, TypeError), match=match):
        segment_indices(n, t, **args)


def test_centres_agree_with_the_reference_expression_everywhere():
    for n in range(1, 400):
        for t in (3, 5, 7, 8, 12, 16, 24):
            tick = n / float(t)
            reference = [min(int(tick / 2.0 + tick * x), n - 1) for x in range(t)]
            assert segment_indices(n, t, mode="test") == [reference], (n, t)
            twice = [int(tick * x) for x in range(t)]
            assert segment_indices(n, t, mode="test", twice=True)[1] == twice, (n, t)


def test_dense_train_never_picks_the_last_window():
    # the reference draws randint(0, n - 64): with 65 frames only the window at 0
    starts = {
        segment_indices(65, 8, mode="train", dense=True, rng=random.Random(s))[0][0]
        for s in range(50)
    }
    assert starts == {0}


@pytest.mark.parametrize("mode", ["train", "val", "test"])
@pytest.mark.parametrize("frames", [1, 5, 8, 20, 30, 56, 57, 63, 64, 65, 100, 300])
@pytest.mark.parametrize("segments", [4, 8, 16])
def test_dense_ordered_never_goes_back_in_time(mode, frames, segments):
    # direction-sensitive data: a wrapped dense window plays the end of a short video before
    # its start; "ordered" shrinks the window to the video so indices never decrease
    for seed in range(3):
        clips = segment_indices(
            frames, segments, mode=mode, dense="ordered", rng=random.Random(seed)
        )
        for clip in clips:
            assert len(clip) == segments
            assert all(0 <= f < frames for f in clip)
            assert clip == sorted(clip), (frames, segments, clip)
            if frames >= segments:  # enough frames: no frame repeated either
                assert len(set(clip)) == segments, clip


def test_dense_ordered_equals_reference_when_the_window_fits():
    for frames in (57, 64, 65, 100, 300):  # 8 frames x stride 8 span 57 frames
        for mode in ("val", "test"):
            assert segment_indices(frames, 8, mode=mode, dense="ordered") == segment_indices(
                frames, 8, mode=mode, dense=True
            )
        for seed in range(5):
            ordered = segment_indices(
                frames, 8, mode="train", dense="ordered", rng=random.Random(seed)
            )
            wrapped = segment_indices(frames, 8, mode="train", dense=True, rng=random.Random(seed))
            assert ordered == wrapped


def test_dense_wrap_is_the_reference_and_goes_back_in_time():
    # what "ordered" fixes: the reference (dense=True / "wrap") on 30 frames
    (clip,) = segment_indices(30, 8, mode="val", dense="wrap")
    assert clip == [0, 8, 16, 24, 2, 10, 18, 26]
    assert segment_indices(30, 8, mode="val", dense="ordered") == segment_indices(30, 8, mode="val")
    with pytest.raises(ValueError, match="dense must be"):
        segment_indices(30, 8, dense="backwards")
