import cv2
import numpy as np
import pytest
from PIL import Image

from timeshift.cli import main
from timeshift.data import compute_flow, dequantize_flow, extract_flow, open_video, quantize_flow
from timeshift.data.flow import FLOW_ALGORITHMS, FlowUnavailableError

from conftest import moving_square, write_test_video

# TV-L1 runs where OpenCV's contrib build is installed (timeshift[flow]); elsewhere its test
# is the error naming the extra (test_tvl1_without_contrib_names_the_extra)
AVAILABLE = [a for a in FLOW_ALGORITHMS if a != "tvl1" or hasattr(cv2, "optflow")]


def square_interior(t: int, step) -> tuple[slice, slice]:
    """The inner 8x8 of the square in frame ``t`` (away from its edges)."""
    x, y = 16 + step[0] * t + 4, 12 + step[1] * t + 4
    return slice(y, y + 8), slice(x, x + 8)


def test_quantisation_follows_the_reference_rule():
    bound = 20
    # round(255 * (v + 20) / 40): 0 -> 127.5 -> 128 (half to even, as dense_flow's cvRound),
    # 5 -> 159.375 -> 159, -7.3 -> 80.9625 -> 81, +-20 -> 255 / 0, beyond: clipped
    values = np.array([0.0, 5.0, -7.3, 20.0, -20.0, 35.0, -1e6], dtype=np.float32)
    assert quantize_flow(values, bound=bound).tolist() == [128, 159, 81, 255, 0, 255, 0]
    assert quantize_flow(values).dtype == np.uint8
    # bound 32 (MMAction2's denseflow): 8 -> 255 * 40 / 64 = 159.375 -> 159
    assert quantize_flow(np.array([8.0, 0.0]), bound=32).tolist() == [159, 128]
    with pytest.raises(ValueError, match="bound must be positive"):
        quantize_flow(values, bound=0)


def test_quantisation_round_trip_is_within_half_a_step():
    for bound in (20, 32):
        v = np.linspace(-bound, bound, 2001, dtype=np.float32)
        back = dequantize_flow(quantize_flow(v, bound=bound), bound=bound)
        assert back.dtype == np.float32
        assert np.abs(back - v).max() <= bound / 255 + 1e-5  # half of the 2 * bound / 255 step
        assert dequantize_flow(np.array([0, 255], np.uint8), bound=bound).tolist() == [
            -bound,
            bound,
        ]


@pytest.mark.parametrize("algorithm", AVAILABLE)
@pytest.mark.parametrize("step", [(3, 0), (0, 2), (-2, 1)])
def test_each_algorithm_recovers_the_displacement(algorithm, step):
    frames = moving_square(3, step=step)
    flow = compute_flow(frames, algorithm=algorithm)
    assert flow.shape == (2, 2, 48, 64) and flow.dtype == np.float32
    for t in range(2):
        inside = flow[t][(slice(None), *square_interior(t, step))]
        error = np.hypot(inside[0] - step[0], inside[1] - step[1])
        assert error.mean() < 0.5, (algorithm, step, error.mean())
    background = flow[0][:, -10:, -12:]  # far from the square: no motion
    assert np.abs(background).mean() < 0.2


@pytest.mark.parametrize("algorithm", AVAILABLE)
def test_direction_right_is_x_above_128_and_down_is_y_above_128(algorithm):
    for step, moving_axis in (((2, 0), 0), ((0, 2), 1)):
        q = quantize_flow(compute_flow(moving_square(2, step=step), algorithm=algorithm))
        inside = q[0][(slice(None), *square_interior(0, step))]
        assert inside[moving_axis].mean() > 128 + 255 * 1.5 / 40  # more than +1.5 px
        assert abs(inside[1 - moving_axis].astype(float).mean() - 128) < 255 * 0.5 / 40
        # reversed time: the other sign
        q = quantize_flow(compute_flow(moving_square(2, step=step)[::-1], algorithm=algorithm))
        assert q[0][moving_axis][square_interior(1, step)].mean() < 128 - 255 * 1.5 / 40


