"""Compile a recognizer for a device with Apache TVM (experimental).

The path is the verified ONNX export (:func:`~timeshift.export.export_model`, offline clips or
the online frame + caches graph) -> ``tvm.relax.frontend.onnx.from_onnx`` -> ``tvm.compile``
-> a shared library for the target, cross-linked for another CPU architecture with the GNU
cross compiler (``aarch64-linux-gnu-g++`` from Debian's ``g++-aarch64-linux-gnu``). When the
target runs on this machine the library is loaded back and compared with onnxruntime on the
same ONNX file. The output folder holds everything a device needs::

    model.so          the compiled model (TVM Relax VM executable)
    model.onnx        the ONNX export it was compiled from (with its timeshift metadata)
    meta.json         the export metadata + target, TVM version, check, compile time
    run_on_device.py  a runner needing only TVM's runtime and numpy
    README.txt        how to run it, and how to tune it on the device (MetaSchedule)

The library is untuned (TVM's default schedules): tuning needs the device itself, which this
machine is not; README.txt says how. Written for TVM 0.27 (Relax; ``tvm.relay`` is gone).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from timeshift.engine.metrics import json_dumps
from timeshift.errors import TimeshiftError
from timeshift.export.exporter import _onnx_session, export_model

__all__ = [
    "CompileResult",
    "TargetError",
    "TvmCompileError",
    "compile_model",
    "example_tags",
    "resolve_target",
]

_logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'timeshift[tvm]'"
LIBRARY, ONNX_FILE, META_FILE, RUNNER, README = (
    "model.so",
    "model.onnx",
    "meta.json",
    "run_on_device.py",
    "README.txt",
)
# CPU tags of TVM 0.27 worth naming in messages (tvm.target.list_tags() has ~290, mostly GPUs)
EXAMPLE_TAGS = ("raspberry-pi/4b-aarch64", "arm/rasp4b64", "arm/rk3399", "arm/thunderx")
# GNU cross compilers by the architecture of the target triple (Debian package in the message)
CROSS_COMPILERS = {
    "aarch64": (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), "g++-aarch64-linux-gnu"),
    "arm": (("arm-linux-gnueabihf-g++",), "g++-arm-linux-gnueabihf"),
    "riscv64": (("riscv64-linux-gnu-g++",), "g++-riscv64-linux-gnu"),
}
CHECK_ATOL, CHECK_RTOL, CHECK_STEPS = 1e-4, 1e-3, 3


class TvmCompileError(TimeshiftError):
    """A TVM compilation could not be done (no cross compiler) or does not match onnxruntime."""


class TargetError(TimeshiftError, ValueError):
    """A TVM target that cannot be used; the message gives the form to use."""


@dataclass
class CompileResult:
    """What :func:`compile_model` wrote into ``directory``."""

    directory: Path
    library: Path
    target: str | dict
    host_check: dict | None  # {"max_abs_diff", "steps", ...}; None when not run here
    cross_compiled: bool
    runner: Path
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def import_tvm():
    """``tvm``, or an ImportError naming the extra."""
    try:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401  (0.27's frontend)
    except ImportError as exc:
        raise ImportError(f"compiling with TVM needs apache-tvm: {EXTRA_HINT}") from exc
    return tvm


def example_tags() -> list[str]:
    """A few CPU target tags that exist in the installed TVM (for help and messages)."""
    tags = import_tvm().target.list_tags()
    return [t for t in EXAMPLE_TAGS if t in tags]


# -- targets ------------------------------------------------------------------------------------
def resolve_target(target: str | dict):
    """A ``tvm.target.Target`` from a TVM tag (``"raspberry-pi/4b-aarch64"``), a dict or JSON
    object (``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}``), or
    ``"llvm"``: this machine's architecture, no particular CPU (a library that runs on any CPU
    of it; naming this CPU, ``{"kind": "llvm", "mcpu": "znver3"}``, was no faster untuned).

    Raises :class:`TargetError` for the command-line form ``"llvm -mcpu=..."`` (TVM 0.27 no
    longer parses it; the message gives the dict to use), unknown names and non-CPU kinds.
    """
    tvm = import_tvm()
    spec = _target_spec(target)
    try:
        resolved = tvm.target.Target(spec)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise TargetError(
            f"unknown TVM target {target!r} ({_first_line(exc)}); use a tag such as "
            f"{', '.join(map(repr, example_tags()))} (all: tvm.target.list_tags()), 'llvm' for "
            'this machine, or a dict such as {"kind": "llvm", "mtriple": "aarch64-linux-gnu", '
            '"mcpu": "cortex-a72"}'
        ) from None
    if resolved.kind.name != "llvm":
        # Relax on GPUs needs DLight schedules and a device to check on; not done here
        raise TargetError(
            f"TVM target {target!r} is a {resolved.kind.name!r} target; timeshift compiles for "
            "CPUs only (kind 'llvm'): use a CPU tag such as "
            f"{', '.join(map(repr, example_tags()))} or a dict with kind 'llvm'"
        )
    return resolved


def _target_spec(target: str | dict) -> str | dict:
    if isinstance(target, dict):
        return dict(target)
    text = target.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetError(f"TVM target {text!r} is not valid JSON: {exc}") from None
    if " " in text or text.startswith("-"):
        raise TargetError(
            f"TVM 0.27 no longer accepts the target string form {text!r}; give the dict (JSON) "
            f"form instead: {json.dumps(_cli_to_dict(text))}"
        )
    return text


def _cli_to_dict(text: str) -> dict:
    """``"llvm -mcpu=cortex-a72 -mattr=+neon"`` -> ``{"kind": "llvm", "mcpu": ..., "mattr":
    ["+neon"]}``: the dict TVM 0.27 wants for the old command-line form."""
    words = text.split()
    out: dict = {"kind": words[0]} if not words[0].startswith("-") else {}
    for word in words[1:] if out else words:
        key, _, value = word.lstrip("-").partition("=")
        out[key] = value.split(",") if key in ("mattr", "keys", "libs") else value or True
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _arch(name: str) -> str:
    """One name per CPU architecture, from a triple's first part or ``platform.machine()``."""
    name = {"arm64": "aarch64", "amd64": "x86_64"}.get(name.lower(), name)
    return "arm" if name.startswith("arm") else name  # armv7l, armv7a, arm: 32-bit ARM


