"""A synthetic video-detection dataset in which temporal context provably matters.

Each video shows 1-3 textured blobs moving at constant velocity over a textured background,
bouncing off the borders. Every object has one class for the whole video, told apart **by colour
only**: the classes are hues of equal luminance (chroma added orthogonally to the BT.601 luma
weights), all objects share one shape family, and size, texture, speed and position are drawn
independently of the class. In some frames (spans of 1-3 frames after the first
``clean_start`` frames of a track, about ``degraded_fraction`` of all object-frames) an object's
colour is removed: it is drawn in grey of the very same luminance and texture, optionally also
half hidden by a grey bar. Such a frame's pixels are the same whatever the object's class
(given the seed), so a per-frame detector can localise the object there but not classify it
better than chance, while a detector that saw the object a few frames before (online TSM) can.
Those annotations carry ``"degraded": true``.

The dataset is written in the COCO-video JSON format (MMTracking's CocoVID: ``videos``,
``images`` with ``video_id`` and a 0-based ``frame_id``, ``annotations`` with ``instance_id``)
with lossless PNG frames, and is deterministic given the seed: each video's draws depend only on
(seed, split, index), so videos do not depend on each other or on how many there are.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from timeshift.detection.structures import FrameBoxes
from timeshift.errors import TimeshiftError

__all__ = [
    "DEGRADATIONS",
    "FORMAT_VERSION",
    "HUES",
    "LUMA_WEIGHTS",
    "SPLITS",
    "SyntheticDetectionError",
    "SyntheticDetectionSpec",
    "SyntheticVideo",
    "chroma_direction",
    "make_synthetic_detection",
    "render_video",
    "video_rng",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# ITU-R BT.601 luma, what PIL's convert("L") and OpenCV's RGB2GRAY use: the greyscale a model
# could fall back on is exactly the same for every class
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
# class name -> the RGB direction whose luminance-free part is the class's hue
HUES: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
# how a degraded frame hides the class: "grey" drops the colour; "occlude" drops it too and
# covers half of the object with a grey bar (the box stays the whole object)
DEGRADATIONS = ("grey", "occlude")
SPLITS = ("train", "val")
# meta.json's "written_by": what wrote the folder
_WRITER = "timeshift.detection.synthetic"


class SyntheticDetectionError(TimeshiftError, ValueError):
    """A bad spec, or a folder holding another spec's synthetic detection set."""


