"""The one place that saves, loads and adapts checkpoints.

Formats understood by :func:`load_checkpoint`:

* ``timeshift``: our own, ``{"format": "timeshift", "config", "state_dict", "meta"}`` (or a bare
  ``Recognizer.state_dict()``);
* ``tsm``: the reference TSM code, ``{"epoch", "arch", "state_dict", "best_prec1"}`` with keys
  ``module.base_model.layer1.0.conv1.net.weight`` and ``module.new_fc.weight``;
* ``mmaction2``: ``{"meta", "state_dict"}`` with ``backbone.layer1.0.conv1.conv.net.weight``,
  ``backbone.layer1.0.conv1.bn.weight`` and ``cls_head.fc_cls.weight``;
* ``blvnet``: the official bLVNet-TAM code (IBM/bLVNet-TAM): its released models are bare state
  dicts with keys ``baseline_model.layer1.big.0.conv1.weight``, ``baseline_model.tam.prev.weight``
  and ``new_fc.weight`` (``baseline_model.fc.weight`` when trained without dropout); its training
  checkpoints wrap them as ``{"epoch", "arch", "state_dict", "best_top1", "optimizer"}`` with a
  ``module.`` prefix. The three depthwise convolutions of each TAM (``prev``/``curr``/``next``,
  or ``blending_layers.<i>`` for another range) become the rows of our ``tam.weight``;
* ``torchvision``: a 2D ImageNet ResNet/MobileNetV2 state dict, used to initialise a backbone (its
  classifier is dropped). A ``module.`` prefix (DataParallel) is ignored, so IBM/BigLittleNet's
  ImageNet bLResNet checkpoints initialise a bLVNet-TAM the same way (its TAMs start fresh).

A model whose first conv takes other input channels than the checkpoint's RGB kernel (a flow
model, ``modality="flow"``: ``2 * new_length`` channels) is initialised the reference TSN/TSM way
(``_construct_flow_model``): the RGB kernel averaged over its 3 input channels and copied to
every input channel, its bias (if any) kept as it is. Flow checkpoints (first conv already
``2 * new_length`` channels, e.g. the reference Kinetics flow TSM) load unchanged.

All of them are matched against the model through *canonical* key names with the wrapper segments
(``.net`` of temporal shift/pool, ``.block`` of non-local) removed, which is what lets TSN weights
load into TSM models and back. A classifier whose shape differs (another class count) is dropped
with a warning; any other mismatch raises :class:`CheckpointError` listing the keys.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from timeshift.errors import TimeshiftError
from timeshift.models.recognizer import first_conv

__all__ = [
    "FORMAT_VERSION",
    "SOURCES",
    "CheckpointError",
    "CheckpointWriteError",
    "LoadReport",
    "atomic_save",
    "atomic_write",
    "check_writable",
    "detect_source",
    "file_mode",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "remove_stale_temporaries",
    "save_model",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SOURCES = ("auto", "timeshift", "tsm", "mmaction2", "blvnet", "torchvision")
_WRAPPER_SEGMENTS = frozenset({"net", "block"})
_CLASSIFIER_PREFIXES = ("fc.",)
_MAX_LISTED = 3  # examples in an error: the counts say the rest


class CheckpointError(TimeshiftError):
    """A checkpoint cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    source: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, deliberately unused
    # converted to fit: the first conv's RGB kernel averaged for another modality
    adapted: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)  # in the model, left at their init
    missing: list[str] = field(default_factory=list)  # only when strict=False
    unexpected: list[str] = field(default_factory=list)  # only when strict=False


# -- writing ------------------------------------------------------------------------------------
try:  # writers lock their temporary file so that a cleaner never removes one being written
    import fcntl
except ImportError:  # Windows: no stale-temporary cleanup
    fcntl = None