def _target_arch(target) -> str:
    triple = str(target.attrs.get("mtriple", "") or "")
    # no triple: LLVM builds for this machine
    return _arch(triple.split("-")[0] if triple else platform.machine())


def _runs_here(target, tvm) -> bool:
    """Whether a library for ``target`` can be loaded and run on this machine: same architecture
    and no other CPU named (another CPU's instructions could be missing here)."""
    mcpu = target.attrs.get("mcpu")
    same_cpu = mcpu in (None, "", tvm.target.codegen.llvm_get_system_cpu())
    return _target_arch(target) == _arch(platform.machine()) and same_cpu


def _cross_compiler(target, cross_compiler: str | None) -> str | None:
    """The C++ compiler that links the library for another architecture (None: the host's)."""
    arch = _target_arch(target)
    if cross_compiler is not None:
        found = shutil.which(cross_compiler)
        if found is None:
            raise TvmCompileError(f"cross compiler {cross_compiler!r} not found on PATH")
        return found
    if arch == _arch(platform.machine()):
        return None
    names, package = CROSS_COMPILERS.get(
        arch, ((f"{arch}-linux-gnu-g++",), f"g++-{arch}-linux-gnu")
    )
    for name in names:
        if found := shutil.which(name):
            return found
    raise TvmCompileError(
        f"the target builds for {arch} and linking its library needs a cross compiler: none of "
        f"{', '.join(names)} is on PATH. Install it (Debian/Ubuntu: apt-get install {package}) "
        "or pass one with --cross-compiler / cross_compiler=; nothing was written"
    )


