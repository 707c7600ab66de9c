"""Annotation formats: every parser returns the same :class:`Annotations` (records + class names).

Supported: the reference TSM list file and MMAction2 rawframe list (``frame_dir num_frames
label``, optionally with an offset column), MMAction2 video lists (``path label``),
Something-Something v2 JSON, Kinetics CSV, UCF101 and HMDB51 split files, and a plain
class-per-folder tree. A malformed line raises :class:`AnnotationError` naming the file, the line
number and the expected format.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from timeshift.errors import TimeshiftError

_logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "MAX_MISSING_FRACTION",
    "VIDEO_EXTENSIONS",
    "AnnotationError",
    "Annotations",
    "SampleRecord",
    "check_paths",
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
    "require_labels",
    "write_rawframe_list",
    "write_video_list",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


class AnnotationError(TimeshiftError, ValueError):
    """An annotation file is malformed; the message names the file and line."""


# more missing paths than this fraction of a list: fail before any work (likely a wrong root)
MAX_MISSING_FRACTION = 0.5


@dataclass(frozen=True)
class SampleRecord:
    """One video of a dataset.

    Attributes:
        path: video file or frame folder.
        label: class index (``-1`` when unknown, e.g. a test split).
        num_frames: frame count if the annotation gives it.
        offset: index of the first frame of the sample inside the video/folder (0-based).
        line: line (or entry) of the annotation file it comes from, for error messages.
    """

    path: str
    label: int
    num_frames: int | None = None
    offset: int = 0
    line: int | None = field(default=None, compare=False, repr=False)


@dataclass
class Annotations:
    """Records and class names; ``source`` names the annotation file (or folder) they came from
    and ``root`` the folder relative paths were resolved against."""

    records: list[SampleRecord]
    classes: list[str] = field(default_factory=list)
    source: str | None = None
    root: str | None = None

    def __len__(self) -> int:
        return len(self.records)


def _join(root: str | os.PathLike | None, path: str) -> str:
    """``path`` of an annotation file: absolute as written, else relative to ``root``.

    Readers pass the annotation file's folder as ``root`` when the caller gives none, so a list
    means the same files from whatever directory it is read.
    """
    if root is None or os.path.isabs(path):
        return path
    return str(Path(root) / path)


def _base(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """The folder relative paths of annotation file ``path`` resolve against."""
    return str(root) if root is not None else str(Path(path).parent)


def _read_text(path: str | os.PathLike) -> str:
    """The whole annotation file as text: UTF-8 with or without a byte-order mark."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if not path.is_file():  # a FIFO or a device would block a read forever
        raise AnnotationError(f"{path}: not a regular file (expected an annotation text file)")
    data = path.read_bytes()
    try:
        # utf-8-sig drops a leading BOM (Windows editors write one) instead of keeping it as
        # part of the first path or class name
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r}"
            "); save the file as UTF-8"
        ) from None