def test_compute_flow_checks_its_input():
    frames = moving_square(2)
    gray = compute_flow(frames[..., 0])  # (T, H, W) grey frames are accepted too
    assert gray.shape == (1, 2, 48, 64)
    with pytest.raises(ValueError, match=r"at least 2 uint8 frames .* got uint8 \(1, 48, 64, 3\)"):
        compute_flow(frames[:1])
    with pytest.raises(ValueError, match="got float32"):
        compute_flow(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"unknown flow algorithm 'raft'.*'dis'"):
        compute_flow(frames, algorithm="raft")


def test_tvl1_without_contrib_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.delattr(cv2, "optflow", raising=False)  # the plain opencv-python-headless
    with pytest.raises(FlowUnavailableError, match=r"contrib.*timeshift\[flow\]") as info:
        compute_flow(moving_square(2), algorithm="tvl1")
    assert isinstance(info.value, ImportError) and "opencv-python-headless" in str(info.value)
    write_test_video(tmp_path / "a.mkv", moving_square(3))
    (tmp_path / "list.txt").write_text("a.mkv 0\n")
    out = tmp_path / "flow"
    args = ["data", "extract-flow", str(tmp_path / "list.txt"), str(out), "--algorithm", "tvl1"]
    assert main(args) == 2  # fails once, before any work
    assert "timeshift[flow]" in capsys.readouterr().err
    assert not out.exists()


def _flow_images(folder, count):
    """(count, 2, H, W) uint8 flow images read back from flow_x_/flow_y_ JPEGs."""
    return np.stack(
        [
            [np.asarray(Image.open(folder / f"flow_{axis}_{i:05d}.jpg")) for axis in "xy"]
            for i in range(1, count + 1)
        ]
    )


def _video_tree(tmp_path):
    videos = tmp_path / "videos"
    (videos / "right").mkdir(parents=True)
    (videos / "down").mkdir()
    write_test_video(videos / "right/a.mkv", moving_square(6, step=(2, 0)))  # lossless
    write_test_video(videos / "down/b.mkv", moving_square(5, step=(0, 2), seed=1))
    (videos / "down/bad.mkv").write_bytes(b"not a video" * 20)
    listing = tmp_path / "list.txt"
    listing.write_text("right/a.mkv 0\ndown/bad.mkv 1\ndown/b.mkv 1\n")
    return videos, listing


def test_extract_flow_writes_the_reference_layout_and_resumes(tmp_path, capsys):
    videos, listing = _video_tree(tmp_path)
    out = tmp_path / "flow"
    args = ["data", "extract-flow", str(listing), str(out), "--root", str(videos)]
    assert main([*args, "--size", "0", "--workers", "2"]) == 1  # one video failed
    printed = capsys.readouterr().out
    assert "extracted 2, already done 0, failed 1" in printed and "failed.txt" in printed
    assert "bad.mkv" in (out / "failed.txt").read_text()
    names = sorted(p.name for p in (out / "right/a").iterdir())
    expected = [f"flow_{axis}_{i:05d}.jpg" for axis in "xy" for i in range(1, 6)]
    assert names == sorted([".done", *expected])  # 6 frames -> 5 flow frames, 1-based
    # the flow list, next to the folders: path (relative to OUT_DIR) num_flow_frames label
    assert (out / "list_flow.txt").read_text() == "right/a 5 0\ndown/b 4 1\n"
    # the JPEGs hold quantize_flow(compute_flow(decoded frames)), up to JPEG loss
    with open_video(videos / "right/a.mkv") as reader:
        decoded = reader.get_frames(range(6))
    want = quantize_flow(compute_flow(decoded)).astype(float)
    got = _flow_images(out / "right/a", 5).astype(float)
    assert np.abs(got - want).mean() < 1.0
    assert got[:, 0][(slice(None), *square_interior(0, (2, 0)))].mean() > 135  # moving right
    down = _flow_images(out / "down/b", 4)[:, 1][(slice(None), *square_interior(0, (0, 2)))]
    assert down.mean() > 135  # moving down: flow_y > 128
    # resuming skips the finished videos and retries the failed one
    assert main([*args, "--size", "0"]) == 1
    assert "extracted 0, already done 2, failed 1" in capsys.readouterr().out
    # other settings (bound, algorithm, size) are not the finished flow: extracted again
    assert main([*args, "--size", "0", "--bound", "32", "--algorithm", "farneback"]) == 1
    assert "extracted 2, already done 0, failed 1" in capsys.readouterr().out


