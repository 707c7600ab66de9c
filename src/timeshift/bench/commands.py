"""``timeshift bench SUITE``: the command-line side of the benchmark suites.

Every suite prints its table and writes ``SUITE.json`` (rows + hardware and versions),
``SUITE.csv``, ``SUITE.md`` and a PNG chart into ``--output`` (default ``runs/bench``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["add_bench_parser"]

DEFAULT_OUTPUT = "runs/bench"
SPEED_COLUMNS = [
    "model",
    "backend",
    "memory_format",
    "batch",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "spread",
    "clips_per_s",
    "vs_baseline",
    "speedup",
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


def cmd_flops(args: argparse.Namespace) -> int:
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
    )
    what = "latency (batch 1)" if suite == "latency" else f"throughput (batch {args.batch})"
    title = (
        f"{what}, {args.frames} frames x {args.size}^2 on {args.device}; vs_baseline = time / "
        f"{specs[0].title}'s on the same backend and format, speedup = eager contiguous / this"
    )
    return _finish(
        args,
        suite,
        rows,
        SPEED_COLUMNS,
        title,
        plot=lambda path: plot_speed(rows, path, title, throughput=suite == "throughput"),
    )


def cmd_latency(args: argparse.Namespace) -> int:
    return _speed(args, "latency")


def cmd_throughput(args: argparse.Namespace) -> int:
    return _speed(args, "throughput")


# -- shift overhead (TSM Figure 2a) --------------------------------------------------------------


def cmd_shift_overhead(args: argparse.Namespace) -> int:
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


def cmd_vs_3d(args: argparse.Namespace) -> int:
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


def cmd_memory(args: argparse.Namespace) -> int:
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


def cmd_online(args: argparse.Namespace) -> int:
    from timeshift.bench.online_speed import TARGET_RATIO, benchmark_online, plot_online_benchmark

    rows = benchmark_online(
        args.models,
        backends=args.backend,
        memory_formats=args.format,
        size=args.size,
        rounds=args.iters,
    )
    title = f"online TSM vs the 2D model per frame, batch 1, {args.size}^2 (paired ratios)"
    columns = [
        "model",
        "backend",
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


def cmd_shift(args: argparse.Namespace) -> int:
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


def cmd_data(args: argparse.Namespace) -> int:
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


# -- parser --------------------------------------------------------------------------------------


def _common(b: argparse.ArgumentParser, *, iters: int | None) -> None:
    if iters is not None:
        b.add_argument("--iters", type=int, default=iters, help=f"timed rounds ({iters})")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--output", default=DEFAULT_OUTPUT, help=f"directory ({DEFAULT_OUTPUT})")


def _model_args(b: argparse.ArgumentParser, *, batch: int, size: int = 224) -> None:
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (cpu)")
    b.add_argument("--frames", type=int, default=8, help="frames per clip T (8)")
    b.add_argument("--size", type=int, default=size, help=f"frame height and width ({size})")
    b.add_argument("--batch", type=int, default=batch, help=f"clips per batch ({batch})")
    b.add_argument("--num-classes", type=int, default=400)
    b.add_argument("--warmup", type=int, default=2, help="untimed runs first (2)")
    b.add_argument("--no-progress", action="store_true")


def _format_backend(b: argparse.ArgumentParser, *, formats, backends, many: bool = True) -> None:
    from timeshift.bench.speed import BACKENDS, FORMATS

    nargs = "+" if many else 1
    b.add_argument(
        "--format",
        nargs=nargs,
        choices=FORMATS,
        default=list(formats),
        help=f"memory format(s) ({' '.join(formats)})",
    )
    b.add_argument(
        "--backend",
        nargs=nargs,
        choices=BACKENDS,
        default=list(backends),
        help=f"backend(s) ({' '.join(backends)})",
    )


def add_bench_parser(sub) -> None:
    """Register ``bench`` and its suites on the ``timeshift`` subparsers."""
    from timeshift.bench.overhead import PLACES, PROPORTIONS

    p = sub.add_parser("bench", help="benchmarks (FLOPs, latency, throughput, memory, ...)")
    bench = p.add_subparsers(dest="bench_command", required=True)

    b = bench.add_parser("flops", help="parameters and MACs of every model, vs the papers")
    b.add_argument("models", nargs="?", help="shell-style pattern (default: all models)")
    b.add_argument("--frames", type=int, default=8, help="frames per clip (8)")
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--num-classes", type=int, default=400)
    b.add_argument("--tiny", action="store_true", help="include the *_tiny test models")
    b.add_argument("--no-papers", action="store_true", help="skip the papers' comparison")
    _common(b, iters=None)
    b.set_defaults(func=cmd_flops)

    for suite, batch, iters, func, text in (
        ("latency", 1, 10, cmd_latency, "batch-1 latency per model, format and backend"),
        ("throughput", 16, 4, cmd_throughput, "clips/s of a batch per model, format, backend"),
    ):
        b = bench.add_parser(suite, help=text)
        b.add_argument(
            "models",
            nargs="*",
            default=["tsn_resnet50", "tsm_resnet50"],
            help="registered models; the first is the baseline",
        )
        _model_args(b, batch=batch)
        _format_backend(b, formats=("contiguous", "channels_last"), backends=("eager",))
        _common(b, iters=iters)
        b.set_defaults(func=func)

    b = bench.add_parser("shift-overhead", help="TSM Fig. 2a: latency vs shifted proportion")
    b.add_argument("--backbone", default="resnet50")
    b.add_argument("--proportions", nargs="+", choices=PROPORTIONS, default=list(PROPORTIONS))
    b.add_argument("--places", nargs="+", choices=PLACES, default=list(PLACES))
    b.add_argument("--op-rounds", type=int, default=30, help="rounds of the shift-op timing")
    _model_args(b, batch=1)
    b.add_argument(
        "--format",
        nargs="+",
        choices=("contiguous", "channels_last"),
        default=["contiguous", "channels_last"],
    )
    _common(b, iters=8)
    b.set_defaults(func=cmd_shift_overhead)

    b = bench.add_parser("vs-3d", help="TSM Table 5: TSN, TSM 8f/16f, I3D, I3D_replace")
    b.add_argument("--latency-iters", type=int, default=8, help="timed batch-1 rounds (8)")
    _model_args(b, batch=16)
    _format_backend(b, formats=("channels_last",), backends=("eager",), many=False)
    _common(b, iters=3)
    b.set_defaults(func=cmd_vs_3d)

    b = bench.add_parser("memory", help="bLVNet Fig. 3b: peak training memory")
    b.add_argument(
        "models",
        nargs="*",
        type=_model_frames,
        metavar="MODEL[:FRAMES]",
        help="default: blvnet_tam_resnet50:16 tsn_resnet50:16 (the last is the baseline)",
    )
    _model_args(b, batch=1)
    _format_backend(b, formats=("contiguous",), backends=("eager",), many=False)
    _common(b, iters=None)
    b.set_defaults(func=cmd_memory)

    b = bench.add_parser("online", help="online TSM per-frame latency vs the 2D backbone")
    b.add_argument("--models", nargs="+", default=["tsm_mobilenet_v2", "tsm_resnet50"])
    b.add_argument("--size", type=int, default=224)
    b.add_argument(
        "--format",
        nargs="+",
        choices=("contiguous", "channels_last"),
        default=["contiguous", "channels_last"],
        help="memory formats (eager)",
    )
    b.add_argument(
        "--backend", nargs="+", choices=("eager", "onnxruntime"), default=["eager", "onnxruntime"]
    )
    _common(b, iters=30)
    b.set_defaults(func=cmd_online)

    b = bench.add_parser("shift", help="the shift op vs clone() vs the reference shift")
    _common(b, iters=50)
    b.set_defaults(func=cmd_shift)

    b = bench.add_parser("data", help="dataset clips/s vs raw decode of the same frames")
    b.add_argument("--samples", type=int, default=48)
    b.add_argument("--backend", choices=("pyav", "opencv"), default="pyav")
    _common(b, iters=None)
    b.set_defaults(func=cmd_data)
