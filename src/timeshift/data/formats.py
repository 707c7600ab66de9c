"""Annotation formats: every parser returns the same :class:`Annotations` (records + class names).

Supported: the reference TSM list file and MMAction2 rawframe list (``frame_dir num_frames
label``, optionally with an offset column), MMAction2 video lists (``path label``),
Something-Something v2 JSON, Kinetics CSV, UCF101 and HMDB51 split files, and a plain
class-per-folder tree. A malformed line raises :class:`AnnotationError` naming the file, the line
number and the expected format.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "AnnotationError",
    "Annotations",
    "SampleRecord",
    "kinetics_file_name",
    "read_annotations",
    "read_class_names",
    "read_folder_tree",
    "read_hmdb51_split",
    "read_kinetics_csv",
    "read_rawframe_list",
    "read_sthv2",
    "read_ucf101_split",
    "read_video_list",
    "write_rawframe_list",
    "write_video_list",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class SampleRecord:
    """One video of a dataset.

    Attributes:
        path: video file or frame folder.
        label: class index (``-1`` when unknown, e.g. a test split).
        num_frames: frame count if the annotation gives it.
        offset: index of the first frame of the sample inside the video/folder (0-based).
    """

    path: str
    label: int
    num_frames: int | None = None
    offset: int = 0


@dataclass
class Annotations:
    records: list[SampleRecord]
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def _join(root: str | os.PathLike | None, path: str) -> str:
    return str(Path(root) / path) if root is not None else path


def _lines(path: str | os.PathLike) -> Iterable[tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield number, line


def _int(text: str, path, number: int, expected: str, line: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(
            f"{path}:{number}: expected '{expected}', got {line!r} ({text!r} is not an integer)"
        ) from None


def _given_classes(classes: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str | os.PathLike):
        return read_class_names(classes)
    return list(classes)


def _default_classes(records: list[SampleRecord]) -> list[str]:
    top = max((r.label for r in records), default=-1)
    return [str(i) for i in range(top + 1)]


def _label(text: str, classes: list[str] | None, path, number: int, expected: str, line: str):
    """A label column: an integer, -1 (unknown) or within the class list."""
    label = _int(text, path, number, expected, line)
    if label < -1 or (classes is not None and label >= len(classes)):
        limit = f"[0, {len(classes)})" if classes is not None else ">= 0"
        raise AnnotationError(
            f"{path}:{number}: expected '{expected}' with a label in {limit} (or -1 for "
            f"unknown), got {line!r}"
        )
    return label


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line; ``index name`` lines (UCF101 ``classInd.txt``, 1- or 0-based)
    are ordered by index."""
    rows = list(_lines(path))
    split = [line.split(maxsplit=1) for _, line in rows]
    if rows and all(len(s) == 2 and s[0].isdigit() for s in split):
        indexed = sorted((int(i), name.strip()) for i, name in split)
        first = indexed[0][0]
        if [i for i, _ in indexed] != list(range(first, first + len(indexed))):
            raise AnnotationError(f"{path}: class indices are not consecutive")
        return [name for _, name in indexed]
    return [line for _, line in rows]


def read_rawframe_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    with_offset: bool = False,
) -> Annotations:
    """The reference TSM list / MMAction2 rawframe list: ``frame_dir num_frames label``.

    With ``with_offset`` the MMAction2 variant ``frame_dir offset num_frames label``.
    """
    expected = "frame_dir offset num_frames label" if with_offset else "frame_dir num_frames label"
    names = _given_classes(classes)
    records = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != len(expected.split()):
            raise AnnotationError(f"{path}:{number}: expected '{expected}', got {line!r}")
        values = [_int(p, path, number, expected, line) for p in parts[1:-1]]
        offset, count = values if with_offset else (0, *values)
        if count < 1 or offset < 0:
            raise AnnotationError(
                f"{path}:{number}: expected '{expected}' with num_frames >= 1 and offset >= 0, "
                f"got {line!r}"
            )
        label = _label(parts[-1], names, path, number, expected, line)
        records.append(SampleRecord(_join(root, parts[0]), label, count, offset))
    return Annotations(records, names if names is not None else _default_classes(records))


def read_video_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> Annotations:
    """MMAction2 video list: ``path label`` per line (the path may not contain spaces)."""
    expected = "path label"
    names = _given_classes(classes)
    records = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise AnnotationError(f"{path}:{number}: expected '{expected}', got {line!r}")
        label = _label(parts[1], names, path, number, expected, line)
        records.append(SampleRecord(_join(root, parts[0]), label))
    return Annotations(records, names if names is not None else _default_classes(records))


def _list_name(record: SampleRecord, root) -> str:
    name = os.path.relpath(record.path, root) if root is not None else record.path
    if any(c.isspace() for c in name):
        raise ValueError(f"list files separate fields by spaces; cannot write path {name!r}")
    return name