def test_a_killed_run_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, capsys):
    import timeshift.data.flow as flow_module

    videos, listing = _video_tree(tmp_path)
    out = tmp_path / "flow"
    save, calls = flow_module._save_flow, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of video a
        save(*args)

    monkeypatch.setattr(flow_module, "_save_flow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_flow(listing, out, root=videos, short_side=None, progress=False)
    assert not (out / "right/a").exists()
    # a hard kill (no cleanup) leaves only the temporary folder: not taken as finished
    (out / "right/.a.partial").mkdir(parents=True, exist_ok=True)
    (out / "right/.a.partial/flow_x_00001.jpg").write_bytes(b"half")
    monkeypatch.setattr(flow_module, "_save_flow", save)
    result = extract_flow(listing, out, root=videos, short_side=None, progress=False)
    assert (result.extracted, result.skipped, len(result.failed)) == (2, 0, 1)
    assert (out / "right/a/flow_y_00005.jpg").is_file()
    assert not (out / "right/.a.partial").exists()


def test_output_folders_of_other_tools_or_of_rgb_frames_are_never_replaced(tmp_path, capsys):
    videos, listing = _video_tree(tmp_path)
    (videos / "down/bad.mkv").unlink()
    listing.write_text("right/a.mkv 0\ndown/b.mkv 1\n")
    root = ["--root", str(videos)]
    frames = tmp_path / "frames"
    assert (
        main(["data", "extract-frames", str(listing), str(frames), *root, "--short-side", "0"]) == 0
    )
    capsys.readouterr()
    # flow into the RGB frames' folders would delete the frames: refused before any work
    assert main(["data", "extract-flow", str(listing), str(frames), *root]) == 2
    assert "holds frames extracted by timeshift" in capsys.readouterr().err
    assert (frames / "right/a/img_00006.jpg").is_file()
    # a folder written by another tool (no .done marker), e.g. dense_flow's img_/flow_ files
    other = tmp_path / "dense_flow"
    (other / "right/a").mkdir(parents=True)
    (other / "right/a/img_00001.jpg").write_bytes(b"jpeg")
    assert main(["data", "extract-flow", str(listing), str(other), *root]) == 2
    assert "no .done marker" in capsys.readouterr().err
    assert (other / "right/a/img_00001.jpg").read_bytes() == b"jpeg"
    # flow from the frame folders of a rawframe list (what extract-frames wrote)
    flow = tmp_path / "flow"
    rawframes = frames / "list_rawframes.txt"
    assert main(["data", "extract-flow", str(rawframes), str(flow), "--size", "0"]) == 0
    assert (flow / "list_rawframes_flow.txt").read_text() == "right/a 5 0\ndown/b 4 1\n"


def test_the_flow_reader_reads_what_extract_flow_wrote(tmp_path):
    from timeshift.data import FlowFolderReader

    videos, listing = _video_tree(tmp_path)
    out = tmp_path / "flow"
    extract_flow(listing, out, root=videos, short_side=None, progress=False)
    reader = FlowFolderReader(out / "right/a")
    assert reader.num_frames == 5
    got = reader.get_frames(range(5))  # (T, H, W, 2): x, y
    assert np.array_equal(got.transpose(0, 3, 1, 2), _flow_images(out / "right/a", 5))