# -- compilation --------------------------------------------------------------------------------
def compile_model(
    model: nn.Module,
    output_dir: str | os.PathLike,
    *,
    target: str | dict = "llvm",
    online: bool = False,
    size: int | None = None,
    cross_compiler: str | None = None,
    check: bool = True,
    opt_level: int = 3,
    exporter: str = "dynamo",
    progress: bool = True,
) -> CompileResult:
    """Compile ``model`` with TVM into ``output_dir`` (created; its files replaced).

    Args:
        target: a TVM tag, a dict / JSON object, or ``"llvm"`` (this machine), see
            :func:`resolve_target`.
        online: the streaming model (frame + caches in, logits + caches out); it must be
            uni-directional, as for :func:`~timeshift.export.export_model`.
        size: frame size (default: the checkpoint's input size).
        cross_compiler: the C++ compiler that links the library (default: the host's for this
            machine's architecture, ``aarch64-linux-gnu-g++`` for aarch64, ...).
        check: when the target runs here, run the library and onnxruntime on the same random
            inputs (a clip; online: several frames with each runtime's caches carried) and raise
            :class:`TvmCompileError` if they differ by more than ``1e-4 + 1e-3 * max|ort|``.
        opt_level: TVM's ``PassContext`` optimisation level.
        exporter: the ONNX exporter (``"dynamo"`` or ``"legacy"``, faster to run), as for
            :func:`~timeshift.export.export_model`.
        progress: show a progress bar over the stages.

    Everything is built in a temporary folder and moved into ``output_dir`` only once done, so
    a failure (no cross compiler, a failed check) leaves no partial output.
    """
    tvm = import_tvm()
    resolved = resolve_target(target)  # before the slow export: a bad target fails at once
    linker = _cross_compiler(resolved, cross_compiler)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=".tvm-compile-") as tmp,
        tqdm(total=4, desc="TVM compile", unit="stage", disable=not progress) as stages,
    ):
        work = Path(tmp)
        stages.set_postfix_str("ONNX export")
        exported = export_model(
            model, work / ONNX_FILE, online=online, size=size, exporter=exporter
        )
        stages.update()
        stages.set_postfix_str("tvm.compile")
        started = time.perf_counter()
        executable = _compile_onnx(work / ONNX_FILE, resolved, opt_level, tvm)
        compile_seconds = time.perf_counter() - started
        stages.update()
        stages.set_postfix_str("link")
        _export_library(executable, work / LIBRARY, linker)
        stages.update()
        host_check = None
        if check and _runs_here(resolved, tvm):
            stages.set_postfix_str("check against onnxruntime")
            host_check = check_library(work / LIBRARY, work / ONNX_FILE, online=online)
        stages.update()
        meta = _meta(exported.meta, target, resolved, tvm, linker, compile_seconds, host_check)
        meta["input_shapes"] = _input_shapes(work / ONNX_FILE)
        _write_output(work, meta, output_dir)
    _logger.info(
        "compiled %s for %s in %.1f s%s",
        output_dir / LIBRARY,
        meta["target_name"],
        compile_seconds,
        f": max |difference| to onnxruntime {host_check['max_abs_diff']:.2e}" if host_check else "",
    )
    return CompileResult(
        directory=output_dir,
        library=output_dir / LIBRARY,
        target=target,
        host_check=host_check,
        cross_compiled=linker is not None,
        runner=output_dir / RUNNER,
        meta=meta,
    )


def _compile_onnx(path: Path, target, opt_level: int, tvm):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    # weights become constants of the graph, so the library needs no parameter file
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    with tvm.transform.PassContext(opt_level=opt_level):
        return tvm.compile(mod, target=target)


def _export_library(executable, path: Path, linker: str | None) -> None:
    if linker is None:
        executable.export_library(str(path))
        return
    from tvm.support import cc

    executable.export_library(str(path), fcompile=cc.cross_compiler(linker))


def _write_output(work: Path, meta: dict, output_dir: Path) -> None:
    """Write meta.json and the device files beside the library, then move everything into
    ``output_dir``; each move replaces a file atomically."""
    (work / META_FILE).write_text(json_dumps(meta, indent=2) + "\n")
    _write_runner_files(work, meta)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (ONNX_FILE, LIBRARY, META_FILE, RUNNER, README):
        os.replace(work / name, output_dir / name)


def _meta(export_meta, target, resolved, tvm, linker, compile_seconds, host_check) -> dict:
    import tvm_ffi

    return {
        **export_meta,
        "target": target,
        "target_name": resolved.tag or (target if isinstance(target, str) else "dict"),
        "resolved_target": json.loads(json_dumps(_plain(resolved.export()))),
        "tvm_version": tvm.__version__,
        "tvm_ffi_version": tvm_ffi.__version__,
        "cross_compiler": Path(linker).name if linker else None,
        "compile_seconds": round(compile_seconds, 2),
        "library": LIBRARY,
        "onnx": ONNX_FILE,
        "check": host_check,
    }


