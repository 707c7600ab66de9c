"""Video detection annotations: ImageNet-VID (ILSVRC2015 VID) and COCO-style video JSON.

Both readers return :class:`~timeshift.detection.structures.DetectionAnnotations`; a malformed
file raises :class:`~timeshift.data.formats.AnnotationError` naming the file and the line (XML,
list files) or the JSON path (``annotations[12].bbox``), what was expected and what was found.

**ImageNet-VID** (the ILSVRC2015 devkit layout)::

    Data/VID/{train,val}/<snippet>/000000.JPEG, 000001.JPEG, ...
    Annotations/VID/{train,val}/<snippet>/000000.xml, ...   (one VOC-style XML per frame)
    ImageSets/VID/val.txt                                   ("<snippet>/<frame> <index>")
    ImageSets/VID/train_<k>.txt, k = 1..30                  ("<snippet> 1" or "<snippet> -1")

Train snippets sit one folder deeper (``ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000``).
The XML's corners are inclusive pixel indices (VOC; the devkit and FGFA's evaluation add 1 to
widths), so a box is read as ``x1 = xmin, x2 = xmax + 1`` in the continuous coordinates of
:mod:`~timeshift.detection.structures`; IoUs computed on these equal the devkit's ``+1`` IoUs.

**Video JSON** (COCO-video, MMTracking's ``CocoVID``)::

    {"categories": [{"id", "name"}], "videos": [{"id", "name"}],
     "images": [{"id", "video_id", "frame_id", "file_name", "width", "height"}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                      "instance_id", "iscrowd", "occluded", "degraded", ...}]}
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree
from xml.parsers import expat

from tqdm.auto import tqdm

# the recognition formats' text reading: UTF-8 with or without BOM, errors naming the line
from timeshift.data.formats import AnnotationError, _lines, _read_text
from timeshift.detection.structures import DetectionAnnotations, FrameBoxes, VideoRecord

__all__ = [
    "IMAGENET_VID_CLASSES",
    "IMAGENET_VID_WNIDS",
    "AnnotationError",
    "read_detection_data",
    "read_imagenet_vid",
    "read_vid_list",
    "read_vid_xml",
    "read_video_json",
    "video_json",
    "write_video_json",
]

_logger = logging.getLogger(__name__)

# the 30 VID synsets in the order of the devkit's meta_vid.mat (ILSVRC2015_VID_ID 1..30), which
# FGFA (lib/dataset/imagenet_vid.py) and MMTracking (imagenet2coco_vid.py) use as class indices
IMAGENET_VID_WNIDS = (
    "n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116",
    "n02958343", "n02402425", "n02084071", "n02121808", "n02503517", "n02118333",
    "n02510455", "n02342885", "n02374451", "n02129165", "n01674464", "n02484322",
    "n03790512", "n02324045", "n02509815", "n02411705", "n01726692", "n02355227",
    "n02129604", "n04468005", "n01662784", "n04530566", "n02062744", "n02391049",
)  # fmt: skip
IMAGENET_VID_CLASSES = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
    "domestic_cat", "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard",
    "monkey", "motorcycle", "rabbit", "red_panda", "sheep", "snake", "squirrel", "tiger",
    "train", "turtle", "watercraft", "whale", "zebra",
)  # fmt: skip
_WNID_INDEX = {wnid: i for i, wnid in enumerate(IMAGENET_VID_WNIDS)}
_FRAME_XML = re.compile(r"^(\d{6})\.xml$")
_FRAME_NAME = re.compile(r"^\d{6}(\.(JPEG|jpg|xml))?$")
_VID_LAYOUT = (
    "the ILSVRC2015 VID layout: Data/VID/<split>/<snippet>/000000.JPEG and "
    "Annotations/VID/<split>/<snippet>/000000.xml"
)
_JSON_LAYOUT = (
    'a COCO-video JSON object with "categories", "videos", "images" and "annotations" lists'
)


# --------------------------------------------------------------------------- XML with lines


@dataclass
class _Node:
    """An XML element with the line it starts on (ElementTree keeps no line numbers)."""

    tag: str
    line: int
    children: list[_Node] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[_Node]:
        return [c for c in self.children if c.tag == tag]


def _refuse_doctype(*_args) -> None:
    # VOC files have no DTD; refusing one rules out entity expansion tricks in a dataset file
    raise AnnotationError("DOCTYPE declarations are not allowed in annotation XML")


def _parse_xml(path: Path, data: bytes) -> _Node:
    """The slow, line-keeping parse: used to say where a file :func:`read_vid_xml` refused
    is wrong (and for files with a DTD, which it refuses)."""
    parser = expat.ParserCreate()
    stack: list[_Node] = []
    roots: list[_Node] = []

    def start(tag: str, _attrs) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = _refuse_doctype
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}: malformed XML ({expat.ErrorString(exc.code)}, column "
            f"{exc.offset + 1}); expected a VOC-style ImageNet-VID annotation"
        ) from None
    except AnnotationError as exc:
        raise AnnotationError(f"{path}:{parser.CurrentLineNumber}: {exc}") from None
    return roots[0]


def _at(path: Path, node) -> str:
    """``file:line`` of an element (``_Node``; ElementTree's elements have no line)."""
    return f"{path}:{node.line}" if isinstance(node, _Node) else str(path)


def _text(node) -> str:
    return (node.text or "").strip()


def _child(node, tag: str, path: Path):
    found = node.find(tag)
    if found is None:
        raise AnnotationError(
            f"{_at(path, node)}: <{node.tag}> has no <{tag}> (expected "
            f"<{node.tag}><{tag}>...</{tag}></{node.tag}>); fix or regenerate the file"
        )
    return found


def _xml_number(node, path: Path) -> float:
    text = _text(node)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"{_at(path, node)}: <{node.tag}> must be a number, got {text!r}")
    return value


