"""Export to ONNX and TorchScript, verified against eager PyTorch at export time.

Offline models take a clip batch ``video (N, T, 3, H, W)`` and return ``logits (N, K)``. Online
(streaming) models take one frame per stream plus the cache of every shift module and return
the logits of that frame plus the new caches::

    inputs:  frame (N, 3, H, W), cache_0 ... cache_{k-1}
    outputs: logits (N, K), new_cache_0 ... new_cache_{k-1}

``cache_i`` is the ``C_i // fold_div`` channels of the i-th shift module's input from the
previous frame, ``(N, C_i // fold_div, H_i, W_i)``, in model order; zeros start a stream.
What a deployment needs to drive the model (mode, names, cache shapes, classes, input size,
mean and std) is stored in the file: ONNX metadata ``timeshift`` and TorchScript extra file
``timeshift.json``, both JSON (:func:`read_export_meta`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from timeshift.engine.metrics import json_dumps
from timeshift.errors import TimeshiftError
from timeshift.models.checkpoints import file_mode, remove_stale_temporaries
from timeshift.models.preprocessing import resolve_input_config
from timeshift.online.online_model import OnlineModule

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "ExportError",
    "ExportResult",
    "export_model",
    "read_export_meta",
]

_logger = logging.getLogger(__name__)

EXPORT_FORMAT_VERSION = 1
META_KEY = "timeshift"
TORCHSCRIPT_META = "timeshift.json"


class ExportError(TimeshiftError):
    """An export failed, or the exported model does not match eager PyTorch."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely it matches eager PyTorch."""

    path: Path
    format: str
    online: bool
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]
    meta: dict = field(default_factory=dict)


def _onnx_names(num_caches: int, online: bool, output: str) -> tuple[list[str], list[str]]:
    """Graph input and output names; ``output``: the model's own output's name (``logits`` of
    a recognizer, ``maps`` of a detector)."""
    if not online:
        return ["video"], [output]
    caches = [f"cache_{i}" for i in range(num_caches)]
    return ["frame", *caches], [output, *(f"new_{c}" for c in caches)]


def _example_inputs(module, online: bool, batch: int, size: int, frames: int, generator=None):
    """Random inputs: a clip batch, or a frame plus random (not zero) caches so that the
    verification exercises the cache path."""
    channels = int(getattr(module, "in_chans", 3))  # 2 * new_length for a flow model
    if not online:
        return (torch.randn(batch, frames, channels, size, size, generator=generator),)
    caches = module.init_caches(batch, size, size)
    frame = torch.randn(batch, channels, size, size, generator=generator)
    return (frame, *(torch.randn(c.shape, generator=generator) for c in caches))