def _input_shapes(path: Path) -> dict[str, list[int]]:
    """The graph's input shapes (static: batch 1), which the runner allocates from."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def _plain(value):
    """TVM containers (Map, Array, tuples) as JSON-able dicts and lists."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)


# -- check --------------------------------------------------------------------------------------
def check_library(library: Path, onnx_path: Path, *, online: bool, seed: int = 0) -> dict:
    """Run the compiled library and onnxruntime on the same random inputs; the largest
    difference over all outputs (logits and, online, the caches of every step)."""
    session = _onnx_session(onnx_path)
    names = [i.name for i in session.get_inputs()]
    shapes = [i.shape for i in session.get_inputs()]
    run_tvm = tvm_runner(library)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s, dtype=np.float32) for s in shapes[:1]]
    inputs += [np.zeros(s, np.float32) for s in shapes[1:]]  # a stream starts with zero caches
    ort_inputs, tvm_inputs = inputs, inputs
    worst, steps = 0.0, CHECK_STEPS if online else 1
    for _ in range(steps):
        expected = session.run(None, dict(zip(names, ort_inputs, strict=True)))
        got = run_tvm(tvm_inputs)
        for name, e, g in zip(session.get_outputs(), expected, got, strict=True):
            diff = float(np.abs(e - g).max()) if e.size else 0.0
            worst = max(worst, diff)
            if not diff <= CHECK_ATOL + CHECK_RTOL * float(np.abs(e).max()):
                raise TvmCompileError(
                    f"the TVM library differs from onnxruntime by {diff:.3g} on {name.name} "
                    f"(tolerance {CHECK_ATOL} + {CHECK_RTOL} x max|onnxruntime|); nothing was "
                    "written"
                )
        # each runtime carries its own caches, as on a device; the next frame is shared
        frame = rng.standard_normal(shapes[0], dtype=np.float32)
        ort_inputs, tvm_inputs = [frame, *expected[1:]], [frame, *got[1:]]
    return {"max_abs_diff": worst, "steps": steps, "reference": "onnxruntime"}


def tvm_runner(library: Path):
    """A function running the compiled library: a list of numpy inputs -> numpy outputs."""
    tvm = import_tvm()
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cpu()
    machine = VirtualMachine(tvm.runtime.load_module(str(library)), device)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = machine["main"](*(tvm.runtime.tensor(x, device) for x in inputs))
        out = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [o.numpy() for o in out]

    return run


def _write_runner_files(work: Path, meta: dict) -> None:
    (work / RUNNER).write_text(RUNNER_SOURCE)
    (work / README).write_text(
        README_TEXT.format(
            mode=meta["mode"],
            target=json.dumps(meta["resolved_target"]),
            tvm_version=meta["tvm_version"],
        )
    )


