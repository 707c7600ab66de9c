"""``timeshift demo --two-stream``: RGB, optical flow and their fusion on the synthetic dataset.

The TSM paper's two-stream experiment (Tables 2-3) at demo scale: the synthetic dataset's
optical flow is extracted (once, next to the dataset), then TSN and TSM are trained on RGB and on
flow with the same narrow ResNet-18, and each pair's scores are fused (TSN's 1 : 1.5 weights on
the logits, as TSN fuses before the softmax). What to expect: flow gives even the order-blind TSN
the direction of motion (a flow field says which way things move), so TSN-Flow is far above
TSN-RGB's 50% ceiling on the motion pairs; but flow is blind to brightness changes (fading in /
out has no motion), where RGB TSM is not: the streams are complementary.

``results.json`` has one row per model (``TSN-RGB``, ``TSN-Flow``, ``TSN-RGB+Flow``, ``TSM-RGB``,
``TSM-Flow``, ``TSM-RGB+Flow``) with its ``top1``, and the flow extraction time per video beside
the models' time per video.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from timeshift.data.flow import DEFAULT_BOUND, extract_flow, extract_video_flow
from timeshift.data.formats import read_annotations
from timeshift.engine.config import load_config
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints
from timeshift.engine.fusion import fuse_scores, load_scores
from timeshift.engine.loaders import synthetic_paths
from timeshift.engine.trainer import fit
from timeshift.errors import TimeshiftError
from timeshift.models.checkpoints import load_model

__all__ = ["ROWS", "format_two_stream", "measure_costs", "run_two_stream_demo"]

_logger = logging.getLogger(__name__)

RGB_RECIPES = {"TSN": "synthetic-tsn", "TSM": "synthetic-tsm"}
FLOW_RECIPE = "synthetic-tsm-flow"
ROWS = ("TSN-RGB", "TSN-Flow", "TSN-RGB+Flow", "TSM-RGB", "TSM-Flow", "TSM-RGB+Flow")
FUSION_WEIGHTS = (1.0, 1.5)  # RGB : flow, TSN's
TIMED_VIDEOS = 8  # videos whose flow extraction is timed for the per-video cost


def run_two_stream_demo(
    output: str | Path = "runs/demo-two-stream",
    *,
    progress: bool = True,
    overrides: Sequence[str] | None = None,
    algorithm: str = "dis",
) -> dict:
    """Extract flow, train the four streams, fuse each pair; writes ``results.json`` and a
    chart. ``overrides`` (``key=value``) apply to every recipe."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    overrides = list(overrides or [])
    rgb = {name: load_config(recipe, overrides) for name, recipe in RGB_RECIPES.items()}
    paths = synthetic_paths(rgb["TSN"].data, progress=progress)
    flow_dir = Path(paths["root"]) / f"flow-{algorithm}-b{DEFAULT_BOUND:g}"
    flow_lists = {
        split: _extract(paths[split], flow_dir, algorithm, progress) for split in ("train", "val")
    }
    rows, runs = [], {}
    for name, rgb_cfg in rgb.items():
        flow_cfg = load_config(
            FLOW_RECIPE,
            [
                f"model.name={rgb_cfg.model.name}",
                f"data.train={flow_lists['train']}",
                f"data.val={flow_lists['val']}",
                f"data.classes={paths['classes']}",
                *overrides,
            ],
        )
        streams = {}
        for modality, cfg, val_list in (
            ("RGB", rgb_cfg, paths["val"]),
            ("Flow", flow_cfg, flow_lists["val"]),
        ):
            run = out / f"{name}-{modality}".lower()
            _logger.info("== training %s-%s (%s) ==", name, modality, cfg.model.name)
            fit(cfg, run, progress=progress, device="cpu")
            streams[modality] = _test(run, val_list, progress)
            runs[f"{name}-{modality}"] = (run, cfg)
            rows.append(_row(f"{name}-{modality}", streams[modality], cfg))
        rows.append(_fused_row(f"{name}-RGB+Flow", streams, out / f"{name}-fused".lower()))
    timing = measure_costs(runs, paths["val"], algorithm)
    for row in rows:
        if row["name"] in timing["model_ms_per_video"]:
            row["ms_per_video"] = timing["model_ms_per_video"][row["name"]]
    results = {
        "dataset": "synthetic temporal pairs (time-reversed motion families)",
        "data": {k: str(v) for k, v in paths.items()},
        "flow": {"algorithm": algorithm, "bound": DEFAULT_BOUND, "folder": str(flow_dir)},
        "fusion": {"weights": list(FUSION_WEIGHTS), "on": "logits"},
        "timing": timing,
        "seconds": round(time.perf_counter() - start, 1),
        "models": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(rows, out / "results.png")
    results["output"] = str(out)
    return results


def _extract(video_list, flow_dir: Path, algorithm: str, progress: bool) -> Path:
    """The flow list of one split, extracted once (finished videos are skipped)."""
    result = extract_flow(
        video_list, flow_dir, algorithm=algorithm, short_side=None, progress=progress
    )
    if result.failed:
        raise TimeshiftError(
            f"flow extraction failed for {len(result.failed)} videos: {result.failed[:3]}"
        )
    return Path(result.list_file)


def measure_costs(runs: dict, video_list, algorithm: str, *, rounds: int = 10) -> dict:
    """Time per validation video of the flow extraction and of each trained model, measured
    together after the training, side by side (the models in interleaved rounds), so that no
    figure is taken while other work loads the machine and the others are not."""
    from timeshift.bench.timing import interleaved

    # the flow first: PyTorch's OpenMP threads keep spinning for a while after its last call
    # and would take the cores OpenCV's threads need (measured: 3x slower flow right after)
    flow_ms = _flow_cost(video_list, algorithm)
    models = {}
    for name, (run, cfg) in runs.items():
        model = load_model(run / "last.pt").eval()
        channels = int(getattr(model, "in_chans", 3))
        clip = torch.randn(1, cfg.model.num_segments, channels, cfg.data.size, cfg.data.size)
        models[name] = lambda model=model, clip=clip: model(clip)
    with torch.no_grad():
        samples = interleaved(models, rounds=rounds, warmup=3)
    return {
        "flow_ms_per_video": flow_ms,
        "model_ms_per_video": {n: round(statistics.median(ms), 2) for n, ms in samples.items()},
        "rounds": rounds,
    }


def _flow_cost(video_list, algorithm: str) -> float:
    """Median milliseconds per video to decode it, compute its flow and write the JPEGs, over
    a few validation videos (the extraction above may have been done by an earlier run)."""
    records = read_annotations(video_list).records[:TIMED_VIDEOS]
    root = Path(video_list).parent
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, record in enumerate(records):
            video = Path(record.path) if Path(record.path).is_absolute() else root / record.path
            start = time.perf_counter()
            extract_video_flow(video, Path(tmp) / str(i), algorithm=algorithm, short_side=None)
            times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 2)