def write_video_list(path: str | os.PathLike, records: Iterable[SampleRecord], *, root=None):
    """Write ``path label`` lines (paths relative to ``root`` when given)."""
    lines = [f"{_list_name(r, root)} {r.label}\n" for r in records]
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_rawframe_list(
    path: str | os.PathLike, records: Iterable[SampleRecord], *, root=None, with_offset=False
):
    """Write reference-format ``frame_dir num_frames label`` lines (``frame_dir offset
    num_frames label`` with ``with_offset``)."""
    lines = []
    for r in records:
        if r.num_frames is None:
            raise ValueError(f"{r.path}: a rawframe list needs num_frames")
        if r.offset and not with_offset:
            raise ValueError(f"{r.path}: offset {r.offset} needs with_offset=True")
        offset = f" {r.offset}" if with_offset else ""
        lines.append(f"{_list_name(r, root)}{offset} {r.num_frames} {r.label}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def _load_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def read_sthv2(
    labels_json: str | os.PathLike,
    annotations_json: str | os.PathLike,
    *,
    video_root: str | os.PathLike | None = None,
    extension: str = ".webm",
) -> Annotations:
    """Something-Something v2: ``labels.json`` (``{template: "index"}``) and an annotation file
    (``[{"id", "label", "template", "placeholders"}]``; test files carry only ``id``).

    The label of a video is its ``template`` with the ``[...]`` brackets removed, looked up in
    ``labels.json``; videos are ``{id}{extension}`` under ``video_root``.
    """
    mapping = _load_json(labels_json)
    if not isinstance(mapping, dict):
        raise AnnotationError(f"{labels_json}: expected an object {{template: index}}")
    try:
        index = {name: int(i) for name, i in mapping.items()}
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{labels_json}: label indices must be integers ({exc})") from exc
    classes = [name for name, _ in sorted(index.items(), key=lambda kv: kv[1])]
    entries = _load_json(annotations_json)
    if not isinstance(entries, list):
        raise AnnotationError(f"{annotations_json}: expected a list of annotation objects")
    records = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(
                f"{annotations_json}: entry {number}: expected an object with 'id' (and "
                f"'template' for labelled splits), got {entry!r:.80}"
            )
        label = -1
        if "template" in entry:
            template = entry["template"].replace("[", "").replace("]", "")
            if template not in index:
                raise AnnotationError(
                    f"{annotations_json}: entry {number} (id {entry['id']}): template "
                    f"{template!r} is not in {labels_json}"
                )
            label = index[template]
        records.append(SampleRecord(_join(video_root, f"{entry['id']}{extension}"), label))
    return Annotations(records, classes)


