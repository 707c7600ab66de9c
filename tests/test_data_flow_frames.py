"""Flow folders in the other tools' namings, and VideoDataset(modality="flow", new_length=...)."""

import numpy as np
import pytest
import torch

from timeshift.data import (
    FLOW_MEAN,
    FLOW_NAMINGS,
    FLOW_STD,
    FlowFolderReader,
    SampleRecord,
    VideoDataset,
    VideoDecodeError,
    detect_flow_naming,
    eval_transforms,
    segment_indices,
    train_transforms,
)
from timeshift.data.transforms import IMAGENET_STD

from conftest import (
    FLOW_TEMPLATES,
    constant_flow,
    identify,
    palette_frames,
    write_flow_folder,
    write_frame_folder,
)

FRAMES = 12


def _x(k):  # the value of flow frame k's x image in constant_flow
    return 10 + 3 * k


def _y(k):
    return 130 + 3 * k


@pytest.mark.parametrize("naming", sorted(FLOW_TEMPLATES))
@pytest.mark.parametrize("start", [1, 0])
def test_each_naming_is_detected_and_reads_the_same_values(tmp_path, naming, start):
    flow = constant_flow(FRAMES)
    folder = write_flow_folder(tmp_path / "000042", flow, naming=naming, start=start)
    found, count = detect_flow_naming(folder)
    assert (found.name, found.start_index, count) == (naming, start, FRAMES)
    with FlowFolderReader(folder) as reader:
        assert reader.num_frames == FRAMES
        assert reader.size == flow.shape[1:3]
        out = reader.get_frames([3, 0, 11, 3])
    assert out.shape == (4, *flow.shape[1:3], 2) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, flow[[3, 0, 11, 3]])


def test_flow_beside_rgb_frames_and_another_videos_sthv1_files(tmp_path):
    # dense_flow and MMAction2 write img_ and flow files into the same folder; a Something V1
    # folder is read for its own video number only, as the reference formats it
    folder = tmp_path / "000007"
    write_frame_folder(folder, palette_frames(FRAMES + 1, 32, 40))
    write_flow_folder(folder, constant_flow(FRAMES), naming="mmaction2")
    naming, count = detect_flow_naming(folder)
    assert (naming.name, count) == ("mmaction2", FRAMES)
    other = tmp_path / "000008"
    write_flow_folder(other, constant_flow(5), naming="sthv1")
    (other / "000009-x_00099.jpg").write_bytes((other / "000008-x_00001.jpg").read_bytes())
    assert detect_flow_naming(other)[1] == 5


def test_no_flow_files_names_the_folder_and_every_naming_tried(tmp_path):
    folder = write_frame_folder(tmp_path / "rgb_only", palette_frames(4, 32, 40))
    with pytest.raises(VideoDecodeError) as info:
        FlowFolderReader(folder)
    message = str(info.value)
    assert folder in message
    for example in ("flow_x_00001.jpg", "x_00001.jpg", "000123-x_00001.jpg"):
        assert example in message
    assert len(FLOW_NAMINGS) == 3


def test_two_namings_in_one_folder_is_an_error_unless_one_is_chosen(tmp_path):
    folder = tmp_path / "both"
    write_flow_folder(folder, constant_flow(4), naming="dense_flow")
    write_flow_folder(folder, constant_flow(6), naming="mmaction2")
    with pytest.raises(VideoDecodeError, match="several namings"):
        FlowFolderReader(folder)
    assert FlowFolderReader(folder, naming="mmaction2").num_frames == 6
    assert FlowFolderReader(folder, naming="dense_flow").num_frames == 4
    with pytest.raises(ValueError, match="unknown flow naming"):
        FlowFolderReader(folder, naming="tvl1")


