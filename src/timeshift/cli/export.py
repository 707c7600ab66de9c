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
        parents=[parents.checkpoint],
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from timeshift.export import export_model

    model = load_checkpoint_arg(args)
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
