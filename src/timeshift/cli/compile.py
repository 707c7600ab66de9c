"""``timeshift compile``: a checkpoint compiled with Apache TVM for a device (experimental)."""

from __future__ import annotations

import argparse

from timeshift.cli.common import Parents, json_dumps, load_checkpoint_arg

__all__ = ["add_parser", "run_compile"]

TARGET_HELP = (
    "TVM target: 'llvm' (this machine, default), a tag such as raspberry-pi/4b-aarch64, "
    "arm/rasp4b64, arm/rk3399 (see tvm.target.list_tags()), or a JSON object such as "
    '\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}\''
)


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "compile",
        help="compile with Apache TVM for a device (experimental, untuned)",
        description="Export to ONNX (verified), compile it with TVM for TARGET and write the "
        "library, the ONNX file, meta.json, a runner script and tuning notes into OUTPUT.",
        parents=[parents.checkpoint, parents.json, parents.progress],
    )
    p.add_argument(
        "checkpoint", help="checkpoint, or NAME.TAG of published weights (fetched once, cached)"
    )
    p.add_argument("--target", default="llvm", help=TARGET_HELP)
    p.add_argument("--online", action="store_true", help="the streaming model: frame + caches")
    p.add_argument("--output", required=True, help="folder to write (created; files replaced)")
    p.add_argument(
        "--cross-compiler",
        help="C++ compiler linking the library (default: the host's, or aarch64-linux-gnu-g++ "
        "for aarch64 targets)",
    )
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="ONNX")
    p.add_argument("--opt-level", type=int, default=3, help="TVM PassContext opt_level")
    p.add_argument(
        "--no-check", action="store_true", help="skip the comparison with onnxruntime on this host"
    )
    p.set_defaults(func=run_compile)


def run_compile(args: argparse.Namespace) -> int:
    from timeshift.export.tvm_compile import compile_model, import_tvm

    import_tvm()  # the extra's message before the checkpoint is loaded
    model = load_checkpoint_arg(args)
    result = compile_model(
        model,
        args.output,
        target=args.target,
        online=args.online,
        size=args.size,
        cross_compiler=args.cross_compiler,
        check=not args.no_check,
        opt_level=args.opt_level,
        exporter=args.exporter,
        progress=not args.no_progress,
    )
    if args.json:
        print(json_dumps(result.as_dict(), indent=2))
        return 0
    meta = result.meta
    print(
        f"wrote {result.directory}/ ({meta['mode']}, {meta['input_size']} px, TVM "
        f"{meta['tvm_version']}, compiled in {meta['compile_seconds']:.1f} s)"
    )
    linked = f", cross-linked with {meta['cross_compiler']}" if result.cross_compiled else ""
    print(f"  library  {result.library.name} for {meta['target_name']}{linked}")
    if result.host_check is not None:
        print(
            f"  checked  against onnxruntime on random inputs ({result.host_check['steps']} "
            f"step(s)): max |difference| {result.host_check['max_abs_diff']:.2e}"
        )
    elif args.no_check:
        print("  not checked (--no-check)")
    else:
        print("  not checked: the target does not run on this machine")
    print(f"  run      python {result.runner.name} (on the device; see README.txt to tune)")
    return 0