@pytest.mark.parametrize("axis", ["x", "y"])
def test_a_missing_flow_file_is_an_error_naming_it(tmp_path, axis):
    folder = write_flow_folder(tmp_path / "v", constant_flow(FRAMES))
    missing = tmp_path / "v" / f"flow_{axis}_00004.jpg"  # flow frame 3, 1-based file 4
    missing.unlink()
    with FlowFolderReader(folder) as reader:
        assert reader.num_frames == FRAMES  # the span, not a silently shorter video
        np.testing.assert_array_equal(reader.get_frames([2])[0, 0, 0], [_x(2), _y(2)])
        with pytest.raises(VideoDecodeError, match="missing") as info:
            reader.get_frames([3])
    assert str(missing) in str(info.value)
    ds = VideoDataset([SampleRecord(folder, 0)], num_segments=4, mode="test", modality="flow")
    with pytest.raises(VideoDecodeError) as info:
        ds[0]
    assert str(missing) in str(info.value)
    first = tmp_path / "v" / "flow_x_00001.jpg"  # the first frame: still 1-based, and named
    first.unlink()
    with pytest.raises(VideoDecodeError, match="flow frame 0 \\(x\\) missing") as info:
        FlowFolderReader(folder).get_frames([0])
    assert str(first) in str(info.value)


def test_sthv1_names_in_a_folder_not_named_by_its_number(tmp_path):
    folder = tmp_path / "000031"
    write_flow_folder(folder, constant_flow(4), naming="sthv1")
    renamed = folder.rename(tmp_path / "video_a")
    with FlowFolderReader(renamed) as reader:
        assert (reader.naming.name, reader.naming.video, reader.num_frames) == ("sthv1", 31, 4)
        np.testing.assert_array_equal(reader.get_frames([3])[0, 0, 0], [_x(3), _y(3)])


@pytest.fixture(scope="module")
def flow_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    return [
        SampleRecord(write_flow_folder(root / f"{k:06d}", constant_flow(n), naming=naming), k)
        for k, (n, naming) in enumerate([(FRAMES, "dense_flow"), (7, "mmaction2"), (3, "sthv1")])
    ]