def _xml_flag(node, tag: str, path: Path) -> bool:
    found = node.find(tag)
    if found is None:
        return False
    text = _text(found)
    if text not in ("0", "1"):
        raise AnnotationError(f"{_at(path, found)}: <{tag}> must be 0 or 1, got {text!r}")
    return text == "1"


# --------------------------------------------------------------------------- ImageNet-VID


def _vid_object(obj, path: Path, width: int, height: int):
    """``(box, label, track id, occluded, generated)`` of one ``<object>``."""
    name_node = _child(obj, "name", path)
    wnid = _text(name_node)
    if wnid not in _WNID_INDEX:
        raise AnnotationError(
            f"{_at(path, name_node)}: <name> {wnid!r} is not one of the 30 ImageNet-VID "
            f"WordNet ids (n02691156 airplane ... n02391049 zebra)"
        )
    bndbox = _child(obj, "bndbox", path)
    xmin, ymin, xmax, ymax = (
        _xml_number(_child(bndbox, tag, path), path) for tag in ("xmin", "ymin", "xmax", "ymax")
    )
    # inclusive corners -> continuous (x2 = xmax + 1), clipped to the frame like FGFA does
    box = (max(xmin, 0.0), max(ymin, 0.0), min(xmax + 1, width), min(ymax + 1, height))
    if not (box[2] > box[0] and box[3] > box[1]):
        raise AnnotationError(
            f"{_at(path, bndbox)}: <bndbox> must have xmin <= xmax < width and ymin <= ymax < "
            f"height ({width}x{height}), got xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} "
            f"ymax={ymax:g}"
        )
    track = obj.find("trackid")
    track_id = -1 if track is None else int(_xml_number(track, path))
    occluded = _xml_flag(obj, "occluded", path)
    generated = _xml_flag(obj, "generated", path)
    return box, _WNID_INDEX[wnid], track_id, occluded, generated


