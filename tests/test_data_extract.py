import numpy as np
import pytest

from timeshift.bench.data_speed import benchmark_data, make_benchmark_videos
from timeshift.cli import main
from timeshift.data import VideoDecodeError, open_video, read_rawframe_list
from timeshift.data.extract import extract_video

from conftest import identify, palette_frames, write_test_video


def test_extract_frames_resumable_and_survives_bad_videos(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_test_video(videos / "a.mp4", palette_frames(12))
    write_test_video(videos / "b.mp4", palette_frames(9))
    (videos / "bad.mp4").write_bytes(b"nope" * 50)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nbad.mp4 1\nb.mp4 1\n")
    out = tmp_path / "frames"
    code = main(
        [
            "data",
            "extract-frames",
            str(listing),
            str(out),
            "--root",
            str(videos),
            "--short-side",
            "32",
            "--workers",
            "2",
        ]
    )
    assert code == 1  # one video failed, the others were extracted
    assert "extracted 2, already done 0, failed 1" in capsys.readouterr().out
    assert "bad.mp4" in (out / "failed.txt").read_text()
    frames = read_rawframe_list(out / "list_rawframes.txt", root=out)
    assert [(r.num_frames, r.label) for r in frames.records] == [(12, 0), (9, 1)]
    with open_video(frames.records[0].path) as reader:
        assert reader.size == (32, 43)  # 48x64 -> short side 32, 64 * 32 / 48 = 42.7
        assert identify(reader.get_frames(range(12))) == list(range(12))
    main(["data", "extract-frames", str(listing), str(out), "--root", str(videos)])
    assert "already done 2" in capsys.readouterr().out


def test_data_benchmark_reports_both_paths(tmp_path):
    records = make_benchmark_videos(tmp_path, count=2, frames=16, height=64, width=80)
    result = benchmark_data(records=records, samples=2, num_segments=4, size=32)
    assert result["dataset_clips_per_s"] > 0 and result["raw_decode_clips_per_s"] > 0
    assert np.isfinite(result["ratio"]) and result["video"] == "80x64 H.264"


def _frames_of(list_file, out):
    """(label, palette indices of every frame) per line of an extracted list."""
    out_records = read_rawframe_list(list_file, root=out).records
    result = []
    for r in out_records:
        with open_video(r.path, num_frames=r.num_frames) as reader:
            result.append((r.label, identify(reader.get_frames(range(r.num_frames)))))
    return result


def test_same_folder_and_file_names_never_share_frames(tmp_path, capsys):
    # a/x/v.mp4 and b/x/v.mp4 (the old naming gave both "x_v"); x.mp4 beside a folder x/
    videos = tmp_path / "videos"
    clips = {"a/x/v.mp4": range(0, 5), "b/x/v.mp4": range(10, 17), "x.mp4": range(20, 24)}
    clips["x/v.mp4"] = range(30, 36)
    clips["a/x/v.avi"] = range(40, 43)  # same stem, another container
    for name, frames in clips.items():
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        path = videos / name
        write_test_video(path, palette_frames(max(frames) + 1)[list(frames)])
    listing = videos / "list.txt"
    listing.write_text("".join(f"{name} {k}\n" for k, name in enumerate(clips)))
    out = tmp_path / "frames"
    assert main(["data", "extract-frames", str(listing), str(out), "--short-side", "0"]) == 0
    assert "extracted 5, already done 0, failed 0" in capsys.readouterr().out
    got = _frames_of(out / "list_rawframes.txt", out)
    assert got == [(k, list(frames)) for k, frames in enumerate(clips.values())]
    # resuming finds each video's own folder again
    assert main(["data", "extract-frames", str(listing), str(out)]) == 0
    assert "extracted 0, already done 5" in capsys.readouterr().out


def test_duplicate_entries_are_extracted_once_and_share_the_result(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        write_test_video(videos / f"v{k}.mp4", palette_frames(6 + k))
    listing = videos / "list.txt"  # the same video under several spellings and labels
    lines = ["v0.mp4 0", "v1.mp4 1", "./v0.mp4 2", "v2.mp4 1", "v0.mp4 0", f"{videos}/v1.mp4 3"]
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "frames"
    args = ["data", "extract-frames", str(listing), str(out), "--workers", "2"]
    assert main([*args, "--short-side", "32"]) == 0
    assert "extracted 3, already done 0, failed 0" in capsys.readouterr().out
    got = _frames_of(out / "list_rawframes.txt", out)
    sizes = [6, 7, 6, 8, 6, 7]
    assert got == [
        (int(line.split()[1]), list(range(n))) for line, n in zip(lines, sizes, strict=True)
    ]


def test_a_folder_holding_another_videos_frames_is_not_reused(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_test_video(videos / "v.mp4", palette_frames(5))
    (videos / "list.txt").write_text("v.mp4 0\n")
    out = tmp_path / "frames"
    main(["data", "extract-frames", str(videos / "list.txt"), str(out)])
    other = tmp_path / "other"  # another v.mp4, extracted into the same output folder
    other.mkdir()
    write_test_video(other / "v.mp4", palette_frames(12)[7:])
    (other / "list.txt").write_text("v.mp4 1\n")
    capsys.readouterr()
    assert main(["data", "extract-frames", str(other / "list.txt"), str(out)]) == 0
    assert "extracted 1, already done 0" in capsys.readouterr().out
    assert _frames_of(out / "list_rawframes.txt", out) == [(1, [7, 8, 9, 10, 11])]


def test_lists_written_by_data_synth_extract_with_and_without_root(tmp_path, capsys):
    synth = tmp_path / "synth"
    assert main(["data", "synth", str(synth), "--videos-per-class", "1", "--families",
                 "horizontal", "--frames", "4", "--size", "32"]) == 0  # fmt: skip
    assert f"dataset     {synth.resolve()}" in capsys.readouterr().out
    for extra in ([], ["--root", str(synth)]):
        out = tmp_path / f"frames{len(extra)}"
        assert main(["data", "extract-frames", str(synth / "train.txt"), str(out), *extra]) == 0
        assert "extracted 2, already done 0, failed 0" in capsys.readouterr().out
        frames = read_rawframe_list(out / "train_rawframes.txt", root=out)
        assert [(r.num_frames, r.label) for r in frames.records] == [(4, 0), (4, 1)]
        # the output mirrors the dataset's folders
        assert (out / "videos/train/moving_left/moving_left_00000/img_00004.jpg").is_file()


def test_special_files_and_limits_fail_that_video_only(tmp_path, capsys):
    import os

    from conftest import finishes

    videos = tmp_path / "videos"
    videos.mkdir()
    write_test_video(videos / "ok.mp4", palette_frames(4))
    write_test_video(videos / "long.mp4", palette_frames(30))
    os.mkfifo(videos / "fifo.mp4")
    (videos / "list.txt").write_text("ok.mp4 0\nfifo.mp4 1\nlong.mp4 1\n")
    out = tmp_path / "frames"
    args = ["data", "extract-frames", str(videos / "list.txt"), str(out), "--max-frames", "20"]
    code = finishes(lambda: main(args), fifos=[videos / "fifo.mp4"], timeout=20)
    assert code == 1
    assert "extracted 1, already done 0, failed 2" in capsys.readouterr().out
    failed = (out / "failed.txt").read_text()
    assert "fifo.mp4: not a regular file but a FIFO" in failed
    assert "long.mp4: more than 20 frames" in failed and "--max-frames" in failed
    assert not any(p.name.endswith(".partial") for p in out.iterdir())
    with pytest.raises(VideoDecodeError, match=r"64x48 frames .*over the limit of 100 pixels"):
        extract_video(videos / "ok.mp4", tmp_path / "one", max_frame_pixels=100)


def test_a_wrong_root_fails_before_any_work(tmp_path, capsys):
    synth = tmp_path / "synth"
    main(["data", "synth", str(synth), "--videos-per-class", "1", "--families", "fade",
          "--frames", "4", "--size", "32"])  # fmt: skip
    out = tmp_path / "frames"
    # the README's generic "--root videos/" is wrong for lists already relative to their folder
    args = ["data", "extract-frames", str(synth / "train.txt"), str(out)]
    assert main([*args, "--root", str(synth / "videos")]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 listed paths do not exist" in err and "--root" in err
    assert not out.exists() or not any(out.iterdir())


def test_a_folder_not_written_by_extract_frames_is_never_replaced(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_test_video(videos / "v.mp4", palette_frames(5))
    (videos / "list.txt").write_text("v.mp4 0\n")
    out = tmp_path / "frames"
    (out / "v").mkdir(parents=True)  # another tool's frames, no .done marker
    (out / "v" / "img_00001.jpg").write_bytes(b"theirs")
    assert main(["data", "extract-frames", str(videos / "list.txt"), str(out)]) == 2
    assert "no .done marker" in capsys.readouterr().err
    assert (out / "v" / "img_00001.jpg").read_bytes() == b"theirs"
    (out / "v" / "img_00001.jpg").unlink()  # an empty folder holds nothing to lose
    assert main(["data", "extract-frames", str(videos / "list.txt"), str(out)]) == 0
    assert _frames_of(out / "list_rawframes.txt", out) == [(0, [0, 1, 2, 3, 4])]
