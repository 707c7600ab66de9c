"""VideoDataset: clips, views, skip policy, determinism across workers and epochs."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from timeshift.data import (
    SampleRecord,
    VideoDataset,
    VideoDecodeError,
    eval_transforms,
    read_rawframe_list,
    train_transforms,
)

from conftest import identify, palette_frames, write_frame_folder, write_test_video


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return [
        SampleRecord(write_test_video(root / f"v{k}.mp4", palette_frames(24 + 8 * k)), k % 3)
        for k in range(6)
    ]


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00garbage" * 100)
    return SampleRecord(str(path), 1)


def test_raw_clip_frames_follow_the_sampling(records):
    ds = VideoDataset(records, num_segments=8, mode="val")
    clip, label = ds[0]
    assert clip.shape == (8, 3, 48, 64) and clip.dtype == torch.uint8 and label == 0
    frames = clip.permute(0, 2, 3, 1).numpy()
    assert identify(frames) == [1, 4, 7, 10, 13, 16, 19, 22]  # centres of 24 frames / 8


@pytest.mark.parametrize("cache", [False, True])
def test_observed_fraction_samples_the_first_part_only(records, cache):
    # 24 frames: half of them is frames 0..11, sampled at the centres of 4 segments
    ds = VideoDataset(records, num_segments=4, mode="val", observed=0.5, cache=cache)
    clip, _ = ds[0]
    assert identify(clip.permute(0, 2, 3, 1).numpy()) == [1, 4, 7, 10]
    tenth = VideoDataset(records, num_segments=4, mode="val", observed=0.1)
    clip, _ = tenth[0]  # 3 frames for 4 segments: the reference repeats
    assert max(identify(clip.permute(0, 2, 3, 1).numpy())) <= 2
    with pytest.raises(ValueError, match="observed"):
        VideoDataset(records, num_segments=4, observed=0)


def test_views_shapes(records):
    ds = VideoDataset(
        records, num_segments=4, mode="test", clips=2, transform=eval_transforms(32, crops=3)
    )
    views, _ = ds[1]
    assert views.shape == (6, 4, 3, 32, 32) and views.dtype == torch.float32
    train = VideoDataset(records, num_segments=4, transform=train_transforms(32))
    clip, _ = train[1]
    assert clip.shape == (4, 3, 32, 32)


def test_reproducible_per_sample_and_different_per_epoch(records):
    ds = VideoDataset(records, num_segments=8, mode="train", seed=7)
    a, _ = ds[3]
    b, _ = ds[3]
    assert torch.equal(a, b)
    draws = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws.add(tuple(identify(ds[3][0].permute(0, 2, 3, 1).numpy())))
    assert len(draws) > 1


def test_workers_give_the_same_samples_as_the_main_process(records):
    ds = VideoDataset(records, num_segments=4, mode="train", seed=1, transform=train_transforms(32))
    serial = [ds[i][0] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    parallel = torch.cat([clips for clips, _ in loader])
    assert torch.equal(torch.stack(serial), parallel)


def test_skip_policy_counts_and_logs_once(records, broken, caplog):
    ds = VideoDataset([broken, *records], num_segments=4, on_error="skip", mode="val")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            clip, _ = ds[0]
            assert clip.shape[0] == 4
    assert ds.skipped == 3
    assert len([r for r in caplog.records if "broken.mp4" in r.getMessage()]) == 1
    strict = VideoDataset([broken, *records], num_segments=4, mode="val")
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4"):
        strict[0]


def test_skip_count_is_shared_by_worker_processes(records, broken):
    ds = VideoDataset([broken, *records, broken], num_segments=4, on_error="skip", mode="val")
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    assert sum(1 for _ in loader) == len(ds)
    assert ds.skipped == 2


def test_everything_broken_gives_up(broken):
    ds = VideoDataset([broken], num_segments=4, on_error="skip", max_retries=3)
    with pytest.raises(RuntimeError, match="could not be read"):
        ds[0]


def test_frame_folders_from_a_rawframe_list(tmp_path):
    write_frame_folder(tmp_path / "a", palette_frames(20))
    write_frame_folder(tmp_path / "b", palette_frames(30))
    (tmp_path / "list.txt").write_text("a 20 0\nb 30 1\n")
    (tmp_path / "offset.txt").write_text("b 10 16 1\n")
    ds = VideoDataset(
        read_rawframe_list(tmp_path / "list.txt", root=tmp_path), num_segments=4, mode="val"
    )
    clip, label = ds[1]
    assert label == 1 and identify(clip.permute(0, 2, 3, 1).numpy()) == [3, 11, 18, 26]
    offset = read_rawframe_list(tmp_path / "offset.txt", root=tmp_path, with_offset=True)
    clip, _ = VideoDataset(offset, num_segments=4, mode="val")[0]
    assert identify(clip.permute(0, 2, 3, 1).numpy()) == [12, 16, 20, 24]  # 10 + centres of 16


def test_bad_arguments(records):
    with pytest.raises(ValueError, match="on_error"):
        VideoDataset(records, num_segments=4, on_error="ignore")
    with pytest.raises(ValueError, match="at least one record"):
        VideoDataset([], num_segments=4)
    with pytest.raises(ValueError, match="one clip"):
        VideoDataset(records, num_segments=4, mode="train", clips=3)


def test_persistent_workers_follow_set_epoch(records):
    ds = VideoDataset(records, num_segments=8, mode="train", seed=3)
    loader = DataLoader(ds, batch_size=len(ds), num_workers=2, persistent_workers=True)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        (clips, _) = next(iter(loader))
        serial = torch.stack([ds[i][0] for i in range(len(ds))])
        assert torch.equal(clips, serial)
        seen.append(clips)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_bad_sample_reported_once_across_workers_and_epochs(records, broken, caplog):
    ds = VideoDataset([broken, broken, *records], num_segments=4, on_error="skip", mode="val")
    for epoch in range(3):
        ds.set_epoch(epoch)
        list(DataLoader(ds, batch_size=1, num_workers=2))
    assert ds.skipped == 6
    # the "already reported" marks live in shared memory: workers' logs do not reach caplog,
    # so check the marks, then that the main process does not report them again
    assert ds._reported.nonzero().flatten().tolist() == [0, 1]
    with caplog.at_level(logging.WARNING):
        ds[0]
    assert not [r for r in caplog.records if "broken.mp4" in r.getMessage()]


def test_memory_cache_gives_the_same_clips(records):
    plain = VideoDataset(records, num_segments=8, mode="train", seed=5)
    cached = VideoDataset(records, num_segments=8, mode="train", seed=5, cache=True)
    for epoch in range(2):  # epoch 0 fills the cache, epoch 1 reads from it
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(records)):
            assert torch.equal(plain[i][0], cached[i][0])
    assert len(cached._cache) == len(records)


def test_fifo_and_other_special_files_are_skipped_not_waited_for(tmp_path, records, caplog):
    from conftest import finishes, special_files

    files = special_files(tmp_path / "special")
    bad = [SampleRecord(str(p), 0) for p in files.values() if p.stem != "folder"]
    ds = VideoDataset([*bad, *records], num_segments=4, on_error="skip", mode="val")
    with caplog.at_level(logging.WARNING):
        for index in range(len(bad)):
            clip, _ = finishes(lambda i=index: ds[i], fifos=[files["fifo"]])
            assert clip.shape[0] == 4
    assert ds.skipped >= len(bad)  # a replacement may be another bad one
    assert sum("not a regular file" in r.getMessage() for r in caplog.records) == len(bad)
    strict = VideoDataset(bad, num_segments=4, mode="val")
    with pytest.raises(VideoDecodeError, match=r"fifo\.mp4: not a regular file"):
        finishes(lambda: strict[1], fifos=[files["fifo"]])


@pytest.mark.parametrize("cache", [False, True])
def test_sampling_stays_within_the_frames_that_decode(tmp_path, cache):
    from conftest import decodable_prefix, faststart_mp4, noisy_palette_frames

    full = faststart_mp4(tmp_path / "full.mp4", noisy_palette_frames(60))
    data = bytearray(full.read_bytes())
    cut = tmp_path / "cut.mp4"  # the index at the front still lists all 60 frames
    cut.write_bytes(bytes(data[: len(data) * 97 // 100]))
    start = len(data) * 95 // 100  # garbage tail: only found when it is decoded
    data[start:] = np.random.default_rng(1).bytes(len(data) - start)
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(bytes(data))
    for path in (cut, garbled):
        decodable = len(decodable_prefix(path))
        train = VideoDataset([SampleRecord(str(path), 0)], num_segments=8, cache=cache)
        for epoch in range(12):  # random offsets reach into the last segment
            train.set_epoch(epoch)
            seen = identify(train[0][0].permute(0, 2, 3, 1).numpy())
            assert seen == sorted(seen) and max(seen) < decodable
        val = VideoDataset([SampleRecord(str(path), 0)], num_segments=8, mode="val", cache=cache)
        seen = identify(val[0][0].permute(0, 2, 3, 1).numpy())
        tick = decodable / 8  # the centres of 8 segments of the frames that decode
        assert seen == [int(tick / 2 + tick * i) for i in range(8)]


def test_frame_limit_and_cache_budget(records, caplog, monkeypatch):
    small = VideoDataset(records, num_segments=4, mode="val", max_frame_pixels=64 * 48 - 1)
    with pytest.raises(VideoDecodeError, match=r"v0\.mp4: .*over the limit of 3,071 pixels"):
        small[0]
    monkeypatch.setenv("TIMESHIFT_MAX_FRAME_PIXELS", "100")
    skip = VideoDataset(records, num_segments=4, mode="val", on_error="skip", max_retries=3)
    with pytest.raises(RuntimeError, match="over the limit of 100 pixels"):
        skip[0]
    with pytest.raises(ValueError, match="max_frame_pixels must be a positive"):
        VideoDataset(records, num_segments=4, max_frame_pixels=0)
    monkeypatch.delenv("TIMESHIFT_MAX_FRAME_PIXELS")
    # the cache holds at most cache_bytes of frames; the rest is decoded every time
    one_video = 24 * 48 * 64 * 3  # records[0]: 24 frames of 48x64
    ds = VideoDataset(records, num_segments=4, mode="val", cache=True, cache_bytes=one_video)
    plain = VideoDataset(records, num_segments=4, mode="val")
    with caplog.at_level(logging.WARNING):
        for i in range(len(records)):
            assert torch.equal(ds[i][0], plain[i][0])
    assert list(ds._cache) == [0] and ds._cached_bytes == one_video
    assert sum("cache is full" in r.getMessage() for r in caplog.records) == 1