class CheckpointWriteError(CheckpointError, OSError):
    """A file could not be written (full disk, read-only folder, ...); the file it was to
    replace is intact and no temporary file is left behind. An ``OSError`` too (``errno``
    is the cause's), for callers that catch those."""


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (``mkstemp``
    makes ``0o600`` files, which colleagues and services could not read)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # /proc tells the umask without changing it; os.umask() must set it, racing other threads
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_pattern(path: Path) -> re.Pattern:
    # ".NAME.PID.RANDOM.tmp" (this version) or ".NAME.RANDOM.tmp" (earlier versions)
    return re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writes of ``path`` left next to it.

    Only files of :func:`atomic_write`'s own naming for this ``path`` are considered, and only
    when no live writer holds them (the writer's process has ended and nobody holds the file's
    lock). Returns the removed files.
    """
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    pattern = _temporary_pattern(path)
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and _is_stale(candidate, match.group(1)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
            _logger.info("removed %s, left by an interrupted write", candidate)
    return removed


def _is_stale(temporary: Path, pid: str | None) -> bool:
    if pid is not None and _alive(int(pid)):
        return False  # its writer may be between creating and locking it
    try:
        fd = os.open(temporary, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # a writer holds it
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def check_writable(folder: str | os.PathLike, *, what: str = "folder", hint: str = "") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, before any work
    whose result would have nowhere to go; raises ``OSError`` naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot write to the {what} {folder} ({exc.strerror or exc}){hint}"
        ) from exc
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, flush it to disk, rename it into
    place: whatever instant the process dies, ``path`` is either the previous file or the new
    one, never a truncated mix. The file gets the mode the umask gives (like ``open()``).

    Raises:
        CheckpointWriteError: the folder or the disk refused the write (the message names the
            file and the cause); the previous ``path`` is intact and the temporary removed.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}.{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            os.fchmod(f.fileno(), file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports failed writes as these
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_error(path: Path, exc: BaseException) -> CheckpointWriteError:
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    try:
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    error = CheckpointWriteError(f"cannot write {path} ({cause}{free}); {kept}")
    error.errno = getattr(exc, "errno", None)
    return error


def fsync_folder(folder: Path) -> None:
    # the rename itself reaches the disk only when the folder is flushed
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot flush a folder
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`: a crash mid-write leaves the previous file
    intact, never a truncated checkpoint; a full disk raises :class:`CheckpointWriteError`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    meta: Mapping | None = None,
    extra: Mapping | None = None,
) -> Path:
    """Write weights plus construction config so that :func:`load_model` can rebuild the model.

    Args:
        model: a model built by :func:`timeshift.create_model` (it carries ``config``).
        path: destination file, written atomically.
        meta: extra plain data to store (class names, training epoch, accuracy, ...).
        extra: further top-level entries (the trainer's ``train_state``); ignored by
            :func:`load_model`.
    """
    config = getattr(model, "config", None)
    if not config:
        raise ValueError(
            "save_model needs a model built by timeshift.create_model (it records the "
            "construction config); for other modules save model.state_dict() with atomic_save"
        )
    payload = {
        "format": "timeshift",
        "format_version": FORMAT_VERSION,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        **dict(extra or {}),
    }
    return atomic_save(payload, path)


# -- reading ------------------------------------------------------------------------------------
_EXPECTED = (
    "expected a checkpoint: a torch.save file of tensors and plain containers (timeshift "
    "train's last.pt/best.pt, or a state dict of a supported format)"
)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU with errors that name the file and say
    what it is instead (an ONNX model, a TorchScript archive, text, empty, truncated, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    problem = _not_a_checkpoint(path)
    if problem:
        raise CheckpointError(f"cannot read {path}: {problem}; {_EXPECTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/zip errors come in many types
        unsafe = _unsafe_globals(path)
        numpy = _numpy_globals(unsafe)
        if numpy:
            # numpy arrays and scalars in the metadata (MMAction2's meta, seeds, ...): they are
            # data, rebuilt by numpy's own constructors; nothing else is allowed
            with torch.serialization.safe_globals(numpy):
                return torch.load(path, map_location="cpu", weights_only=True)
        # PyTorch's own text suggests weights_only=False, i.e. running arbitrary code from the
        # file: never pass that on, say what the file holds instead
        others = [n for n in unsafe if not _NUMPY_DATA.fullmatch(n)]
        failure = _load_failure(exc, others[0] if others else None)
        raise CheckpointError(f"cannot read {path}: {failure}; {_EXPECTED}") from None


# what numpy arrays, scalars and dtypes pickle as (numpy 1.x and 2.x module paths)
_NUMPY_DATA = re.compile(
    r"numpy\.(_?core\.multiarray\.(_reconstruct|scalar)|ndarray|dtype|dtypes\.\w+DType)"
)


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of ``path``'s pickle that ``weights_only`` does not allow."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # an older torch, or a file it cannot scan: the original error stands
        return []


def _numpy_globals(names: list[str]) -> list | None:
    """The objects to allow when the only globals that ``weights_only`` refused are numpy's
    data constructors; ``None`` when there are others (or none)."""
    import importlib

    if not names or not all(_NUMPY_DATA.fullmatch(n) for n in names):
        return None
    found = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            return None
    # the dtype of each array is rebuilt through its class (numpy.dtypes.Int64DType, ...),
    # which the scan does not list
    try:
        dtypes = importlib.import_module("numpy.dtypes")
    except ImportError:  # numpy < 1.25 pickles dtypes without these classes
        return found
    return found + [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]


def _not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` is when it cannot be a ``torch.save`` file (read from its first bytes)."""
    import zipfile

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if size == 0:
        return "the file is empty (0 bytes): an interrupted copy or download?"
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(head):
        return (
            "it is an ONNX model (a 'timeshift export' output, run with onnxruntime: "
            "timeshift.export.OnnxRecognizer, or give it to 'stream')"
        )
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (
                f"it is a truncated or corrupt zip archive ({size} bytes; a torch.save file cut "
                "short by a full disk or an interrupted copy?)"
            )
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return (
                "it is a TorchScript archive (torch.jit.save / 'timeshift export --format "
                "torchscript'), which holds a compiled program, not weights; run it with "
                "torch.jit.load"
            )
        if not any(n.endswith("data.pkl") for n in names):
            return f"it is a zip archive without data.pkl ({len(names)} entries), not torch.save"
        return None
    if head[:1] == b"\x80":
        return None  # a pickle (legacy torch.save): torch.load decides, errors explained below
    if _is_text(head):
        first = head.decode("utf-8", errors="replace").splitlines()[0][:60] if head else ""
        return f"it is a text file (starts with {first!r})"
    return f"it is not a PyTorch checkpoint (unknown content, first bytes {head[:8].hex(' ')})"


def _looks_like_onnx(head: bytes) -> bool:
    # an ONNX ModelProto starts with field 1 (ir_version, varint) and names its producer soon
    return head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower())


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _load_failure(exc: Exception, unsafe: str | None = None) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a pickle, without PyTorch's
    advice (``unsafe``: a global it holds that is not allowed, if known)."""
    text = str(exc)
    if isinstance(exc, EOFError) or "Ran out of input" in text or "truncated" in text:
        return "it is a truncated pickle (the file ends too early)"
    if unsafe is None:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        unsafe = found[1] if found else None
    what = f", e.g. {unsafe}" if unsafe else ""
    return (
        f"it is a pickle of Python objects other than tensors and plain containers{what} "
        "(an unknown pickle); it is read with weights_only=True, which never runs code from a "
        "file"
    )


def load_model(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    num_segments: int | None = None,
    max_params: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights (strictly), for
    inference: every tensor of the model must come from the file, classifier included.

    The stored ``meta`` is attached to the model as ``model.checkpoint_meta`` and what was
    loaded as ``model.load_report``. ``path`` may also name published weights of the
    pretrained registry (``"tsm_resnet50.kinetics400_8f"``, where no such file exists): they
    are fetched and loaded with :func:`~timeshift.models.pretrained.load_pretrained`, and
    carry their classes and preprocessing the same way.

    With ``name`` (and ``num_classes``), the model is built with ``create_model(name, ...)``
    instead and the weights are loaded from any supported
    format (reference TSM, MMAction2, ...); its ``checkpoint_meta`` is then empty (no class
    names).

    The model is first built on the meta device (no memory) and compared with the stored
    weights: a config whose shapes do not match them, or a model above ``max_params``
    parameters (default ``$TIMESHIFT_MAX_MODEL_PARAMS``, else 2e9), is refused before anything
    is allocated.

    Args:
        num_segments: frames per clip; default the checkpoint's (8 with ``name``). Another
            value rebuilds the model for that ``T``, which models whose weights do not depend
            on ``T`` (TSN, TSM and the other shift modules, TAM) support.
        max_params: refuse models with more parameters than this.
    """
    if name is None and _registry_name(path):
        from timeshift.models.pretrained import load_pretrained

        return load_pretrained(str(path), num_segments=num_segments, **kwargs)
    if name is not None:
        if num_classes is None:
            raise ValueError(f"loading {path} into {name} needs num_classes")
        config = {"name": name, "num_classes": num_classes, "num_segments": num_segments or 8}
        config["kwargs"] = kwargs
        payload, source = read_checkpoint(path), "auto"
        meta: dict = {}
    else:
        if kwargs or num_classes is not None:
            given = sorted(kwargs) + (["num_classes"] if num_classes is not None else [])
            raise ValueError(
                f"{given} apply with name= only: a timeshift checkpoint rebuilds its model from "
                "its stored config (fine-tune with train to change it)"
            )
        payload = read_checkpoint(path)
        config = dict(_own_config(payload, path))
        if num_segments is not None and num_segments != config["num_segments"]:
            _logger.info(
                "%s: built for %d frames per clip (the checkpoint's: %d)",
                path,
                num_segments,
                config["num_segments"],
            )
            config["num_segments"] = num_segments
        source, meta = "timeshift", dict(payload.get("meta", {}))
    model = _checked_build(config, payload, source, str(path), max_params)
    report = _load(model, payload, source, True, "error", str(path), adapt=False)
    fresh = [k for k in report.initialised if not k.endswith("num_batches_tracked")]
    if fresh:
        raise CheckpointError(
            f"{path} has no weights for {len(fresh)} tensors of {config['name']} (e.g. "
            f"{', '.join(fresh[:3])}): it can initialise this model for training "
            "(train's model.pretrained), not run it"
        )
    model.checkpoint_meta = meta
    model.load_report = report
    return model


