"""``timeshift bench SUITE``: the command-line side of the benchmark suites.

Every suite prints its table and writes ``SUITE.json`` (rows + hardware and versions),
``SUITE.csv``, ``SUITE.md`` and a PNG chart into ``--output`` (default ``runs/bench``).
A suite is a row of :data:`SUITES`: its help, its run function, its own arguments and which
shared flags it takes; a new suite is a function and a row.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timeshift.bench.overhead import PLACES, PROPORTIONS
from timeshift.bench.speed import BACKENDS, FORMATS
from timeshift.cli.common import Parents
from timeshift.data.flow import FLOW_ALGORITHMS

__all__ = ["SUITES", "Suite", "add_parser"]

DEFAULT_OUTPUT = "runs/bench"
SPEED_COLUMNS = [
    "model",
    "backend",
    "precision",
    "memory_format",
    "batch",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "spread",
    "clips_per_s",
    "vs_baseline",
    "speedup",
    "vs_onnxruntime",
]


def _finish(
    args: argparse.Namespace,
    name: str,
    rows: Sequence[dict],
    columns: Sequence[str],
    title: str,
    plot: Callable[[Path], object] | None = None,
    extra: dict | None = None,
    footer: str = "",
) -> int:
    """Write the report files and the chart, print the table (or JSON)."""
    from timeshift.bench.report import environment, markdown_table, write_report

    env = environment(getattr(args, "device", "cpu"))
    if any("error" in r for r in rows):
        columns = [*columns, "error"]
    paths = write_report(args.output, name, rows, columns, title=title, env=env, extra=extra)
    if plot is not None and any("error" not in r for r in rows):
        plot(Path(args.output) / f"{name}.png")
    if args.json:
        print(json.dumps({"title": title, "environment": env, "rows": list(rows), **(extra or {})}))
        return 0
    print(f"{title}\n{env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}")
    print(markdown_table(rows, columns))
    if footer:
        print(footer)
    print(f"wrote {paths['md'].parent}/{name}.{{json,csv,md,png}}")
    return 0


def _device(args: argparse.Namespace) -> str:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    return args.device


# -- flops ---------------------------------------------------------------------------------------


def run_flops(args: argparse.Namespace) -> int:
    from timeshift.bench.charts import plot_flops
    from timeshift.bench.flops import benchmark_flops, paper_comparison
    from timeshift.bench.report import markdown_table, write_report

    rows = benchmark_flops(
        args.models,
        frames=args.frames,
        size=args.size,
        classes=args.num_classes,
        include_tiny=args.tiny,
    )
    columns = ["model", "family", "params", "gmacs", "gmacs_per_frame", "temporal_modules"]
    title = f"parameters and MACs, {args.frames} frames x {args.size}^2, {args.num_classes} classes"
    papers = [] if args.no_papers else paper_comparison()
    paper_columns = [
        "model",
        "setting",
        "source",
        "params",
        "paper_params",
        "params_match",
        "gmacs",
        "paper_gmacs",
        "gmacs_ratio",
    ]
    footer = ""
    if papers:
        write_report(
            args.output, "flops_papers", papers, paper_columns, title="ours vs the papers' numbers"
        )
        footer = "\nours at the papers' settings:\n" + markdown_table(papers, paper_columns)
    ok = [r for r in rows if "error" not in r]
    return _finish(
        args,
        "flops",
        rows,
        columns,
        title,
        plot=lambda path: plot_flops(ok, path, title),
        extra={"papers": papers},
        footer=footer,
    )


# -- latency / throughput ------------------------------------------------------------------------


def _speed(args: argparse.Namespace, suite: str) -> int:
    from timeshift.bench.charts import plot_speed
    from timeshift.bench.speed import ModelSpec, benchmark_speed

    specs = [ModelSpec(name, args.frames) for name in args.models]
    rows = benchmark_speed(
        specs,
        backends=args.backend,
        formats=args.format,
        batch=args.batch,
        size=args.size,
        num_classes=args.num_classes,
        device=_device(args),
        rounds=args.iters,
        warmup=args.warmup,
        progress=not args.no_progress,
        precisions=args.precision,
    )
    what = "latency (batch 1)" if suite == "latency" else f"throughput (batch {args.batch})"
    title = (
        f"{what}, {args.frames} frames x {args.size}^2 on {args.device}; vs_baseline = time / "
        f"{specs[0].title}'s on the same backend and format, speedup = eager contiguous / this, "
        "vs_onnxruntime = onnxruntime fp32 / this"
    )
    return _finish(
        args,
        suite,
        rows,
        SPEED_COLUMNS,
        title,
        plot=lambda path: plot_speed(rows, path, title, throughput=suite == "throughput"),
    )


def run_latency(args: argparse.Namespace) -> int:
    return _speed(args, "latency")


def run_throughput(args: argparse.Namespace) -> int:
    return _speed(args, "throughput")


# -- shift overhead (TSM Figure 2a) --------------------------------------------------------------


def run_shift_overhead(args: argparse.Namespace) -> int:
    from timeshift.bench.charts import plot_overhead
    from timeshift.bench.overhead import PAPER_CPU_OVERHEAD, TARGET, benchmark_shift_overhead
    from timeshift.bench.report import markdown_table, write_report
    from timeshift.bench.shift_speed import TARGETS, benchmark_shift, plot_shift_benchmark

    rows = benchmark_shift_overhead(
        args.backbone,
        frames=args.frames,
        size=args.size,
        proportions=args.proportions,
        places=args.places,
        formats=args.format,
        device=_device(args),
        rounds=args.iters,
        warmup=args.warmup,
        progress=not args.no_progress,
    )
    ops = benchmark_shift(rounds=args.op_rounds, allocators=("warm",))
    for op in ops:
        op["target"] = TARGETS[op["memory_format"]]
    default = [r for r in rows if r.get("model") == "residual 1/4"]
    footer = "\nthe shift op alone, against x.clone() of the same tensor:\n"
    op_columns = [
        "memory_format",
        "shape",
        "clone_ms",
        "shift_ms",
        "reference_ms",
        "shift_over_clone",
        "target",
        "shift_over_reference",
    ]
    write_report(args.output, "shift_op", ops, op_columns, title="temporal shift vs x.clone()")
    plot_shift_benchmark(ops, Path(args.output) / "shift_op.png")
    footer += markdown_table(ops, op_columns)
    footer += (
        "\n"
        + "; ".join(
            f"TSM/TSN at 1/4 residual, {r['memory_format']}: {r['vs_baseline']:.3f}"
            for r in default
        )
        + f" (target <= {TARGET})"
    )
    title = (
        f"shift overhead (TSM Fig. 2a): {args.backbone} {args.frames} frames x {args.size}^2, "
        f"batch 1, {args.device}; overhead = paired latency / TSN's - 1"
    )
    columns = [
        "model",
        "place",
        "proportion",
        "memory_format",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "vs_baseline",
        "overhead_pct",
    ]
    return _finish(
        args,
        "shift_overhead",
        rows,
        columns,
        title,
        plot=lambda path: plot_overhead(
            [r for r in rows if "error" not in r], path, title, PAPER_CPU_OVERHEAD
        ),
        extra={"shift_op": ops, "target": TARGET},
        footer=footer,
    )


# -- vs-3d (TSM Table 5) -------------------------------------------------------------------------


def run_vs_3d(args: argparse.Namespace) -> int:
    from timeshift.bench.charts import plot_vs_3d
    from timeshift.bench.speed import VS3D_PAPER, benchmark_vs_3d

    rows = benchmark_vs_3d(
        backend=args.backend[0],
        memory_format=args.format[0],
        batch=args.batch,
        size=args.size,
        num_classes=args.num_classes,
        device=_device(args),
        rounds=args.iters,
        latency_rounds=args.latency_iters,
        warmup=args.warmup,
        progress=not args.no_progress,
    )
    for row in rows:
        paper = VS3D_PAPER.get(row["model"])
        if paper:
            row["paper_latency_ms"] = paper["latency_ms"]
            row["paper_videos_per_s"] = paper["videos_per_s"]
            tsm = VS3D_PAPER["TSM 8f"]["videos_per_s"]
            row["paper_tsm_throughput_x"] = round(tsm / paper["videos_per_s"], 3)
    how = (
        args.backend[0]
        if args.backend[0] == "onnxruntime"
        else " ".join(args.backend + args.format)
    )
    title = (
        f"TSM vs 3D CNNs (TSM Table 5): latency batch 1, throughput batch {args.batch}, "
        f"{args.size}^2, {how} on {args.device}; ratios paired against TSM 8f"
    )
    columns = [
        "model",
        "params",
        "gmacs",
        "latency_ms",
        "clips_per_s",
        "latency_vs_tsm",
        "tsm_throughput_x",
        "paper_latency_ms",
        "paper_videos_per_s",
        "paper_tsm_throughput_x",
    ]
    footer = "targets: TSM 8f throughput >= 1.8x I3D_replace and >= 1.5x I3D from [49]"
    return _finish(
        args,
        "vs_3d",
        rows,
        columns,
        title,
        plot=lambda path: plot_vs_3d(rows, path, title),
        footer=footer,
    )


# -- memory (bLVNet Figure 3b) -------------------------------------------------------------------


def _model_frames(text: str) -> tuple[str, int]:
    name, _, frames = text.partition(":")
    try:
        return name, int(frames or 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL or MODEL:FRAMES, got {text!r}") from None


def run_memory(args: argparse.Namespace) -> int:
    from timeshift.bench.memory import DEFAULT_MODELS, PAPER_RATIO, benchmark_memory, plot_memory

    models = args.models or list(DEFAULT_MODELS)
    rows = benchmark_memory(
        models,
        size=args.size,
        batch=args.batch,
        num_classes=args.num_classes,
        device=_device(args),
        memory_format=args.format[0],
    )
    title = (
        f"peak training memory (forward + backward), batch {args.batch}, {args.size}^2, "
        f"{args.format[0]}, {args.device}; ratio = peak / {models[-1][0]}'s"
    )
    columns = ["model", "frames", "peak_mib", "params_mib", "total_mib", "ratio"]
    footer = f"bLVNet paper, Fig. 3b: ~{PAPER_RATIO:g}x less memory than TSN at equal input frames"
    return _finish(
        args,
        "memory",
        rows,
        columns,
        title,
        plot=lambda path: plot_memory(rows, path, title),
        footer=footer,
    )


# -- online, shift op, data ----------------------------------------------------------------------


def run_online(args: argparse.Namespace) -> int:
    from timeshift.bench.online_speed import TARGET_RATIO, benchmark_online, plot_online_benchmark

    rows = benchmark_online(
        args.models,
        backends=args.backend,
        memory_formats=args.format,
        size=args.size,
        rounds=args.iters,
        precisions=args.precision,
    )
    title = f"online TSM vs the 2D model per frame, batch 1, {args.size}^2 (paired ratios)"
    columns = [
        "model",
        "backend",
        "precision",
        "memory_format",
        "online_ms",
        "plain_2d_ms",
        "ratio",
        "paired_ratio",
        "online_fps",
        "cache_floats",
    ]
    return _finish(
        args,
        "online",
        rows,
        columns,
        title,
        plot=lambda path: plot_online_benchmark(rows, path),
        footer=f"target ratio <= {TARGET_RATIO}",
    )


# quick: the tiny backbone at 64 px, for tests and a first look; given flags still win
_DETECTION_FULL = {"backbone": ["resnet50"], "size": 320, "rounds": 40, "warmup": 2, "width": 64}
_DETECTION_QUICK = {"backbone": ["resnet_tiny"], "size": 64, "rounds": 3, "warmup": 1, "width": 16}


def run_detection(args: argparse.Namespace) -> int:
    from timeshift.bench.detection_speed import (
        PAPER_OVERHEAD_MS,
        TARGET_RATIO,
        benchmark_detection,
        explain,
        plot_detection_benchmark,
    )

    preset = _DETECTION_QUICK if args.quick else _DETECTION_FULL
    given = {k: getattr(args, k, None) for k in preset}  # width: the pyramid's and head's
    opts = {k: preset[k] if v is None else v for k, v in given.items()}
    rows = benchmark_detection(
        opts["backbone"],
        backends=args.backend,
        memory_formats=args.format,
        size=opts["size"],
        num_classes=args.num_classes,
        fpn_channels=opts["width"],
        head_channels=opts["width"],
        rounds=opts["rounds"],
        warmup=opts["warmup"],
        device=args.device,
        progress=not args.no_progress,
    )
    title = (
        f"online TSM detector vs the same detector without shift, per frame, batch 1, "
        f"{opts['size']}^2 (medians of {opts['rounds']} interleaved rounds)"
    )
    columns = ["backbone", "backend", "memory_format", "graph", "tsm_ms", "no_shift_ms"]
    columns += ["ratio", "paired_ratio", "overhead_ms", "meets_target", "cache_floats"]
    footer = (
        f"target: ratio <= {TARGET_RATIO} in every backend (TSM Appendix A: < "
        f"{PAPER_OVERHEAD_MS:g} ms of shift overhead per frame, R-FCN ResNet-101 on a GPU)"
    )
    notes = explain(rows)
    footer += "".join(f"\n- {note}" for note in notes)
    return _finish(
        args,
        "detection",
        rows,
        columns,
        title,
        plot=lambda path: plot_detection_benchmark(rows, path),
        extra={
            "target_ratio": TARGET_RATIO,
            "paper_overhead_ms": PAPER_OVERHEAD_MS,
            "notes": notes,
        },
        footer=footer,
    )


def run_shift(args: argparse.Namespace) -> int:
    from timeshift.bench.shift_speed import TARGETS, benchmark_shift, plot_shift_benchmark

    rows = benchmark_shift(rounds=args.iters)
    for row in rows:
        row["target"] = TARGETS[row["memory_format"]]
    columns = [
        "allocator",
        "memory_format",
        "clone_ms",
        "shift_ms",
        "shift_pytorch_ms",
        "reference_ms",
        "shift_over_clone",
        "target",
        "shift_over_reference",
    ]
    native = "on" if rows and rows[0]["native_kernel"] else "off"
    return _finish(
        args,
        "shift",
        rows,
        columns,
        f"temporal shift vs x.clone() and the reference shift (native kernel {native})",
        plot=lambda path: plot_shift_benchmark(rows, path),
    )


def run_data(args: argparse.Namespace) -> int:
    from timeshift.bench.charts import grouped_bars
    from timeshift.bench.data_speed import benchmark_data

    result = benchmark_data(samples=args.samples, backend=args.backend)
    title = f"data pipeline vs raw decode ({result['video']}, {args.backend}, 1 process)"
    columns = [
        "backend",
        "video",
        "num_segments",
        "size",
        "samples",
        "dataset_clips_per_s",
        "raw_decode_clips_per_s",
        "ratio",
    ]

    def plot(path: Path) -> None:
        grouped_bars(
            [result["video"]],
            {
                "dataset": [result["dataset_clips_per_s"]],
                "raw decode": [result["raw_decode_clips_per_s"]],
            },
            path,
            ylabel="clips / s (1 process)",
            title=f"data pipeline vs raw decode ({args.backend}, ratio {result['ratio']})",
        )

    return _finish(
        args,
        f"data_{args.backend}",
        [result],
        columns,
        title,
        plot=plot,
        footer="target: ratio >= 0.8",
    )


def run_flow(args: argparse.Namespace) -> int:
    from timeshift.bench.charts import grouped_bars
    from timeshift.bench.flow_speed import benchmark_flow

    rows = benchmark_flow(
        args.algorithms,
        model=args.model,
        frames=args.frames,
        size=args.size,
        rounds=args.iters,
        progress=not args.no_progress,
    )
    title = (
        f"optical flow vs {args.model} ({args.frames} frames, batch 1, eager channels_last): "
        f"frames per second at {args.size} px short side, 1 process"
    )
    columns = ["contender", "kind", "resolution", "unit", "median_ms", "spread"]
    columns += ["frames_per_s", "vs_model"]
    timed = [r for r in rows if "error" not in r]

    def plot(path: Path) -> None:
        grouped_bars(
            [r["contender"] for r in timed],
            {"frames / s": [r["frames_per_s"] for r in timed]},
            path,
            ylabel="frames per second (CPU)",
            title=f"optical flow vs {args.model} ({args.frames}-frame clips), "
            f"{args.size} px short side",
        )

    return _finish(
        args,
        "flow",
        rows,
        columns,
        title,
        plot=plot,
        footer="vs_model: how many times longer a frame of flow takes than a frame of the model",
    )


# -- the suites ----------------------------------------------------------------------------------

Arg = tuple[tuple[str, ...], dict[str, Any]]


def _arg(*flags: str, **kwargs: Any) -> Arg:
    """One ``add_argument`` call, as data."""
    return flags, kwargs


@dataclass(frozen=True)
class Runtime:
    """The ``--format``/``--backend`` choices of a timing suite and their defaults."""

    formats: tuple[str, ...]
    backends: tuple[str, ...] = ("eager",)
    many: bool = True  # one value or several (then each is timed)


@dataclass(frozen=True)
class Suite:
    """One ``timeshift bench`` suite.

    ``model``: the defaults ``(batch, size)`` of the shared model flags (device, frames, size,
    batch, classes, warmup, progress), or None when the suite takes none; ``iters``: the
    default of ``--iters``, None for a suite that times nothing in rounds."""

    help: str
    run: Callable[[argparse.Namespace], int]
    args: tuple[Arg, ...] = ()
    model: tuple[int, int] | None = None
    runtime: Runtime | None = None
    iters: int | None = None


_MODELS = _arg(
    "models",
    nargs="*",
    default=["tsn_resnet50", "tsm_resnet50"],
    help="registered models; the first is the baseline",
)


_PRECISIONS = _arg(
    "--precision",
    nargs="+",
    choices=("fp32", "bf16", "int8"),
    default=["fp32"],
    help="precision(s), each timed on the backends that run it: bf16 on openvino, int8 (a "
    "quantised export) on onnxruntime and openvino (fp32)",
)


def _formats(**kwargs: Any) -> Arg:
    """``--format`` of the suites that time both memory formats by default."""
    both = ["contiguous", "channels_last"]
    return _arg("--format", nargs="+", choices=tuple(both), default=both, **kwargs)


SUITES: dict[str, Suite] = {
    "flops": Suite(
        "parameters and MACs of every model, vs the papers",
        run_flops,
        args=(
            _arg("models", nargs="?", help="shell-style pattern (default: all models)"),
            _arg("--frames", type=int, default=8, help="frames per clip (8)"),
            _arg("--size", type=int, default=224),
            _arg("--num-classes", type=int, default=400),
            _arg("--tiny", action="store_true", help="include the *_tiny test models"),
            _arg("--no-papers", action="store_true", help="skip the papers' comparison"),
        ),
    ),
    "latency": Suite(
        "batch-1 latency per model, format and backend",
        run_latency,
        args=(_MODELS, _PRECISIONS),
        model=(1, 224),
        runtime=Runtime(("contiguous", "channels_last")),
        iters=10,
    ),
    "throughput": Suite(
        "clips/s of a batch per model, format, backend",
        run_throughput,
        args=(_MODELS, _PRECISIONS),
        model=(16, 224),
        runtime=Runtime(("contiguous", "channels_last")),
        iters=4,
    ),
    "shift-overhead": Suite(
        "TSM Fig. 2a: latency vs shifted proportion",
        run_shift_overhead,
        args=(
            _arg("--backbone", default="resnet50"),
            _arg("--proportions", nargs="+", choices=PROPORTIONS, default=list(PROPORTIONS)),
            _arg("--places", nargs="+", choices=PLACES, default=list(PLACES)),
            _arg("--op-rounds", type=int, default=30, help="rounds of the shift-op timing"),
            _formats(),
        ),
        model=(1, 224),
        iters=8,
    ),
    "vs-3d": Suite(
        "TSM Table 5: TSN, TSM 8f/16f, I3D, I3D_replace",
        run_vs_3d,
        args=(_arg("--latency-iters", type=int, default=8, help="timed batch-1 rounds (8)"),),
        model=(16, 224),
        runtime=Runtime(("channels_last",), many=False),
        iters=3,
    ),
    "memory": Suite(
        "bLVNet Fig. 3b: peak training memory",
        run_memory,
        args=(
            _arg(
                "models",
                nargs="*",
                type=_model_frames,
                metavar="MODEL[:FRAMES]",
                help="default: blvnet_tam_resnet50:16 tsn_resnet50:16 (the last is the baseline)",
            ),
        ),
        model=(1, 224),
        runtime=Runtime(("contiguous",), many=False),
    ),
    "online": Suite(
        "online TSM per-frame latency vs the 2D backbone",
        run_online,
        args=(
            _arg("--models", nargs="+", default=["tsm_mobilenet_v2", "tsm_resnet50"]),
            _arg("--size", type=int, default=224),
            _formats(help="memory formats (eager)"),
            _arg(
                "--backend",
                nargs="+",
                choices=("eager", "onnxruntime", "openvino"),
                default=["eager", "onnxruntime"],
            ),
            _PRECISIONS,
        ),
        iters=30,
    ),
    "shift": Suite("the shift op vs clone() vs the reference shift", run_shift, iters=50),
    "detection": Suite(
        "online TSM detector per frame vs the same detector without shift",
        run_detection,
        args=(
            _arg("--backbone", nargs="+", help="tsm_/tsn_ backbone(s) (resnet50)"),
            _arg("--size", type=int, help="frame height and width (320)"),
            _arg(
                "--backend",
                nargs="+",
                choices=("eager", "onnxruntime"),
                default=["eager", "onnxruntime"],
            ),
            _formats(help="memory formats (eager)"),
            _arg("--rounds", "--iters", type=int, help="interleaved timed rounds (40)"),
            _arg("--warmup", type=int, help="untimed frames per side first (2)"),
            _arg("--num-classes", type=int, default=30, help="object classes (30: ImageNet-VID)"),
            _arg("--device", default="cpu", help="eager's device: cpu, cuda (cpu)"),
            _arg("--quick", action="store_true", help="tiny backbone, 64 px, 3 rounds (tests)"),
            _arg("--no-progress", action="store_true"),
        ),
    ),
    "flow": Suite(
        "optical flow frames/s vs the model's (TSM: flow costs more than the model)",
        run_flow,
        args=(
            _arg(
                "--algorithms",
                nargs="+",
                choices=FLOW_ALGORITHMS,
                default=list(FLOW_ALGORITHMS),
                help="flow algorithms (tvl1 needs the flow extra)",
            ),
            _arg("--model", default="tsm_resnet50"),
            _arg("--frames", type=int, default=8, help="frames per clip of the model (8)"),
            _arg("--size", type=int, default=224, help="short side of the frames (224)"),
            _arg("--no-progress", action="store_true"),
        ),
        iters=10,
    ),
    "data": Suite(
        "dataset clips/s vs raw decode of the same frames",
        run_data,
        args=(
            _arg("--samples", type=int, default=48),
            _arg("--backend", choices=("pyav", "opencv"), default="pyav"),
        ),
    ),
}


def add_parser(sub, parents: Parents) -> None:
    """Register ``bench`` and one subcommand per row of :data:`SUITES`."""
    p = sub.add_parser("bench", help="benchmarks (FLOPs, latency, throughput, memory, ...)")
    bench = p.add_subparsers(dest="bench_command", required=True)
    for name, suite in SUITES.items():
        b = bench.add_parser(name, help=suite.help, parents=_suite_parents(suite, parents))
        for flags, kwargs in suite.args:
            # a fresh default list per parser: argparse hands the default itself to the suite
            b.add_argument(*flags, **copy.deepcopy(kwargs))
        b.set_defaults(func=suite.run)


def _suite_parents(suite: Suite, parents: Parents) -> list[argparse.ArgumentParser]:
    """The shared flags of a suite: model, runtime, then the report's (always)."""
    chosen = []
    if suite.model is not None:
        chosen += [_model_parent(*suite.model), parents.progress]
    if suite.runtime is not None:
        chosen.append(_runtime_parent(suite.runtime))
    return [*chosen, _report_parent(suite.iters)]