def kinetics_file_name(youtube_id: str, start: float, end: float, extension: str = ".mp4") -> str:
    """The usual Kinetics clip name: ``{youtube_id}_{start:06d}_{end:06d}.mp4``."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}{extension}"


def read_kinetics_csv(
    csv_path: str | os.PathLike,
    *,
    video_root: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    extension: str = ".mp4",
    missing: str = "skip",
) -> Annotations:
    """Kinetics CSV (``label,youtube_id,time_start,time_end,split``; test files omit ``label``).

    Videos are looked for as ``video_root/<label>/<name>`` (label as written or with spaces
    replaced by underscores) and ``video_root/<name>``, with ``<name>`` from
    :func:`kinetics_file_name`. ``missing``: ``"skip"`` (log and drop), ``"keep"`` (record the
    first candidate path), or ``"raise"``. Class names default to the sorted labels of the file.
    """
    if missing not in ("skip", "keep", "raise"):
        raise ValueError(f"missing must be 'skip', 'keep' or 'raise', got {missing!r}")
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise AnnotationError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    needed = ["youtube_id", "time_start", "time_end"]
    if any(h not in header for h in needed):
        raise AnnotationError(
            f"{path}:1: expected a header 'label,youtube_id,time_start,time_end,split', got "
            f"{','.join(header)!r}"
        )
    col = {h: i for i, h in enumerate(header)}
    labelled = "label" in col
    parsed = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise AnnotationError(
                f"{path}:{number}: expected {len(header)} fields ({','.join(header)}), got "
                f"{','.join(row)!r}"
            )
        try:
            start, end = float(row[col["time_start"]]), float(row[col["time_end"]])
        except ValueError:
            raise AnnotationError(
                f"{path}:{number}: time_start/time_end must be numbers, got {','.join(row)!r}"
            ) from None
        label = row[col["label"]].strip() if labelled else None
        parsed.append((number, label, row[col["youtube_id"]].strip(), start, end))
    names = _given_classes(classes)
    if names is None:
        names = sorted({label for _, label, *_ in parsed if label is not None})
    index = {name: i for i, name in enumerate(names)}
    records, absent = [], 0
    for number, label, youtube_id, start, end in parsed:
        if label is not None and label not in index:
            raise AnnotationError(f"{path}:{number}: label {label!r} is not a known class")
        name = kinetics_file_name(youtube_id, start, end, extension)
        candidates = [Path(video_root) / name]
        if label is not None:
            candidates[:0] = [
                Path(video_root) / label / name,
                Path(video_root) / label.replace(" ", "_") / name,
            ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            if missing == "raise":
                raise AnnotationError(f"{path}:{number}: video not found: {candidates[0]}")
            absent += 1
            if missing == "skip":
                continue
            found = candidates[0]
        records.append(SampleRecord(str(found), index[label] if label is not None else -1))
    if absent:
        import logging

        logging.getLogger(__name__).warning(
            "%s: %d of %d videos not found under %s (%s)",
            path,
            absent,
            len(parsed),
            video_root,
            "skipped" if missing == "skip" else "kept",
        )
    return Annotations(records, names)


def read_ucf101_split(
    class_ind: str | os.PathLike,
    split_file: str | os.PathLike,
    *,
    video_root: str | os.PathLike | None = None,
) -> Annotations:
    """UCF101 splits: ``classInd.txt`` (``1 ApplyEyeMakeup``) and ``trainlist01.txt``
    (``ApplyEyeMakeup/v_..._c01.avi 1``, 1-based label) or ``testlist01.txt`` (path only; the
    label comes from the class folder)."""
    classes = read_class_names(class_ind)
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    expected = "ClassName/video.avi [label]"
    records = []
    for number, line in _lines(split_file):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0]:
            raise AnnotationError(f"{split_file}:{number}: expected '{expected}', got {line!r}")
        folder = parts[0].split("/")[0].lower()
        if len(parts) == 2:
            label = _int(parts[1], split_file, number, expected, line) - 1
        elif folder in by_name:
            label = by_name[folder]
        else:
            raise AnnotationError(
                f"{split_file}:{number}: class folder {parts[0].split('/')[0]!r} not in {class_ind}"
            )
        if not 0 <= label < len(classes):
            raise AnnotationError(f"{split_file}:{number}: label out of range in {line!r}")
        records.append(SampleRecord(_join(video_root, parts[0]), label))
    return Annotations(records, classes)


def read_hmdb51_split(
    split_dir: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    video_root: str | os.PathLike | None = None,
) -> Annotations:
    """HMDB51's official per-class split files ``<class>_test_split<k>.txt`` whose lines are
    ``video.avi 1|2|0`` (1 train, 2 test, 0 unused); videos under ``video_root/<class>/``."""
    wanted = {"train": "1", "test": "2"}.get(subset)
    if wanted is None:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in Path(split_dir).glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no '*{suffix}' files in {split_dir}")
    classes = [f.name[: -len(suffix)] for f in files]
    records = []
    for label, file in enumerate(files):
        for number, line in _lines(file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(f"{file}:{number}: expected 'video.avi 0|1|2', got {line!r}")
            if parts[1] == wanted:
                records.append(
                    SampleRecord(_join(video_root, f"{classes[label]}/{parts[0]}"), label)
                )
    return Annotations(records, classes)


def read_folder_tree(
    root: str | os.PathLike,
    *,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    frames: bool = False,
) -> Annotations:
    """``root/<class>/<video>`` (or ``<frame folder>`` with ``frames=True``); classes sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise AnnotationError(f"{root}: expected one sub-folder per class, found none")
    records = []
    for label, name in enumerate(classes):
        for item in sorted((root / name).iterdir()):
            if (frames and item.is_dir()) or (
                not frames and item.is_file() and item.suffix.lower() in extensions
            ):
                records.append(SampleRecord(str(item), label))
    return Annotations(records, classes)


FORMATS = ("rawframes", "reference", "videos", "folder")


def read_annotations(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> Annotations:
    """Read a list file or folder whose format is one of :data:`FORMATS` (or guessed).

    ``auto``: a folder is a class-per-folder tree (its sub-folder names are the classes); a text
    file with 3 fields per line a rawframe / reference list, 4 fields the MMAction2 variant with
    an offset, 2 fields a video list. The JSON/CSV/split formats have their own readers
    because they need several files.
    """
    path = Path(path)
    with_offset = False
    if format == "auto":
        if path.is_dir():
            format = "folder"
        else:
            fields = len(next(iter(_lines(path)), (0, ""))[1].split())
            format = "rawframes" if fields in (3, 4) else "videos"
            with_offset = fields == 4
    if format in ("rawframes", "reference"):
        return read_rawframe_list(path, root=root, classes=classes, with_offset=with_offset)
    if format == "videos":
        return read_video_list(path, root=root, classes=classes)
    if format == "folder":
        return read_folder_tree(path)
    raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
