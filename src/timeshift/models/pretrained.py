"""Published weights as data: the registry of pretrained checkpoints (``zoo/registry.json``) and
loading them by name.

Every entry is a model name plus a tag (``tsm_resnet50.kinetics400_8f``) with what inference
needs besides the weights: the class names, frames, input size, resize, mean/std and test
sampling, and where each fact came from (the source project's README or model zoo). A loaded
model carries them in ``model.checkpoint_meta`` exactly as a checkpoint written by ``train``
does, so ``predict``, ``test``, ``stream`` and the pipeline read them the same way
(:func:`~timeshift.models.resolve_input_config`), the way torchvision's weights enums carry
their transforms and categories.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.resources
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from torch import nn

from timeshift.errors import TimeshiftError

__all__ = [
    "PretrainedEntry",
    "PretrainedFile",
    "class_names",
    "fetch_pretrained",
    "list_pretrained",
    "load_pretrained",
    "pretrained_entry",
    "register_pretrained",
]

_logger = logging.getLogger(__name__)

_ZOO = importlib.resources.files("timeshift").joinpath("models", "zoo")


class UnknownPretrainedError(TimeshiftError, KeyError):
    """A name that is not in the pretrained registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class PretrainedFile:
    """One published file: where it is (``url`` is ``None`` where the source gives no public
    link), its name in the cache, and the sha256 prefix the source publishes (MMAction2's
    file names end with the first 8 hex digits)."""

    url: str | None
    file_name: str
    sha256_prefix: str | None = None


@dataclass(frozen=True)
class PretrainedEntry:
    """A registry entry (the fields of ``registry.json``; ``None`` where the source does not
    say). ``classes`` names a class list shipped in ``zoo/classes`` (``"sthv1"``), with
    ``":sorted"`` where the source's label indices follow the sorted names, or is the list of
    names itself."""

    name: str
    model: str
    model_kwargs: dict[str, Any]
    source: str
    checkpoint_format: str
    files: tuple[PretrainedFile, ...]
    dataset: str
    num_classes: int
    classes: str | tuple[str, ...]
    num_segments: int
    modality: str
    new_length: int
    input_size: int | None
    scale_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    sampling: dict[str, Any]
    reported: dict[str, float | None]
    license: str | None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainedEntry:
        values = dict(data)
        values["files"] = tuple(PretrainedFile(**f) for f in data["files"])
        for key in ("mean", "std", "classes"):
            if values.get(key) is not None and not isinstance(values[key], str):
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    @property
    def file(self) -> PretrainedFile:
        """The file the weights are loaded from (the first listed)."""
        return self.files[0]

    def class_names(self) -> list[str]:
        if not isinstance(self.classes, str):  # the names themselves (a registered entry)
            return list(self.classes)
        return class_names(self.classes)

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the loaded model carries as ``checkpoint_meta``: the metadata a checkpoint of
        ``train`` has (classes, preprocessing, frames, sampling) plus where it came from. Values
        the source does not state are left out, so the registered architecture's defaults
        apply."""
        meta: dict[str, Any] = {
            "classes": self.class_names(),
            "num_segments": self.num_segments,
            "modality": self.modality,
            "new_length": self.new_length,
            "sampling": _known(self.sampling),
            "pretrained": {
                "name": self.name,
                "source": self.source,
                "url": self.file.url,
                "reported": self.reported,
                "license": self.license,
            },
        }
        for key in ("input_size", "scale_size", "mean", "std"):
            value = getattr(self, key)
            if value is not None:
                meta[key] = list(value) if isinstance(value, tuple) else value
        return meta

    def as_dict(self) -> dict[str, Any]:
        """The entry as ``registry.json`` stores it."""
        data = asdict(self)
        for key in ("mean", "std", "classes"):
            if data[key] is not None and not isinstance(data[key], str):
                data[key] = list(data[key])
        data["files"] = [asdict(f) for f in self.files]
        return data


def _known(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@cache
def _entries() -> dict[str, PretrainedEntry]:
    """The shipped registry, plus what :func:`register_pretrained` added (the dict is kept)."""
    with _ZOO.joinpath("registry.json").open(encoding="utf-8") as fh:
        data = json.load(fh)
    return {e["name"]: PretrainedEntry.from_dict(e) for e in data["entries"]}


def register_pretrained(entry: PretrainedEntry | Mapping[str, Any]) -> PretrainedEntry:
    """Add an entry (e.g. a checkpoint your organisation publishes on its own server) so that
    ``load_pretrained``, ``create_model(pretrained=)``, the CLI and the pipeline find it by
    name. ``entry`` has the fields of ``registry.json``; a name already listed is refused."""
    if not isinstance(entry, PretrainedEntry):
        entry = PretrainedEntry.from_dict(entry)
    model, dot, tag = entry.name.partition(".")
    if not (dot and model == entry.model and tag):
        raise ValueError(
            f"a pretrained entry is named '<model>.<tag>' with model {entry.model!r}, "
            f"got {entry.name!r}"
        )
    if entry.name in _entries():
        raise ValueError(f"pretrained weights {entry.name!r} are already registered")
    if not entry.files:
        raise ValueError(f"{entry.name}: an entry needs at least one file")
    names = entry.class_names()
    if len(names) != entry.num_classes:
        raise ValueError(
            f"{entry.name}: {len(names)} class names for num_classes={entry.num_classes}"
        )
    _entries()[entry.name] = entry
    return entry


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Names (``model.tag``) of the published checkpoints, sorted, optionally filtered by a
    shell-style ``pattern`` (``"tsm_resnet50.*"``, ``"*sthv2*"``)."""
    names = sorted(_entries())
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_pretrained_name(name: str) -> bool:
    return str(name) in _entries()