# -- what goes to the device --------------------------------------------------------------------
# A standalone script (no timeshift on the device): TVM's runtime, numpy and meta.json.
RUNNER_SOURCE = """\
#!/usr/bin/env python3
\"\"\"Run a timeshift model compiled with TVM (`timeshift compile`) on this device.

Needs TVM's runtime (the apache-tvm package, same version as meta.json's tvm_version) and numpy.
Online models step frame by frame with their caches carried; offline models take clips of
num_segments frames. Frames: a .npy of RGB uint8 frames (F, H, W, 3) already resized to the
model's input size, or random frames (a smoke test and a latency measure).
\"\"\"

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", default=str(HERE / "model.so"))
    p.add_argument("--meta", default=str(HERE / "meta.json"))
    p.add_argument("--input", help=".npy of RGB uint8 frames (F, H, W, 3) at the input size")
    p.add_argument(
        "--count", type=int, default=8, help="random frames (online) or clips, without --input"
    )
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args()
    meta = json.loads(Path(args.meta).read_text())

    import tvm
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cpu()
    machine = VirtualMachine(tvm.runtime.load_module(args.library), device)
    shapes = list(meta["input_shapes"].values())
    frames = load_frames(args, meta, shapes[0])
    classes = meta.get("classes") or [str(i) for i in range(meta["num_classes"])]

    def run(inputs):
        out = machine["main"](*(tvm.runtime.tensor(x, device) for x in inputs))
        out = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [o.numpy() for o in out]

    times = []
    if meta["mode"] == "online":
        caches = [np.zeros(s, np.float32) for s in shapes[1:]]  # zeros start a stream
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            logits, *caches = run([frame[None], *caches])
            times.append(time.perf_counter() - start)
            print(f"frame {i}: {top_k(logits[0], classes, args.top)}")
    else:
        t = meta["num_segments"]
        for i in range(len(frames) // t):
            start = time.perf_counter()
            (logits,) = run([frames[i * t : (i + 1) * t][None]])
            times.append(time.perf_counter() - start)
            print(f"clip {i}: {top_k(logits[0], classes, args.top)}")
    if not times:
        raise SystemExit(f"no input: an offline model needs {meta['num_segments']} frames a clip")
    unit = "frame" if meta["mode"] == "online" else "clip"
    steady = times[1:] or times  # the first run allocates
    print(f"latency: {1000 * float(np.median(steady)):.2f} ms per {unit} (median of {len(steady)})")


def load_frames(args, meta, frame_shape):
    \"\"\"(F, C, H, W) float32 frames, normalised with the model's mean and std.\"\"\"
    channels, size = frame_shape[-3], frame_shape[-1]
    count = args.count if meta["mode"] == "online" else args.count * meta["num_segments"]
    if args.input:
        frames = np.load(args.input)
        if frames.ndim != 4 or frames.shape[1:] != (size, size, channels):
            raise SystemExit(f"{args.input}: expected frames (F, {size}, {size}, {channels})")
    else:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (count, size, size, channels), dtype=np.uint8)
    mean = np.asarray(meta["mean"], np.float32)
    std = np.asarray(meta["std"], np.float32)
    frames = (frames.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


def top_k(logits, classes, k):
    order = np.argsort(-logits)[:k]
    return ", ".join(f"{classes[i]} {logits[i]:.3f}" for i in order)


if __name__ == "__main__":
    main()
"""

README_TEXT = """\
timeshift model compiled with Apache TVM {tvm_version} ({mode}), untuned
target: {target}

Files: model.so (the compiled model), model.onnx (the ONNX export it came from), meta.json
(classes, input size, mean/std, cache shapes, target, TVM versions, the check against
onnxruntime), run_on_device.py (runs model.so; needs only TVM's runtime and numpy).

On the device
-------------
  pip install apache-tvm=={tvm_version} numpy    # the same TVM version as the compiler
  python run_on_device.py                  # random frames: smoke test and latency
  python run_on_device.py --input frames.npy   # RGB uint8 (F, H, W, 3) at the input size

Tuning (MetaSchedule), on the device
------------------------------------
The library uses TVM's default schedules, far slower than onnxruntime (11-40x measured on x86
CPUs). Tuning measures candidate schedules on the hardware itself, so run it on the device
(hours for a real model; max_trials_global bounds it):

  pip install apache-tvm=={tvm_version} onnx psutil cloudpickle xgboost
  pip install 'apache-tvm-ffi>=0.1.14.post0,<0.1.15'   # 0.1.15.x crash (segfault) in
                                   # tvm.ir.save_json, which the tuning database writes with
  python - <<'PY'
  import json, onnx, tvm
  from tvm.relax.frontend.onnx import from_onnx
  from tvm.s_tir import meta_schedule as ms
  target = tvm.target.Target(json.load(open("meta.json"))["resolved_target"])
  mod = from_onnx(onnx.load("model.onnx"), keep_params_in_input=False)
  database = ms.relax_integration.tune_relax(
      mod, {{}}, target, "tuning", max_trials_global=2000,
      # a small CPU needs longer than the default 30 s to build a candidate
      builder=ms.builder.LocalBuilder(timeout_sec=300))
  executable = ms.relax_integration.compile_relax(database, mod, target, None)
  executable.export_library("model.so")
  PY

xgboost is the default cost model; cost_model="random" works without it (slower search).
"""
