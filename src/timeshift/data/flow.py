"""Optical flow: computation (OpenCV DIS, Farneback, TV-L1), quantisation and extraction.

Conventions are the reference ones (TSN's ``dense_flow`` tool, which the TSN and TSM flow
models were trained on), so that flow written here and flow written by it are interchangeable:

* flow ``i`` is frame ``i`` -> ``i + 1``, in pixels of the (resized) frames; channel 0 is x
  (horizontal, positive to the right), channel 1 is y (positive downwards);
* computed on greyscale frames (dense_flow converts each frame to grey first);
* quantised to 8 bits as ``cvRound(255 * (v + bound) / (2 * bound))`` clipped to 0..255, bound
  20 (TSN's ``build_of.py`` calls dense_flow with ``-b 20``), so zero motion is 128;
* written as greyscale JPEGs ``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ... numbered from 1
  (dense_flow's ``writeImages``), at OpenCV's default JPEG quality 95.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timeshift.data.decode import VideoDecodeError, VideoReader
from timeshift.data.decode import max_frame_pixels as max_frame_pixels_limit
from timeshift.data.extract import (
    DEFAULT_MAX_FRAMES,
    ExtractJob,
    ExtractResult,
    extract_list,
    iter_video_images,
    read_marker,
    resized_image,
    write_atomically,
)
from timeshift.errors import TimeshiftError

__all__ = [
    "DEFAULT_BOUND",
    "DEFAULT_FLOW_ALGORITHM",
    "FLOW_ALGORITHMS",
    "FLOW_TEMPLATE",
    "FlowSettings",
    "FlowUnavailableError",
    "VideoFlowReader",
    "compute_flow",
    "dequantize_flow",
    "extract_flow",
    "extract_video_flow",
    "flow_estimator",
    "flow_kind",
    "quantize_flow",
]

FLOW_ALGORITHMS = ("dis", "farneback", "tvl1")
DEFAULT_FLOW_ALGORITHM = "dis"
DEFAULT_BOUND = 20.0
# the reference TSN/TSM datasets' flow template: .format("x" or "y", 1-based index)
FLOW_TEMPLATE = "flow_{}_{:05d}.jpg"
DEFAULT_SHORT_SIDE = 256  # dense_flow's --new_width 340 --new_height 256 on 4:3 videos
DEFAULT_QUALITY = 95  # OpenCV's default JPEG quality, what dense_flow writes with

# (prev, next) greyscale uint8 (H, W) -> (H, W, 2) float32 flow in pixels
FlowFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


class FlowUnavailableError(TimeshiftError, ImportError):
    """The OpenCV build installed lacks what a flow algorithm needs; the message says what to
    install."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise FlowUnavailableError(
            "optical flow needs OpenCV: pip install 'timeshift[video]' (or 'timeshift[flow]', "
            "the contrib build, for TV-L1)"
        ) from exc
    return cv2


def _dis(cv2) -> FlowFunction:
    # MEDIUM, not OpenCV's default FAST: on textured objects moving 2-12 px over a moving
    # background (224x298) its end-point error is 3-10x lower than FAST's (0.12-0.21 px vs
    # 0.7-2.5 px on the object), at about 10 ms per pair on one core, still ~100x faster than
    # TV-L1 (~1 s per pair here)
    dis = cv2.DISOpticalFlow_create(cv2.DISOpticalFlow_PRESET_MEDIUM)
    return lambda prev, nxt: dis.calc(prev, nxt, None)


def _farneback(cv2) -> FlowFunction:
    # OpenCV's documented example parameters (pyramid 0.5 x 3 levels, window 15, 3 iterations,
    # polynomial 5 / 1.2)
    return lambda prev, nxt: cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _tvl1(cv2) -> FlowFunction:
    if not hasattr(cv2, "optflow"):
        raise FlowUnavailableError(
            f"flow algorithm 'tvl1' needs OpenCV's contrib build (cv2.optflow); the installed "
            f"OpenCV {cv2.__version__} is the plain one. The two cannot be installed together: "
            "pip uninstall -y opencv-python-headless && pip install 'timeshift[flow]'. "
            "Or use algorithm 'dis' (the default) or 'farneback', in every OpenCV build"
        )
    # dense_flow (build_of.py's -t 1) creates OpenCV's CUDA TV-L1 with default parameters;
    # this is the CPU implementation with its defaults: the same method, not bit-identical
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return lambda prev, nxt: tvl1.calc(prev, nxt, None)


