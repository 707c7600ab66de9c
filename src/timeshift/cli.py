"""The ``timeshift`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from timeshift.bench.commands import add_bench_parser

__all__ = ["main"]


def _json_dumps(value, **kwargs) -> str:
    """Strict JSON (NaN -> null) for ``--json`` output."""
    from timeshift.engine.metrics import json_dumps as dumps

    return dumps(value, **kwargs)


def _format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from timeshift.bench.complexity import model_complexity
    from timeshift.models.registry import create_model, model_info

    kwargs = {}
    if args.direction:
        kwargs["direction"] = args.direction
    # build on the meta device: nothing is allocated or computed, any model size is instant
    with torch.device("meta"):
        model = create_model(
            args.name, num_classes=args.num_classes, num_segments=args.frames, **kwargs
        )
    c = model_complexity(model, frames=args.frames, input_size=args.size)
    info = model_info(args.name)
    if args.json:
        print(json.dumps({"model": args.name, "num_classes": args.num_classes, **c.as_dict()}))
        return 0
    print(f"{args.name}  ({info.paper or info.family})")
    print(f"  input              {args.frames} x 3 x {args.size} x {args.size}")
    print(f"  classes            {args.num_classes}")
    print(f"  parameters         {c.params:,}")
    print(
        f"  MACs per clip      {_format_count(c.macs)}  ({_format_count(c.macs_per_frame)} per"
        " frame; the papers call MACs 'FLOPs')"
    )
    print(f"  temporal modules   {c.temporal_modules}")
    if c.cache_tensors:
        print(
            f"  online cache       {c.cache_tensors} tensors, {c.cache_floats:,} floats"
            f" ({c.cache_floats * 4 / 1024:.1f} KiB fp32) per stream"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from timeshift.models.registry import list_models, model_info

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        print(f"{name:28} {model_info(name).backbone}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from timeshift.data.synthetic import FAMILIES, SyntheticSpec, make_synthetic

    spec = SyntheticSpec(
        videos_per_class=args.videos_per_class,
        val_videos_per_class=(
            args.val_videos_per_class
            if args.val_videos_per_class is not None
            else max(1, args.videos_per_class // 4)
        ),
        size=args.size,
        frames=args.frames,
        seed=args.seed,
        families=tuple(args.families or FAMILIES),
    )
    paths = make_synthetic(args.out_dir, spec)
    print(f"dataset     {paths['root'].resolve()}")
    print(f"train list  {paths['train']}")
    print(f"val list    {paths['val']}")
    print(f"classes     {paths['classes']}")
    return 0


def cmd_data_extract(args: argparse.Namespace) -> int:
    from timeshift.data.extract import extract_frames

    result = extract_frames(
        args.video_list,
        args.out_dir,
        root=args.root,
        short_side=args.short_side or None,
        workers=args.workers,
        max_frames=args.max_frames,
    )
    print(
        f"extracted {result.extracted}, already done {result.skipped}, failed "
        f"{len(result.failed)}; list: {result.list_file}"
    )
    return 1 if result.failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from timeshift.engine.config import load_config
    from timeshift.engine.trainer import fit

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    output = args.output or str(Path("runs") / Path(args.config).stem)
    result = fit(
        cfg,
        output,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        allow_config_change=args.allow_config_change,
    )
    if result:  # rank 0 only: the other ranks of a torchrun get {}
        best = result.get("best_val_top1", float("nan"))
        print(f"done: best top-1 {best:.4f}; checkpoints in {output} (last.pt, best.pt)")
    return 0


def _print_test(summary: dict) -> None:
    print(
        f"{summary['samples']} videos ({summary['unreadable']} unreadable), protocol "
        f"{summary['protocol']['clips']} clip(s) x {summary['protocol']['crops']} crop(s)"
        f"{' full-res' if summary['protocol']['full_res'] else ''}"
    )
    print(
        f"  top-1 {summary['top1']:.4f}   top-5 {summary['top5']:.4f}   mean class accuracy "
        f"{summary['mean_class_accuracy']:.4f}"
    )
    print(f"  {'class':32} {'videos':>7} {'accuracy':>9}")
    for name, support, acc in zip(
        summary["classes"], summary["support"], summary["per_class"], strict=True
    ):
        shown = "-" if acc != acc else f"{acc:.3f}"  # NaN: no video of that class
        print(f"  {name[:32]:32} {support:7d} {shown:>9}")


def cmd_test(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import EvalOptions, early_recognition, evaluate_checkpoints

    options = EvalOptions(
        clips=args.clips,
        crops=args.crops,
        full_res=args.full_res,
        dense=args.dense,
        twice=args.twice,
        batch_size=args.batch_size,
        workers=args.workers,
        online=args.online or args.drop_future,
        drop_future=args.drop_future,
        backend=args.backend,
        memory_format=args.format,
    )
    checkpoints = [args.checkpoint, *(args.ensemble or [])]
    if args.early:
        rows = early_recognition(
            checkpoints,
            args.data,
            fractions=[k / args.early_steps for k in range(1, args.early_steps + 1)],
            root=args.root,
            options=options,
            output_dir=args.output,
            device=args.device,
            progress=not args.no_progress,
        )
        output_error = next((r["output_error"] for r in rows if "output_error" in r), None)
        if args.json:
            print(_json_dumps(rows))
        else:
            print("early recognition: accuracy after observing the first part of each video")
            print(f"  {'observed':>8} {'top-1':>7} {'top-5':>7}")
            for r in rows:
                print(f"  {100 * r['observed']:7.0f}% {r['top1']:7.4f} {r['top5']:7.4f}")
            if args.output and not output_error:
                print(f"early.csv, early.json, early.png in {args.output}")
        return _output_status(output_error)
    summary = evaluate_checkpoints(
        checkpoints,
        args.data,
        root=args.root,
        options=options,
        output_dir=args.output,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.json:
        print(_json_dumps(summary))
    else:
        _print_test(summary)
        if args.output and "output_error" not in summary:
            print(
                f"metrics.json, per_class.csv, confusion.csv/png, predictions.json in {args.output}"
            )
    return _output_status(summary.get("output_error"))


def _output_status(error: str | None) -> int:
    """Exit status of a finished evaluation: 1 when its files could not be written (the result
    was printed all the same)."""
    if error:
        print(f"timeshift: error: {error}; the result above was not saved", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import predict_videos

    results = predict_videos(
        args.checkpoint,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        backend=args.backend,
        memory_format=args.format,
        progress=not args.no_progress,
    )
    if args.json:
        print(_json_dumps(results, indent=1))
    else:
        for item in results:
            print(item["path"])
            if "error" in item:
                print(f"  error: {item['error']}")
                continue
            for entry in item["top"]:
                print(f"  {entry['score']:.3f}  {entry['label']}")
    failed = sum("error" in item for item in results)
    if failed == len(results):
        print(
            f"timeshift: error: no input could be predicted ({failed} errors, listed above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _load_checkpoint_arg(args: argparse.Namespace):
    """CHECKPOINT of ours, or any supported format with --model/--num-classes/--frames.

    ``--frames`` without ``--model`` rebuilds our checkpoint's model for that many frames
    (default: the checkpoint's)."""
    from timeshift.models.checkpoints import load_model

    if args.model is None and (args.num_classes is not None or args.direction):
        given = "--num-classes" if args.num_classes is not None else "--direction"
        raise ValueError(
            f"{given} applies with --model only (a timeshift checkpoint stores its classes and "
            "options); to change the class count, fine-tune with train"
        )
    kwargs = {"direction": args.direction} if args.direction else {}
    return load_model(
        args.checkpoint,
        name=args.model,
        num_classes=args.num_classes,
        num_segments=args.frames,
        **kwargs,
    )


def cmd_export(args: argparse.Namespace) -> int:
    from timeshift.export import export_model

    model = _load_checkpoint_arg(args)
    result = export_model(
        model,
        args.output,
        format=args.format,
        online=args.online,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        size=args.size,
        exporter=args.exporter,
        opset=args.opset,
        drop_future=args.drop_future,
        split=args.split,
        verify=not args.no_verify,
    )
    meta = result.meta
    print(
        f"wrote {result.path} ({result.format}, {meta['mode']}, {meta['input_size']} px, "
        f"batch {meta['batch'] or 'dynamic'})"
    )
    print(f"  inputs   {', '.join(result.inputs)}")
    print(f"  outputs  {', '.join(result.outputs)}")
    report = getattr(model, "load_report", None)
    if report is not None:  # load_model refuses dropped or left-initialised weights
        loaded = f"all {len(report.loaded)} tensors from {args.checkpoint}"
        print(f"  weights  {loaded} ({report.source} format)")
    if result.online:
        floats = sum(_prod(s) for s in meta["cache_shapes"])
        print(f"  cache    {len(meta['cache_shapes'])} tensors, {floats:,} floats per stream")
        if meta.get("graph"):
            print(f"  graph    {meta['graph']}")
    if args.no_verify:
        print("  not verified (--no-verify)")
    else:
        runtime = "onnxruntime" if result.format == "onnx" else "torch.jit.load"
        print(
            f"  verified with {runtime} against eager PyTorch on fresh inputs: max |difference| "
            f"{result.max_abs_diff:.2e}"
        )
    return 0


def _stream_recognizer(args: argparse.Namespace):
    """(recognizer, meta, backend) for `stream`: an online ONNX file, or a checkpoint run in
    PyTorch or on onnxruntime (exported once and cached)."""
    from pathlib import Path

    from timeshift.engine.backend import onnx_or_pytorch, resolve_backend
    from timeshift.export import OnnxOnlineRecognizer
    from timeshift.models.preprocessing import resolve_input_config
    from timeshift.online import OnlineRecognizer

    if Path(args.checkpoint).suffix == ".onnx":
        if args.model or args.frames:
            raise ValueError("--model/--frames do not apply to an ONNX export (it is built)")
        recognizer = OnnxOnlineRecognizer(args.checkpoint)
        return recognizer, recognizer.meta, "onnxruntime"
    if args.frames is not None and args.model is None:
        raise ValueError(
            "--frames does not apply to stream: the online model runs frame by frame whatever "
            "its clip length (with --model it sets the num_segments the model is built with)"
        )
    model = _load_checkpoint_arg(args).eval()
    meta = {**model.checkpoint_meta, **resolve_input_config(model, input_size=args.size).as_meta()}
    backend = resolve_backend("onnxruntime" if args.onnx else args.backend, "cpu")
    path = None
    if backend != "eager":  # a cache or disk that cannot be written: PyTorch under auto
        path = onnx_or_pytorch(
            model,
            backend="onnxruntime" if args.onnx else args.backend,
            size=meta["input_size"],
            online=True,
            drop_future=args.drop_future,
        )
    if path is None:
        model.set_channels_last(args.format != "contiguous")
        return OnlineRecognizer(model, drop_future=args.drop_future), meta, "pytorch"
    return OnnxOnlineRecognizer(path), meta, "onnxruntime"


def cmd_stream(args: argparse.Namespace) -> int:
    from timeshift.models.preprocessing import resolve_input_config
    from timeshift.online.stream import run_stream

    jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None  # noqa: SIM115
    last = [None]

    def on_frame(record: dict) -> None:
        if jsonl is not None:
            jsonl.write(json.dumps(record) + "\n")
        if not args.quiet or record["label"] != last[0]:
            when = f"{record['time']:7.2f}s" if record["time"] is not None else ""
            print(
                f"frame {record['frame']:6d} {when}  {record['label']:24} {record['score']:.2f}"
                f"   (this frame: {record['raw_label']} {record['raw_score']:.2f}, "
                f"{record['latency_ms']:.1f} ms)",
                flush=True,
            )
        last[0] = record["label"]

    try:
        recognizer, meta, backend = _stream_recognizer(args)
        inputs = resolve_input_config(meta=meta)
        summary = run_stream(
            args.source,
            recognizer,
            input_size=inputs.input_size,
            classes=meta.get("classes"),
            scale_size=inputs.scale_size,
            mean=inputs.mean,
            std=inputs.std,
            every=args.every,
            smooth=args.smooth,
            margin=args.margin,
            output=args.output,
            show=args.show,
            max_frames=args.max_frames,
            on_frame=on_frame,
        )
    finally:
        if jsonl is not None:
            jsonl.close()
    s = summary.as_dict()
    print(
        f"{s['frames_read']} frames read, {s['frames_processed']} recognised ({backend}): "
        f"{s['fps']:.1f} frames/s end to end, model {s['latency_ms_median']:.2f} ms/frame "
        f"median ({s['latency_ms_p90']:.2f} p90); {s['label_changes']} label changes, final "
        f"label: {s['final_label']}"
    )
    if args.output:
        print(f"annotated video: {args.output}")
    return 0


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="build this registered model and load CHECKPOINT in any supported format "
        "(reference TSM, MMAction2, torchvision); default: CHECKPOINT is a timeshift checkpoint",
    )
    p.add_argument("--num-classes", type=int, help="with --model")
    p.add_argument(
        "--frames",
        type=int,
        help="frames per clip (num_segments): default the checkpoint's, 8 with --model; "
        "another value rebuilds the model for it (TSN/TSM/TAM weights do not depend on it)",
    )
    p.add_argument("--direction", choices=("bidirectional", "unidirectional"), help="with --model")


