"""``timeshift demo --detection``: a per-frame 2D detector against the online TSM detector on
the synthetic video-detection set (TSM Appendix A, Table 7, at demo scale).

Both detectors have the same narrow ResNet, pyramid and head (the same parameters); the online
one has a uni-directional shift in every residual block, so each frame's features carry a part
of the previous frame's. In the synthetic set an object's class is told only by its colour, and
in about 30% of the object-frames the colour is removed: there a per-frame detector can still
find the object but can only guess its class, while the online detector saw it in colour one to
three frames before. ``results.json`` has the rows ``2D`` and ``online TSM`` with ``ap50`` (all
frames), ``ap50_degraded`` (objects whose colour was removed in that frame), ``ap50_clean``, the
motion-speed split, and each detector's per-frame latency, measured side by side.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from timeshift.detection.evaluate import test_detector
from timeshift.detection.training import synthetic_detection_paths
from timeshift.engine.config import load_config
from timeshift.engine.trainer import fit
from timeshift.models.checkpoints import atomic_write, load_model

__all__ = ["RECIPES", "format_detection", "measure_frame_latency", "run_detection_demo"]

_logger = logging.getLogger(__name__)

RECIPES = {"2D": "synthetic-detection-2d", "online TSM": "synthetic-detection-tsm"}
SUBSETS = ("ap50", "ap50_degraded", "ap50_clean", "ap50_slow", "ap50_medium", "ap50_fast")


def measure_frame_latency(
    models: dict[str, torch.nn.Module], *, size: int, rounds: int = 30
) -> dict[str, dict[str, float]]:
    """Median milliseconds per frame of each model streamed online (one frame plus its
    caches, batch 1, eager), timed side by side in interleaved rounds."""
    from timeshift.bench.timing import interleaved, summary
    from timeshift.online import OnlineModule

    steps = {}
    for name, model in models.items():
        online = OnlineModule(model.eval())
        frame = torch.randn(1, 3, size, size)
        caches = online.init_caches(1, size, size)

        def step(online=online, frame=frame, caches=caches) -> None:
            with torch.no_grad():
                online(frame, *caches)

        steps[name] = step
    samples = interleaved(steps, rounds=rounds, warmup=5)
    return {name: summary(ms) for name, ms in samples.items()}


def run_detection_demo(
    output: str | Path = "runs/demo-detection",
    *,
    progress: bool = True,
    overrides: Sequence[str] | None = None,
) -> dict:
    """Train both detectors, test them on the validation videos, time them; writes
    ``results.json``, ``results.png`` and ``examples.png``. ``overrides`` (``key=value``)
    apply to both recipes."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    configs = {name: load_config(recipe, list(overrides or [])) for name, recipe in RECIPES.items()}
    val = synthetic_detection_paths(next(iter(configs.values())), progress=progress)["val"]
    rows, models = [], {}
    for name, cfg in configs.items():
        run = out / name.lower().replace(" ", "-")
        _logger.info("== training the %s detector (%s) ==", name, cfg.model.name)
        fit(cfg, run, progress=progress, device="cpu")
        summary = test_detector(run / "last.pt", val, output_dir=run / "test", progress=progress)
        models[name] = load_model(run / "last.pt")
        rows.append(
            {
                "name": name,
                "model": cfg.model.name,
                "params": sum(p.numel() for p in models[name].parameters()),
                **{k: summary[k] for k in SUBSETS if k in summary},
                "per_class": summary["per_class"],
                "objects": summary.get("num_objects", {}),
            }
        )
    size = int(next(iter(configs.values())).data.size)
    latency = measure_frame_latency(models, size=size)
    for row in rows:
        row["ms_per_frame"] = round(latency[row["name"]]["median_ms"], 3)
    results = {
        "dataset": "synthetic video detection (class cue removed in ~30% of object-frames)",
        "data": str(val),
        "seconds": round(time.perf_counter() - start, 1),
        "latency": {"size": size, "batch": 1, "backend": "eager", "per_frame": latency},
        "models": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(rows, out / "results.png")
    _examples(models, val, out / "examples.png")
    results["output"] = str(out)
    return results


def _plot(rows: list[dict], path: Path) -> None:
    from timeshift.bench.charts import grouped_bars

    subsets = [k for k in ("ap50", "ap50_clean", "ap50_degraded") if all(k in r for r in rows)]
    grouped_bars(
        [r["name"] for r in rows],
        {
            k.replace("ap50_", "").replace("ap50", "all frames"): [r[k] for r in rows]
            for k in subsets
        },
        path,
        ylabel="AP50 (validation videos)",
        title="2D vs online TSM detector: AP50 where the class cue drops out",
    )


def _examples(models: dict, val_json, path: Path, *, columns: int = 5) -> None:
    """Validation frames around a degraded object (the frame before its colour drops out and
    the degraded ones), one row per detector with its boxes drawn: where the 2D detector has to
    guess the class, the online one remembers it."""
    from PIL import Image

    from timeshift.detection.dataset import VideoDetectionDataset
    from timeshift.detection.draw import draw_detections, enlarge
    from timeshift.detection.evaluate import detect_videos
    from timeshift.detection.formats import read_video_json
    from timeshift.detection.transforms import detection_eval_transforms

    annotations = read_video_json(val_json)
    v, start = _degraded_moment(annotations, columns)
    video = annotations.videos[v]
    one = type(annotations)(annotations.classes, [video], annotations.source)
    raw = VideoDetectionDataset(one, mode="test")[0][0]  # uint8 (F, 3, H, W)
    frames = raw.permute(0, 2, 3, 1).numpy()
    size = next(iter(models.values())).checkpoint_meta.get("input_size", 64)
    dataset = VideoDetectionDataset(one, mode="test", transform=detection_eval_transforms(size))
    rows = []
    for name, model in models.items():
        found = detect_videos(model, dataset, progress=False)[0]
        tiles = []
        for t in range(start, start + columns):
            image, _ = enlarge(frames[t], 192)
            scale = image.shape[1] / frames.shape[2]
            scaled = type(found[t])(found[t].boxes * scale, found[t].scores, found[t].labels)
            drawn = draw_detections(image, scaled, annotations.classes, score_threshold=0.3)
            degraded = video.annotations[t].flag("degraded").any()
            tiles.append(
                _captioned(drawn, f"{name}, frame {t}" + (" (degraded)" if degraded else ""))
            )
        rows.append(np.concatenate(tiles, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    atomic_write(path, lambda f: grid.save(f, format="PNG"))


def _captioned(image: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + 18), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def _degraded_moment(annotations, columns: int) -> tuple[int, int]:
    """``(video, first frame)`` of a window of ``columns`` frames that starts one frame before
    a degraded span (the first such moment; else the start of the first video)."""
    for v, video in enumerate(annotations.videos):
        flags = [frame.flag("degraded").any() for frame in video.annotations]
        for t in range(1, video.num_frames - columns + 2):
            if flags[t] and not flags[t - 1]:
                return v, min(t - 1, video.num_frames - columns)
    return 0, 0


def format_detection(results: dict) -> str:
    """The table ``timeshift demo --detection`` prints."""
    lines = [
        "",
        "video object detection on the synthetic set (validation videos, streamed in order)",
        f"  {'detector':12} {'AP50':>6} {'degraded':>9} {'clean':>6} {'ms/frame':>9} {'params':>8}",
    ]
    for r in results["models"]:
        lines.append(
            f"  {r['name']:12} {r['ap50']:6.3f} {r.get('ap50_degraded', float('nan')):9.3f} "
            f"{r.get('ap50_clean', float('nan')):6.3f} {r['ms_per_frame']:9.2f} {r['params']:8,}"
        )
    lines += [
        "",
        "degraded: objects whose colour (the class cue) was removed in that frame; the online "
        "TSM detector saw them in colour 1-3 frames before",
        f"results: {results['output']}/results.json, results.png ({results['seconds']:.0f} s)",
    ]
    return "\n".join(lines)