@pytest.mark.parametrize("mode", ["train", "val", "test"])
@pytest.mark.parametrize("new_length", [1, 2, 5])
def test_segments_stack_consecutive_flow_frames_x1_y1_x2_y2(flow_records, mode, new_length):
    segments = 4
    for index, record in enumerate(flow_records):
        n = FlowFolderReader(record.path).num_frames
        ds = VideoDataset(
            [record], num_segments=segments, mode=mode, modality="flow", new_length=new_length
        )
        ds.set_epoch(index)
        clip, label = ds[0]
        assert clip.shape == (segments, 2 * new_length, 32, 40) and clip.dtype == torch.uint8
        assert label == record.label
        starts = [int(clip[s, 0, 0, 0] - 10) // 3 for s in range(segments)]
        if mode != "train":  # deterministic: the sampling's own starts
            assert starts == segment_indices(n, segments, mode=mode, new_length=new_length)[0]
        for s, start in enumerate(starts):
            frames = [min(start + i, n - 1) for i in range(new_length)]  # last frame repeats
            expected = [v for k in frames for v in (_x(k), _y(k))]
            assert clip[s, :, 0, 0].tolist() == expected, (record.path, s)


def test_flow_is_the_default_five_frames_and_views_keep_the_stack(flow_records):
    ds = VideoDataset(
        flow_records, num_segments=2, mode="test", modality="flow", clips=2, twice=True
    )
    assert ds.new_length == 5
    views, _ = ds[0]
    assert views.shape == (3, 2, 10, 32, 40)
    ten = VideoDataset(
        flow_records,
        num_segments=2,
        mode="test",
        modality="flow",
        transform=eval_transforms(24, crops=10, modality="flow"),
    )
    views, _ = ten[0]
    assert views.shape == (10, 2, 10, 24, 24) and views.dtype == torch.float32


def test_rgb_snippets_stack_frames_in_order(tmp_path):
    folder = write_frame_folder(tmp_path / "rgb", palette_frames(FRAMES, 32, 40))
    ds = VideoDataset([SampleRecord(folder, 0)], num_segments=3, mode="val", new_length=2)
    clip, _ = ds[0]
    assert clip.shape == (3, 6, 32, 40)
    starts = segment_indices(FRAMES, 3, mode="val", new_length=2)[0]
    for part, offset in ((slice(0, 3), 0), (slice(3, 6), 1)):
        frames = clip[:, part].permute(0, 2, 3, 1).numpy()
        assert identify(frames) == [s + offset for s in starts]


def test_flow_training_flip_inverts_x_only_and_normalises_as_the_reference(flow_records):
    transform = train_transforms(24, modality="flow")
    assert transform.transforms[-1].mean.flatten().tolist() == pytest.approx(FLOW_MEAN)
    raw = VideoDataset(flow_records[:1], num_segments=4, mode="train", modality="flow")
    ds = VideoDataset(
        flow_records[:1], num_segments=4, mode="train", modality="flow", transform=transform
    )
    flipped = 0
    for epoch in range(8):
        raw.set_epoch(epoch)
        ds.set_epoch(epoch)
        values = raw[0][0][:, :, 0, 0].double()  # flat images: a crop keeps the value
        out = ds[0][0][:, :, 12, 12].double()
        back = out * FLOW_STD[0] + FLOW_MEAN[0]
        x, y = back[:, 0::2] * 255, back[:, 1::2] * 255
        assert torch.allclose(y, values[:, 1::2], atol=1e-3)
        if torch.allclose(x, 255 - values[:, 0::2], atol=1e-3):
            flipped += 1
        else:
            assert torch.allclose(x, values[:, 0::2], atol=1e-3)
    assert 0 < flipped < 8


def test_flow_constants_are_the_reference_values():
    # reference TSM ops/models.py, modality 'Flow': input_mean [0.5], input_std
    # [np.mean(ImageNet std)]
    assert FLOW_MEAN == (0.5,)
    assert FLOW_STD[0] == pytest.approx(float(np.mean(IMAGENET_STD)), abs=1e-12)


def test_flow_of_a_video_file_or_a_bad_option_is_a_clear_error(tmp_path, flow_records):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not a folder")
    ds = VideoDataset([SampleRecord(str(video), 0)], num_segments=2, modality="flow")
    with pytest.raises(VideoDecodeError, match="extract-flow"):
        ds[0]
    with pytest.raises(ValueError, match="modality"):
        VideoDataset(flow_records, num_segments=2, modality="depth")
    with pytest.raises(ValueError, match="flow_naming"):
        VideoDataset(flow_records, num_segments=2, modality="flow", flow_naming="tvl1")
    with pytest.raises(ValueError, match="new_length"):
        VideoDataset(flow_records, num_segments=2, modality="flow", new_length=0)


def test_memory_cache_and_list_counts(flow_records):
    plain = VideoDataset(flow_records, num_segments=3, mode="train", modality="flow")
    cached = VideoDataset(flow_records, num_segments=3, mode="train", modality="flow", cache=True)
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(flow_records)):
            assert torch.equal(plain[index][0], cached[index][0])
    assert len(cached._cache) == len(flow_records)
    # a list's count bounds the frames used; one above the folder's (Something V1 flow lists
    # count x and y files: the reference halves them) is cut to the flow frames present
    record = flow_records[0]
    for listed, frames in ((6, 6), (2 * FRAMES, FRAMES)):
        ds = VideoDataset(
            [SampleRecord(record.path, 0, num_frames=listed)],
            num_segments=3,
            mode="test",
            modality="flow",
            new_length=2,
        )
        starts = [int(v - 10) // 3 for v in ds[0][0][:, 0, 0, 0].tolist()]
        assert starts == segment_indices(frames, 3, mode="test", new_length=2)[0]
