"""Videos/s of ``timeshift predict --manifest`` in 1 process against 2 processes under
``torchrun`` on this machine, with the decode / model split of each run, side by side.

Videos: the synthetic temporal dataset (``make_synthetic``: 64x64 H.264, 16 frames, both
splits), listed in one manifest. Models (random weights: speed does not depend on them):

* ``demo``: the demo's TSM (narrow ResNet-18, 8 frames at 32 px), where decoding dominates;
* ``r50``: TSM-ResNet50, 8 frames at 224 px (the frames upscaled), where the model dominates:
  its videos/s per core is what the extrapolation in docs/scale.md starts from;
* ``long``: the demo model on ``--long-videos`` 60-second 320x240 H.264 videos (25 fps), for
  the decoding cost of videos longer than the synthetic clips (8 frames sought in each).

Every run is a fresh CLI process (as a user runs it), the same total of DataLoader workers per
machine (1 process x 2 workers, 2 processes x 1 worker, ``OMP_NUM_THREADS`` = cores / processes),
and reads its figures from the job's own summary.json. Written: ``--out``/scale.{json,md,png}.

    python benchmarks/predict_scale.py [--videos-per-class 8] [--r50-videos 24] [--long-videos 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import timeshift
from timeshift.bench.charts import grouped_bars
from timeshift.data.synthetic import SyntheticSpec, class_names, make_synthetic

BIN = Path(sys.executable).parent
MODELS = {
    "demo": (
        "tsm_resnet18",
        {"widths": [16, 32, 64, 128], "stem_width": 16},
        {"input_size": 32, "scale_size": 32},
    ),
    "r50": ("tsm_resnet50", {}, {"input_size": 224, "scale_size": 256}),
}


def _checkpoint(folder: Path, key: str, classes: list[str]) -> Path:
    name, kwargs, sizes = MODELS[key]
    torch.manual_seed(0)
    model = timeshift.create_model(name, num_classes=len(classes), num_segments=8, **kwargs)
    return timeshift.save_model(model, folder / f"{key}.pt", meta={"classes": classes, **sizes})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(checkpoint: Path, manifest: Path, out: Path, *, processes: int, cores: int) -> dict:
    """One job in a fresh process (or ``processes`` under torchrun); its summary.json."""
    common = [str(checkpoint), "--manifest", str(manifest), "--output", str(out)]
    common += ["--workers", str(max(1, 2 // processes)), "--batch-size", "8", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // processes)))
    if processes == 1:
        command = [str(BIN / "timeshift"), "predict", *common]
    else:
        command = [
            str(BIN / "torchrun"),
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "timeshift",
            "predict",
            *common,
        ]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=3600)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    run = summary["this_run"]
    return {
        "processes": processes,
        "videos": run["videos"],
        "failed": run["failed"],
        "job_seconds": run["seconds"],
        "wall_seconds": round(wall, 2),  # with the interpreter's and torch's start-up
        "videos_per_s": run["videos_per_s"],
        "decode_seconds": run["decode_seconds"],
        "model_seconds": run["model_seconds"],
    }


def _manifest(folder: Path, paths: dict, limit: int | None = None) -> Path:
    lines = []
    for split in ("train", "val"):
        for line in paths[split].read_text().splitlines():
            path, _ = line.rsplit(" ", 1)
            lines.append(str(paths["root"] / path))
    lines = lines[:limit] if limit else lines
    target = folder / f"manifest-{len(lines)}.txt"
    target.write_text("\n".join(lines) + "\n")
    return target


def _long_videos(folder: Path, count: int) -> Path:
    from timeline_speed import synthetic_video  # benchmarks/timeline_speed.py

    folder.mkdir(parents=True, exist_ok=True)
    first = synthetic_video(folder / "0.mp4", seconds=60, fps=25, size=(240, 320))
    for i in range(1, count):  # the same content: decoding costs the same
        (folder / f"{i}.mp4").write_bytes(first.read_bytes())
    manifest = folder / "manifest.txt"
    manifest.write_text("".join(f"{i}.mp4\n" for i in range(count)))
    return manifest


def _table(rows: list[dict]) -> str:
    head = (
        "| model | processes | videos | videos/s | x 1 process | job s | decode s | model s "
        "| decode ms/video | model ms/video |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = max(r["videos"], 1)
        lines.append(
            f"| {r['model']} | {r['processes']} | {r['videos']} | {r['videos_per_s']:.2f} | "
            f"{r['speedup']:.2f} | {r['job_seconds']:.1f} | {r['decode_seconds']:.1f} | "
            f"{r['model_seconds']:.1f} | {1000 * r['decode_seconds'] / n:.1f} | "
            f"{1000 * r['model_seconds'] / n:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos-per-class", type=int, default=8)
    parser.add_argument("--r50-videos", type=int, default=24)
    parser.add_argument("--long-videos", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/scale"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = SyntheticSpec(
            videos_per_class=args.videos_per_class, val_videos_per_class=args.videos_per_class
        )
        paths = make_synthetic(folder / "synthetic", spec, progress=False)
        classes = class_names()
        long_manifest = _long_videos(folder / "long", args.long_videos)
        for key, limit in (("demo", None), ("r50", args.r50_videos), ("long", None)):
            checkpoint = _checkpoint(folder, "demo" if key == "long" else key, classes)
            manifest = long_manifest if key == "long" else _manifest(folder, paths, limit)
            # a first run exports (and caches) the ONNX graph: not part of the figures
            _run(checkpoint, manifest, folder / f"warm-{key}", processes=1, cores=cores)
            single = None
            for processes in (1, 2):
                row = _run(
                    checkpoint,
                    manifest,
                    folder / f"{key}-{processes}",
                    processes=processes,
                    cores=cores,
                )
                single = single or row["videos_per_s"]
                row.update(model=key, speedup=row["videos_per_s"] / single)
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    title = f"predict --manifest, 1 vs 2 processes ({cores} cores)"
    (args.out / "scale.md").write_text(f"# {title}\n\n{_table(rows)}\n")
    grouped_bars(
        [f"{r['model']}" for r in rows if r["processes"] == 1],
        {
            f"{p} process{'es' if p > 1 else ''}": [
                r["videos_per_s"] for r in rows if r["processes"] == p
            ]
            for p in (1, 2)
        },
        args.out / "scale.png",
        ylabel="videos/s",
        title=title,
    )
    print(_table(rows))


if __name__ == "__main__":
    main()