def _registry_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` names published weights (``tsm_resnet50.kinetics400_8f``) rather than
    a file: no such file exists and the pretrained registry has the name."""
    from timeshift.models.pretrained import is_pretrained_name

    return isinstance(path, str) and not os.path.exists(path) and is_pretrained_name(path)


def _own_config(payload: Any, path: str | os.PathLike) -> Mapping:
    if not (isinstance(payload, Mapping) and payload.get("format") == "timeshift"):
        raise CheckpointError(
            f"{path} is not a timeshift checkpoint (no 'format': 'timeshift'); to load weights "
            "from another format (reference TSM, MMAction2, ...), pass the model: "
            "load_model(path, name=..., num_classes=...), on the command line --model NAME "
            "--num-classes K --frames T"
        )
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version}; this timeshift reads up to {FORMAT_VERSION}"
        )
    config = payload.get("config")
    if not isinstance(config, Mapping) or not {"name", "num_classes", "num_segments"} <= set(
        config
    ):
        raise CheckpointError(f"{path}: its 'config' lacks name/num_classes/num_segments")
    return config


DEFAULT_MAX_PARAMS = 2_000_000_000


def _max_params(requested: int | None) -> tuple[int, str]:
    if requested is not None:
        return int(requested), "max_params"
    value = os.environ.get("TIMESHIFT_MAX_MODEL_PARAMS")
    if not value:
        return DEFAULT_MAX_PARAMS, "TIMESHIFT_MAX_MODEL_PARAMS"
    try:
        return int(float(value)), "TIMESHIFT_MAX_MODEL_PARAMS"
    except ValueError:
        raise ValueError(
            f"TIMESHIFT_MAX_MODEL_PARAMS={value!r} is not a number (e.g. 2e9)"
        ) from None


def _checked_build(
    config: Mapping, payload: Any, source: str, origin: str, max_params: int | None
) -> nn.Module:
    """``create_model(**config)``, after the same model built on the meta device (shapes, no
    memory) was found small enough and matching the stored weights."""
    from timeshift.models.registry import task_builder

    def build() -> nn.Module:
        try:
            return task_builder(config.get("task", "recognition"))(
                config["name"],
                num_classes=config["num_classes"],
                num_segments=config["num_segments"],
                **config.get("kwargs", {}),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{origin}: cannot build {config['name']} with {config['num_classes']} classes, "
                f"{config['num_segments']} frames and options {dict(config.get('kwargs', {}))}: "
                f"{exc}"
            ) from exc

    with torch.device("meta"):
        skeleton = build()
    params = sum(p.numel() for p in skeleton.parameters())
    limit, knob = _max_params(max_params)
    if params > limit:
        raise CheckpointError(
            f"{origin}: its config ({config['name']}, {config['num_classes']} classes) builds a "
            f"model of {params:,} parameters ({params * 4 / 2**30:.1f} GiB in float32), above "
            f"the limit of {limit:,}; nothing was allocated. If this is intended, raise the "
            f"limit ({knob}, e.g. TIMESHIFT_MAX_MODEL_PARAMS={params})"
        )
    # raises CheckpointError on any shape that does not fit, still without allocating
    _plan(
        skeleton,
        payload,
        source=source,
        strict=True,
        head_mismatch="error",
        origin=origin,
        adapt=False,
    )
    return build()


# prefixes a wrapper adds to every key: DataParallel/DDP ("module."), torch.compile ("_orig_mod.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _state_dict_of(payload: Any, origin: str) -> dict[str, torch.Tensor]:
    state = payload
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        state = payload["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{origin}: no state dict found (expected a 'state_dict' mapping)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin}: the state dict holds no tensors")
    return _unwrapped(tensors)


def _unwrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the prefixes that wrappers put on every key, however nested (a
    compiled DDP model saves ``module._orig_mod.backbone...``), whatever the source format."""
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k.removeprefix(prefix): v for k, v in state.items()}


def detect_source(payload: Any) -> str:
    """Guess which format a loaded checkpoint is in (one of ``SOURCES`` but ``"auto"``)."""
    if isinstance(payload, Mapping) and payload.get("format") == "timeshift":
        return "timeshift"
    keys = list(_state_dict_of(payload, "checkpoint"))
    stripped = [k.removeprefix("module.") for k in keys]
    if any(k.startswith("baseline_model.") for k in stripped):
        return "blvnet"  # checked before "tsm": both name their classifier new_fc
    if any(k.startswith(("base_model.", "new_fc.")) for k in stripped):
        return "tsm"
    if any(k.startswith("cls_head.") for k in keys) or "backbone.conv1.conv.weight" in keys:
        return "mmaction2"
    if any(k.startswith("backbone.") for k in keys):
        return "timeshift"
    if any(re.match(r"^features\.\d+\.conv\.0\.weight$", k) for k in keys):
        return "tsm"  # the reference online demo's bare MobileNetV2 (plain Sequential blocks)
    if any(k.startswith(("conv1.", "layer1.", "features.")) for k in stripped):
        return "torchvision"
    raise CheckpointError(
        "cannot tell the checkpoint format from its keys (first: "
        f"{keys[:3]}); pass source= one of {SOURCES[1:]}"
    )


# -- key adaptation -------------------------------------------------------------------------------
def _canonical(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS)


def _from_tsm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("new_fc."):
            key = "fc." + key.removeprefix("new_fc.")
        elif key.startswith(("base_model.fc.", "base_model.classifier.")):
            # with dropout=0 the reference replaces the backbone's last layer by the classifier
            key = "fc." + key.split(".", 2)[2]
        elif key.startswith("base_model."):
            key = "backbone." + key.removeprefix("base_model.")
        elif key.startswith("classifier."):
            # the online demo's bare MobileNetV2: features.* and a plain Linear classifier
            key = "fc." + key.removeprefix("classifier.")
        else:
            key = "backbone." + key
        out[key] = value
    return out


_MM_CONV = re.compile(r"\.conv(\d)\.conv\.")
_MM_BN = re.compile(r"\.conv(\d)\.bn\.")
# mmcv NonLocal3d (ConvModule-based) -> the reference layout (plain convs, W = conv + BN)
_MM_NON_LOCAL = {
    ".non_local_block.theta.conv.": ".nl.theta.",
    ".non_local_block.phi.0.conv.": ".nl.phi.0.",
    ".non_local_block.g.0.conv.": ".nl.g.0.",
    ".non_local_block.conv_out.conv.": ".nl.W.0.",
    ".non_local_block.conv_out.bn.": ".nl.W.1.",
}


def _from_mmaction2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("cls_head.fc_cls."):
            key = "fc." + key.removeprefix("cls_head.fc_cls.")
        else:
            key = _MM_CONV.sub(r".conv\1.", key)
            key = _MM_BN.sub(r".bn\1.", key)
            key = key.replace(".downsample.conv.", ".downsample.0.")
            key = key.replace(".downsample.bn.", ".downsample.1.")
            for old, new in _MM_NON_LOCAL.items():
                key = key.replace(old, new)
        out[key] = value
    # mmcv's conv_out has no bias (a norm follows it): the reference's W.0 bias is then zero
    for key in [k for k in out if k.endswith(".nl.W.0.weight")]:
        bias = key.removesuffix("weight") + "bias"
        if bias not in out:
            out[bias] = out[key].new_zeros(out[key].shape[0])
    if any(".nl." in k for k in out):
        _logger.info(
            "MMAction2 non-local blocks mapped assuming its TSM-NL config "
            "(embedded_gaussian, sub_sample=True, use_scale=False)"
        )
    return out


def _from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        if key.startswith(("fc.", "classifier.1.")):
            # the 2D ImageNet classifier: kept only if the model has the same classes
            key = "fc." + key.split(".")[-1]
        else:
            key = "backbone." + key
        out[key] = value
    return out


# official bLVNet-TAM: one depthwise conv per temporal offset, (C, 1, 1, 1) each
_BLV_TAM = re.compile(
    r"^(?P<module>(?:.+\.)?tam)\.(?:(?P<named>prev|curr|next)|blending_layers\.(?P<index>\d+))"
    r"\.weight$"
)
_BLV_TAM_ROWS = {"prev": 0, "curr": 1, "next": 2}


def _from_blvnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    tams: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("new_fc."):
            key = "fc." + key.removeprefix("new_fc.")
        elif key.startswith("baseline_model.fc."):
            # without dropout the official code keeps the classifier inside the backbone
            key = "fc." + key.removeprefix("baseline_model.fc.")
        else:
            key = "backbone." + key.removeprefix("baseline_model.")
        m = _BLV_TAM.match(key)
        if m:
            row = _BLV_TAM_ROWS[m["named"]] if m["named"] else int(m["index"])
            tams.setdefault(m["module"], {})[row] = value
        else:
            out[key] = value
    for module, rows in tams.items():
        if sorted(rows) != list(range(len(rows))):
            raise CheckpointError(
                f"bLVNet checkpoint: {module} has temporal aggregation weights for offsets "
                f"{sorted(rows)}; expected prev/curr/next or blending_layers.0..r-1"
            )
        # row i weights input frame t + i - r//2 of output frame t, as TemporalAggregation
        out[module + ".weight"] = torch.stack([rows[i].reshape(-1) for i in range(len(rows))])
    return out


_REF_MBV2_CONV = re.compile(r"^(backbone\.features\.(\d+)\.conv\.)(\d+)\.(.+)$")
# reference TSM MobileNetV2 (plain Sequential) -> torchvision layout (Conv2dNormActivation)
_REF_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_REF_MBV2_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _mobilenet_reference_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference TSM MobileNetV2 keys (``features.3.conv.0.weight``) to torchvision's."""
    depth: dict[str, int] = {}
    for key in state:
        m = _REF_MBV2_CONV.match(key)
        if m:
            depth[m.group(2)] = max(depth.get(m.group(2), 0), int(m.group(3)))
    out = {}
    for key, value in state.items():
        m = _REF_MBV2_CONV.match(key)
        if m:
            table = _REF_MBV2_EXPAND if depth[m.group(2)] >= 6 else _REF_MBV2_NO_EXPAND
            key = f"{m.group(1)}{table[m.group(3)]}.{m.group(4)}"
        out[key] = value
    return out


def _is_reference_mobilenet(state: Mapping[str, torch.Tensor]) -> bool:
    return any(
        re.match(r"^backbone\.features\.\d+\.conv\.0\.weight$", k) and v.dim() == 4
        for k, v in state.items()
    )


def _to_canonical(payload: Any, source: str, origin: str) -> dict[str, torch.Tensor]:
    state = _state_dict_of(payload, origin)
    if source == "tsm":
        state = _from_tsm(state)
    elif source == "mmaction2":
        state = _from_mmaction2(state)
    elif source == "blvnet":
        state = _from_blvnet(state)
    elif source == "torchvision":
        state = _from_torchvision(state)
    canonical = {_canonical(k): v for k, v in state.items()}
    if source in ("tsm", "torchvision") and _is_reference_mobilenet(canonical):
        canonical = _mobilenet_reference_layout(canonical)
    return canonical


def _listing(title: str, keys: list[str]) -> str:
    if not keys:
        return f"\n  {title}: none"
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"\n  {title} ({len(keys)}): {shown}{more}"


HEAD_MISMATCH = ("drop", "error")


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    *,
    source: str = "auto",
    strict: bool = True,
    head_mismatch: str = "drop",
) -> LoadReport:
    """Load weights from any supported format into ``model``.

    An RGB first conv loaded into a model with other input channels (``modality="flow"``) is
    averaged over its 3 channels and copied to each, the reference TSN/TSM cross-modality
    initialisation (logged, listed in ``LoadReport.adapted``).

    Args:
        model: a :class:`~timeshift.models.Recognizer` (keys ``backbone.*``, ``fc.*``).
        checkpoint: a file path, or an already loaded checkpoint object.
        source: ``"auto"`` or one of ``"timeshift"``, ``"tsm"``, ``"mmaction2"``,
            ``"blvnet"``, ``"torchvision"``.
        strict: raise :class:`CheckpointError` on missing/unexpected keys (the 2D classifier of
            torchvision weights, a classifier with another class count, and new non-local
            blocks or temporal aggregation modules when initialising from 2D weights are
            expected and never an error).
        head_mismatch: a classifier for another class count: ``"drop"`` it (the model's
            classifier keeps its fresh initialisation, with a warning naming both counts:
            fine-tuning initialisation) or ``"error"`` (loading a model to run it;
            :func:`load_model` does this).

    Returns:
        A :class:`LoadReport`.
    """
    origin = str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "checkpoint"
    payload = (
        read_checkpoint(checkpoint) if isinstance(checkpoint, str | os.PathLike) else checkpoint
    )
    return _load(model, payload, source, strict, head_mismatch, origin)


def _load(model, payload, source, strict, head_mismatch, origin, *, adapt=True) -> LoadReport:
    report, mapped = _plan(
        model,
        payload,
        source=source,
        strict=strict,
        head_mismatch=head_mismatch,
        origin=origin,
        adapt=adapt,
    )
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    # our own checkpoints load silently; conversions from other formats are worth a line
    (_logger.debug if report.source == "timeshift" else _logger.info)(
        "loaded %d tensors from %s (%s format); %d left initialised, %d dropped",
        len(mapped),
        origin,
        report.source,
        len(report.initialised),
        len(report.dropped),
    )
    return report


def _plan(
    model: nn.Module,
    payload: Any,
    *,
    source: str,
    strict: bool,
    head_mismatch: str,
    origin: str,
    adapt: bool = True,
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Which checkpoint tensor goes to which model key; raises on anything that does not fit.
    Reads only shapes of ``model``, so a model on the meta device can be checked for free.
    ``adapt``: convert an RGB first conv for another modality (initialisation, not inference)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if head_mismatch not in HEAD_MISMATCH:
        raise ValueError(f"head_mismatch must be one of {HEAD_MISMATCH}, got {head_mismatch!r}")
    if source == "auto":
        source = detect_source(payload)
    report = LoadReport(source=source)
    incoming = _to_canonical(payload, source, origin)

    target = model.state_dict()
    by_canonical: dict[str, str] = {}
    for key in target:
        canon = _canonical(key)
        if canon in by_canonical:
            raise CheckpointError(f"model keys {by_canonical[canon]} and {key} are ambiguous")
        by_canonical[canon] = key

    mapped: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    stem = _first_conv_key(model)
    for canon, value in incoming.items():
        key = by_canonical.get(canon)
        if key is not None and key == stem and adapt and _other_modality(target[key], value):
            value = _average_input_channels(value, target[key].shape[1], origin, key)
            report.adapted.append(key)
        if key is None:
            unexpected.append(canon)
        elif target[key].shape != value.shape and not _inflatable(target[key], value):
            if key.startswith(_CLASSIFIER_PREFIXES) and _other_class_count(target[key], value):
                report.dropped.append(canon)
            else:
                mismatched.append(
                    f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}"
                    + (_input_channels_hint(target[key], value, adapt) if key == stem else "")
                )
        else:
            mapped[key] = value

    missing = [k for k in target if k not in mapped]
    allowed_missing = [k for k in missing if _may_stay_initialised(k, source, report)]
    missing = [k for k in missing if k not in allowed_missing]
    report.initialised = allowed_missing
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            _mismatch_summary(model, payload, source, origin, mismatched, missing, unexpected)
        )
    if any(k.startswith(_CLASSIFIER_PREFIXES) for k in report.dropped):
        _classifier_dropped(model, incoming, source, origin, head_mismatch)
    report.missing, report.unexpected = missing, unexpected
    return report, mapped


def _first_conv_key(model: nn.Module) -> str | None:
    try:
        name, _ = first_conv(model)
    except ValueError:
        return None
    return f"{name}.weight"


_RGB_CHANNELS = 3


def _other_modality(target: torch.Tensor, value: torch.Tensor) -> bool:
    """An RGB first-conv kernel for a first conv with other input channels (flow, stacked
    frames), same kernel otherwise (a 2D kernel for an inflated one included)."""
    return (
        value.dim() >= 4
        and value.shape[1] == _RGB_CHANNELS
        and target.shape[1] != _RGB_CHANNELS
        and target.shape[0] == value.shape[0]
        and target.shape[-2:] == value.shape[-2:]
    )


def _average_input_channels(
    value: torch.Tensor, channels: int, origin: str, key: str
) -> torch.Tensor:
    """The reference TSN/TSM cross-modality initialisation (``_construct_flow_model``): the
    kernel averaged over its input channels, copied to each of ``channels``."""
    shape = (value.shape[0], channels, *value.shape[2:])
    _logger.info(
        "%s: %s is an RGB kernel %s: averaged over its %d input channels and copied to the "
        "model's %d (cross-modality initialisation, as the reference TSN/TSM flow models)",
        origin,
        key,
        tuple(value.shape),
        value.shape[1],
        channels,
    )
    return value.mean(dim=1, keepdim=True).expand(shape).contiguous()


def _input_channels_hint(target: torch.Tensor, value: torch.Tensor, adapt: bool) -> str:
    """Why a first conv does not fit: another modality, named with what to build instead."""
    if value.dim() < 4 or target.shape[1] == value.shape[1]:
        return ""
    theirs, ours = value.shape[1], target.shape[1]
    kind = (
        f"a flow model's (create_model(..., modality='flow', new_length={theirs // 2}))"
        if theirs % 2 == 0 and theirs != _RGB_CHANNELS
        else "an RGB model's"
        if theirs == _RGB_CHANNELS
        else f"{theirs} channels"
    )
    if theirs == _RGB_CHANNELS and not adapt:
        return (
            f" (the checkpoint's first conv is {kind}: it can initialise a model for "
            f"{ours} input channels for training, model.pretrained / load_checkpoint, not run it)"
        )
    return f" (the checkpoint's first conv takes {theirs} input channels: {kind}; the model {ours})"


def _other_class_count(target: torch.Tensor, value: torch.Tensor) -> bool:
    """A classifier tensor for another number of classes over the same features (a different
    feature width is another architecture, not a class count)."""
    return target.dim() == value.dim() and target.shape[1:] == value.shape[1:]


def _classifier_dropped(model, incoming, source, origin, head_mismatch) -> None:
    stored = next((v.shape[0] for k, v in incoming.items() if k.startswith("fc.")), None)
    ours = getattr(model, "num_classes", None)
    counts = f"the checkpoint's classifier has {stored} classes, the model {ours} classes"
    if head_mismatch == "error":
        raise CheckpointError(
            f"{origin}: {counts}. To run it, build the model with num_classes={stored} "
            f"(--num-classes {stored}); to fine-tune on {ours} classes, initialise from it "
            "(train's model.pretrained), which starts a new classifier"
        )
    log = _logger.info if source == "torchvision" else _logger.warning
    log("%s: %s; it was not loaded and keeps its fresh initialisation", origin, counts)


def _architecture(payload: Any) -> str | None:
    """The architecture a checkpoint names, if it names one (our config, the reference's arch)."""
    if not isinstance(payload, Mapping):
        return None
    config = payload.get("config")
    if isinstance(config, Mapping) and config.get("name"):
        return str(config["name"])
    arch = payload.get("arch")
    return str(arch) if isinstance(arch, str) else None


def _mismatch_summary(model, payload, source, origin, mismatched, missing, unexpected) -> str:
    theirs = _architecture(payload)
    ours = (getattr(model, "config", None) or {}).get("name") or type(model).__name__
    stored = f"{source} format" + (f", architecture {theirs}" if theirs else "")
    return (
        f"{origin} ({stored}) does not fit the model {ours}: {len(mismatched)} shape "
        f"mismatches, {len(missing)} tensors missing in the checkpoint, {len(unexpected)} "
        "unexpected; is it a checkpoint of another architecture or model size?"
        + (_listing("shape mismatches", mismatched) if mismatched else "")
        + (_listing("missing in checkpoint", missing) if missing else "")
        + (_listing("unexpected in checkpoint", unexpected) if unexpected else "")
    )


def _inflatable(target: torch.Tensor, value: torch.Tensor) -> bool:
    """A 2D conv kernel for an inflated (3D) one: ``InflatedConv`` inflates it on load."""
    return (
        target.dim() == 5
        and value.dim() == 4
        and target.shape[:2] == value.shape[:2]
        and target.shape[3:] == value.shape[2:]
    )


def _may_stay_initialised(key: str, source: str, report: LoadReport) -> bool:
    if key.endswith("num_batches_tracked"):
        return True  # absent from checkpoints written by old PyTorch versions
    classifier_dropped = any(k.startswith(_CLASSIFIER_PREFIXES) for k in report.dropped)
    if key.startswith(_CLASSIFIER_PREFIXES) and (source == "torchvision" or classifier_dropped):
        return True
    # non-local blocks and temporal aggregation modules added on top of 2D ImageNet weights
    # start fresh
    return source == "torchvision" and (".nl." in key or ".tam." in key)
