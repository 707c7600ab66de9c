"""Manifests: the videos of a batch-inference job, streamed (never loaded whole).

A manifest is one of (:data:`MANIFEST_FORMATS`, ``auto`` guesses from the name and the first
line):

* ``list``: a timeshift list file: ``PATH LABEL`` (videos), ``PATH FRAMES LABEL`` (rawframes,
  reference) or ``PATH OFFSET FRAMES LABEL`` (MMAction2); the path is the first field;
* ``paths``: a text file of one path or URL per line (spaces allowed; ``#`` comments);
* ``jsonl``: one JSON object per line with a ``path`` field (``.jsonl``, ``.ndjson``);
* ``csv``: a CSV file whose header has a ``path`` column (``.csv``);
* ``parquet``: a Parquet file with a ``path`` column (``.parquet``; needs ``timeshift[parquet]``);
* ``folder``: a folder, walked lazily in sorted order: its video files, and its frame folders
  (a folder holding images and no video).

Relative paths of a manifest file are resolved against ``root`` (default: the manifest's own
folder); URLs (``http://``, ``https://``, ``file://``) are kept as they are. Each item keeps the
path *as written* (the key of its result row) next to the location to read.

:meth:`Manifest.count` reads the whole file once and checks every line, so that a malformed
line stops the job before any work with its file and line number; :meth:`Manifest.__iter__`
then streams the items without holding them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from timeshift.data.formats import VIDEO_EXTENSIONS
from timeshift.errors import TimeshiftError

__all__ = [
    "MANIFEST_FORMATS",
    "OUTPUT_FORMATS",
    "Manifest",
    "ManifestError",
    "ManifestItem",
    "is_url",
    "path_key",
    "shard_of",
]

MANIFEST_FORMATS = ("list", "paths", "jsonl", "csv", "parquet", "folder")
OUTPUT_FORMATS = ("jsonl", "parquet")  # what batch inference writes its rows as
URL_SCHEMES = ("http://", "https://", "file://")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_PARQUET_BATCH = 65536  # rows read at a time from a Parquet manifest


class ManifestError(TimeshiftError, ValueError):
    """A manifest cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ManifestItem:
    """One video of a manifest: ``path`` as written (its result row's key) and ``location``,
    what to open (resolved against the root, or the URL)."""

    path: str
    location: str


def is_url(path: str) -> bool:
    return path.startswith(URL_SCHEMES) or "://" in path[:16]