@dataclass(frozen=True)
class SyntheticDetectionSpec:
    """What the synthetic detection set looks like; every field changes the files.

    Attributes:
        train_videos, val_videos: videos per split.
        frames: frames per video.
        size: frame height and width in pixels.
        classes: class names, each a key of :data:`HUES` (the class is the object's hue).
        objects: (min, max) objects per video.
        object_size: (min, max) object diameter in pixels.
        speed: (min, max) pixels per frame, drawn log-uniformly so that slow, medium and fast
            objects (FGFA's motion-IoU buckets) all occur: about a third each by default.
        degraded_fraction: the expected share of object-frames whose colour is removed.
        degraded_span: (min, max) length of a run of degraded frames.
        clean_start: the first frames of every track, always clean (they show the class).
        degradations: the ways a degraded span hides the class (:data:`DEGRADATIONS`).
        seed: the dataset's seed.
    """

    train_videos: int = 200
    val_videos: int = 50
    frames: int = 16
    size: int = 64
    classes: tuple[str, ...] = ("red", "green", "blue")
    objects: tuple[int, int] = (1, 3)
    object_size: tuple[int, int] = (12, 22)
    speed: tuple[float, float] = (0.05, 2.5)
    degraded_fraction: float = 0.3
    degraded_span: tuple[int, int] = (1, 3)
    clean_start: int = 3
    degradations: tuple[str, ...] = ("grey",)
    seed: int = 0

    def __post_init__(self) -> None:
        # lists (YAML, OmegaConf) become tuples: the spec stays hashable and compares equal
        for name, kind in (("classes", str), ("degradations", str), ("speed", float)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        for name in ("objects", "object_size", "degraded_span"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = [p for p in self._problems() if p]
        if problems:
            raise SyntheticDetectionError(
                "bad SyntheticDetectionSpec: " + "; ".join(problems) + " (fix these fields)"
            )

    def _problems(self) -> list[str]:
        unknown = [c for c in self.classes if c not in HUES]
        bad_modes = [d for d in self.degradations if d not in DEGRADATIONS]
        lo, hi = self.object_size
        return [
            unknown and f"classes {unknown} are not hues; expected names from {sorted(HUES)}",
            len(set(self.classes)) != len(self.classes) and f"classes {self.classes} repeat",
            len(self.classes) < 2 and "classes: at least 2 expected",
            bad_modes and f"degradations {bad_modes}: expected some of {list(DEGRADATIONS)}",
            not self.degradations and "degradations: at least one expected",
            not 1 <= self.objects[0] <= self.objects[1] and f"objects {self.objects}",
            not 4 <= lo <= hi <= self.size * 0.6
            and f"object_size {self.object_size}: 4 <= min <= max <= 0.6 * size expected",
            not 0 < self.speed[0] <= self.speed[1]
            and f"speed {self.speed}: 0 < min <= max expected",
            not 0 <= self.degraded_fraction < 1
            and f"degraded_fraction {self.degraded_fraction}: 0 <= fraction < 1 expected",
            not 1 <= self.degraded_span[0] <= self.degraded_span[1]
            and f"degraded_span {self.degraded_span}",
            not 0 <= self.clean_start <= self.frames and f"clean_start {self.clean_start}",
            min(self.train_videos, self.val_videos) < 0 and "videos: a count >= 0 expected",
            self.frames < 1 and f"frames {self.frames}: >= 1 expected",
        ]

    def to_dict(self) -> dict:
        """The spec as JSON values (tuples as lists), as ``meta.json`` records it."""
        return json.loads(json.dumps(asdict(self)))

    def folder_name(self) -> str:
        """A folder name unique to this spec (and format version), for a cache directory that
        holds several sets side by side."""
        digest = _digest(json.dumps(self.to_dict(), sort_keys=True))
        return (
            f"synthetic-detection-v{FORMAT_VERSION}-n{self.train_videos}-{self.val_videos}"
            f"-f{self.frames}-s{self.size}-seed{self.seed}-{digest}"
        )


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def chroma_direction(rgb: Sequence[float]) -> np.ndarray:
    """The unit RGB vector of ``rgb``'s hue with no luminance: adding any multiple of it to a
    grey leaves the grey's BT.601 luma unchanged. Its components lie in [-1, 1]."""
    v = np.asarray(rgb, dtype=np.float64)
    d = v - LUMA_WEIGHTS @ v  # the weights sum to 1: this removes exactly the luma
    return d / np.linalg.norm(d)


@dataclass
class SyntheticVideo:
    """One rendered video, in memory.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        annotations: one :class:`FrameBoxes` per frame (track ids 0.. in drawing order, the
            flag ``"degraded"``).
        masks: ``(T, K, H, W)`` bool, each object's own pixels (objects drawn later cover
            earlier ones in ``frames``; the boxes are the whole object).
    """

    frames: np.ndarray
    annotations: list[FrameBoxes]
    masks: np.ndarray


@dataclass
class _Track:
    """One object's draws: everything but ``label`` is drawn independently of the class."""

    label: int
    radius: float
    shape: np.ndarray  # (2, 2): amplitude and phase of the 2nd and 3rd radial harmonics
    luminance: float
    rim: float
    texture: np.ndarray  # (2, 3): angle, period, phase of two gratings
    contrast: float
    saturation: float
    start: np.ndarray  # (2,) centre x, y
    velocity: np.ndarray  # (2,) pixels per frame
    degraded: np.ndarray  # (T,) bool
    mode: list[str] = field(default_factory=list)  # per frame: how a degraded frame is drawn
    bar_side: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per frame

    @property
    def extent(self) -> float:
        """The largest distance of the outline from the centre."""
        return self.radius * (1 + self.shape[:, 0].sum())


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] interpolated bilinearly from a ``cells`` x ``cells`` grid."""
    coarse = rng.uniform(0, 1, size=(cells, cells))
    at = (np.arange(size) + 0.5) * (cells - 1) / size
    rows = np.stack([np.interp(at, np.arange(cells), c) for c in coarse.T], axis=1)
    return np.stack([np.interp(at, np.arange(cells), r) for r in rows], axis=0)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A static textured background: luminance ``(H, W)`` in [0.3, 0.7] (above every object
    rim) and a faint tint of random hue ``(H, W, 3)`` that says nothing about any class."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    angle, period = rng.uniform(0, math.pi), rng.uniform(5, 12) * size / 64
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    base = rng.uniform(0.42, 0.58)
    luminance = base + 0.24 * (_smooth_noise(rng, size, 5) - 0.5) + 0.03 * stripes
    luminance = np.clip(luminance, 0.3, 0.7)
    hue = rng.uniform(0, 2 * math.pi)
    tint = rng.uniform(0.0, 0.12) * _hue_direction(hue)
    return luminance, np.minimum(luminance, 1 - luminance)[..., None] * tint


def _hue_direction(angle: float) -> np.ndarray:
    """The unit luminance-free RGB direction at ``angle`` round the chroma plane."""
    e1 = chroma_direction(HUES["red"])
    e2 = np.cross(LUMA_WEIGHTS, e1)  # in the plane (orthogonal to the weights) and to e1
    e2 /= np.linalg.norm(e2)
    return math.cos(angle) * e1 + math.sin(angle) * e2


def _draw_track(rng: np.random.Generator, spec: SyntheticDetectionSpec) -> _Track:
    diameter = rng.uniform(*spec.object_size)
    # the outline may bulge by the harmonics: keep the whole object inside object_size
    shape = np.stack([rng.uniform(0, 0.08, 2), rng.uniform(0, 2 * math.pi, 2)], axis=1)
    radius = diameter / 2 / (1 + shape[:, 0].sum())
    extent = radius * (1 + shape[:, 0].sum())
    speed = math.exp(rng.uniform(math.log(spec.speed[0]), math.log(spec.speed[1])))
    heading = rng.uniform(0, 2 * math.pi)
    track = _Track(
        label=int(rng.integers(len(spec.classes))),
        radius=radius,
        shape=shape,
        luminance=rng.uniform(0.38, 0.62),
        rim=rng.uniform(0.06, 0.16),
        texture=np.stack(
            [
                rng.uniform(0, math.pi, 2),
                rng.uniform(3, 7, 2),
                rng.uniform(0, 2 * math.pi, 2),
            ],
            axis=1,
        ),
        contrast=rng.uniform(0.06, 0.14),
        saturation=rng.uniform(0.65, 0.95),
        start=rng.uniform(extent, spec.size - extent, 2),
        velocity=speed * np.array([math.cos(heading), math.sin(heading)]),
        degraded=_degraded_frames(rng, spec),
    )
    track.mode, track.bar_side = _degradation_modes(rng, spec, track.degraded)
    return track


def _degraded_frames(rng: np.random.Generator, spec: SyntheticDetectionSpec) -> np.ndarray:
    """Which frames of a track lose their colour: spans of ``degraded_span`` frames after the
    first ``clean_start``, each preceded and followed by a clean frame (so the class was seen
    just before), ``degraded_fraction * frames`` of them in expectation."""
    frames = spec.frames
    target = spec.degraded_fraction * frames
    count = int(target) + int(rng.uniform() < target - int(target))
    degraded = np.zeros(frames, dtype=bool)
    for _ in range(8 * frames):  # enough tries to place the spans unless the video is full
        missing = count - int(degraded.sum())
        if missing <= 0:
            break
        length = min(int(rng.integers(spec.degraded_span[0], spec.degraded_span[1] + 1)), missing)
        if frames - length < spec.clean_start:
            break
        start = int(rng.integers(spec.clean_start, frames - length + 1))
        if not degraded[max(start - 1, 0) : start + length + 1].any():
            degraded[start : start + length] = True
    return degraded


def _degradation_modes(
    rng: np.random.Generator, spec: SyntheticDetectionSpec, degraded: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """One mode (and bar side) per degraded span, repeated over its frames."""
    modes, sides = ["clean"] * len(degraded), np.zeros(len(degraded), np.int64)
    for t in np.flatnonzero(degraded):
        if t > 0 and degraded[t - 1]:
            modes[t], sides[t] = modes[t - 1], sides[t - 1]
        else:
            modes[t], sides[t] = str(rng.choice(spec.degradations)), int(rng.integers(4))
    return modes, sides


def _bounce(start: float, velocity: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions at times ``t`` moving at constant ``velocity`` from ``start``, reflected off
    ``lo`` and ``hi`` (a triangle wave of period ``2 (hi - lo)``)."""
    span = hi - lo
    if span <= 0:
        return np.full(len(t), lo)
    phase = np.mod(start - lo + velocity * t, 2 * span)
    return lo + span - np.abs(phase - span)


def _object_layer(track: _Track, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixel mask ``(H, W)`` and luminance there (texture and a dark rim)."""
    # only the window round the object is computed: 5-10x less trigonometry than the frame
    reach = track.extent + 1
    (x0, x1), (y0, y1) = ((max(int(c - reach), 0), min(int(c + reach) + 1, size)) for c in centre)
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    dx, dy = xx - centre[0], yy - centre[1]
    theta = np.arctan2(dy, dx)
    outline = track.radius * (
        1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(track.shape))
    )
    inside = np.hypot(dx, dy) <= outline
    pattern = sum(
        np.sin((dx * math.cos(a) + dy * math.sin(a)) * 2 * math.pi / period + phase)
        for a, period, phase in track.texture
    )
    # a one-pixel dark rim (darker than any background) keeps the outline visible in grey;
    # past the frame's border counts as outside
    padded = np.pad(inside, 1)
    inner = inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    mask, luminance = np.zeros((size, size), dtype=bool), np.zeros((size, size))
    mask[y0:y1, x0:x1] = inside
    luminance[y0:y1, x0:x1] = np.where(
        inner, track.luminance + track.contrast * pattern / 2, track.rim
    )
    return mask, luminance


def _box(mask: np.ndarray) -> list[float]:
    """Continuous pixel box ``x1, y1, x2, y2`` of a mask (columns 0..9 -> x1 = 0, x2 = 10)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _occlude(
    luminance: np.ndarray, chroma: np.ndarray, box: list[float], side: int, grey: float
) -> None:
    """Cover half of ``box`` (left, right, top or bottom by ``side``) with a flat grey bar."""
    x1, y1, x2, y2 = (int(v) for v in box)
    xm, ym = (x1 + x2) // 2, (y1 + y2) // 2
    rows, cols = [(slice(y1, y2), slice(x1, xm)), (slice(y1, y2), slice(xm, x2)),
                  (slice(y1, ym), slice(x1, x2)), (slice(ym, y2), slice(x1, x2))][side]  # fmt: skip
    luminance[rows, cols] = grey
    chroma[rows, cols] = 0.0


def _draw_frame(
    spec: SyntheticDetectionSpec,
    background: tuple[np.ndarray, np.ndarray],
    tracks: Sequence[_Track],
    centres: np.ndarray,
    t: int,
    bar_grey: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t``: ``(H, W, 3)`` uint8 and each object's mask ``(K, H, W)``; objects drawn in
    order, each over the ones before."""
    luminance, chroma = background[0].copy(), background[1].copy()
    masks = np.zeros((len(tracks), spec.size, spec.size), dtype=bool)
    for k, track in enumerate(tracks):
        mask, lum = _object_layer(track, centres[k], spec.size)
        masks[k] = mask
        luminance[mask] = lum[mask]
        # chroma scaled by min(L, 1 - L): every channel stays in [0, 1] with no clipping, so
        # the luma is exactly L whatever the hue; a degraded frame has none
        strength = 0.0 if track.degraded[t] else track.saturation
        scale = strength * np.minimum(lum[mask], 1 - lum[mask])
        chroma[mask] = scale[:, None] * chroma_direction(HUES[spec.classes[track.label]])
        if track.mode[t] == "occlude":
            _occlude(luminance, chroma, _box(mask), int(track.bar_side[t]), bar_grey[k])
    image = luminance[..., None] + chroma
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), masks


def render_video(
    spec: SyntheticDetectionSpec,
    rng: np.random.Generator,
    *,
    labels: Sequence[int] | None = None,
) -> SyntheticVideo:
    """Render one video of ``spec`` from ``rng``.

    Args:
        spec: the dataset's spec (frames, size, classes, object draws, degradation).
        rng: the video's generator; the same state gives the same video.
        labels: the class index of each object in drawing order instead of the drawn ones
            (every other draw is unchanged, so the same video can be rendered with other
            classes); as many as the video has objects.

    Returns:
        the frames, per-frame boxes with track ids and ``"degraded"`` flags, and the masks.
    """
    size, frames = spec.size, spec.frames
    background = _background(rng, size)
    count = int(rng.integers(*spec.objects, endpoint=True))
    tracks = [_draw_track(rng, spec) for _ in range(count)]
    if labels is not None:
        if len(labels) != count or not all(0 <= c < len(spec.classes) for c in labels):
            raise ValueError(
                f"labels: {count} class indices in 0..{len(spec.classes) - 1} expected (one per "
                f"object of the video), got {list(labels)}"
            )
        for track, label in zip(tracks, labels, strict=True):
            track.label = int(label)
    bar_grey = rng.uniform(0.35, 0.65, size=count)
    times = np.arange(frames, dtype=np.float64)
    centres = np.stack(  # (T, K, 2)
        [
            [
                _bounce(tr.start[i], tr.velocity[i], times, tr.extent, size - tr.extent)
                for i in (0, 1)
            ]
            for tr in tracks
        ]
    ).transpose(2, 0, 1)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((frames, count, size, size), dtype=bool)
    annotations = []
    for t in range(frames):
        out[t], masks[t] = _draw_frame(spec, background, tracks, centres[t], t, bar_grey)
        annotations.append(
            FrameBoxes(
                boxes=np.array([_box(m) for m in masks[t]], dtype=np.float32).reshape(-1, 4),
                labels=[tr.label for tr in tracks],
                track_ids=np.arange(count),
                flags={"degraded": [bool(tr.degraded[t]) for tr in tracks]},
            )
        )
    return SyntheticVideo(frames=out, annotations=annotations, masks=masks)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator :func:`make_synthetic_detection` renders video ``index`` of ``split``
    ("train" or "val") with: its draws depend on (seed, split, index) only, so a video does
    not change when the others or their number do."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file renamed into place: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    """All frames of a video into ``folder``, which appears only once complete."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for t, frame in enumerate(frames):
        (tmp / f"{t:06d}.png").write_bytes(_png(frame))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class _CocoVideoWriter:
    """Accumulates one split in the COCO-video JSON format (ids 1-based, as COCO's)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.data: dict[str, list] = {
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
            "videos": [],
            "images": [],
            "annotations": [],
        }
        self._instances = 0

    def add(self, name: str, files: Sequence[str], video: SyntheticVideo) -> None:
        video_id = len(self.data["videos"]) + 1
        self.data["videos"].append({"id": video_id, "name": name})
        height, width = video.frames.shape[1:3]
        for frame_id, (file_name, frame) in enumerate(zip(files, video.annotations, strict=True)):
            image_id = len(self.data["images"]) + 1
            self.data["images"].append(
                {
                    "id": image_id,
                    "video_id": video_id,
                    "frame_id": frame_id,
                    "file_name": file_name,
                    "width": int(width),
                    "height": int(height),
                }
            )
            for box, label, track, degraded in zip(
                frame.boxes, frame.labels, frame.track_ids, frame.flag("degraded"), strict=True
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                self.data["annotations"].append(
                    {
                        "id": len(self.data["annotations"]) + 1,
                        "image_id": image_id,
                        "video_id": video_id,
                        "category_id": int(label) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "instance_id": self._instances + int(track) + 1,
                        "degraded": bool(degraded),
                        "iscrowd": 0,
                    }
                )
        self._instances += int(video.masks.shape[1])


def _read_meta(root: Path) -> dict | None:
    path = root / "meta.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SyntheticDetectionError(
            f"{path}: not readable as JSON ({exc}); delete the folder {root} and run again"
        ) from exc


def _check_folder(root: Path, spec: SyntheticDetectionSpec) -> dict | None:
    """The folder's meta when it holds this spec's set (complete or not), None when it holds
    none; an error when it holds another spec's or files of unknown origin."""
    meta = _read_meta(root)
    if meta is None:
        ours = [p.name for p in (root / "frames", root / "train.json", root / "val.json")]
        found = [name for name in ours if (root / name).exists()]
        if found:
            raise SyntheticDetectionError(
                f"{root} holds {found} but no meta.json saying what wrote them; delete them or "
                "choose another folder"
            )
        return None
    advice = "choose another folder (spec.folder_name() names one per spec) or delete this one"
    if meta.get("written_by") != _WRITER:
        raise SyntheticDetectionError(
            f"{root / 'meta.json'}: written by {meta.get('written_by', 'something else')!r}, "
            f"not by {_WRITER}; {advice}"
        )
    wanted = {"format_version": FORMAT_VERSION, **spec.to_dict()}
    found = {k: meta.get("spec", {}).get(k, meta.get(k)) for k in wanted}
    differ = [f"{k}={found[k]!r} (this spec: {v!r})" for k, v in wanted.items() if found[k] != v]
    if differ:
        raise SyntheticDetectionError(
            f"{root / 'meta.json'}: the folder holds another synthetic detection set "
            f"({', '.join(differ)}); {advice}"
        )
    return meta


def _meta(spec: SyntheticDetectionSpec, *, complete: bool, counts: dict | None = None) -> bytes:
    from timeshift import __version__

    meta = {
        "written_by": _WRITER,
        "timeshift_version": __version__,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "classes": list(spec.classes),
        "complete": complete,
        **({"counts": counts} if counts else {}),
    }
    return (json.dumps(meta, indent=2) + "\n").encode()


def make_synthetic_detection(
    root: str | os.PathLike,
    *,
    spec: SyntheticDetectionSpec = SyntheticDetectionSpec(),
    progress: bool = True,
) -> dict[str, Path]:
    """Write the synthetic detection set under ``root``, or find it there already.

    Layout: ``train.json`` / ``val.json`` (COCO-video; ``file_name`` relative to the JSON's
    folder), ``frames/<split>/<video>/000000.png`` (lossless: JPEG's 4:2:0 chroma subsampling
    would smear the colour cue of a small object into its neighbours), ``meta.json`` (what wrote
    the folder, the spec, ``"complete"``). A complete set of the same spec is returned at once;
    an interrupted one is resumed (each video folder appears only once complete); another
    spec's set raises :class:`SyntheticDetectionError` (use ``root / spec.folder_name()`` to
    keep several).

    Args:
        root: the folder (created if missing).
        spec: the dataset to write.
        progress: show a progress bar.

    Returns:
        the paths ``root``, ``train``, ``val`` (the JSON files) and ``meta``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    paths = {"root": root, "train": root / "train.json", "val": root / "val.json"}
    paths["meta"] = root / "meta.json"
    meta = _check_folder(root, spec) if root.exists() else None
    if meta and meta.get("complete") and paths["train"].is_file() and paths["val"].is_file():
        _logger.info("synthetic detection set already in %s", root)
        return paths
    root.mkdir(parents=True, exist_ok=True)
    _write_bytes(paths["meta"], _meta(spec, complete=False))  # claims the folder for this spec
    jobs = [("train", i) for i in range(spec.train_videos)]
    jobs += [("val", i) for i in range(spec.val_videos)]
    writers = {split: _CocoVideoWriter(spec.classes) for split in SPLITS}
    for split, index in tqdm(
        jobs, desc="synthetic detection videos", disable=None if progress else True, unit="video"
    ):
        name = f"video_{index:05d}"
        folder = root / "frames" / split / name
        # rendering is cheap: the annotations are always recomputed, the PNGs written once
        video = render_video(spec, video_rng(spec.seed, split, index))
        files = [f"frames/{split}/{name}/{t:06d}.png" for t in range(spec.frames)]
        if not all((root / f).is_file() for f in files):
            _write_frames(folder, video.frames)
        writers[split].add(name, files, video)
    counts = {}
    for split, writer in writers.items():
        _write_bytes(paths[split], json.dumps(writer.data).encode())
        flags = [a["degraded"] for a in writer.data["annotations"]]
        counts[split] = {
            "videos": len(writer.data["videos"]),
            "images": len(writer.data["images"]),
            "annotations": len(flags),
            "degraded": int(sum(flags)),
        }
    _write_bytes(paths["meta"], _meta(spec, complete=True, counts=counts))  # written last
    _logger.info(
        "synthetic detection set: %d train + %d val videos, %d classes in %s",
        spec.train_videos,
        spec.val_videos,
        len(spec.classes),
        root,
    )
    return paths