def pretrained_entry(name: str) -> PretrainedEntry:
    """The registry entry ``name`` (``"tsm_resnet50.kinetics400_8f"``)."""
    try:
        return _entries()[name]
    except KeyError:
        pass
    model, _, tag = str(name).partition(".")
    same_model = [n for n in _entries() if n.partition(".")[0] == model]
    if not tag and same_model:
        hint = f"; give a tag: {', '.join(same_model[:6])}"
    else:
        close = difflib.get_close_matches(str(name), list(_entries()), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownPretrainedError(
        f"no pretrained weights named {name!r}{hint} (see `timeshift models --pretrained`)"
    )


@cache
def _class_list(dataset: str) -> tuple[str, ...]:
    path = _ZOO.joinpath("classes", f"{dataset}.txt")
    if not path.is_file():
        known = sorted(p.name.removesuffix(".txt") for p in _ZOO.joinpath("classes").iterdir())
        raise KeyError(f"no class list {dataset!r}; shipped: {', '.join(known)}")
    return tuple(path.read_text(encoding="utf-8").splitlines())


def class_names(spec: str) -> list[str]:
    """A shipped class list by name (``"kinetics400"``, ``"sthv2"``, ``"jester"``, ``"ucf101"``,
    ``"hmdb51"``, ``"sthv1"``), in the dataset's label order; ``"<name>:sorted"`` in
    alphabetical order (how the reference TSM code numbers Something V1 and Jester)."""
    dataset, _, order = spec.partition(":")
    names = list(_class_list(dataset))
    if order not in ("", "sorted"):
        raise ValueError(f"class list {spec!r}: the order after ':' can only be 'sorted'")
    return sorted(names) if order else names


def fetch_pretrained(name: str, *, progress: bool = True) -> Path:
    """The local file of registry entry ``name``, fetched into the cache first if needed
    (what training's ``model.pretrained=NAME.TAG`` initialises from)."""
    from timeshift.models.download import fetch_weights

    entry = pretrained_entry(name)
    return fetch_weights(
        entry.file.url,
        entry.file.file_name,
        sha256_prefix=entry.file.sha256_prefix,
        progress=progress,
    )


def load_pretrained(
    name: str,
    *,
    num_classes: int | None = None,
    num_segments: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """The model of registry entry ``name`` with its published weights.

    The file is fetched once into the cache (:func:`timeshift.models.download.fetch_weights`:
    ``$TIMESHIFT_CACHE``, resumed when cut, checked against the published hash,
    ``TIMESHIFT_OFFLINE`` / ``TIMESHIFT_WEIGHTS_URL`` for machines without internet), read
    with ``weights_only=True`` and converted from the source's format; every tensor of the
    model must come from it. ``model.checkpoint_meta`` holds the entry's classes,
    preprocessing and sampling, ``model.load_report`` what was loaded.

    Args:
        num_classes: another class count re-initialises the classifier (for fine-tuning; the
            rest is loaded, and a log line says so); the class names are then unknown.
        num_segments: frames per clip, default the entry's. TSM, TSN and TAM weights do not
            depend on it.
        progress: a progress bar while downloading.
        **kwargs: more model options (``dropout``, ``partial_bn``, ...); options that change
            the architecture make the weights not fit, which is an error.
    """
    from timeshift.models.checkpoints import load_checkpoint
    from timeshift.models.registry import create_model

    entry = pretrained_entry(name)
    path = fetch_pretrained(name, progress=progress)
    classes = num_classes or entry.num_classes
    frames = num_segments or entry.num_segments
    model = create_model(
        entry.model,
        num_classes=classes,
        num_segments=frames,
        **{**entry.model_kwargs, **kwargs},
    )
    retrained = classes != entry.num_classes
    report = load_checkpoint(
        model,
        path,
        source=entry.checkpoint_format,
        head_mismatch="drop" if retrained else "error",
    )
    _check_complete(entry, path, report, retrained)
    meta = entry.checkpoint_meta()
    meta["num_segments"] = frames
    if retrained:
        del meta["classes"]
        _logger.info(
            "%s: classifier re-initialised for %d classes (the weights have %d): fine-tuning; "
            "everything else is loaded",
            name,
            classes,
            entry.num_classes,
        )
    if frames != entry.num_segments:
        _logger.info(
            "%s: built for %d frames per clip (published: %d)", name, frames, entry.num_segments
        )
    model.checkpoint_meta = meta
    model.load_report = report
    return model


def _check_complete(entry: PretrainedEntry, path: Path, report, retrained: bool) -> None:
    """Every tensor of the model must come from the file (the classifier excepted when it is
    re-initialised): a published checkpoint that leaves weights at their initialisation is a
    registry or conversion error, never something to run silently."""
    fresh = [
        k
        for k in report.initialised
        if not k.endswith("num_batches_tracked") and not (retrained and k.startswith("fc."))
    ]
    if fresh:
        raise TimeshiftError(
            f"{path} ({entry.name}, {entry.checkpoint_format} format) has no weights for "
            f"{len(fresh)} tensors of {entry.model}, e.g. {', '.join(fresh[:3])}: the file "
            "does not fit its registry entry"
        )
    _logger.info(
        "%s: loaded %d tensors from %s (%s format)%s",
        entry.name,
        len(report.loaded),
        path,
        report.source,
        f"; {len(report.dropped)} unused: {', '.join(report.dropped[:3])}"
        if report.dropped
        else "",
    )