def _test(run: Path, val_list, progress: bool) -> Path:
    """Test the run's last checkpoint on the validation list; the folder with its scores."""
    folder = run / "test"
    evaluate_checkpoints(
        [run / "last.pt"],
        val_list,
        options=EvalOptions(batch_size=16, workers=1),
        output_dir=folder,
        progress=progress,
    )
    return folder


def _row(name: str, test_dir: Path, cfg) -> dict:
    metrics = json.loads((test_dir / "metrics.json").read_text())
    return {
        "name": name,
        "model": cfg.model.name,
        "modality": cfg.model.get("modality", "rgb"),
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "mean_class_accuracy": metrics.get("mean_class_accuracy"),
    }


def _fused_row(name: str, streams: dict[str, Path], folder: Path) -> dict:
    scores = [load_scores(streams["RGB"]), load_scores(streams["Flow"])]
    fused = fuse_scores(scores, weights=FUSION_WEIGHTS, mode="logits")
    report = fused.report()
    return {
        "name": name,
        "model": "fusion",
        "modality": "rgb+flow",
        "top1": report["top1"],
        "top5": report["top5"],
        "mean_class_accuracy": report.get("mean_class_accuracy"),
    }


def _plot(rows: list[dict], path: Path) -> None:
    from timeshift.bench.charts import grouped_bars

    grouped_bars(
        [r["name"] for r in rows],
        {"top-1": [r["top1"] for r in rows]},
        path,
        ylabel="validation top-1",
        title="RGB, optical flow and their fusion on the synthetic dataset",
    )


def format_two_stream(results: dict) -> str:
    """The table ``timeshift demo --two-stream`` prints."""
    lines = ["", "two-stream on the synthetic temporal dataset (validation, 1 clip x centre crop)"]
    lines.append(f"  {'model':14} {'top-1':>7} {'top-5':>7} {'ms/video':>9}")
    for r in results["models"]:
        ms = f"{r['ms_per_video']:9.2f}" if "ms_per_video" in r else f"{'-':>9}"
        lines.append(f"  {r['name']:14} {r['top1']:7.3f} {r['top5']:7.3f} {ms}")
    timing = results["timing"]
    lines += [
        "",
        f"flow extraction ({results['flow']['algorithm']}): {timing['flow_ms_per_video']:.1f} ms "
        "per video (decode, flow, JPEG), beside the models' ms per video above",
        f"fusion: RGB : flow = {results['fusion']['weights'][0]:g} : "
        f"{results['fusion']['weights'][1]:g} on the logits (TSN's weights)",
        f"results: {results['output']}/results.json, results.png ({results['seconds']:.0f} s)",
    ]
    return "\n".join(lines)