def _model_meta(model: nn.Module, online: bool, size: int, dynamic_batch: bool, batch: int):
    checkpoint = dict(getattr(model, "checkpoint_meta", None) or {})  # a user's module: none
    config = dict(getattr(model, "config", None) or {})
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "mode": "online" if online else "offline",
        "model": config.get("name"),
        "task": config.get("task", "recognition"),
        "config": config,
        "num_classes": model.num_classes,
        "num_segments": model.num_segments,
        **resolve_input_config(model, input_size=size).as_meta(),
        "classes": checkpoint.get("classes"),
        # the test protocol and the origin travel with the export too
        **{k: checkpoint[k] for k in ("sampling", "pretrained") if checkpoint.get(k)},
        "batch": None if dynamic_batch else batch,
    }


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    online: bool = False,
    batch: int = 1,
    dynamic_batch: bool = False,
    size: int | None = None,
    exporter: str = "dynamo",
    opset: int | None = None,
    drop_future: bool = False,
    split: bool | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export ``model`` (a :class:`~timeshift.models.Recognizer`) and check it against eager.

    Args:
        format: ``"onnx"`` or ``"torchscript"``.
        online: export the streaming model (one frame + caches in, logits + caches out); it
            must be uni-directional unless ``drop_future``.
        batch: batch size of the example input (and of the graph unless ``dynamic_batch``).
        dynamic_batch: let the batch dimension vary (offline clips, or online streams).
        size: frame height and width (default: the checkpoint's input size, else 224); online
            cache shapes depend on it, so online graphs are fixed to it.
        split: ONNX only: export the graph that carries the residual stream split at the
            shifted channels (:mod:`timeshift.export.split`: same inputs, outputs and function
            without slicing the whole stream, which onnxruntime runs faster), online or
            offline. Default: when the architecture supports it and every part is a multiple
            of 8 channels (ResNets); ``True`` forces it (raising if unsupported), ``False``
            exports the plain graph.
        exporter: ONNX only: ``"dynamo"`` (``torch.export``, the default of PyTorch) or
            ``"legacy"`` (the TorchScript-based exporter, faster to run, deprecated upstream).
        verify: run the exported file (onnxruntime / ``torch.jit.load``) and eager PyTorch on
            fresh random inputs -- a different batch size when it is dynamic, several chained
            steps when online -- and raise :class:`ExportError` if they differ by more than
            ``atol + rtol * max|eager|``. The file is only moved into place once it passes.
    """
    if format not in ("onnx", "torchscript"):
        raise ValueError(f"unknown export format {format!r}; expected 'onnx' or 'torchscript'")
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"unknown ONNX exporter {exporter!r}; expected 'dynamo' or 'legacy'")
    path = Path(path)
    size = size or resolve_input_config(model).input_size
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()  # export and verification run on the CPU
    model = model.eval()
    module = OnlineModule(model, drop_future=drop_future) if online else model
    graph = _split_graph(module, split, online) if format == "onnx" else module
    if dynamic_batch and batch < 2:
        batch = 2  # torch.export specialises a dimension of size 1
    example = _example_inputs(module, online, batch, size, model.num_segments)
    num_caches = len(example) - 1
    inputs, outputs = _onnx_names(num_caches, online, getattr(model, "output_name", "logits"))
    meta = _model_meta(model, online, size, dynamic_batch, batch)
    meta.update(
        inputs=inputs,
        outputs=outputs,
        cache_shapes=[list(c.shape[1:]) for c in example[1:]],
        fold_div=[getattr(op, "fold_div", None) for op in module.streaming_ops] if online else None,
        graph=("split" if graph is not module else "concat") if format == "onnx" else None,
    )
    tmp = _temporary_next_to(path)
    try:
        with torch.no_grad():
            if format == "onnx":
                _export_onnx(graph, example, tmp, inputs, outputs, dynamic_batch, exporter, opset)
                _write_onnx_meta(tmp, meta)
                runner = _onnx_runner(tmp)
            else:
                _export_torchscript(module, example, tmp, meta)
                runner = _torchscript_runner(tmp)
            diff = 0.0
            if verify:
                diff = _verify(module, runner, online, batch + dynamic_batch, size, atol, rtol)
        _flush_to_disk(tmp)  # a crash after the rename must not leave an empty file in place
        os.chmod(tmp, file_mode())  # mkstemp made it 0600: give it the mode open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.info(
        "exported %s (%s, %s): max |difference| to eager %.2e", path, format, meta["mode"], diff
    )
    return ExportResult(path, format, online, diff, inputs, outputs, meta)


def _temporary_next_to(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder, made before the (slow) export so that a
    folder that cannot be written is reported at once, by name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the naming of atomic_write (".NAME.PID.RANDOM.tmp"): what a killed export leaves is
        # recognised and removed by the next write of the same file, while a live one's is kept
        remove_stale_temporaries(path)
        prefix = f".{path.name}.{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot write the export to the folder {path.parent} ({exc.strerror or exc}); "
            "choose another output path",
        ) from exc
    os.close(fd)
    return Path(tmp)


def _flush_to_disk(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _split_graph(module: nn.Module, split: bool | None, online: bool) -> nn.Module:
    """The module to trace for an ONNX export; verification always runs ``module``."""
    if split is False:
        return module
    from timeshift.export.split import ALIGN, split_clips, split_stream

    make = split_stream if online else split_clips
    graph = make(module, align=1 if split else ALIGN)
    if graph is None:
        if split:
            raise ExportError(
                "split=True: this architecture has no split-stream form (supported: the "
                "ResNet/ResNeXt and MobileNetV2 backbones with a residual shift, online "
                "uni-directional, offline without temporal pooling or non-local blocks)"
            )
        return module
    return graph


# -- ONNX ---------------------------------------------------------------------------------------
def _export_onnx(module, example, path, inputs, outputs, dynamic_batch, exporter, opset):
    dynamic_axes = {name: {0: "batch"} for name in [*inputs, *outputs]} if dynamic_batch else None
    dynamic_shapes = None
    if dynamic_batch:  # torch.export's form: one spec per positional argument (*caches: a tuple)
        dim = torch.export.Dim("batch")
        first, *rest = [{0: dim} for _ in inputs]
        dynamic_shapes = (first, tuple(rest)) if len(inputs) > 1 else (first,)
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice; the choice is the caller's
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        try:
            if exporter == "legacy":
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset or 17,
                    dynamo=False,
                )
            else:
                _quiet_dynamo_export(
                    lambda: torch.onnx.export(
                        module,
                        example,
                        str(path),
                        input_names=inputs,
                        output_names=outputs,
                        dynamic_shapes=dynamic_shapes,
                        opset_version=opset or 18,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                )
        except ImportError as exc:
            raise ImportError(
                f"ONNX export needs the export extra: pip install 'timeshift[export]' ({exc})"
            ) from exc


def _quiet_dynamo_export(run: Callable[[], object]) -> None:
    # torch.onnx's dynamo path reports each stage on stdout and warns about torchvision ops
    # it cannot register; route both to our log instead of the user's terminal
    import io

    noise = io.StringIO()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(noise):
            run()
    finally:
        onnx_log.setLevel(level)
        if noise.getvalue().strip():
            _logger.debug("torch.onnx: %s", noise.getvalue().strip())


def _write_onnx_meta(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json_dumps(meta)
    onnx.save(proto, str(path))


def _onnx_session(
    path: Path,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    spinning: bool = True,
):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "running ONNX models needs onnxruntime: pip install 'timeshift[export]'"
        ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:  # idle worker threads sleep instead of busy-waiting for the next run
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path), options, providers=list(providers or ["CPUExecutionProvider"])
    )


def _onnx_runner(path: Path):
    session = _onnx_session(path)
    names = [i.name for i in session.get_inputs()]

    def run(*tensors):
        feeds = {n: t.numpy() for n, t in zip(names, tensors, strict=True)}
        return [torch.from_numpy(o) for o in session.run(None, feeds)]

    return run


# -- TorchScript --------------------------------------------------------------------------------
@contextlib.contextmanager
def _jit_quiet() -> Iterator[None]:
    # torch.jit is deprecated upstream and says so on every call; the user chose TorchScript
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _export_torchscript(module, example, path, meta) -> None:
    with _jit_quiet():
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json_dumps(meta)})


def _torchscript_runner(path: Path):
    with _jit_quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(*tensors):
        out = loaded(*tensors)
        return list(out) if isinstance(out, tuple | list) else [out]

    return run


# -- verification -------------------------------------------------------------------------------
def _verify(module, runner, online, batch, size, atol, rtol) -> float:
    generator = torch.Generator().manual_seed(20260)
    model = module.model if online else module
    inputs = _example_inputs(module, online, batch, size, model.num_segments, generator)
    steps = 3 if online else 1
    worst = 0.0
    for _ in range(steps):
        expected = module(*inputs)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        got = runner(*inputs)
        for name, e, g in zip(range(len(expected)), expected, got, strict=True):
            if tuple(e.shape) != tuple(g.shape):
                raise ExportError(
                    f"exported output {name} has shape {tuple(g.shape)}, eager {tuple(e.shape)}"
                )
            diff = (e - g).abs().max().item() if e.numel() else 0.0
            worst = max(worst, diff)
            if not diff <= atol + rtol * e.abs().max().item():
                raise ExportError(
                    f"the exported model differs from eager PyTorch by {diff:.3g} on output "
                    f"{name} (tolerance {atol} + {rtol} x max|eager|)"
                )
        if online:  # chain the eager caches into the next step, with a new frame
            inputs = (torch.randn(inputs[0].shape, generator=generator), *expected[1:])
    return worst


def read_export_meta(path: str | os.PathLike) -> dict:
    """The ``timeshift`` metadata of an exported ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        if META_KEY not in props:
            raise ValueError(f"{path} has no '{META_KEY}' metadata: export it with timeshift")
        return json.loads(props[META_KEY])
    files = {TORCHSCRIPT_META: ""}
    with _jit_quiet():
        try:
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        except RuntimeError as exc:
            raise ValueError(
                f"{path} is neither an ONNX file (.onnx) nor TorchScript: {exc}"
            ) from exc
    if not files[TORCHSCRIPT_META]:
        raise ValueError(f"{path} has no {TORCHSCRIPT_META}: export it with timeshift")
    return json.loads(files[TORCHSCRIPT_META])
