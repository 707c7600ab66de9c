"""The synthetic temporal dataset: the library's embedded default data.

Classes come in pairs that are time reversals of one motion family (moving left / moving right,
growing / shrinking, rotating clockwise / anticlockwise, ...). A video of the second class of a
pair is rendered exactly like one of the first class and then played backwards, so the two
classes have the same distribution of individual frames: a model that ignores frame order (a 2D
CNN averaging per-frame scores, TSN) cannot beat 50% within a pair, while a model that sees
order (TSM) can reach ~100%. Each family draws its own shape, so the family is visible in any
single frame and an order-blind model sits at exactly 50% overall; everything else is random per
video -- colours, size, speed, start position, a textured background and per-frame noise.

Videos are real encoded files (H.264 through PyAV, MPEG-4 Part 2 where x264 is missing) with
list files in the MMAction2 video-list format (``path label``) and a class-name file, so the
whole decoding pipeline is exercised. Generation is deterministic given the seed: each video's
draws depend only on (seed, split, class, index), and the encoding gives the same file on any
machine (see :func:`write_video`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FAMILIES",
    "FAMILY_SHAPES",
    "SyntheticSpec",
    "class_names",
    "make_synthetic",
    "render_clip",
    "write_video",
]

_logger = logging.getLogger(__name__)

# family -> (class rendered forward, class rendered backward)
FAMILIES: dict[str, tuple[str, str]] = {
    "horizontal": ("moving left", "moving right"),
    "vertical": ("moving up", "moving down"),
    "scale": ("growing", "shrinking"),
    "rotation": ("rotating clockwise", "rotating anticlockwise"),
    "fade": ("fading in", "fading out"),
    "orbit": ("orbiting clockwise", "orbiting anticlockwise"),
    "stretch": ("widening", "narrowing"),
}

# Each family has its own shape, so the family can be told from any single frame while the
# direction within the pair needs frame order: an order-blind model can reach 100% on the family
# and exactly chance within the pair (50% overall), an order-aware one 100%.
FAMILY_SHAPES = {
    "horizontal": "circle",
    "vertical": "square",
    "scale": "diamond",
    "rotation": "pointer",  # no rotational symmetry: the turning direction is unambiguous
    "fade": "triangle",
    "orbit": "ring",
    "stretch": "cross",
}
# 4: machine-independent encoding (numpy colour conversion, CPU-independent x264)
FORMAT_VERSION = 4

# Encoders pick CPU-specific code paths (SIMD) that are not bit-exact with each other: the same
# frames encoded on two machines decoded up to 39 grey levels apart. x264's CPU-independent
# mode on one thread and FFmpeg's integer DCTs give the same stream on every machine.
ENCODER_OPTIONS = {
    "libx264": {
        "crf": "18",
        "preset": "veryfast",
        "threads": "1",
        "x264-params": "cpu-independent=1:sliced-threads=0",
    },
    "mpeg4": {"threads": "1", "flags": "+bitexact", "dct": "int", "idct": "int"},
}


def class_names(families: Sequence[str] | None = None) -> list[str]:
    """Class names in label order: the two classes of each family, families in given order."""
    return [name for f in (families or list(FAMILIES)) for name in FAMILIES[f]]


@dataclass(frozen=True)
class SyntheticSpec:
    videos_per_class: int = 40
    val_videos_per_class: int = 10
    size: int = 64
    frames: int = 16
    fps: int = 8
    seed: int = 0
    families: tuple[str, ...] = tuple(FAMILIES)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static textured background: smooth colour noise plus faint stripes, float in [0, 1]."""
    coarse = rng.uniform(0, 1, size=(4, 4, 3))
    ys = np.linspace(0, 3, size)
    y0 = np.clip(ys.astype(int), 0, 2)
    fy = (ys - y0)[:, None, None]
    rows = coarse[y0] * (1 - fy) + coarse[y0 + 1] * fy  # (size, 4, 3)
    x0 = y0
    fx = (ys - x0)[None, :, None]
    smooth = rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx  # (size, size, 3)
    base = rng.uniform(0.25, 0.75, size=3)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 16) * size / 64
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 0.5 + 0.5 * np.sin(
        (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
    )
    # a visible but quiet texture: the moving shape must stay the most salient thing
    texture = base + 0.18 * (smooth - 0.5) + 0.08 * (stripes[..., None] - 0.5)
    return np.clip(texture, 0, 1)


def _shape_mask(
    shape: str, size: int, cx: float, cy: float, radius: float, angle: float, aspect: float
) -> np.ndarray:
    """Soft (anti-aliased) mask of a shape centred at (cx, cy), rotated by ``angle``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    # rotate into the shape's frame (image y points down: positive angle turns clockwise)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    rx, ry = radius * aspect, radius / aspect
    if shape == "circle":
        dist = np.hypot(u / rx, v / ry) - 1.0
        edge = dist * min(rx, ry)
    elif shape == "square":
        edge = np.maximum(np.abs(u) - rx * 0.8, np.abs(v) - ry * 0.8)
    elif shape == "pointer":  # a long isosceles triangle pointing along +u
        big_u, big_v = u / (1.3 * rx), v / (0.6 * ry)
        sides = np.maximum(big_v + (big_u - 1) / 1.6, -big_v + (big_u - 1) / 1.6)
        edge = np.maximum(sides, -big_u - 0.6) * min(rx, ry) * 0.8
    elif shape == "diamond":
        edge = (np.abs(u) / rx + np.abs(v) / ry - 1.0) * min(rx, ry) * 0.7
    elif shape == "ring":
        dist = np.hypot(u / rx, v / ry)
        edge = (np.abs(dist - 0.75) - 0.25) * min(rx, ry)
    elif shape == "cross":
        arm_u = np.maximum(np.abs(u) - rx, np.abs(v) - ry * 0.4)
        arm_v = np.maximum(np.abs(v) - ry, np.abs(u) - rx * 0.4)
        edge = np.minimum(arm_u, arm_v)
    else:  # triangle pointing along +u
        edges = []
        for k in range(3):
            theta = 2 * math.pi * k / 3
            nx, ny = math.cos(theta), math.sin(theta)
            edges.append((u / rx) * nx + (v / ry) * ny - 0.5)
        edge = np.max(edges, axis=0) * min(rx, ry)
    return np.clip(0.5 - edge, 0.0, 1.0)


def render_clip(
    family: str, *, reverse: bool, rng: np.random.Generator, size: int = 64, frames: int = 16
) -> np.ndarray:
    """Render one video of ``family`` as ``(frames, size, size, 3)`` uint8; ``reverse`` plays
    the very same rendering backwards (the pair's other class)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    background = _background(rng, size)
    shape = FAMILY_SHAPES[family]
    colour = rng.uniform(0, 1, size=3)
    colour[rng.integers(3)] = rng.choice([0.0, 1.0])  # saturated
    if abs(colour.mean() - background.mean()) < 0.3:  # and far from the background's brightness
        colour = np.clip(colour + (0.45 if background.mean() < 0.5 else -0.45), 0, 1)
    radius = rng.uniform(0.13, 0.19) * size
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    if family == "rotation":
        cx, cy = rng.uniform(0.45, 0.55, size=2) * size  # the pivot: keep the hand in frame
    angle0 = rng.uniform(0, 2 * math.pi)
    noise = rng.uniform(0.01, 0.03)
    s = np.linspace(0.0, 1.0, frames)
    jitter = rng.normal(0, 0.01 * size, size=(frames, 2))  # small hand-held wobble
    params = {
        "x": np.full(frames, cx),
        "y": np.full(frames, cy),
        "r": np.full(frames, radius),
        "angle": np.full(frames, angle0),
        "alpha": np.ones(frames),
        "aspect": np.ones(frames),
    }
    travel = rng.uniform(0.3, 0.55) * size
    if family == "horizontal":  # forward: moving left
        params["x"] = cx + travel * (0.5 - s)
    elif family == "vertical":  # forward: moving up (image y decreases)
        params["y"] = cy + travel * (0.5 - s)
    elif family == "scale":  # forward: growing
        params["r"] = radius * (0.45 + 1.1 * s)
    elif family == "rotation":  # forward: clockwise on screen, like a clock hand
        # the pointer turns about its tail, so its tip sweeps a wide arc that stays visible at
        # low resolution (unlike "orbit", the shape's own orientation turns with it)
        params["r"] = np.full(frames, radius * 1.3)
        params["angle"] = angle0 + rng.uniform(0.6, 1.2) * math.pi * s
        arm = 1.3 * radius * 0.9
        params["x"] = cx + arm * np.cos(params["angle"])
        params["y"] = cy + arm * np.sin(params["angle"])
    elif family == "fade":  # forward: fading in
        params["alpha"] = 0.05 + 0.95 * s
    elif family == "orbit":  # forward: clockwise around a centre
        orbit = rng.uniform(0.15, 0.25) * size
        phase = angle0 + rng.uniform(1.0, 1.6) * math.pi * s
        centre = size / 2
        params["x"], params["y"] = centre + orbit * np.cos(phase), centre + orbit * np.sin(phase)
    elif family == "stretch":  # forward: widening, from tall to wide
        # axis-aligned: the cross looks the same turned by 90 degrees, so with a random
        # orientation "tall to wide" could not be told from "wide to tall"
        params["angle"] = np.zeros(frames)
        params["r"] = np.full(frames, radius * 1.4)
        params["aspect"] = np.exp(np.log(4.0) * (s - 0.5))
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        mask = _shape_mask(
            shape,
            size,
            params["x"][t] + jitter[t, 0],
            params["y"][t] + jitter[t, 1],
            params["r"][t],
            params["angle"][t],
            params["aspect"][t],
        )
        alpha = (mask * params["alpha"][t])[..., None]
        image = background * (1 - alpha) + colour * alpha
        image = image + rng.normal(0, noise, size=image.shape)
        out[t] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return out[::-1].copy() if reverse else out


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB (even H, W) to ``(T, 3H/2, W)`` planar YUV 4:2:0 (BT.601,
    limited range, what decoders assume for untagged video), in integer arithmetic: the same
    bytes on every machine, unlike FFmpeg's SIMD colour conversion."""
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16

    def block_sum(x: np.ndarray) -> np.ndarray:  # 2x2 blocks: chroma at half resolution
        return x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]

    u = ((block_sum(-38 * r - 74 * g + 112 * b) + 512) >> 10) + 128
    v = ((block_sum(112 * r - 94 * g - 18 * b) + 512) >> 10) + 128
    t, h, w = y.shape
    out = np.empty((t, h * 3 // 2, w), dtype=np.uint8)
    out[:, :h] = y
    out[:, h : h + h // 4] = u.reshape(t, h // 4, w)
    out[:, h + h // 4 :] = v.reshape(t, h // 4, w)
    return out


def write_video(
    path: str | os.PathLike, frames: np.ndarray, *, fps: int = 8, codec: str | None = None
) -> str:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (even H, W) to a video file with PyAV.

    ``codec=None`` picks H.264 (libx264) when available, else MPEG-4 Part 2. Returns the codec.
    The same frames give the same file on any machine: colours are converted in integer
    arithmetic and the encoders run with CPU-independent settings (:data:`ENCODER_OPTIONS`).
    """
    import av

    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 2_000_000
        stream.options = dict(ENCODER_OPTIONS.get(codec, {"threads": "1"}))
        for image in rgb_to_yuv420p(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)  # a crash never leaves a half-written video under the final name
    return codec


def _read_meta(root: Path) -> dict:
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def _written_by(root: Path, meta: dict) -> bool:
    """Whether the videos in ``root`` come from a run with this spec and format version (a
    missing ``meta.json``: a first run that was interrupted, whose videos are complete)."""
    previous = _read_meta(root)
    if not previous:
        return not (root / "meta.json").exists()
    # what a video's content depends on (not how many videos there are)
    keys = ("format_version", "size", "frames", "fps", "seed", "families")
    return all(previous.get(k) == meta[k] for k in keys)


def _video_seed(seed: int, split: str, label: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 0 if split == "train" else 1, label, index])


def make_synthetic(
    out_dir: str | os.PathLike,
    spec: SyntheticSpec = SyntheticSpec(),
    *,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` (skipping videos already there).

    Layout: ``videos/<split>/<class>/<class>_<k>.mp4``, ``train.txt`` / ``val.txt`` (``path
    label``, relative to ``out_dir``), ``classes.txt`` and ``meta.json`` (the spec).

    Returns the paths of ``train``, ``val``, ``classes`` and ``root``.
    """
    from tqdm.auto import tqdm

    for family in spec.families:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; expected some of {sorted(FAMILIES)}")
    if spec.size % 2:
        raise ValueError(f"size must be even for yuv420p video, got {spec.size}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = class_names(spec.families)
    meta = {
        "format_version": FORMAT_VERSION,
        **spec.__dict__,
        "families": list(spec.families),
        "classes": names,
    }
    # videos already there are reused only if an earlier run wrote them the same way
    reuse = _written_by(root, meta)
    jobs = []
    for split, per_class in (("train", spec.videos_per_class), ("val", spec.val_videos_per_class)):
        for label, name in enumerate(names):
            slug = name.replace(" ", "_")
            for k in range(per_class):
                rel = Path("videos") / split / slug / f"{slug}_{k:05d}.mp4"
                jobs.append((split, label, k, rel))
    lines: dict[str, list[str]] = {"train": [], "val": []}
    codec = None
    for split, label, k, rel in tqdm(
        jobs, desc="synthetic videos", disable=None if progress else True, unit="video"
    ):
        family = spec.families[label // 2]
        if not (reuse and (root / rel).is_file()):
            rng = np.random.default_rng(_video_seed(spec.seed, split, label, k))
            clip = render_clip(
                family, reverse=bool(label % 2), rng=rng, size=spec.size, frames=spec.frames
            )
            codec = write_video(root / rel, clip, fps=spec.fps)
        lines[split].append(f"{rel.as_posix()} {label}")
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    previous = _read_meta(root) if codec is None else {}  # every video was reused
    meta["codec"] = codec or previous.get("codec")
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _logger.info(
        "synthetic dataset: %d train + %d val videos, %d classes in %s",
        len(lines["train"]),
        len(lines["val"]),
        len(names),
        root,
    )
    return {
        "root": root,
        "train": root / "train.txt",
        "val": root / "val.txt",
        "classes": root / "classes.txt",
    }
