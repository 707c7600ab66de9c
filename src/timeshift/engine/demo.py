"""The main job: TSN vs TSM on the synthetic temporal dataset, side by side.

Both models use the same narrow ResNet-18 (same parameters, same MACs: the shift is free); the
dataset's classes come in time-reversed pairs, so the order-blind TSN can tell the motion family
but not its direction (50% ceiling), while TSM sees the order. The table shows top-1, the
accuracy on the family (pair), parameters, MACs and per-clip CPU latency.

``run_demo(variants="all")`` (``timeshift demo --all``) trains every temporal module of the
library the same way on one narrow bottleneck ResNet-50 (the block VSN and bLVNet need): TSN,
TSM, VSN, STSM, TAM, bLVNet-TAM and I3D_replace, and adds accuracy-vs-MACs and
accuracy-vs-latency charts.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from timeshift._plotting import pyplot, save_png
from timeshift.bench.complexity import model_complexity
from timeshift.engine.config import load_config, to_dict
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints, measure_latency
from timeshift.engine.loaders import load_split, synthetic_paths
from timeshift.engine.trainer import fit
from timeshift.models.checkpoints import load_model

__all__ = ["format_results", "run_demo"]

_logger = logging.getLogger(__name__)

RECIPES = {"TSN": "synthetic-tsn", "TSM": "synthetic-tsm"}

# demo --all: one narrow bottleneck ResNet-50 for every module (VSN's shuffle blocks and
# bLVNet's branches are defined on bottlenecks); (recipe, overrides) per row
_NARROW = ["model.kwargs.widths=[16,32,64,128]"]
_NARROW_R50 = [*_NARROW, "model.kwargs.stem_width=16"]
ALL_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "TSN": ("synthetic-tsn", ["model.name=tsn_resnet50", *_NARROW_R50]),
    "TSM": ("synthetic-tsm", ["model.name=tsm_resnet50", *_NARROW_R50]),
    "VSN": ("synthetic-tsn", ["model.name=vsn_resnet50", *_NARROW_R50]),
    "STSM": ("synthetic-tsn", ["model.name=stsm_resnet50", *_NARROW_R50]),
    "TAM": ("synthetic-tsn", ["model.name=tam_resnet50", *_NARROW_R50]),
    # 8x2 frames: the big branch sees 8 frames at half resolution, the little one 8 more
    "bLVNet-TAM": (
        "synthetic-tsn",
        ["model.name=blvnet_tam_resnet50", "model.num_segments=16", *_NARROW],
    ),
    "I3D-replace": ("synthetic-tsn", ["model.name=i3d_replace_resnet50", *_NARROW_R50]),
}


def _overrides(full: bool) -> list[str]:
    if not full:
        return []
    return [
        "train.epochs=40",
        "data.synthetic.videos_per_class=200",
        "data.synthetic.val_videos_per_class=40",
    ]


def run_demo(
    output: str | Path = "runs/demo",
    *,
    full: bool = False,
    progress: bool = True,
    overrides: list[str] | None = None,
    variants: str | Sequence[str] = "main",
) -> dict:
    """Train and compare TSN and TSM; writes ``results.json``, curves and confusion matrices.

    ``overrides`` (``key=value``) apply to every recipe, after ``full``'s. ``variants``:
    ``"main"`` (TSN and TSM on a narrow ResNet-18), ``"all"`` (every module of
    :data:`ALL_VARIANTS`), or a list of names from :data:`ALL_VARIANTS`.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows, data = [], None
    for name, (recipe, own) in _variants(variants).items():
        cfg = load_config(recipe, [*own, *_overrides(full), *(overrides or [])])
        # where the generated dataset lives: the commands that follow the demo need its lists
        data = data or {k: str(v) for k, v in synthetic_paths(cfg.data, progress=progress).items()}
        run_dir = out / name.lower()
        _logger.info("== training %s (%s) ==", name, cfg.model.name)
        if _finished(run_dir, cfg):
            _logger.info("%s: reusing the finished run in %s", name, run_dir)
        else:
            if (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").unlink()  # a fresh run, not appended to an old one
            fit(cfg, run_dir, progress=progress, device="cpu")
        rows.append(_measure(name, cfg, run_dir, out, progress))
    results = {
        "dataset": "synthetic temporal pairs (time-reversed motion families)",
        "data": data,
        "protocol": "1 clip x centre crop, validation split",
        "seconds": round(time.perf_counter() - start, 1),
        "models": rows,
    }
    # latency after all training, every model in the same rounds: a ratio between rows is
    # then measured side by side rather than minutes apart on a shared machine
    return _with_latencies(out, results)


def _finished(run_dir: Path, cfg) -> bool:
    """A completed run of exactly this config is there (an interrupted ``demo --all`` resumes
    at the first model it had not finished)."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return False
    meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
    return meta.get("config") == to_dict(cfg) and meta.get("epoch") == cfg.train.epochs - 1


def _variants(variants: str | Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    if variants == "main":
        return {name: (recipe, []) for name, recipe in RECIPES.items()}
    if variants == "all":
        return dict(ALL_VARIANTS)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if isinstance(variants, str) or unknown:
        raise ValueError(
            f"unknown demo variants {unknown or variants!r}; expected 'main', 'all' or names "
            f"from {list(ALL_VARIANTS)}"
        )
    return {v: ALL_VARIANTS[v] for v in variants}


def _measure(name: str, cfg, run_dir: Path, out: Path, progress: bool) -> dict:
    paths = load_split(cfg.data, "val", progress=False)
    val_list = run_dir / "val_list.txt"
    val_list.write_text("".join(f"{r.path} {r.label}\n" for r in paths.records))
    summary = evaluate_checkpoints(
        [run_dir / "last.pt"],
        val_list,
        options=EvalOptions(batch_size=cfg.eval.batch_size, workers=cfg.data.workers),
        output_dir=run_dir / "test",
        progress=progress,
    )
    predictions = json.loads((run_dir / "test" / "predictions.json").read_text())
    pair = sum(p["prediction"] // 2 == p["label"] // 2 for p in predictions) / len(predictions)
    (out / f"confusion_{name.lower()}.png").write_bytes(
        (run_dir / "test" / "confusion.png").read_bytes()
    )
    (out / f"curves_{name.lower()}.png").write_bytes((run_dir / "curves.png").read_bytes())
    model = load_model(run_dir / "last.pt").eval()
    model.set_channels_last(cfg.model.channels_last)
    frames, size = cfg.model.num_segments, cfg.data.size
    complexity = model_complexity(model, frames=frames, input_size=size)
    return {
        "name": name,
        "model": cfg.model.name,
        "top1": summary["top1"],
        "top5": summary["top5"],
        "pair_accuracy": pair,
        "params": complexity.params,
        "macs": complexity.macs,
        "frames": frames,
        "input_size": size,
        "config": to_dict(cfg),
    }


def _plot(rows: list[dict], path: Path) -> None:
    from timeshift.bench.charts import grouped_bars

    grouped_bars(
        [r["name"] for r in rows],
        {
            "top-1": [r["top1"] for r in rows],
            "motion family (pair)": [r["pair_accuracy"] for r in rows],
        },
        path,
        ylabel="validation accuracy",
        title="TSN vs TSM, same backbone and MACs"
        if len(rows) == 2
        else ("temporal modules, same backbone"),
    )


def measure_latencies(out: str | Path, rows: list[dict], *, rounds: int = 10) -> list[float]:
    """Median CPU ms per clip (batch 1) of each row's trained model (``out/<name>/last.pt``),
    measured in interleaved rounds so that all rows share the machine's conditions."""
    models = []
    for row in rows:
        model = load_model(Path(out) / row["name"].lower() / "last.pt").eval()
        model.set_channels_last(row["config"]["model"]["channels_last"])
        models.append((model, row["frames"], row["input_size"]))
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for r in range(rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                model, frames, size = models[i]
                times[i].append(measure_latency(model, frames=frames, size=size, repeats=3))
    return [round(statistics.median(t), 3) for t in times]


def remeasure_latencies(out: str | Path) -> dict:
    """Re-measure the latencies of a finished demo run side by side and rewrite its results
    (``results.json`` and the charts)."""
    out = Path(out)
    return _with_latencies(out, json.loads((out / "results.json").read_text()))


def _with_latencies(out: Path, results: dict) -> dict:
    rows = results["models"]
    for row, ms in zip(rows, measure_latencies(out, rows), strict=True):
        row["latency_ms"] = ms
    results.pop("output", None)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(rows, out / "results.png")
    if len(rows) > 2:
        _plot_costs(rows, out / "accuracy_vs_cost.png")
    results["output"] = str(out)
    return results


def _plot_costs(rows: list[dict], path: Path) -> None:
    """Top-1 against MACs and against latency, one labelled point per model."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "macs", "MACs per clip (M)"),
        (axes[1], "latency_ms", "CPU latency per clip (ms)"),
    ):
        for i, r in enumerate(rows):
            x = r[key] / 1e6 if key == "macs" else r[key]
            # a marker per model and a legend: models of equal cost and accuracy overlap
            ax.scatter(x, r["top1"], s=60, marker="osD^vP*X"[i % 8], label=r["name"], alpha=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("temporal modules on the synthetic dataset: accuracy vs cost")
    fig.tight_layout()
    save_png(fig, path)


def format_results(results: dict) -> str:
    """The side-by-side table the CLI prints."""
    rows = results["models"]
    width = max(6, *(len(r["name"]) for r in rows))
    title = (
        "TSN vs TSM"
        if [r["name"] for r in rows] == ["TSN", "TSM"]
        else ", ".join(r["name"] for r in rows)
    )
    lines = [
        "",
        f"{title} on the synthetic temporal dataset (validation, 1 clip x centre crop)",
        f"  {'model':{width}} {'top-1':>7} {'family':>7} {'params':>10} {'MACs/clip':>11} "
        f"{'latency':>10}",
    ]
    for r in rows:
        lines.append(
            f"  {r['name']:{width}} {r['top1']:7.3f} {r['pair_accuracy']:7.3f} "
            f"{r['params']:10,d} {r['macs'] / 1e6:9.1f} M {r['latency_ms']:7.2f} ms"
        )
    tsn = rows[0]
    lines.append("")
    for r in rows[1:]:
        lines.append(
            f"{r['name']} gains {100 * (r['top1'] - tsn['top1']):+.1f} points of top-1 over "
            f"{tsn['name']} at {r['params'] / tsn['params']:.2f}x the parameters and "
            f"{r['macs'] / tsn['macs']:.2f}x the MACs."
        )
    lines += [
        f"{tsn['name']} tells the motion family ({tsn['pair_accuracy']:.2f}) but not "
        "its direction: every class has a time-reversed twin, so an order-blind model is "
        "capped at 50% within a pair.",
        f"results: {results['output']}/results.json, results.png, curves_*.png, confusion_*.png "
        f"({results['seconds']:.0f} s)",
    ]
    if results.get("data"):
        lines.append(
            f"dataset: {results['data']['root']} (train.txt, val.txt, classes.txt); checkpoints: "
            f"{results['output']}/<model>/best.pt"
        )
    return "\n".join(lines)
