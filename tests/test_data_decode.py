"""Decoding: exact frames for every backend and container, true frame counts, bad files."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from timeshift.data import VideoDecodeError, open_video

from conftest import (
    VFR_MS,
    decodable_prefix,
    decode_all,
    encode_video,
    faststart_mp4,
    finishes,
    identify,
    noisy_palette_frames,
    palette_frames,
    special_files,
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


# -- no input may hang: only regular files are opened ---------------------------------------------
@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, backend):
    files = special_files(tmp_path)
    for kind, path in files.items():
        with pytest.raises(VideoDecodeError, match=rf"{path.name}: not a regular file") as info:
            finishes(lambda p=path: open_video(p, backend=backend), fifos=[files["fifo"]])
        assert {"fifo": "FIFO", "folder": "folder", "device": "device", "socket": "socket"}[
            kind
        ] in str(info.value)


def test_frame_folder_with_a_fifo_frame_does_not_block(tmp_path):
    import os

    folder = write_frame_folder(tmp_path / "clip", palette_frames(3))
    fifo = Path(folder) / "img_00002.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    with open_video(folder, backend="frames", num_frames=3) as reader:
        assert identify(reader.get_frames([0])) == [0]
        with pytest.raises(VideoDecodeError, match=r"img_00002\.jpg: not a regular file"):
            finishes(lambda: reader.get_frames([1]), fifos=[fifo])


# -- frames counted for sampling are frames that decode ------------------------------------------
def listed_packets(path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


@pytest.fixture(scope="module")
def faststart(tmp_path_factory):
    return faststart_mp4(
        tmp_path_factory.mktemp("faststart") / "full.mp4", noisy_palette_frames(60)
    )


@pytest.mark.parametrize("keep", [0.99, 0.97, 0.9])
def test_truncated_faststart_mp4_counts_only_frames_that_decode(tmp_path, faststart, keep):
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    truth = decodable_prefix(cut)
    assert len(truth) < listed_packets(cut) <= 60  # the index lists frames that do not decode
    for backend in ("pyav", "opencv"):
        with open_video(cut, backend=backend) as reader:
            n = reader.num_frames
            assert n == len(truth), backend
            assert identify(reader.get_frames(range(n))) == truth
            for k in (n - 1, n - 2, 0):  # and each one alone, after a seek
                assert identify(reader.get_frames([k])) == [truth[k]]
    with open_video(cut) as reader, pytest.raises(VideoDecodeError, match="do not decode"):
        reader.get_frames([reader.num_frames])  # listed by the container, not decodable


def test_corrupt_tail_found_while_reading_lowers_the_count(tmp_path, faststart):
    # the same length with garbage at the end: nothing looks wrong until the tail is decoded
    data = bytearray(faststart.read_bytes())
    start = len(data) * 95 // 100
    data[start:] = np.random.default_rng(1).bytes(len(data) - start)
    bad = tmp_path / "bad_tail.mp4"
    bad.write_bytes(bytes(data))
    truth = decodable_prefix(bad)
    with open_video(bad) as reader:
        assert reader.num_frames == 60  # no sign of damage in the demux pass
        with pytest.raises(VideoDecodeError, match="bad_tail"):
            reader.get_frames([59])
        assert reader.num_frames <= len(truth) < 60  # lowered to frames that decode
        n = reader.num_frames
        assert identify(reader.get_frames(range(n))) == truth[:n]


def test_a_normal_file_is_not_decoded_on_open(faststart, monkeypatch):
    # only a file whose demux pass shows damage pays for decoding its tail on open
    from timeshift.data.decode import PyAVReader

    verified = []
    monkeypatch.setattr(PyAVReader, "_verify_tail", lambda self: verified.append(self))
    with open_video(faststart) as reader:
        assert reader.num_frames == 60
    assert verified == []


# -- a small file cannot ask for a large allocation ----------------------------------------------
@pytest.mark.parametrize("backend", ["pyav", "opencv", "frames"])
def test_frame_pixel_limit_refuses_large_frames_before_decoding(
    tmp_path, videos, backend, monkeypatch
):
    path = videos[".mp4"]
    if backend == "frames":
        path = write_frame_folder(tmp_path / "clip", palette_frames(2))
    with open_video(path, backend=backend, max_frame_pixels=64 * 48) as reader:
        assert reader.get_frames([1]).shape == (1, 48, 64, 3)  # at the limit: fine
    pattern = r"64x48 frames \(3,072 pixels.*over the limit of 3,071 pixels per frame"
    with (
        pytest.raises(VideoDecodeError, match=pattern) as info,
        open_video(path, backend=backend, max_frame_pixels=64 * 48 - 1) as reader,
    ):
        reader.get_frames([1])
    message = str(info.value)
    assert "TIMESHIFT_MAX_FRAME_PIXELS=3072" in message and "max_frame_pixels=" in message
    assert ("v.mp4" if backend != "frames" else "img_00002.jpg") in message
    monkeypatch.setenv("TIMESHIFT_MAX_FRAME_PIXELS", "3000")
    with (
        pytest.raises(VideoDecodeError, match="over the limit of 3,000 pixels"),
        open_video(path, backend=backend) as reader,
    ):
        reader.get_frames([0])
    monkeypatch.setenv("TIMESHIFT_MAX_FRAME_PIXELS", "lots")
    with pytest.raises(ValueError, match="TIMESHIFT_MAX_FRAME_PIXELS must be a positive"):
        open_video(path, backend=backend)


def test_default_limit_refuses_a_tiny_file_of_huge_frames(tmp_path):
    import av

    path = tmp_path / "huge.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 8192, 2064, "yuv420p"  # 16.9 Mpx
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(8192, 2064, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    assert path.stat().st_size < 100_000
    for backend in ("pyav", "opencv"):
        with pytest.raises(VideoDecodeError, match=r"kB file with 8192x2064 frames"):
            open_video(path, backend=backend)
    with open_video(path, max_frame_pixels=8192 * 2064) as reader:  # raised: it decodes
        assert reader.num_frames == 1


def test_frames_far_thinner_than_a_video_frame_are_refused(tmp_path):
    """A 16x336 video (21:1) is under the pixel limit but is no camera's frame: resizing its
    shorter side to a model's input would multiply its size. 16:1 is still read."""
    thin = write_test_video(tmp_path / "thin.mkv", np.zeros((2, 16, 336, 3), np.uint8))
    for backend in ("pyav", "opencv"):
        with pytest.raises(VideoDecodeError, match=r"16 ?x ?336|336x16|aspect ratio over 16:1"):
            open_video(thin, backend=backend)
    wide = write_test_video(tmp_path / "wide.mkv", np.zeros((2, 16, 256, 3), np.uint8))
    with open_video(wide) as reader:
        assert reader.get_frames([1]).shape == (1, 16, 256, 3)


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_timestamps_are_the_frames_own(tmp_path, suffix):
    path = encode_video(
        tmp_path / f"vfr{suffix}",
        palette_frames(len(VFR_MS)),
        codec="libx264",
        options={"g": "4", "bf": "2"},
        time_base=_MS,
        pts=lambda k: 5000 + VFR_MS[k],  # a start offset too
    )
    with open_video(path) as reader:
        assert reader.num_frames == len(VFR_MS)
        times = reader.get_timestamps(range(len(VFR_MS)))
        assert times == pytest.approx(np.array(VFR_MS) / 1000, abs=1e-6)
        assert reader.get_timestamps([3, 0]) == pytest.approx([0.5, 0.0])
        with pytest.raises(IndexError):
            reader.get_timestamps([len(VFR_MS)])
    with open_video(path, backend="opencv") as reader:  # the nominal rate, in the same unit
        assert reader.get_timestamps([2]) == pytest.approx([2 / reader.fps])