def read_vid_xml(path: str | os.PathLike) -> tuple[tuple[int, int], FrameBoxes]:
    """One ImageNet-VID frame annotation: ``((height, width), objects)``.

    Objects carry the flags ``"occluded"`` and ``"generated"`` (boxes the annotators'
    tool interpolated) and their ``trackid`` as track id.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if b"<!DOCTYPE" not in data:
        # ElementTree's C parser is ~10x faster than the line-keeping one (a million files
        # in the train split); a file it refuses is parsed again to say where it is wrong
        try:
            return _vid_frame(ElementTree.fromstring(data), path)
        except (ElementTree.ParseError, AnnotationError):
            pass
    return _vid_frame(_parse_xml(path, data), path)


def _vid_frame(root, path: Path) -> tuple[tuple[int, int], FrameBoxes]:
    size = _child(root, "size", path)
    width, height = (int(_xml_number(_child(size, t, path), path)) for t in ("width", "height"))
    if width <= 0 or height <= 0:
        raise AnnotationError(f"{_at(path, size)}: <size> must be positive, got {width}x{height}")
    rows = [_vid_object(obj, path, width, height) for obj in root.findall("object")]
    columns = list(zip(*rows, strict=True)) if rows else [()] * 5
    boxes, labels, tracks, occluded, generated = columns
    flags = {"occluded": occluded, "generated": generated}
    return (height, width), FrameBoxes(boxes, labels, tracks, flags)


def _vid_root(root: Path) -> Path:
    """The folder holding ``Data/VID``: ``root`` or its ``ILSVRC2015`` subfolder."""
    for candidate in (root, root / "ILSVRC2015"):
        if (candidate / "Data" / "VID").is_dir():
            return candidate
    raise AnnotationError(f"{root}: no Data/VID folder; expected {_VID_LAYOUT}")


def read_vid_list(path: str | os.PathLike, *, split: str = "val") -> list[str]:
    """The snippets a list file selects, in order, without repeats.

    Accepts the devkit's ``ImageSets/VID/val.txt`` (``<snippet>/<frame> <index>``: every frame
    line selects its snippet), ``train_<k>.txt`` (``<snippet> 1`` selects, ``<snippet> -1``
    does not) and FGFA's / MMTracking's ``VID_val_videos.txt`` / ``VID_train_15frames.txt`` /
    ``VID_val_frames.txt`` (``<split>/<snippet> ...``; the ``<split>/`` prefix is dropped).
    The whole snippet is read: a list selects videos, not single frames.
    """
    return list(_vid_list(Path(path), split))


def _vid_list(path: Path, split: str) -> dict[str, int]:
    """``{snippet: line}`` of a list file, in order (see :func:`read_vid_list`)."""
    snippets: dict[str, int] = {}
    for number, line in _lines(path):
        tokens = line.split()
        name = tokens[0].strip("/")
        if name.startswith(f"{split}/"):
            name = name[len(split) + 1 :]
        parts = name.split("/")
        if _FRAME_NAME.match(parts[-1]):  # a frame line: its snippet is the folder
            parts = parts[:-1]
        elif len(tokens) == 2 and tokens[1] == "-1":
            continue  # train_<k>.txt: the snippet has no object of class k
        if not parts or any(p in ("", ".", "..") for p in parts):
            raise AnnotationError(
                f"{path}:{number}: expected '<snippet>[/<frame>] ...' with a snippet folder "
                f"relative to Data/VID/{split}, got {line!r}"
            )
        snippets.setdefault("/".join(parts), number)
    return snippets


def _default_snippets(root: Path, split: str, annotations: Path) -> list[str]:
    """The devkit's lists when present (val.txt; the union of train_<k>.txt), else a scan."""
    sets = root / "ImageSets" / "VID"
    if split == "val" and (sets / "val.txt").is_file():
        return read_vid_list(sets / "val.txt", split=split)
    if split == "train":
        lists = sorted(sets.glob("train_*.txt"))
        if lists:
            found = {s for f in lists for s in read_vid_list(f, split=split)}
            return sorted(found)
    return _scan_snippets(annotations)


def _scan_snippets(annotations: Path) -> list[str]:
    """Snippet folders (holding ``000000.xml``) up to two levels below ``annotations``."""
    found = []
    for entry in sorted(p for p in annotations.iterdir() if p.is_dir()):
        if (entry / "000000.xml").is_file():
            found.append(entry.name)
            continue
        found += [
            f"{entry.name}/{sub.name}"
            for sub in sorted(p for p in entry.iterdir() if p.is_dir())
            if (sub / "000000.xml").is_file()
        ]
    return found


