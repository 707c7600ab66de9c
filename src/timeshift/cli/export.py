"""``timeshift export``: ONNX or TorchScript, offline or online, verified against eager PyTorch."""

from __future__ import annotations

import argparse
import math

from timeshift.cli.common import Parents, load_checkpoint_arg

__all__ = ["add_parser", "run"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX or TorchScript, verified against PyTorch",
        parents=[parents.checkpoint, parents.progress],
    )
    p.add_argument(
        "checkpoint", help="checkpoint, or NAME.TAG of published weights (fetched once, cached)"
    )
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--online", action="store_true", help="the streaming model: frame + caches")
    p.add_argument("--output", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--batch", type=int, default=1, help="clips (offline) or streams (online)")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary")
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
    _add_quantize_args(p)
    p.set_defaults(func=run)


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group(
        "INT8 quantisation (ONNX): the first --calibration-clips clips of --calibration "
        "calibrate, the --heldout-clips after them check int8 against fp32"
    )
    q.add_argument(
        "--quantize",
        choices=("int8",),
        help="write a static INT8 (QDQ) model next to its fp32 export (NAME.fp32.onnx)",
    )
    q.add_argument("--calibration", metavar="LIST", help="list file of calibration clips")
    q.add_argument("--root", help="folder the list's relative paths start from")
    q.add_argument("--calibration-clips", type=int, default=32, metavar="N", help="default 32")
    q.add_argument(
        "--heldout-clips",
        type=int,
        default=16,
        metavar="M",
        help="default 16; online, every frame of each is compared",
    )
    q.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="least top-1 agreement with fp32 on the held-out clips (default 0.9)",
    )
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights, which onnxruntime's int8 kernels cannot saturate on x86 CPUs "
        "without VNNI (default: when this CPU is one)",
    )
    q.add_argument(
        "--allow-low-agreement",
        action="store_true",
        help="keep the int8 model below --min-agreement (a warning instead of an error)",
    )


def run(args: argparse.Namespace) -> int:
    from timeshift.export import export_model

    if args.quantize:
        return _run_quantize(args)
    if args.calibration:
        raise ValueError("--calibration applies with --quantize int8")
    model = load_checkpoint_arg(args)
    result = export_model(
        model,
        args.output,
        format=args.format,
        online=args.online,
        batch=args.batch,
        size=args.size,
        verify=not args.no_verify,
        **_graph_options(args),
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
        floats = sum(math.prod(s) for s in meta["cache_shapes"])
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


def _graph_options(args: argparse.Namespace) -> dict:
    """``export_model``'s options of the ONNX graph, for a plain and a quantised export."""
    return {
        "dynamic_batch": args.dynamic_batch,
        "exporter": args.exporter,
        "opset": args.opset,
        "drop_future": args.drop_future,
        "split": args.split,
    }


def _run_quantize(args: argparse.Namespace) -> int:
    from timeshift.export.quantize import quantize_model

    if args.format != "onnx":
        raise ValueError(
            "--quantize int8 writes an ONNX model (onnxruntime's static quantisation): drop "
            "--format torchscript"
        )
    if not args.calibration:
        raise ValueError(
            "--quantize int8 needs --calibration LIST: clips like those the model will see, "
            "in any format 'timeshift test --data' reads"
        )
    if args.no_verify:
        raise ValueError("--quantize always verifies the fp32 export: drop --no-verify")
    model = load_checkpoint_arg(args)
    report = quantize_model(
        model,
        args.output,
        calibration=args.calibration,
        root=args.root,
        calibration_clips=args.calibration_clips,
        heldout_clips=args.heldout_clips,
        online=args.online,
        size=args.size,
        min_agreement=args.min_agreement,
        allow_low_agreement=args.allow_low_agreement,
        progress=not args.no_progress,
        batch=args.batch,
        reduce_range=args.reduce_range,
        export_options=_graph_options(args),
    )
    _print_quantization(report)
    return 0


def _print_quantization(report) -> None:
    unit = "frames" if report.mode == "online" else "clips"
    verdict = "passed" if report.passed else "BELOW the threshold (allowed)"
    print(f"wrote {report.path} (int8 QDQ, {report.mode}) and {report.fp32_path} (fp32)")
    weights = "7-bit weights (--reduce-range)" if report.reduce_range else "8-bit weights"
    print(
        f"  calibrated on the first {report.calibration_clips} clips "
        f"({report.calibration_method}, {report.calibration_seconds:.1f} s, {weights}); "
        f"checked on the next {report.heldout_clips} ({report.compared} {unit})"
    )
    print(
        f"  top-1 agreement {report.top1_agreement:.1%} (threshold {report.threshold:.1%}, "
        f"{verdict})"
    )
    print(
        f"  |logit difference| max {report.max_logit_difference:.3g}, "
        f"mean {report.mean_logit_difference:.3g}"
    )
    ratio = report.fp32_bytes / max(report.int8_bytes, 1)
    print(
        f"  size     {report.int8_bytes / 1e6:.2f} MB int8, {report.fp32_bytes / 1e6:.2f} MB "
        f"fp32 ({ratio:.1f}x smaller)"
    )
    if report.fp32_latency_ms and report.int8_latency_ms:
        per = "frame" if report.mode == "online" else "batch"
        print(
            f"  latency  {report.int8_latency_ms:.2f} ms int8, {report.fp32_latency_ms:.2f} ms "
            f"fp32 per {per} (onnxruntime, during the check; bench for a real measurement)"
        )
