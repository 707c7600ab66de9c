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


# Generates a small synthetic set in a fresh process; with "other-cpu", the process acts like a
# machine with another CPU: FFmpeg without SIMD, x264 limited to SSE2 (different code paths,
# which are not bit-exact with each other unless the encoding is made CPU-independent).
_GENERATE = r"""
import ctypes, platform, sys

import av

out, machine = sys.argv[1], sys.argv[2]
if machine == "other-cpu":
    libavutil = next(
        line.split()[-1] for line in open("/proc/self/maps") if "libavutil" in line
    )
    ctypes.CDLL(libavutil).av_force_cpu_flags(0)
    if platform.machine().lower() in ("x86_64", "amd64"):
        real_open = av.open

        class Stream:
            def __init__(self, stream):
                object.__setattr__(self, "_stream", stream)

            def __getattr__(self, name):
                return getattr(self._stream, name)

            def __setattr__(self, name, value):
                if name == "options" and self._stream.codec_context.name == "libx264":
                    params = [value.get("x264-params"), "asm=MMX2,SSE,SSE2"]
                    value = {**value, "x264-params": ":".join(p for p in params if p)}
                setattr(self._stream, name, value)

        class Container:
            def __init__(self, container):
                self._container = container

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._container.__exit__(*exc)

            def __getattr__(self, name):
                return getattr(self._container, name)

            def add_stream(self, *args, **kwargs):
                return Stream(self._container.add_stream(*args, **kwargs))

        av.open = lambda *args, **kwargs: Container(real_open(*args, **kwargs))

import importlib.util
from pathlib import Path

import numpy as np

# the module alone: importing the package would import torch, which takes seconds
package = importlib.util.find_spec("timeshift").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("synthetic", Path(package) / "data/synthetic.py")
synthetic = sys.modules["synthetic"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(synthetic)
SyntheticSpec, make_synthetic = synthetic.SyntheticSpec, synthetic.make_synthetic
render_clip, write_video = synthetic.render_clip, synthetic.write_video

spec = SyntheticSpec(
    videos_per_class=1, val_videos_per_class=1, size=32, frames=8,
    families=("horizontal", "fade", "orbit"),
)
make_synthetic(out, spec, progress=False)
clip = render_clip("rotation", reverse=False, rng=np.random.default_rng(3), size=32, frames=8)
write_video(out + "/fallback_mpeg4.mp4", clip, codec="mpeg4")
"""


def _decoded(path):
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_same_seed_same_decoded_frames_across_processes_and_cpus(tmp_path):
    import subprocess
    import sys

    runs = {"this-cpu": tmp_path / "a", "other-cpu": tmp_path / "b"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _GENERATE, str(out), machine])
        for machine, out in runs.items()
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = runs.values()
    videos = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert len(videos) == 13 and videos == sorted(p.relative_to(b) for p in b.rglob("*.mp4"))
    differ = [str(v) for v in videos if not np.array_equal(_decoded(a / v), _decoded(b / v))]
    assert differ == []
    assert (a / "train.txt").read_text() == (b / "train.txt").read_text()


def test_colour_conversion_round_trips(tmp_path):
    from timeshift.data.synthetic import rgb_to_yuv420p, write_video

    clip = render_clip("fade", reverse=False, rng=_rng(2), size=32, frames=4)
    yuv = rgb_to_yuv420p(clip)
    assert yuv.shape == (4, 48, 32) and yuv.dtype == np.uint8
    assert yuv[:, :32].min() >= 16 and yuv[:, :32].max() <= 235  # limited-range luma
    for codec in ("libx264", "mpeg4"):
        write_video(tmp_path / f"{codec}.mp4", clip, codec=codec)
        error = _decoded(tmp_path / f"{codec}.mp4").astype(int) - clip
        # the colours survive lossy coding (a wrong matrix or range is off by tens)
        assert np.abs(error).mean() < 6 and np.abs(error.mean(axis=(0, 1, 2))).max() < 3
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", clip[:, :31])


def test_videos_of_another_format_version_are_rewritten(tmp_path):
    import json

    spec = SyntheticSpec(videos_per_class=1, val_videos_per_class=1, size=32, frames=4,
                         families=("scale",))  # fmt: skip
    paths = make_synthetic(tmp_path, spec, progress=False)
    video = paths["root"] / "videos/train/growing/growing_00000.mp4"
    fresh = _decoded(video)
    video.write_bytes((paths["root"] / "videos/val/growing/growing_00000.mp4").read_bytes())
    make_synthetic(tmp_path, spec, progress=False)  # same version: reused as it is
    assert not np.array_equal(_decoded(video), fresh)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format_version": 3}))
    make_synthetic(tmp_path, spec, progress=False)  # an older generator's videos: rewritten
    assert np.array_equal(_decoded(video), fresh)
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