def _read_snippet(root: Path, split: str, snippet: str) -> VideoRecord:
    folder = root / "Annotations" / "VID" / split / snippet
    frames_dir = root / "Data" / "VID" / split / snippet
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: annotation folder not found; expected {_VID_LAYOUT}")
    if not frames_dir.is_dir():
        raise AnnotationError(f"{frames_dir}: frame folder not found; expected {_VID_LAYOUT}")
    numbers = sorted(int(m.group(1)) for n in os.listdir(folder) if (m := _FRAME_XML.match(n)))
    if not numbers:
        raise AnnotationError(f"{folder}: no 000000.xml ...; expected {_VID_LAYOUT}")
    missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
    if missing:
        raise AnnotationError(
            f"{folder / f'{missing[0]:06d}.xml'}: missing (the frames of a snippet are numbered "
            f"from 000000 without gaps; {len(missing)} missing)"
        )
    size, frames = None, []
    for k in numbers:
        xml = folder / f"{k:06d}.xml"
        frame_size, boxes = read_vid_xml(xml)
        if size is not None and frame_size != size:
            raise AnnotationError(
                f"{xml}: <size> is {frame_size[1]}x{frame_size[0]} but the snippet's first "
                f"frame is {size[1]}x{size[0]} (expected one size per snippet)"
            )
        size = frame_size
        frames.append(boxes)
    paths = [str(frames_dir / f"{k:06d}.JPEG") for k in numbers]
    return VideoRecord(snippet, paths, frames, size)


def _listed_snippets(path: Path, split: str, annotations: Path) -> list[str]:
    listed = _vid_list(path, split)
    for snippet, line in listed.items():
        if not (annotations / snippet).is_dir():
            raise AnnotationError(
                f"{path}:{line}: snippet {snippet!r} has no annotation folder "
                f"{annotations / snippet}; expected snippets relative to {annotations}"
            )
    return list(listed)


def read_imagenet_vid(
    root: str | os.PathLike,
    split: str = "val",
    *,
    list_file: str | os.PathLike | None = None,
    max_videos: int | None = None,
) -> DetectionAnnotations:
    """Read an ImageNet-VID split.

    Args:
        root: the dataset folder (holding ``Data/VID`` and ``Annotations/VID``; its parent
            holding ``ILSVRC2015/`` works too).
        split: ``"train"`` or ``"val"`` (the folder under ``Data/VID`` and
            ``Annotations/VID``).
        list_file: which snippets to read (see :func:`read_vid_list`). ``None``: the devkit's
            ``ImageSets/VID/val.txt`` (val) or the union of ``train_<k>.txt`` (train) when
            present, else every snippet folder found, sorted.
        max_videos: read only the first this many snippets (quick experiments).

    Returns:
        the 30 classes (readable names, devkit order) and one :class:`VideoRecord` per
        snippet, ``video_id`` the snippet path relative to the split folder.
    """
    root = _vid_root(Path(root))
    annotations = root / "Annotations" / "VID" / split
    if not annotations.is_dir():
        raise AnnotationError(f"{annotations}: split folder not found; expected {_VID_LAYOUT}")
    if list_file is not None:
        snippets = _listed_snippets(Path(list_file), split, annotations)
    else:
        snippets = _default_snippets(root, split, annotations)
    if max_videos is not None:
        snippets = snippets[:max_videos]
    if not snippets:
        raise AnnotationError(f"{annotations}: no snippets selected; expected {_VID_LAYOUT}")
    videos = [
        _read_snippet(root, split, s)
        for s in tqdm(snippets, desc=f"ImageNet-VID {split}", unit="video", leave=False)
    ]
    _logger.info("read %d ImageNet-VID %s snippets from %s", len(videos), split, root)
    return DetectionAnnotations(list(IMAGENET_VID_CLASSES), videos, source=str(root))


# --------------------------------------------------------------------------- video JSON

# annotation keys read as flags (JSON name -> flag name); other boolean keys keep their name
_JSON_FLAGS = {
    "iscrowd": "ignore",
    "ignore": "ignore",
    "occluded": "occluded",
    "is_occluded": "occluded",
    "degraded": "degraded",
    "generated": "generated",
}
_NOT_FLAGS = {"id", "image_id", "video_id", "category_id", "bbox", "instance_id", "track_id"}


