import itertools
import random

import numpy as np
import pytest

from timeshift.data import segment_indices, snippet_indices


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


def _reference_tsn_starts(n, t, new_length, mode, draw):
    """The reference TSM ``TSNDataSet`` (ops/dataset.py) ``_sample_indices`` / ``_get_val_indices``
    / ``_get_test_indices`` without dense sampling, transcribed 0-based (it adds 1) with its
    ``randint(k, size=T)`` as ``T`` calls of ``draw(k)``. ``None`` where it fails."""
    if mode == "train":
        average_duration = (n - new_length + 1) // t
        if average_duration > 0:
            return [x * average_duration + draw(average_duration) for x in range(t)]
        if n > t:
            if n - new_length + 1 <= 0:
                return None  # numpy's randint(<= 0) raises
            return sorted(draw(n - new_length + 1) for _ in range(t))
        return [0] * t
    if mode == "val" and not n > t + new_length - 1:
        return [0] * t
    tick = (n - new_length + 1) / float(t)
    if tick <= 0:
        return None  # negative frame numbers: no file to load
    return [int(tick / 2.0 + tick * x) for x in range(t)]


def _reference_snippet(start, new_length, n):
    """The reference ``get``: ``p`` from the start, ``if p < num_frames: p += 1`` (1-based)."""
    p, frames = start + 1, []
    for _ in range(new_length):
        frames.append(p - 1)
        if p < n:
            p += 1
    return frames


@pytest.mark.parametrize("mode", ["train", "val", "test"])
def test_new_length_sampling_is_the_reference_where_it_is_defined(mode):
    compared = 0
    for n in range(1, 70):
        for t in (1, 3, 4, 8):
            for new_length in (1, 2, 5, 10):
                seed = n * 1000 + t * 10 + new_length
                draw = random.Random(seed).randrange
                expected = _reference_tsn_starts(n, t, new_length, mode, draw)
                (ours,) = segment_indices(
                    n, t, mode=mode, new_length=new_length, rng=random.Random(seed)
                )
                starts = max(1, n - new_length + 1)
                assert len(ours) == t and all(0 <= s < starts for s in ours)
                assert ours == sorted(ours)
                frames = snippet_indices(ours, new_length=new_length, num_frames=n)
                assert frames == [f for s in ours for f in _reference_snippet(s, new_length, n)]
                degenerate = expected is None or (expected == [0] * t and ours != expected)
                if not degenerate:
                    assert ours == expected, (n, t, new_length)
                    compared += 1
                    continue
                # only where the reference fails or puts every segment on the first frame:
                # a video with fewer snippet starts than segments (what RGB does today)
                too_short = n <= t if mode == "train" else n - new_length + 1 <= t
                assert too_short or n < new_length, (n, t, new_length, expected, ours)
    assert compared > 0.75 * 69 * 4 * 4


def test_snippets_never_leave_the_video():
    # a 3-frame video, 4 segments of 5 frames: every snippet starts at 0 and repeats frame 2
    (starts,) = segment_indices(3, 4, mode="test", new_length=5)
    assert starts == [0, 0, 0, 0]
    assert snippet_indices(starts, new_length=5, num_frames=3) == [0, 1, 2, 2, 2] * 4
    # dense sampling ignores new_length, as the reference's dense branch
    for mode in ("val", "test"):
        assert segment_indices(200, 8, mode=mode, dense=True, new_length=5) == segment_indices(
            200, 8, mode=mode, dense=True
        )
    with pytest.raises(ValueError, match="new_length"):
        segment_indices(10, 4, new_length=0)