def _lines(path: str | os.PathLike) -> Iterable[tuple[int, str]]:
    # newline=None: \n, \r\n and \r end a line, as reading in text mode does
    for number, line in enumerate(io.StringIO(_read_text(path), newline=None), start=1):
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

    With ``with_offset`` the MMAction2 variant ``frame_dir offset num_frames label``. Relative
    paths are relative to ``root``, or to the list file's folder when ``root`` is not given.
    """
    expected = "frame_dir offset num_frames label" if with_offset else "frame_dir num_frames label"
    names = _given_classes(classes)
    base = _base(path, root)
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
        records.append(SampleRecord(_join(base, parts[0]), label, count, offset, line=number))
    classes = names if names is not None else _default_classes(records)
    return Annotations(records, classes, source=str(path), root=base)


def read_video_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> Annotations:
    """MMAction2 video list: ``path label`` per line (the path may not contain spaces).

    Relative paths are relative to ``root``, or to the list file's folder without ``root``.
    """
    expected = "path label"
    names = _given_classes(classes)
    base = _base(path, root)
    records = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise AnnotationError(f"{path}:{number}: expected '{expected}', got {line!r}")
        label = _label(parts[1], names, path, number, expected, line)
        records.append(SampleRecord(_join(base, parts[0]), label, line=number))
    classes = names if names is not None else _default_classes(records)
    return Annotations(records, classes, source=str(path), root=base)


def _list_name(record: SampleRecord, root, list_path) -> str:
    """The path as a list line writes it: relative to ``root``; without ``root`` relative to
    the list's folder when the path lies below it (readers resolve against that folder), else
    absolute."""
    if root is not None:
        name = os.path.relpath(record.path, root)
    else:
        folder = os.path.abspath(Path(list_path).parent)
        name = os.path.abspath(record.path)
        if os.path.commonpath([folder, name]) == folder:
            name = os.path.relpath(name, folder)
    if any(c.isspace() for c in name):
        raise ValueError(f"list files separate fields by spaces; cannot write path {name!r}")
    return name


def write_video_list(path: str | os.PathLike, records: Iterable[SampleRecord], *, root=None):
    """Write ``path label`` lines (paths relative to ``root`` when given, else to the list's
    folder, as :func:`read_video_list` reads them)."""
    lines = [f"{_list_name(r, root, path)} {r.label}\n" for r in records]
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_rawframe_list(
    path: str | os.PathLike, records: Iterable[SampleRecord], *, root=None, with_offset=False
):
    """Write reference-format ``frame_dir num_frames label`` lines (``frame_dir offset
    num_frames label`` with ``with_offset``); paths as :func:`write_video_list` writes them."""
    lines = []
    for r in records:
        if r.num_frames is None:
            raise ValueError(f"{r.path}: a rawframe list needs num_frames")
        if r.offset and not with_offset:
            raise ValueError(f"{r.path}: offset {r.offset} needs with_offset=True")
        offset = f" {r.offset}" if with_offset else ""
        lines.append(f"{_list_name(r, root, path)}{offset} {r.num_frames} {r.label}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def _load_json(path: str | os.PathLike):
    text = _read_text(path)
    try:
        return json.loads(text)
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
    ``labels.json``; videos are ``{id}{extension}`` under ``video_root`` (default: the
    annotation file's folder).
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
    base = _base(annotations_json, video_root)
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
        path = _join(base, f"{entry['id']}{extension}")
        records.append(SampleRecord(path, label, line=number))
    return Annotations(records, classes, source=str(annotations_json), root=base)


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
    rows = list(csv.reader(io.StringIO(_read_text(path), newline="")))
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
        label_index = index[label] if label is not None else -1
        records.append(SampleRecord(str(found), label_index, line=number))
    if absent:
        _logger.warning(
            "%s: %d of %d videos not found under %s (%s)",
            path,
            absent,
            len(parsed),
            video_root,
            "skipped" if missing == "skip" else "kept",
        )
    return Annotations(records, names, source=str(path), root=str(video_root))


def read_ucf101_split(
    class_ind: str | os.PathLike,
    split_file: str | os.PathLike,
    *,
    video_root: str | os.PathLike | None = None,
) -> Annotations:
    """UCF101 splits: ``classInd.txt`` (``1 ApplyEyeMakeup``) and ``trainlist01.txt``
    (``ApplyEyeMakeup/v_..._c01.avi 1``, 1-based label) or ``testlist01.txt`` (path only; the
    label comes from the class folder). Videos are under ``video_root`` (default: the split
    file's folder)."""
    classes = read_class_names(class_ind)
    base = _base(split_file, video_root)
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
        records.append(SampleRecord(_join(base, parts[0]), label, line=number))
    return Annotations(records, classes, source=str(split_file), root=base)


def read_hmdb51_split(
    split_dir: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    video_root: str | os.PathLike | None = None,
) -> Annotations:
    """HMDB51's official per-class split files ``<class>_test_split<k>.txt`` whose lines are
    ``video.avi 1|2|0`` (1 train, 2 test, 0 unused); videos under ``video_root/<class>/``
    (default: the split folder)."""
    wanted = {"train": "1", "test": "2"}.get(subset)
    if wanted is None:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in Path(split_dir).glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no '*{suffix}' files in {split_dir}")
    classes = [f.name[: -len(suffix)] for f in files]
    base = str(video_root) if video_root is not None else str(split_dir)
    records = []
    for label, file in enumerate(files):
        for number, line in _lines(file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(f"{file}:{number}: expected 'video.avi 0|1|2', got {line!r}")
            if parts[1] == wanted:
                path = _join(base, f"{classes[label]}/{parts[0]}")
                records.append(SampleRecord(path, label, line=number))
    return Annotations(records, classes, source=str(split_dir), root=base)


def _folder_key(name: str) -> str:
    # "moving left" is written to disk as "moving_left"; case and space/underscore runs are
    # not part of a class's identity
    return re.sub(r"[\s_]+", "_", name.strip().lower())


def _folder_labels(root: Path, folders: list[str], classes: list[str]) -> dict[str, int]:
    """The class index of each sub-folder: its name in ``classes`` (exactly, else ignoring
    case and spaces vs underscores); a folder naming no class is an error."""
    exact = {name: i for i, name in enumerate(classes)}
    keys: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        keys.setdefault(_folder_key(name), []).append(i)
    labels, unknown = {}, []
    for folder in folders:
        found = exact.get(folder)
        if found is None and len(keys.get(_folder_key(folder), [])) == 1:
            found = keys[_folder_key(folder)][0]
        if found is None:
            unknown.append(folder)
        else:
            labels[folder] = found
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:20])
        more = f", ... ({len(classes)} in all)" if len(classes) > 20 else ""
        raise AnnotationError(
            f"{root}: class folder(s) {', '.join(repr(u) for u in unknown)} name no class of "
            f"the model; known classes: {shown}{more}. Rename or remove the folder, or test "
            "with a list file"
        )
    return labels