class _Json:
    """Checks on one JSON file: errors name the file and the JSON path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> AnnotationError:
        return AnnotationError(f"{self.path}: {where}: {message}")

    def get(self, obj: dict, key: str, where: str, *, expected: str, check, default=...):
        if not isinstance(obj, dict):
            raise self.error(where, f"expected an object {{...}}, got {_short(obj)}")
        if key not in obj:
            if default is not ...:
                return default
            raise self.error(where, f"missing {key!r} (expected {expected})")
        value = obj[key]
        if not check(value):
            raise self.error(f"{where}.{key}", f"expected {expected}, got {_short(value)}")
        return value

    def id(self, obj: dict, key: str, where: str) -> int:
        return self.get(obj, key, where, expected="an integer id", check=_is_int)

    def list(self, data: dict, key: str, *, required: bool = True) -> list:
        default = ... if required else []
        return self.get(data, key, "top level", expected="a list", check=_is_list, default=default)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value) -> bool:
    return isinstance(value, list)


def _is_bbox(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[2] > 0
        and value[3] > 0
    )


def _is_flag(value) -> bool:
    return isinstance(value, bool) or value in (0, 1)


def _load_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); expected "
            f"{_JSON_LAYOUT}"
        ) from None


def _index_by_id(j: _Json, items: list, name: str) -> dict[int, int]:
    """``{id: position}`` of a top-level list; a repeated id is an error."""
    index: dict[int, int] = {}
    for k, item in enumerate(items):
        ident = j.id(item, "id", f"{name}[{k}]")
        if ident in index:
            raise j.error(f"{name}[{k}].id", f"{ident} repeats {name}[{index[ident]}].id")
        index[ident] = k
    return index


def _json_classes(j: _Json, categories: list) -> tuple[list[str], dict[int, int]]:
    """Class names (categories sorted by id) and ``{category id: class index}``."""
    positions = _index_by_id(j, categories, "categories")
    for k in positions.values():
        j.get(categories[k], "name", f"categories[{k}]", expected="a string", check=_is_str)
    order = sorted(positions)
    classes = [categories[positions[i]]["name"] for i in order]
    return classes, {ident: c for c, ident in enumerate(order)}


def _is_str(value) -> bool:
    return isinstance(value, str) and bool(value)


def _positive_int(value) -> bool:
    return _is_int(value) and value > 0


def _json_frames(j: _Json, images: list, videos: list) -> dict[int, list[int]]:
    """Image positions of each video (by video position), in frame order."""
    video_index = _index_by_id(j, videos, "videos")
    by_video: dict[int, dict[int, int]] = {k: {} for k in range(len(videos))}
    for k, image in enumerate(images):
        where = f"images[{k}]"
        video = j.id(image, "video_id", where)
        if video not in video_index:
            raise j.error(f"{where}.video_id", f"{video} is not the id of any entry of videos")
        frame = j.get(
            image, "frame_id", where, expected="a 0-based frame index", check=_non_negative
        )
        frames = by_video[video_index[video]]
        if frame in frames:
            raise j.error(
                f"{where}.frame_id",
                f"video {_video_name(videos, video_index[video])!r} has frame {frame} twice "
                f"(images[{frames[frame]}] and images[{k}])",
            )
        frames[frame] = k
    return {v: _in_order(j, frames, videos, v) for v, frames in by_video.items()}


def _non_negative(value) -> bool:
    return _is_int(value) and value >= 0


def _video_name(videos: list, position: int) -> str:
    name = videos[position].get("name") if isinstance(videos[position], dict) else None
    return str(name) if name is not None else str(videos[position]["id"])


def _in_order(j: _Json, frames: dict[int, int], videos: list, position: int) -> list[int]:
    name = _video_name(videos, position)
    if not frames:
        raise j.error(f"videos[{position}]", f"video {name!r} has no images")
    expected = range(len(frames))
    missing = next((f for f in expected if f not in frames), None)
    if missing is not None:
        raise j.error(
            f"videos[{position}]",
            f"video {name!r} has no image with frame_id {missing} (frame_id is 0-based and "
            f"every frame from 0 to {max(frames)} needs an image)",
        )
    return [frames[f] for f in expected]


def _json_annotations(
    j: _Json, annotations: list, image_index: dict[int, int], class_index: dict[int, int]
) -> dict[int, list[tuple[int, dict]]]:
    """The checked annotations of each image position: ``[(label, annotation)]``."""
    per_image: dict[int, list[tuple[int, dict]]] = {}
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        image = j.id(ann, "image_id", where)
        if image not in image_index:
            raise j.error(f"{where}.image_id", f"{image} is not the id of any entry of images")
        category = j.id(ann, "category_id", where)
        if category not in class_index:
            known = sorted(class_index)
            raise j.error(
                f"{where}.category_id",
                f"{category} is not a category id (known: {known[:10]}"
                f"{' ...' if len(known) > 10 else ''})",
            )
        j.get(ann, "bbox", where, expected="[x, y, w, h] with finite w > 0, h > 0", check=_is_bbox)
        for key in ("instance_id", "track_id"):
            j.get(ann, key, where, expected="an integer", check=_is_int, default=None)
        for key in _JSON_FLAGS:
            j.get(ann, key, where, expected="true/false or 0/1", check=_is_flag, default=None)
        per_image.setdefault(image_index[image], []).append((class_index[category], ann))
    return per_image


def _flag_names(annotations: list) -> list[str]:
    """Flags of the whole file, so that every frame carries the same ones."""
    names: dict[str, None] = {}
    for ann in annotations:
        for key, value in ann.items():
            if key in _JSON_FLAGS:
                names.setdefault(_JSON_FLAGS[key], None)
            elif key not in _NOT_FLAGS and isinstance(value, bool):
                names.setdefault(key, None)
    return list(names)


def _annotation_flag(ann: dict, name: str) -> bool:
    known = [k for k, v in _JSON_FLAGS.items() if v == name]
    if known:  # checked to be true/false or 0/1
        return any(ann.get(k) == 1 for k in known)
    return ann.get(name) is True


def _frame_boxes(rows: list[tuple[int, dict]], flags: list[str]) -> FrameBoxes:
    boxes = [
        (x, y, x + w, y + h) for x, y, w, h in (ann["bbox"] for _, ann in rows)
    ]  # COCO [x, y, w, h] -> corners (both continuous)
    tracks = [ann.get("instance_id", ann.get("track_id", -1)) for _, ann in rows]
    values = {name: [_annotation_flag(ann, name) for _, ann in rows] for name in flags}
    return FrameBoxes(boxes, [label for label, _ in rows], tracks, values)


def _frame_size(j: _Json, images: list, positions: list[int], name: str) -> tuple[int, int]:
    sizes = set()
    for k in positions:
        dims = [
            j.get(
                images[k], key, f"images[{k}]", expected="a positive integer", check=_positive_int
            )
            for key in ("height", "width")
        ]
        sizes.add(tuple(dims))
        if len(sizes) > 1:
            raise j.error(
                f"images[{k}]", f"video {name!r} mixes frame sizes {sorted(sizes)} (one per video)"
            )
    return sizes.pop()


def read_video_json(
    path: str | os.PathLike, *, image_root: str | os.PathLike | None = None
) -> DetectionAnnotations:
    """Read a COCO-video JSON (MMTracking's ``CocoVID`` format).

    Args:
        path: the JSON file.
        image_root: the folder ``file_name`` is relative to (default: the JSON's folder).

    Classes are the categories sorted by id; videos keep the order of ``"videos"``; a video's
    frames are its images ordered by ``frame_id``, which must run from 0 without gaps or
    repeats. ``bbox`` is COCO's ``[x, y, w, h]``. Track ids come from ``instance_id`` (or
    ``track_id``). Flags: ``iscrowd`` / ``ignore`` -> ``"ignore"``, ``occluded`` /
    ``is_occluded`` -> ``"occluded"``, ``degraded``, ``generated``, and any other boolean key
    under its own name.
    """
    path = Path(path)
    j = _Json(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise j.error("top level", f"expected {_JSON_LAYOUT}, got {_short(data)}")
    classes, class_index = _json_classes(j, j.list(data, "categories"))
    videos, images = j.list(data, "videos"), j.list(data, "images")
    annotations = j.list(data, "annotations", required=False)
    image_index = _index_by_id(j, images, "images")
    per_image = _json_annotations(j, annotations, image_index, class_index)
    flags = _flag_names(annotations)
    root = Path(image_root) if image_root is not None else path.parent
    records, names = [], {}
    for position, frames in _json_frames(j, images, videos).items():
        name = j.get(
            videos[position], "name", f"videos[{position}]", expected="a string", check=_is_str
        )
        if names.setdefault(name, position) != position:
            raise j.error(f"videos[{position}].name", f"{name!r} repeats videos[{names[name]}]")
        files = [
            j.get(images[k], "file_name", f"images[{k}]", expected="a string", check=_is_str)
            for k in frames
        ]
        boxes = [_frame_boxes(per_image.get(k, []), flags) for k in frames]
        size = _frame_size(j, images, frames, name)
        records.append(VideoRecord(name, [str(root / f) for f in files], boxes, size))
    return DetectionAnnotations(classes, records, source=str(path))


def _json_annotation(frame: FrameBoxes, i: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in frame.boxes[i])
    ann = {
        "category_id": int(frame.labels[i]) + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
    }
    if frame.track_ids[i] >= 0:  # -1: unknown, read back as -1 when absent
        ann["instance_id"] = int(frame.track_ids[i])
    for name, values in frame.flags.items():
        if name == "ignore":  # COCO's name for "not counted"
            ann["iscrowd"] = int(values[i])
        else:
            ann[name] = bool(values[i])
    return ann


def _relative(file: str, root: Path) -> str:
    try:
        return Path(os.path.relpath(file, root)).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return file


def video_json(
    annotations: DetectionAnnotations, *, image_root: str | os.PathLike
) -> dict[str, list]:
    """The COCO-video JSON object of ``annotations`` (what :func:`write_video_json` writes);
    ``file_name`` relative to ``image_root``. Ids count from 1, categories in class order."""
    root = Path(image_root)
    out: dict[str, list] = {
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(annotations.classes)],
        "videos": [],
        "images": [],
        "annotations": [],
    }
    for v, video in enumerate(annotations.videos, start=1):
        if len(video.frames) != video.num_frames:
            raise ValueError(
                f"video {video.video_id}: the JSON format lists frame images, this video is a "
                f"file ({video.path}); extract its frames first"
            )
        out["videos"].append({"id": v, "name": video.video_id})
        height, width = video.size
        for frame_id, (file, frame) in enumerate(zip(video.frames, video.annotations, strict=True)):
            image_id = len(out["images"]) + 1
            out["images"].append(
                {
                    "id": image_id,
                    "video_id": v,
                    "frame_id": frame_id,
                    "file_name": _relative(file, root),
                    "width": int(width),
                    "height": int(height),
                }
            )
            for i in range(len(frame)):
                ann = {"id": len(out["annotations"]) + 1, "image_id": image_id, "video_id": v}
                out["annotations"].append(ann | _json_annotation(frame, i))
    return out


def write_video_json(
    annotations: DetectionAnnotations,
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
) -> Path:
    """Write ``annotations`` as a COCO-video JSON that :func:`read_video_json` reads back
    equal (boxes as float32, frames as the same files).

    Args:
        annotations: what to write.
        path: the JSON file (written atomically: a crash leaves the previous file).
        image_root: ``file_name`` is written relative to it (default: the JSON's folder).
    """
    from timeshift.models.checkpoints import atomic_write

    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    text = json.dumps(video_json(annotations, image_root=root.absolute()), separators=(",", ":"))
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- detection


def read_detection_data(path: str | os.PathLike, **kwargs) -> DetectionAnnotations:
    """Read a detection dataset, recognising its format: a folder with ``Data/VID`` (or
    ``ILSVRC2015/Data/VID``) is ImageNet-VID (:func:`read_imagenet_vid`, keyword arguments
    ``split``, ``list_file``, ``max_videos``), a ``.json`` file the COCO-video JSON
    (:func:`read_video_json`, keyword argument ``image_root``)."""
    path = Path(path)
    if path.is_dir():
        if any((p / "Data" / "VID").is_dir() for p in (path, path / "ILSVRC2015")):
            return read_imagenet_vid(path, **kwargs)
        raise AnnotationError(f"{path}: a folder without Data/VID; expected {_VID_LAYOUT}")
    if path.suffix.lower() == ".json":
        return read_video_json(path, **kwargs)
    what = "not found" if not path.exists() else "unknown format"
    raise AnnotationError(
        f"{path}: {what}; expected an ImageNet-VID folder ({_VID_LAYOUT}) or a COCO-video "
        f".json file"
    )