def _add_runtime_args(p: argparse.ArgumentParser, *, online: bool = False) -> None:
    from timeshift.engine.backend import BACKENDS, FORMATS

    backends = ("auto", "eager", "onnxruntime") if online else BACKENDS
    p.add_argument(
        "--backend",
        choices=backends,
        default="auto",
        help="how the model runs; auto: the fastest measured on CPU, onnxruntime when installed "
        "(exported once, cached in ~/.cache/timeshift), else PyTorch (see docs/benchmarks.md)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="PyTorch memory format (auto: channels_last)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from timeshift.engine.demo import format_results, run_demo

    variants = "all" if args.all else (args.models or "main")
    output = args.output or ("runs/demo-all" if variants != "main" else "runs/demo")
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else None
    results = run_demo(
        output,
        full=args.full,
        progress=not args.no_progress,
        variants=variants,
        overrides=overrides,
    )
    print(format_results(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timeshift", description="Efficient video recognition with temporal shift."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, MACs and temporal modules of a model")
    p.add_argument("name", help="registered model name (see `timeshift models`)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--frames", type=int, required=True, help="frames per clip (num_segments)")
    p.add_argument("--size", type=int, default=224, help="input height/width (default 224)")
    p.add_argument("--direction", choices=("bidirectional", "unidirectional"))
    p.add_argument("--json", action="store_true", help="raw numbers as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML file or shipped recipe name (e.g. synthetic-tsm)")
    p.add_argument("--output", help="run directory (default runs/<config name>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", help="DIR/last.pt of an earlier run")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although the configuration differs from the run's (the differences "
        "are listed; the new values apply from the next epoch)",
    )
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate checkpoints on a labelled list or folder")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="list file (videos or rawframes) or folder")
    p.add_argument(
        "--root", help="folder the list's paths are relative to (default: the list's folder)"
    )
    p.add_argument("--clips", type=int, default=1)
    p.add_argument("--crops", type=int, choices=(1, 3, 10), default=1)
    p.add_argument("--full-res", action="store_true", help="crop at the resized size (256)")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--dense", action="store_true")
    sampling.add_argument("--twice", action="store_true")
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="CHECKPOINT",
        help="more checkpoints whose softmax scores are averaged with the first",
    )
    p.add_argument(
        "--early",
        action="store_true",
        help="early recognition: accuracy after 10%%, 20%%, ... 100%% of each video",
    )
    p.add_argument("--early-steps", type=int, default=10, help="fractions for --early (10)")
    p.add_argument(
        "--online",
        action="store_true",
        help="stream each clip frame by frame through the online model, average the logits",
    )
    p.add_argument(
        "--drop-future",
        action="store_true",
        help="--online for a bidirectional model: zero the channels it takes from the future",
    )
    p.add_argument("--output", help="directory for metrics, confusion matrix, predictions")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    _add_runtime_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="top-k classes of videos")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    _add_runtime_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="train TSN and TSM on the synthetic dataset and compare")
    p.add_argument("--output", help="default runs/demo (runs/demo-all with --all/--models)")
    p.add_argument("--full", action="store_true", help="longer training, tighter numbers")
    p.add_argument(
        "--all",
        action="store_true",
        help="every temporal module (TSN, TSM, VSN, STSM, TAM, bLVNet-TAM, I3D-replace) on one "
        "narrow bottleneck ResNet-50, with accuracy-vs-cost charts (about 75 minutes on 2 "
        "cores at 20 epochs)",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="a subset of the --all rows")
    p.add_argument("--epochs", type=int, help="training epochs per model (default 20)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export to ONNX or TorchScript, verified against PyTorch")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--online", action="store_true", help="the streaming model: frame + caches")
    p.add_argument("--output", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--batch", type=int, default=1, help="clips (offline) or streams (online)")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary")
    p.add_argument("--size", type=int, help="frame size (default: the checkpoint's)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="ONNX")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18 dynamo, 17 legacy)")
    p.add_argument(
        "--drop-future",
        action="store_true",
        help="--online for a bidirectional model: zero the channels from future frames",
    )
    p.add_argument(
        "--split",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ONNX: carry the residual stream split at the shifted channels, the form "
        "onnxruntime runs fastest, online or offline (default: where supported and 8-channel "
        "aligned)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the check against eager")
    _add_model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stream", help="online recognition of a video file, camera or URL")
    p.add_argument("source", help="video file, camera index (0) or stream URL (rtsp://...)")
    p.add_argument("checkpoint", help="checkpoint (.pt) or online ONNX export (.onnx)")
    p.add_argument("--every", type=int, default=1, help="recognise every K-th frame (1)")
    p.add_argument("--smooth", type=int, default=8, help="history window in frames (8)")
    p.add_argument(
        "--margin", type=float, default=0.1, help="hysteresis: probability lead to switch (0.1)"
    )
    p.add_argument("--show", action="store_true", help="show the annotated video in a window")
    p.add_argument("--output", help="write the annotated video here (.mp4)")
    p.add_argument("--onnx", action="store_true", help="same as --backend onnxruntime")
    _add_runtime_args(p, online=True)
    p.add_argument("--size", type=int, help="frame size (default: the checkpoint's)")
    p.add_argument("--drop-future", action="store_true", help="stream a bidirectional model")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--jsonl", help="write one JSON record per recognised frame")
    p.add_argument("--quiet", action="store_true", help="print label changes only")
    _add_model_args(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'tsm_*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    add_bench_parser(sub)

    p = sub.add_parser("data", help="datasets: synthetic data, frame extraction")
    data = p.add_subparsers(dest="data_command", required=True)
    d = data.add_parser("synth", help="write the synthetic temporal dataset")
    d.add_argument("out_dir")
    d.add_argument("--videos-per-class", type=int, default=40, help="training videos per class")
    d.add_argument("--val-videos-per-class", type=int, help="default: a quarter of the above")
    d.add_argument("--size", type=int, default=64, help="frame height and width (even)")
    d.add_argument("--frames", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--families", nargs="+", help="motion families (default: all)")
    d.set_defaults(func=cmd_data_synth)
    d = data.add_parser("extract-frames", help="decode videos into JPEG frame folders")
    d.add_argument("video_list", help="video list ('path label') or class-per-folder tree")
    d.add_argument("out_dir")
    d.add_argument(
        "--root", help="folder the list's paths are relative to (default: the list's folder)"
    )
    d.add_argument("--short-side", type=int, default=256, help="resize; 0 keeps the size")
    d.add_argument("--workers", type=int, default=1)
    d.add_argument(
        "--max-frames",
        type=int,
        default=108_000,
        help="refuse videos with more frames (default: one hour at 30 fps); the frame size "
        "limit is TIMESHIFT_MAX_FRAME_PIXELS (default 4096x4096)",
    )
    d.set_defaults(func=cmd_data_extract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    # OSError: a read-only or full output folder, a missing file (FileNotFoundError)
    except (KeyError, ValueError, OSError, RuntimeError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"timeshift: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