def read_folder_tree(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | str | os.PathLike | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    frames: bool = False,
) -> Annotations:
    """``root/<class>/<video>`` (or ``<frame folder>`` with ``frames=True``).

    Without ``classes`` the sorted sub-folder names are the classes. With ``classes`` (a model's
    or a training set's class list, or a class-name file) each sub-folder is labelled by the
    index of its name in that list -- a folder holding some of the classes keeps the model's
    labels -- and a folder naming no class raises :class:`AnnotationError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    # hidden folders (.git, .ipynb_checkpoints) are never classes
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise AnnotationError(f"{root}: expected one sub-folder per class, found none")
    names = _given_classes(classes)
    if names is None:
        names, labels = folders, {name: i for i, name in enumerate(folders)}
    else:
        labels = _folder_labels(root, folders, names)
    records = []
    for folder in folders:
        for item in sorted((root / folder).iterdir()):
            if (frames and item.is_dir()) or (
                not frames and item.is_file() and item.suffix.lower() in extensions
            ):
                records.append(SampleRecord(str(item), labels[folder]))
    records.sort(key=lambda r: r.label)  # stable: label order, then file order
    return Annotations(records, names, source=str(root), root=str(root))


def require_labels(ann: Annotations, *, purpose: str = "training") -> Annotations:
    """``ann`` if every record has a class label in ``[0, len(classes))``, else
    :class:`AnnotationError` naming the file and line of the first that has none (``-1``, what
    test lists may carry) or an out-of-range one.

    Training and validation call this up front, so an unlabelled list fails before any work
    rather than as an ``IndexError`` in the middle of an epoch.
    """
    n = len(ann.classes)
    bad = [r for r in ann.records if not 0 <= r.label < n]
    if not bad:
        return ann
    first = bad[0]
    where = ann.source or first.path
    if first.line is not None:
        json_like = where.endswith(".json")
        where = f"{where}, entry {first.line}" if json_like else f"{where}:{first.line}"
    what = "-1 (unknown)" if first.label == -1 else f"{first.label}, outside [0, {n})"
    raise AnnotationError(
        f"{where}: label {what} for {first.path} in a {purpose} list ({len(bad)} of "
        f"{len(ann.records)} samples): every {purpose} sample needs a class index in [0, {n}); "
        "unlabelled (-1) lists are for 'test'/'predict' only"
    )


def check_paths(
    ann: Annotations,
    *,
    max_missing: float = MAX_MISSING_FRACTION,
    show: int = 3,
) -> int:
    """Count the records whose path does not exist (one ``stat`` each) before any work.

    More than ``max_missing`` of them missing usually means a wrong root: raises
    :class:`AnnotationError` naming the list, the count, the first resolved paths and the folder
    they were resolved against. A few missing are logged as a warning. Returns the count.
    """
    missing = [r.path for r in ann.records if not os.path.exists(r.path)]
    if not missing:
        return 0
    source = ann.source or "annotations"
    total = len(ann.records)
    first = ", ".join(missing[:show])
    if len(missing) > max_missing * total:
        where = f"against {ann.root}" if ann.root is not None else "as written"
        raise AnnotationError(
            f"{source}: {len(missing)} of {total} listed paths do not exist (first: {first}); "
            f"relative paths were resolved {where}. Pass --root (data.root / data.val_root) "
            "with the folder the list's paths are relative to (default: the list's own folder)"
        )
    _logger.warning(
        "%s: %d of %d listed paths do not exist (first: %s); they will be skipped",
        source,
        len(missing),
        total,
        first,
    )
    return len(missing)


FORMATS = ("rawframes", "reference", "videos", "folder")


def read_annotations(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    labelled: bool = False,
    check: bool = True,
) -> Annotations:
    """Read a list file or folder whose format is one of :data:`FORMATS` (or guessed).

    ``auto``: a folder is a class-per-folder tree; a text file with 3 fields per line a
    rawframe / reference list, 4 fields the MMAction2 variant with an offset, 2 fields a video
    list. The JSON/CSV/split formats have their own readers because they need several files.

    Args:
        root: folder the list's relative paths are relative to (default: the list's folder).
        classes: class names (list or file). A folder's sub-folders are then labelled by these
            names (a model's classes), not by their own sorted order.
        labelled: require a class label on every record (:func:`require_labels`): training and
            validation lists; test lists may carry ``-1``.
        check: fail before any work when most listed paths do not exist (:func:`check_paths`).
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
        ann = read_rawframe_list(path, root=root, classes=classes, with_offset=with_offset)
    elif format == "videos":
        ann = read_video_list(path, root=root, classes=classes)
    elif format == "folder":
        ann = read_folder_tree(path, classes=classes)
    else:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    if labelled:
        require_labels(ann, purpose="training/validation")
    if check:
        check_paths(ann)
    return ann