_FACTORIES = {"dis": _dis, "farneback": _farneback, "tvl1": _tvl1}


def flow_estimator(algorithm: str = DEFAULT_FLOW_ALGORITHM) -> FlowFunction:
    """A function ``(prev, next) -> (H, W, 2)`` float32 flow for two greyscale uint8 frames.

    Build it once per video: the OpenCV objects are reused from pair to pair.

    Raises:
        ValueError: an unknown algorithm.
        FlowUnavailableError: OpenCV missing, or ``tvl1`` without the contrib build.
    """
    if algorithm not in _FACTORIES:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {FLOW_ALGORITHMS}")
    return _FACTORIES[algorithm](_cv2())


def _gray(frame: np.ndarray) -> np.ndarray:
    """A greyscale uint8 frame of an RGB (H, W, 3) one (ITU-R 601 luma, as dense_flow)."""
    if frame.ndim == 2:
        return frame
    cv2 = _cv2()
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def compute_flow(frames, *, algorithm: str = DEFAULT_FLOW_ALGORITHM) -> np.ndarray:
    """Optical flow between consecutive frames.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames, as the decoders return them (or ``(T, H,
            W)`` greyscale), ``T >= 2``.
        algorithm: ``"dis"`` (default), ``"farneback"`` or ``"tvl1"`` (contrib build).

    Returns:
        ``(T - 1, 2, H, W)`` float32 flow in pixels: flow ``i`` is frame ``i`` -> ``i + 1``,
        channel 0 is x (positive to the right), 1 is y (positive downwards).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) < 2:
        raise ValueError(
            "compute_flow needs at least 2 uint8 frames shaped (T, H, W, 3) RGB or (T, H, W) "
            f"grey, got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.ndim == 4 and frames.shape[-1] != 3:
        raise ValueError(f"frames must be RGB (T, H, W, 3), got {tuple(frames.shape)}")
    estimate = flow_estimator(algorithm)
    grays = [_gray(frame) for frame in frames]
    flow = np.empty((len(frames) - 1, 2, *grays[0].shape), dtype=np.float32)
    for i in range(len(frames) - 1):
        flow[i] = estimate(grays[i], grays[i + 1]).transpose(2, 0, 1)
    return flow


def _check_bound(bound: float) -> None:
    if not bound > 0:
        raise ValueError(f"the flow bound must be positive (reference: 20), got {bound}")


def quantize_flow(flow, *, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels -> uint8: ``round(255 * (v + bound) / (2 * bound))`` clipped to 0..255.

    Zero motion is 128 (127.5 rounded half to even, like dense_flow's ``cvRound``); values
    beyond ``+-bound`` saturate. Computed in float64 as dense_flow does.
    """
    _check_bound(bound)
    scaled = 255.0 * (np.asarray(flow, dtype=np.float64) + bound) / (2.0 * bound)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dequantize_flow(quantized, *, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 flow images -> float32 pixels, the inverse of :func:`quantize_flow` up to its step
    (``2 * bound / 255``; 128 reads as ``+bound / 255``, not 0)."""
    _check_bound(bound)
    q = np.asarray(quantized, dtype=np.float32)
    return q * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def flow_kind(*, algorithm: str, bound: float, short_side: int | None) -> str:
    """What the ``.done`` marker records: a folder is finished for the same settings only."""
    return f"flow algorithm={algorithm} bound={bound:g} short_side={short_side or 0}"


@dataclass(frozen=True)
class FlowSettings:
    """How flow is made from a video: what a flow model must be fed at inference to see the
    flow it was trained on.

    Attributes:
        algorithm: ``"dis"``, ``"farneback"`` or ``"tvl1"``.
        bound: quantisation bound in pixels (reference: 20).
        short_side: frames resized to this short side before the flow (``None``: as decoded).
        quality: JPEG quality the flow images were stored at; :class:`VideoFlowReader` encodes
            and decodes each image at it so the model sees what extraction would have written
            (``None``: the quantised values, no JPEG).
    """

    algorithm: str = DEFAULT_FLOW_ALGORITHM
    bound: float = DEFAULT_BOUND
    short_side: int | None = DEFAULT_SHORT_SIDE
    quality: int | None = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.algorithm not in FLOW_ALGORITHMS:
            raise ValueError(
                f"unknown flow algorithm {self.algorithm!r}; choose one of {FLOW_ALGORITHMS}"
            )
        _check_bound(self.bound)
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short_side must be at least 2 pixels, got {self.short_side}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")

    def kind(self) -> str:
        """The ``.done`` marker text of a folder extracted with these settings."""
        return flow_kind(algorithm=self.algorithm, bound=self.bound, short_side=self.short_side)

    def to_dict(self) -> dict:
        """What checkpoints record (``meta["flow"]``)."""
        return {
            "algorithm": self.algorithm,
            "bound": self.bound,
            "short_side": self.short_side,
            "quality": self.quality,
        }

    @classmethod
    def from_dict(cls, values: dict) -> FlowSettings:
        known = {
            k: values[k] for k in ("algorithm", "bound", "short_side", "quality") if k in values
        }
        return cls(**known)

    @classmethod
    def from_kind(cls, kind: str) -> FlowSettings | None:
        """The settings a ``.done`` marker's kind line names (``None``: not a flow kind)."""
        words = kind.split()
        if not words or words[0] != "flow":
            return None
        fields = dict(word.partition("=")[::2] for word in words[1:])
        try:
            return cls(
                algorithm=fields["algorithm"],
                bound=float(fields["bound"]),
                short_side=int(fields["short_side"]) or None,
            )
        except (KeyError, ValueError):
            return None

    @classmethod
    def of_folder(cls, folder: str | os.PathLike) -> FlowSettings | None:
        """The settings a flow folder written by ``extract-flow`` was extracted with (from its
        ``.done`` marker); ``None`` for folders of other tools, which record none."""
        lines = read_marker(Path(folder))
        return cls.from_kind(lines[2]) if lines is not None and len(lines) > 2 else None


class VideoFlowReader(VideoReader):
    """Optical flow computed on the fly from a video: the frames ``extract-flow`` would have
    written, without writing them.

    Flow frame ``i`` is video frame ``i`` -> ``i + 1`` (``num_frames`` is the video's minus one,
    the frame count of its extracted flow folder); ``get_frames`` gives ``(len, H, W, 2)``
    uint8, the quantised ``x`` and ``y`` images of each flow frame, JPEG round-tripped at
    ``settings.quality`` as extraction stores them, so a flow model scores a video the same
    from its extracted folder and from the video itself. Only the frames the wanted flow frames
    need are decoded and only their flow is computed (``T * new_length`` pairs per clip, not
    every pair of the video).

    Args:
        video: the opened video (any :class:`~timeshift.data.decode.VideoReader`); closed
            with this reader.
        settings: how the flow is made (those of the flow model's training data).
    """

    backend = "flow-on-the-fly"
    kind = "flow"

    def __init__(self, video: VideoReader, settings: FlowSettings | None = None) -> None:
        super().__init__(video.path)
        self.video = video
        self.settings = settings or FlowSettings()
        self._estimate = flow_estimator(self.settings.algorithm)
        if video.num_frames < 2:
            raise VideoDecodeError(video.path, "only one frame; optical flow needs at least two")

    @property
    def num_frames(self) -> int:
        return self.video.num_frames - 1

    @property
    def fps(self) -> float | None:
        return self.video.fps

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.video.size
        side = self.settings.short_side
        if not side or min(height, width) == side:
            return height, width
        scale = side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _range_error(self, bad: list[int], n: int) -> Exception:
        return IndexError(f"{self.path}: flow frame indices {bad[:5]} outside [0, {n})")

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        needed = sorted({i for t in targets for i in (t, t + 1)})
        frames = self.video.get_frames(needed)
        grays = {i: self._gray(frame) for i, frame in zip(needed, frames, strict=True)}
        return {t: self._flow_images(self._estimate(grays[t], grays[t + 1])) for t in targets}

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        from PIL import Image

        # resized as extract-flow resizes (the RGB frame, bilinear), then made grey
        image = resized_image(Image.fromarray(frame), self.settings.short_side)
        return _gray(np.asarray(image))

    def _flow_images(self, flow: np.ndarray) -> np.ndarray:
        images = [quantize_flow(flow[..., c], bound=self.settings.bound) for c in (0, 1)]
        if self.settings.quality is not None:
            images = [_jpeg_round_trip(image, self.settings.quality) for image in images]
        return np.stack(images, axis=-1)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        if not list(indices):
            return np.empty((0, *self.size, 2), dtype=np.uint8)
        return super().get_frames(indices)

    def close(self) -> None:
        self.video.close()


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` as a greyscale JPEG written at ``quality`` (as :func:`_save_flow`) reads back."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"))


def extract_video_flow(
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    algorithm: str = DEFAULT_FLOW_ALGORITHM,
    bound: float = DEFAULT_BOUND,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    quality: int = DEFAULT_QUALITY,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int | None = None,
) -> int:
    """Write the flow of ``video`` as ``out_dir/flow_x_00001.jpg``, ``flow_y_00001.jpg``, ...
    and return the number of flow frames (frames - 1).

    Frames are resized to ``short_side`` first (flow in pixels of the resized frames, as
    dense_flow with ``--new_width/--new_height``). The folder is written atomically (see
    :func:`~timeshift.data.extract.write_atomically`); frames stream through, never all held.

    Raises:
        VideoDecodeError: not decodable, over a limit, or fewer than 2 frames.
    """
    _check_bound(bound)
    estimate = flow_estimator(algorithm)
    images = iter_video_images(
        video, short_side=short_side, max_frames=max_frames, max_frame_pixels=max_frame_pixels
    )

    def write(folder: Path) -> int:
        count, previous = 0, None
        for image in images:
            gray = _gray(np.asarray(image))
            if previous is not None:
                count += 1
                _save_flow(folder, count, estimate(previous, gray), bound, quality)
            previous = gray
        if count == 0:
            raise VideoDecodeError(video, "only one frame; optical flow needs at least two")
        return count

    kind = flow_kind(algorithm=algorithm, bound=bound, short_side=short_side)
    return write_atomically(video, out_dir, write, kind=kind)


def _save_flow(folder: Path, index: int, flow: np.ndarray, bound: float, quality: int) -> None:
    from PIL import Image

    for axis, channel in (("x", 0), ("y", 1)):
        image = Image.fromarray(quantize_flow(flow[..., channel], bound=bound))  # 2-D uint8: "L"
        image.save(folder / FLOW_TEMPLATE.format(axis, index), quality=quality)


def extract_flow(
    video_list: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    algorithm: str = DEFAULT_FLOW_ALGORITHM,
    bound: float = DEFAULT_BOUND,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    workers: int = 1,
    list_name: str | None = None,
    progress: bool = True,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int | None = None,
) -> ExtractResult:
    """Extract the optical flow of every video in ``video_list`` (any list format).

    Writes ``out_dir/<video path>/flow_x_00001.jpg, flow_y_00001.jpg, ...`` (see
    :func:`extract_video_flow`) and the flow list ``out_dir/<list stem>_flow.txt`` in the
    reference format ``folder num_flow_frames label`` (paths relative to ``out_dir``).
    Resumable, atomic per video, failures counted: as
    :func:`~timeshift.data.extract.extract_list`; a folder finished with other settings
    (algorithm, bound, size) is extracted again.

    Args:
        root: the folder relative list paths are relative to (default: the list's folder).
        algorithm: ``"dis"`` (default), ``"farneback"`` or ``"tvl1"`` (``timeshift[flow]``).
        bound: flow beyond ``+-bound`` pixels saturates (reference: 20).
        short_side: resize frames to this short side first; ``None`` keeps their size.

    Raises:
        FlowUnavailableError: before any work, when ``algorithm`` cannot run here.
    """
    _check_bound(bound)
    flow_estimator(algorithm)  # an unavailable algorithm fails once, not once per video
    options = dict(
        algorithm=algorithm,
        bound=bound,
        short_side=short_side,
        max_frames=max_frames,
        max_frame_pixels=max_frame_pixels_limit(max_frame_pixels),
    )
    job = ExtractJob(
        extract=extract_video_flow,
        options=options,
        kind=flow_kind(algorithm=algorithm, bound=bound, short_side=short_side),
        what="flow",
        list_suffix="flow",
    )
    return extract_list(
        video_list, out_dir, job=job, root=root, workers=workers, list_name=list_name,
        progress=progress,
    )  # fmt: skip
