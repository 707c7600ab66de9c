"""The timeline picture of docs/timeline.md: a long video made of synthetic validation clips of
different classes, one after the other, labelled over time by the demo's TSN and TSM.

Every clip of the synthetic dataset is 2 s (16 frames at 8 fps) of one class, so the true label
of every instant is known: the script reports the share of the video each model labels right
(segments against the clips they overlap) and writes each model's timeline files and PNG.
TSN cannot tell a class from its time-reversed twin (moving left / right, growing / shrinking,
...); on the timeline that shows as the wrong direction, TSM gets them.

    make demo    # trains runs/demo/{tsn,tsm}/best.pt and generates the dataset
    python benchmarks/timeline_picture.py --output docs/demo
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

import timeshift
from timeshift.engine.timeline import video_timeline, write_timeline

DATA = Path.home() / ".cache" / "timeshift" / "synthetic-v4-all-n120-20-s64-f16-seed0"


def long_video(data: Path, path: Path, *, clips: int, seed: int) -> list[tuple[float, str]]:
    """Concatenate ``clips`` validation videos of distinct classes (chosen with ``seed``) into
    ``path``; ``(end second, class name)`` of each clip, in order."""
    import av

    classes = (data / "classes.txt").read_text().splitlines()
    by_class: dict[int, list[str]] = {}
    for line in (data / "val.txt").read_text().splitlines():
        file, label = line.rsplit(" ", 1)
        by_class.setdefault(int(label), []).append(file)
    rng = random.Random(seed)
    chosen = rng.sample(sorted(by_class), k=min(clips, len(by_class)))
    truth, frames = [], []
    fps = 8
    for label in chosen:
        with av.open(str(data / rng.choice(by_class[label]))) as container:
            stream = container.streams.video[0]
            fps = int(stream.average_rate)
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        frames += decoded
        truth.append((len(frames) / fps, classes[label]))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return truth


def labelled_share(segments: list[dict], truth: list[tuple[float, str]]) -> float:
    """The share of the video's time whose segment label is the true one."""
    right, start = 0.0, 0.0
    for end, name in truth:
        for s in segments:
            overlap = min(end, s["end"]) - max(start, s["start"])
            if overlap > 0 and s["label"] == name:
                right += overlap
        start = end
    return right / truth[-1][0]


def within_clips(windows: list[dict], truth: list[tuple[float, str]]) -> tuple[int, int]:
    """``(windows lying within one clip, those whose top-1 is that clip's class)``: what the
    model does on what it was trained on, without the cuts between clips."""
    inside = right = 0
    start = 0.0
    for end, name in truth:
        for w in windows:
            if w["start"] >= start - 1e-6 and w["end"] <= end + 1e-6:
                inside += 1
                right += w["top"][0]["label"] == name
        start = end
    return inside, right


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/demo", help="the demo's run folder")
    p.add_argument("--data", type=Path, default=DATA, help="the synthetic dataset")
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--window", default="2s")
    p.add_argument("--stride", default="0.5s")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--output", type=Path, default=Path("timeline-demo"))
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    video = args.output / "timeline_demo.mp4"
    truth = long_video(args.data, video, clips=args.clips, seed=args.seed)
    print(f"{video}: {truth[-1][0]:.0f} s, clips: {', '.join(name for _, name in truth)}")
    for name in ("tsn", "tsm"):
        model = timeshift.load_model(Path(args.runs) / name / "best.pt")
        timeline = video_timeline(
            model, str(video), window=args.window, stride=args.stride, progress=False
        )
        reference = [
            {"start": start, "end": end, "label": label}
            for start, (end, label) in zip([0.0] + [e for e, _ in truth], truth, strict=False)
        ]
        files = write_timeline(timeline, args.output / f"timeline_{name}", reference=reference)
        share = labelled_share(timeline.segments, truth)
        inside, right = within_clips(timeline.windows, truth)
        print(f"{name.upper()}: {len(timeline.segments)} segments, {share:.1%} of the time "
              f"labelled right; windows within one clip: {right}/{inside} right; "
              f"{files['png']}")  # fmt: skip
        for s in timeline.segments:
            print(f"  {s['start']:6.2f} - {s['end']:6.2f}  {s['score']:.2f}  {s['label']}")
    np.savetxt(args.output / "timeline_truth.csv", np.array(truth, dtype=object), fmt="%s",
               delimiter=",", header="end,label", comments="")  # fmt: skip


if __name__ == "__main__":
    main()
