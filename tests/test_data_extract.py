import numpy as np

from timeshift.bench.data_speed import benchmark_data, make_benchmark_videos
from timeshift.cli import main
from timeshift.data import open_video, read_rawframe_list

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
