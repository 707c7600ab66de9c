"""Online vs offline TSM on the synthetic dataset: the TSM paper's Table 6 and Figure 6.

Trains three models with the same narrow ResNet-18 and recipe (the demo's): TSN, offline TSM
(bi-directional shift) and online TSM (uni-directional), then reports for each

* offline top-1 (the whole clip at once) and online top-1 (the clip streamed frame by frame
  through the online model, per-frame logits averaged; the bi-directional model can only be
  streamed with its future channels zeroed),
* early recognition: top-1 after observing 10%, 20%, ... 100% of each video.

    python benchmarks/online_vs_offline.py --output docs/online
    python benchmarks/online_vs_offline.py --output docs/online --runs runs/table6  # reuse

Takes about 12 minutes on 2 CPU cores (three 20-epoch trainings).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from timeshift.bench.charts import grouped_bars
from timeshift.bench.complexity import model_complexity
from timeshift.engine.config import load_config
from timeshift.engine.evaluate import EvalOptions, early_recognition, evaluate_checkpoints
from timeshift.engine.figures import plot_early
from timeshift.engine.loaders import load_split
from timeshift.engine.trainer import fit
from timeshift.models.checkpoints import load_model

MODELS = {
    "TSN": ("synthetic-tsn", []),
    "TSM offline (bi-directional)": ("synthetic-tsm", []),
    "TSM online (uni-directional)": ("synthetic-tsm", ["model.kwargs.direction=unidirectional"]),
}
RUN_DIRS = {
    "TSN": "tsn",
    "TSM offline (bi-directional)": "tsm",
    "TSM online (uni-directional)": "tsm-online",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/online-vs-offline")
    parser.add_argument("--runs", help="folder of runs (tsn/, tsm/, tsm-online/) to reuse")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for all three")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) if args.runs else out / "runs"
    progress = not args.no_progress

    rows, curves = [], {}
    for name, (recipe, extra) in MODELS.items():
        cfg = load_config(recipe, [*extra, *args.set])
        run = runs / RUN_DIRS[name]
        if not (run / "last.pt").is_file():
            fit(cfg, run, progress=progress, device="cpu")
        checkpoint = run / "last.pt"
        val = load_split(cfg.data, "val", progress=False)
        val_list = run / "val_list.txt"
        val_list.write_text("".join(f"{r.path} {r.label}\n" for r in val.records))
        options = EvalOptions(batch_size=cfg.eval.batch_size, workers=cfg.data.workers)
        offline = evaluate_checkpoints([checkpoint], val_list, options=options, progress=progress)
        bidirectional = "offline" in name
        online_options = EvalOptions(
            **{**options.__dict__, "online": True, "drop_future": bidirectional}
        )
        online = evaluate_checkpoints(
            [checkpoint], val_list, options=online_options, progress=progress
        )
        curves[name] = early_recognition([checkpoint], val_list, options=options, progress=progress)
        model = load_model(checkpoint)
        c = model_complexity(model, frames=cfg.model.num_segments, input_size=cfg.data.size)
        rows.append(
            {
                "model": name,
                "offline_top1": offline["top1"],
                "online_top1": online["top1"],
                "online_note": "future channels zeroed" if bidirectional else "exact stream",
                "params": c.params,
                "macs": c.macs,
                "early": curves[name],
            }
        )
    (out / "online_vs_offline.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_early(
        curves, out / "early_recognition.png", title="early recognition (synthetic validation)"
    )
    grouped_bars(
        [r["model"].replace(" (", "\n(") for r in rows],
        {
            "offline": [r["offline_top1"] for r in rows],
            "streamed": [r["online_top1"] for r in rows],
        },
        out / "online_vs_offline.png",
        ylabel="validation top-1",
        title="online vs offline TSM (same backbone and MACs)",
    )
    lines = [
        "| model | offline top-1 | streamed top-1 | top-1 after 10% / 20% / 50% of the video |",
        "|---|---|---|---|",
    ]
    for r in rows:
        early = {round(e["observed"], 1): e["top1"] for e in r["early"]}
        lines.append(
            f"| {r['model']} | {r['offline_top1']:.3f} | {r['online_top1']:.3f}"
            f" ({r['online_note']}) | {early[0.1]:.3f} / {early[0.2]:.3f} / {early[0.5]:.3f} |"
        )
    (out / "online_vs_offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