def path_key(path: str) -> int:
    """A 64-bit key of a manifest path: what resumed jobs remember of finished videos."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "little")


def shard_of(path: str, world_size: int) -> int:
    """The process (rank) a path belongs to among ``world_size``: a partition by hash, the same
    for a path wherever it appears in the manifest and however the manifest is ordered."""
    return path_key(path) % world_size


@dataclass(frozen=True)
class Manifest:
    """The videos of ``source`` (a file or folder) in the given ``format`` (``auto``: guessed)."""

    source: Path
    format: str = "auto"
    root: Path | None = None

    def __post_init__(self) -> None:
        source = Path(self.source)
        object.__setattr__(self, "source", source)
        if not source.exists():
            raise ManifestError(f"manifest not found: {source}")
        if not (source.is_dir() or source.is_file()):
            raise ManifestError(f"{source}: not a regular file or folder (a FIFO would block)")
        chosen = _guess_format(source) if self.format == "auto" else self.format
        if chosen not in MANIFEST_FORMATS:
            raise ManifestError(
                f"manifest format must be 'auto' or one of {MANIFEST_FORMATS}, got {self.format!r}"
            )
        if (chosen == "folder") != source.is_dir():
            raise ManifestError(f"{source}: format {chosen!r} does not fit a {_kind(source)}")
        object.__setattr__(self, "format", chosen)
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))

    def __iter__(self) -> Iterator[ManifestItem]:
        if self.format == "folder":
            for path in _walk(self.source):
                yield ManifestItem(path, path)
            return
        # os.path.join, not Path /: a million joins take seconds less
        base = str(self.root if self.root is not None else self.source.parent)
        for _, path in self._paths():
            if is_url(path) or os.path.isabs(path):
                yield ManifestItem(path, path)
            else:
                yield ManifestItem(path, os.path.join(base, path))

    def count(self) -> int | None:
        """How many videos the manifest lists, every line checked (``None`` for a folder, which
        is only walked while predicting)."""
        if self.format == "folder":
            return None
        if self.format == "parquet":
            return _parquet_file(self.source).metadata.num_rows
        return sum(1 for _ in self._paths())

    def _paths(self) -> Iterator[tuple[int, str]]:
        """``(line, path)`` of a manifest file, each line checked."""
        if self.format == "parquet":
            yield from _parquet_paths(self.source)
            return
        if self.format == "csv":
            yield from _csv_paths(self.source)
            return
        for number, line in _text_lines(self.source):
            yield number, _parse(self.format, self.source, number, line)


def _kind(path: Path) -> str:
    return "folder" if path.is_dir() else "file"


def _guess_format(source: Path) -> str:
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    first = next(_text_lines(source), None)
    if first is None:
        return "paths"
    if first[1].startswith("{"):
        return "jsonl"
    return "list" if _list_fields(first[1]) is not None else "paths"


def _list_fields(line: str) -> list[str] | None:
    """The fields of a list-file line (a path then 1-3 integers), or ``None``."""
    fields = line.split()
    if not 2 <= len(fields) <= 4:
        return None
    try:
        [int(f) for f in fields[1:]]
    except ValueError:
        return None
    return fields


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-empty, non-comment lines, streamed; UTF-8 (a BOM is dropped)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                raise ManifestError(
                    f"{path}:{number}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8"
                ) from None
            if line and not line.startswith("#"):
                yield number, line


def _parse(format: str, source: Path, number: int, line: str) -> str:
    if format == "paths":
        return line
    if format == "list":
        fields = _list_fields(line)
        if fields is None:
            raise ManifestError(
                f"{source}:{number}: expected 'PATH LABEL', 'PATH FRAMES LABEL' or 'PATH OFFSET "
                f"FRAMES LABEL' (a list file), got {line[:200]!r}; a file of bare paths is "
                "read with --manifest-format paths"
            )
        return fields[0]
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}:{number}: not JSON ({exc.msg}): {line[:200]!r}") from None
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or not path:
        raise ManifestError(
            f"{source}:{number}: expected an object with a 'path' string, got {line[:200]!r}"
        )
    return path


def _csv_paths(source: Path) -> Iterator[tuple[int, str]]:
    with open(source, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(
                f"{source}:1: expected a header with a 'path' column, got {reader.fieldnames}"
            )
        for row in reader:
            path = (row.get("path") or "").strip()
            if not path:
                raise ManifestError(f"{source}:{reader.line_num}: empty 'path'")
            yield reader.line_num, path


def _parquet_file(source: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(
            f"{source}: Parquet manifests need pyarrow: pip install 'timeshift[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(source)
    except Exception as exc:  # pyarrow's errors (ArrowInvalid, OSError) for a damaged file
        raise ManifestError(f"{source}: not a readable Parquet file ({exc})") from exc
    if "path" not in parquet.schema_arrow.names:
        raise ManifestError(
            f"{source}: expected a 'path' column, got columns {parquet.schema_arrow.names}"
        )
    return parquet


def _parquet_paths(source: Path) -> Iterator[tuple[int, str]]:
    row = 0
    for batch in _parquet_file(source).iter_batches(batch_size=_PARQUET_BATCH, columns=["path"]):
        for path in batch.column(0).to_pylist():
            row += 1
            if not isinstance(path, str) or not path:
                raise ManifestError(f"{source}: row {row}: 'path' is {path!r}, expected a path")
            yield row, path


def _walk(folder: Path) -> Iterator[str]:
    """Videos and frame folders under ``folder``, depth first in sorted order, one directory
    listed at a time (a tree of millions of files is never held); hidden entries and
    symbolic links to folders are skipped (a link cycle would never end)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ManifestError(f"{folder}: cannot be listed ({exc.strerror or exc})") from exc
    files = [e for e in entries if not e.name.startswith(".") and e.is_file()]
    videos = [e.path for e in files if Path(e.name).suffix.lower() in VIDEO_EXTENSIONS]
    if not videos and any(Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in files):
        yield str(folder)  # a frame folder
        return
    yield from videos
    for entry in entries:
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))


def write_manifest(path: str | os.PathLike, paths) -> Path:
    """A plain ``paths`` manifest of ``paths`` (one per line)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for item in paths:
            f.write(f"{item}\n")
    return path