def _report_parent(iters: int | None) -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(add_help=False)
    if iters is not None:
        b.add_argument("--iters", type=int, default=iters, help=f"timed rounds ({iters})")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--output", default=DEFAULT_OUTPUT, help=f"directory ({DEFAULT_OUTPUT})")
    return b


def _model_parent(batch: int, size: int) -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(add_help=False)
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (cpu)")
    b.add_argument("--frames", type=int, default=8, help="frames per clip T (8)")
    b.add_argument("--size", type=int, default=size, help=f"frame height and width ({size})")
    b.add_argument("--batch", type=int, default=batch, help=f"clips per batch ({batch})")
    b.add_argument("--num-classes", type=int, default=400)
    b.add_argument("--warmup", type=int, default=2, help="untimed runs first (2)")
    return b


def _runtime_parent(runtime: Runtime) -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(add_help=False)
    nargs = "+" if runtime.many else 1
    b.add_argument(
        "--format",
        nargs=nargs,
        choices=FORMATS,
        default=list(runtime.formats),
        help=f"memory format(s) ({' '.join(runtime.formats)})",
    )
    b.add_argument(
        "--backend",
        nargs=nargs,
        choices=BACKENDS,
        default=list(runtime.backends),
        help=f"backend(s) ({' '.join(runtime.backends)})",
    )
    return b
