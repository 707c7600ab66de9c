"""Decoding: exact frames for every backend and container, true frame counts, bad files."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from timeshift.data import VideoDecodeError, open_video

from conftest import (
    decode_all,
    encode_video,
    identify,
    palette_frames,
    write_frame_folder,
    write_test_video,
)

N = 40
REQUESTS = [
    [0],
    [N - 1],
    [5, 3, 5, 39, 0],
    list(range(N)),
    list(range(N - 1, -1, -1)),
    [7, 8, 9, 30, 31, 2],
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = palette_frames(N)
    return {
        suffix: write_test_video(root / f"v{suffix}", frames)
        for suffix in (".mkv", ".mp4", ".avi", ".webm")
    }


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".avi", ".webm"])
def test_exact_frames_every_backend_and_container(videos, backend, suffix):
    with open_video(videos[suffix], backend=backend) as reader:
        assert reader.num_frames == N
        assert reader.size == (48, 64)
        assert reader.fps == pytest.approx(10, rel=0.01)
        for request in REQUESTS:
            frames = reader.get_frames(request)
            assert frames.shape == (len(request), 48, 64, 3) and frames.dtype == np.uint8
            assert identify(frames) == request


def test_lossless_video_is_bit_exact(videos):
    expected = palette_frames(N)
    with open_video(videos[".mkv"]) as reader:
        got = reader.get_frames([0, 17, 39, 16])
    assert np.array_equal(got, expected[[0, 17, 39, 16]])


def test_frame_folder_backend(tmp_path):
    folder = write_frame_folder(tmp_path / "clip", palette_frames(12))
    with open_video(folder) as reader:  # a folder picks the frames backend
        assert reader.backend == "frames" and reader.num_frames == 12
        assert identify(reader.get_frames([11, 0, 4])) == [11, 0, 4]
    with (
        open_video(folder, backend="frames", num_frames=20) as reader,
        pytest.raises(VideoDecodeError, match=r"img_00013\.jpg"),
    ):
        reader.get_frames([12])


def test_container_metadata_under_reporting(videos):
    import av

    with av.open(videos[".mkv"]) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    with open_video(videos[".mkv"]) as reader:
        assert reader.num_frames == N


def test_metadata_over_reporting_after_truncation(tmp_path, videos):
    import av

    data = Path(videos[".avi"]).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with av.open(str(cut)) as container:
        claimed = container.streams.video[0].frames
    assert claimed == N  # the AVI header still claims every frame
    for backend in ("pyav", "opencv"):
        with open_video(cut, backend=backend) as reader:
            n = reader.num_frames
            assert 0 < n < N
            assert identify(reader.get_frames(range(n - 1))) == list(range(n - 1))
            with pytest.raises(IndexError):
                reader.get_frames([N - 1])


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, videos, backend):
    data = Path(videos[".mp4"]).read_bytes()
    cases = {
        "truncated.mp4": data[: len(data) // 2],  # moov atom lost
        "random.mp4": np.random.default_rng(0).bytes(5000),
        "empty.mp4": b"",
        "text.avi": b"this is not a video\n" * 20,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VideoDecodeError, match=name.replace(".", r"\.")):
            open_video(path, backend=backend)
    with pytest.raises(VideoDecodeError, match="not found"):
        open_video(tmp_path / "missing.mp4", backend=backend)


def test_truncated_stream_never_returns_wrong_frames(tmp_path, videos):
    data = Path(videos[".mkv"]).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with open_video(cut) as reader:
        for k in range(reader.num_frames):
            try:
                frame = reader.get_frames([k])
            except VideoDecodeError as exc:
                assert "cut.mkv" in str(exc)
                continue
            assert identify(frame) == [k]


def test_out_of_range_and_empty_requests(videos):
    with open_video(videos[".mp4"]) as reader:
        with pytest.raises(IndexError, match=r"outside \[0, 40\)"):
            reader.get_frames([40])
        assert reader.get_frames([]).shape == (0, 48, 64, 3)
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(videos[".mp4"], backend="decord")


_MS = Fraction(1, 1000)
TRICKY = {
    # container seeks by decode timestamps and B-frames make them differ from presentation
    "mpeg4_bframes.avi": dict(codec="mpeg4", options={"bf": "2", "g": "12"}),
    "h264_bframes.ts": dict(codec="libx264", options={"bf": "3", "g": "12"}),
    # the AVI demuxer makes up timestamps for H.264 with B-frames
    "h264_bframes.avi": dict(codec="libx264", options={"bf": "3", "g": "12"}),
    # an MP4 edit list hides the first 3 packets (as a stream copy cut does)
    "edit_list.mp4": dict(
        codec="libx264", options={"bf": "3", "g": "12"}, time_base=_MS, pts=lambda k: (k - 3) * 100
    ),
    "start_offset.mkv": dict(
        codec="libx264", options={"g": "12"}, time_base=_MS, pts=lambda k: 5000 + k * 100
    ),
    "program_stream.mpg": dict(codec="mpeg2video", options={"bf": "2", "g": "12"}),
    # no container timestamps at all
    "raw.h264": dict(codec="libx264", options={"bf": "3", "g": "12"}, fmt="h264"),
}


@pytest.mark.parametrize("name", list(TRICKY))
def test_tricky_timestamps_match_a_sequential_decode(tmp_path, name):
    path = encode_video(tmp_path / name, palette_frames(48), **TRICKY[name])
    truth = decode_all(path)
    rng = np.random.default_rng(0)
    with open_video(path) as reader:
        assert reader.num_frames == len(truth)
        requests = [[k] for k in range(len(truth))] + [
            sorted(rng.choice(len(truth), 8).tolist()) for _ in range(5)
        ]
        for request in [*requests, list(range(len(truth) - 1, -1, -3))]:
            assert identify(reader.get_frames(request)) == [truth[k] for k in request]


def test_resolution_change_and_odd_metadata(tmp_path):
    import av

    path = tmp_path / "resize.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "bgr0"
        container.metadata["title"] = "XQXQXQ"
        for image in palette_frames(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes().replace(b"XQXQXQ", "Caf\xe9!!".encode("latin-1"))
    path.write_bytes(data)  # a title tag that is not UTF-8
    with open_video(path) as reader:
        assert identify(reader.get_frames([5, 0])) == [5, 0]


def test_decode_error_survives_worker_processes(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    from timeshift.data import SampleRecord, VideoDataset

    error = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "boom")))
    assert (error.path, error.cause, str(error)) == ("/x.mp4", "boom", "/x.mp4: boom")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    ds = VideoDataset([SampleRecord(str(bad), 0)], num_segments=4, mode="val")
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4"):
        list(DataLoader(ds, num_workers=1))
