"""Video decoding: exact frames at 0-based indices from video files or frame folders.

Backends:

* ``pyav`` (default): the stream is demuxed once on open (no decoding) to list every frame's
  timestamp, so ``num_frames`` is the true count whatever the container metadata says, and a
  frame index maps to an exact timestamp. ``get_frames`` seeks to the keyframe before each
  requested frame and decodes forward, identifying frames by timestamp (never off by one).
* ``opencv``: reads forward with ``grab``/``retrieve`` from the start (OpenCV's frame seeking is
  not exact for many codecs); the count is found by grabbing through the file once.
* ``frames``: a folder of images named by a template (``img_{:05d}.jpg``, 1-indexed, as the
  reference TSM code and MMAction2 write them).

Readers are context managers that close their handles. Each DataLoader worker opens its own
reader per sample, so nothing is shared across processes.

Limits (no input may hang the library or make it allocate without bound): only regular files are
opened (a FIFO, socket or device named ``*.mp4`` would block or read forever), and frames larger
than :func:`max_frame_pixels` (``TIMESHIFT_MAX_FRAME_PIXELS``, default 4096 x 4096) are refused
before they are decoded.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from timeshift.errors import TimeshiftError

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_FRAME_PIXELS",
    "MAX_FRAME_ASPECT",
    "MAX_FRAME_PIXELS_ENV",
    "ArrayReader",
    "FrameFolderReader",
    "ImageFolderReader",
    "OpenCVReader",
    "PyAVReader",
    "VideoDecodeError",
    "VideoReader",
    "check_frame_size",
    "check_regular_file",
    "max_frame_pixels",
    "open_video",
    "read_image",
]

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "img_{:05d}.jpg"
BACKENDS = ("pyav", "opencv", "frames")
MAX_FRAME_PIXELS_ENV = "TIMESHIFT_MAX_FRAME_PIXELS"
# 16.8 Mpx (4K DCI is 8.8 Mpx): a decoded RGB frame of this size is 48 MiB; a tiny file of
# 8000x8000 frames would otherwise cost gigabytes per sample
DEFAULT_MAX_FRAME_PIXELS = 4096 * 4096
# a file whose demux pass shows a damaged tail is verified by decoding from its last keyframes
_TAIL_KEYFRAMES = 3


class VideoDecodeError(TimeshiftError):
    """A video (or frame folder) cannot be read. The message names the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str | None = None) -> None:
        # one-argument form: a full message (how DataLoader re-raises a worker's exception)
        self.path = str(path)
        self.cause = cause
        super().__init__(self.path if cause is None else f"{self.path}: {cause}")

    def __reduce__(self):
        # rebuilt with both arguments in the main process when raised in a DataLoader worker
        return (type(self), (self.path, self.cause))


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_regular_file(path: str | os.PathLike) -> None:
    """Raise :class:`VideoDecodeError` unless ``path`` is a regular file (symlinks followed).

    Opening a FIFO blocks until a writer appears, and a device or socket can be read forever,
    so every reader checks this before handing the path to FFmpeg, OpenCV or Pillow.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot access the file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise VideoDecodeError(
            path, f"not a regular file but {_file_kind(mode)}; videos and frames must be files"
        )


def max_frame_pixels(limit: int | None = None) -> int:
    """The largest frame (``width * height``) a reader decodes: ``limit`` when given, else the
    ``TIMESHIFT_MAX_FRAME_PIXELS`` environment variable, else :data:`DEFAULT_MAX_FRAME_PIXELS`."""
    if limit is not None:
        source, given = "max_frame_pixels", limit
        value = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    else:
        given = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
        if not given:
            return DEFAULT_MAX_FRAME_PIXELS
        source = MAX_FRAME_PIXELS_ENV
        try:
            value = int(given)
        except ValueError:
            value = None
    if value is None or value < 1:
        raise ValueError(
            f"{source} must be a positive whole number of pixels per frame (e.g. "
            f"{DEFAULT_MAX_FRAME_PIXELS} for 4096x4096), got {given!r}"
        )
    return value


# 32:9 "super ultrawide" is 3.6:1 and 360-degree video 2:1: a frame far thinner than this is
# not a video frame, and resizing its shorter side to a model's input would multiply its size
# (a 16x65536 frame is under the pixel limit, and gigabytes once its shorter side is 256)
MAX_FRAME_ASPECT = 16


def check_frame_size(path: str | os.PathLike, width: int, height: int, limit: int) -> None:
    """Raise :class:`VideoDecodeError` when ``width x height`` frames exceed ``limit`` pixels
    (before any is decoded: a small file can ask for gigabytes), or are thinner than
    :data:`MAX_FRAME_ASPECT` to 1."""
    pixels = int(width) * int(height)
    short, long = sorted((int(width), int(height)))
    if short > 0 and long > MAX_FRAME_ASPECT * short:
        raise VideoDecodeError(
            path,
            f"{width}x{height} frames: an aspect ratio over {MAX_FRAME_ASPECT}:1 is not a video "
            "frame (resized to a model's input, one frame would take "
            f"{_human(3 * 256 * 256 * long // short)})",
        )
    if pixels <= limit:
        return
    try:
        file_size = f"a {_human(os.path.getsize(path))} file with "
    except OSError:
        file_size = ""
    raise VideoDecodeError(
        path,
        f"{file_size}{width}x{height} frames ({pixels:,} pixels, {_human(3 * pixels)} per "
        f"decoded RGB frame) is over the limit of {limit:,} pixels per frame; raise it with "
        f"max_frame_pixels=... or the environment variable {MAX_FRAME_PIXELS_ENV}={pixels} "
        "if this video is expected",
    )


def _human(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} bytes"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def _limit(value: int | None) -> int:
    # the readers' keyword argument of the same name hides the module function
    return max_frame_pixels(value)


def _require(module: str, extra: str = "video"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this backend needs the '{module}' package: pip install 'timeshift[{extra}]'"
        ) from exc


class VideoReader(ABC):
    """Random access to the frames of one video.

    Attributes:
        path: the file or folder.
        num_frames: number of frames (the true count, found by reading where needed).
        fps: frames per second (``None`` where unknown, e.g. frame folders).
        size: ``(height, width)`` of the frames.
    """

    backend = ""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    @property
    @abstractmethod
    def num_frames(self) -> int: ...

    @property
    @abstractmethod
    def fps(self) -> float | None: ...

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]: ...

    @abstractmethod
    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        """Frames for sorted, unique, in-range indices."""

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at 0-based ``indices`` (any order, repeats allowed) as ``(len, H, W, 3)`` uint8
        RGB."""
        indices = [int(i) for i in indices]
        if not indices:
            h, w = self.size
            return np.empty((0, h, w, 3), dtype=np.uint8)
        n = self.num_frames
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise self._range_error(bad, n)
        frames = self._read(sorted(set(indices)))
        return np.stack([frames[i] for i in indices])

    def _range_error(self, bad: list[int], n: int) -> Exception:
        return IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {n})")

    def get_timestamps(self, indices: Sequence[int]) -> np.ndarray:
        """Presentation times in seconds of the frames at ``indices``, from the first frame.

        Backends that know each frame's own timestamp (PyAV) return it, so variable-frame-rate
        videos get their true times; the others return ``index / fps`` (NaN without ``fps``).
        """
        indices = np.asarray(indices, dtype=np.int64)
        n = self.num_frames
        if indices.size and not ((indices >= 0) & (indices < n)).all():
            raise IndexError(f"{self.path}: frame indices outside [0, {n})")
        return indices / self.fps if self.fps else np.full(indices.shape, np.nan)

    def close(self) -> None:  # noqa: B027 - readers without handles need nothing
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class ArrayReader(VideoReader):
    """Frames already in memory: a ``(T, H, W, 3)`` uint8 RGB array (the pipeline's array and
    tensor inputs), read like a video file.

    Args:
        name: what messages call it (its ``path``).
        frames: the frames; checked here, so a wrong shape or type is named before any work.
        fps: their frame rate, if known.
    """

    backend = "array"

    def __init__(self, name: str, frames: np.ndarray, *, fps: float | None = None) -> None:
        super().__init__(name)
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VideoDecodeError(
                name,
                f"expected a (T, H, W, 3) uint8 RGB array, got shape {tuple(frames.shape)} and "
                f"dtype {frames.dtype}",
            )
        if frames.shape[0] == 0:
            raise VideoDecodeError(name, "the array has no frames")
        self._frames = frames
        self._fps = fps

    @property
    def num_frames(self) -> int:
        return int(self._frames.shape[0])

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return int(self._frames.shape[1]), int(self._frames.shape[2])

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        return {i: self._frames[i] for i in targets}


class _Unreliable(Exception):
    """Decoded timestamps do not match the demuxed index: switch to counting frames."""


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader with an exact frame index built by demuxing on open.

    Two ways to find frame ``k``, chosen per file:

    * timestamp mode (normal files): packets are demuxed once on open (no decoding) and sorted
      by presentation timestamp; frame ``k`` is the ``k``-th timestamp. A request seeks to the
      keyframe before the target (by its decode timestamp, which is what AVI and MPEG-TS seek
      by) and decodes forward, identifying frames by timestamp. Every decoded frame is checked
      against the index; any mismatch switches the reader to
    * counting mode (missing, duplicated or made-up timestamps, raw streams): frames are
      counted in decode order from the start of the file.

    ``num_frames`` counts frames that decode: the demuxer lists every packet the container
    indexes, even those a truncated file no longer holds (an MP4 with its index at the front),
    so a file whose demux pass shows a damaged tail (a corrupt or missing packet, a demux
    error) is decoded once from its last keyframes to find its last decodable frame. A decode
    failure found later, while reading, lowers ``num_frames`` to the frames before it.

    Args:
        path: video file (a regular file: FIFOs and devices are refused, they would block).
        threads: decoder threads; 0 lets FFmpeg choose (slice threading, which keeps no frames
            in flight across seeks).
        max_decode_factor: a ``get_frames`` call that decodes more than this many times the
            video's frame count (plus a margin) without reaching its targets is stuck and fails.
        max_frame_pixels: refuse frames larger than this (``width * height``); ``None``:
            :func:`max_frame_pixels` (environment variable or default).
    """

    backend = "pyav"

    def __init__(
        self,
        path,
        *,
        threads: int = 0,
        max_decode_factor: float = 3.0,
        max_frame_pixels: int | None = None,
    ) -> None:
        super().__init__(path)
        self._av = _require("av")
        self._max_pixels = _limit(max_frame_pixels)
        check_regular_file(self.path)
        self._max_decode_factor = max_decode_factor
        self._threads = threads
        self._container = None
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()
        self._open()
        try:
            self._build_index()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        try:
            # metadata_errors: a badly encoded title tag must not make the video unreadable
            self._container = self._av.open(self.path, metadata_errors="replace")
        except Exception as exc:  # FFmpeg, OS and codec errors come in many types
            raise VideoDecodeError(self.path, f"cannot open: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        context = self._stream.codec_context
        try:
            check_frame_size(self.path, context.width, context.height, self._max_pixels)
        except VideoDecodeError:
            self._container.close()
            raise
        self._stream.thread_type = "SLICE"
        if self._threads:
            self._stream.thread_count = self._threads
        self._frames_iter = None
        self._pending = None  # a frame decoded (after a seek) but not consumed yet
        self._position = -1  # index of the last decoded frame; -1: before the first

    def _build_index(self) -> None:
        packets = []  # (pts, dts, keyframe)
        file_size = os.path.getsize(self.path)
        damaged = False  # signs that the last packets may not decode
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # flush packets; packets an MP4 edit list drops
                packets.append((packet.pts, packet.dts, packet.is_keyframe))
                end = packet.pos + packet.size if packet.pos is not None else 0
                damaged = damaged or packet.is_corrupt or end > file_size
        except self._av.FFmpegError as exc:
            if not packets:
                raise VideoDecodeError(self.path, f"cannot read packets: {exc}") from exc
            _logger.warning(
                "%s: stream ends early (%s); using %d frames", self.path, exc, len(packets)
            )
            damaged = True
        if not packets:
            raise VideoDecodeError(self.path, "no video frames")
        self._listed = len(packets)
        # the container's own frame count (MP4 indexes every sample up front) above what the
        # file still holds: it was cut
        damaged = damaged or self._stream.frames > len(packets)
        self._count = len(packets)
        pts = [p for p, _, _ in packets]
        self._counting = any(p is None for p in pts) or len(set(pts)) != len(pts)
        if not self._counting:
            self._pts = sorted(pts)
            self._index_of = {stamp: i for i, stamp in enumerate(self._pts)}
            seek_at = {}
            for p, d, key in packets:
                if key:
                    seek_at[self._index_of[p]] = (p, min(p, d) if d is not None else p)
            self._keyframes = sorted(seek_at)
            # containers seek by presentation (MP4, Matroska) or decode timestamps (AVI, MPEG-TS)
            self._seek_stamps = {
                "pts": [seek_at[k][0] for k in self._keyframes],
                "dts": [seek_at[k][1] for k in self._keyframes],
            }
            self._seek_by = "pts"
        # the demux pass left the container at its end: the first request repositions it
        self._frames_iter = None
        if damaged and not self._counting:
            self._verify_tail()

    def _verify_tail(self) -> None:
        """Lower the count to the last frame that decodes, decoding from the last keyframes
        (stepping back while a whole group of pictures fails)."""
        claimed = self._count
        last = None
        for k in reversed(self._keyframes[-_TAIL_KEYFRAMES:]):
            last = self._last_decodable(k)
            if last is not None and last >= k:
                break
        self._frames_iter = None
        if last is None:
            return  # nothing decodes near the end: reading will find where decoding stops
        self._count = last + 1
        if self._count < claimed:
            _logger.warning(
                "%s: only the first %d of %d frames decode (truncated or corrupt tail); "
                "using %d frames",
                self.path,
                self._count,
                claimed,
                self._count,
            )

    def _last_decodable(self, keyframe: int) -> int | None:
        """Index of the last frame decoded from ``keyframe`` on before the decoder stops."""
        last = None
        try:
            self._seek(keyframe)
            while self._next_frame() is not None:
                last = self._position
        except (VideoDecodeError, _Unreliable):
            pass
        return last

    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def fps(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def _range_error(self, bad: list[int], n: int) -> Exception:
        if min(bad) >= 0 and max(bad) < self._listed:  # listed by the container, undecodable
            return VideoDecodeError(
                self.path,
                f"frames {bad[:5]} do not decode: only the first {n} of the {self._listed} "
                "frames the container lists do (truncated or corrupt file)",
            )
        return super()._range_error(bad, n)

    def get_timestamps(self, indices: Sequence[int]) -> np.ndarray:
        if self._counting:  # no trustworthy timestamps: the nominal frame rate
            return super().get_timestamps(indices)
        indices = np.asarray(indices, dtype=np.int64)
        super().get_timestamps(indices)  # range check
        stamps = np.asarray(self._pts, dtype=np.float64)[indices] - self._pts[0]
        return stamps * float(self._stream.time_base)

    @property
    def size(self) -> tuple[int, int]:
        return (self._stream.codec_context.height, self._stream.codec_context.width)

    def _rewind(self) -> None:
        """Decode from the very beginning next (reopening: the most robust way back)."""
        self._open()
        self._frames_iter = self._container.decode(self._stream)

    def _seek(self, target: int) -> None:
        """Position the decoder at or before ``target`` (timestamp mode)."""
        k = bisect.bisect_right(self._keyframes, target) - 1
        if k < 0:
            self._rewind()
            return
        stamp = self._seek_stamps[self._seek_by][k]
        self._container.seek(stamp, stream=self._stream, backward=True)
        self._frames_iter = self._container.decode(self._stream)
        self._pending = None
        self._position = None  # unknown until the first frame says where we landed

    def _next_frame(self):
        try:
            frame = next(self._frames_iter)
        except StopIteration:
            return None
        except self._av.FFmpegError as exc:
            raise VideoDecodeError(
                self.path, f"decoding failed after frame {self._position}: {exc}"
            ) from exc
        # a stream may change resolution mid-way: check every frame, not only the header
        check_frame_size(self.path, frame.width, frame.height, self._max_pixels)
        if self._counting:
            self._position += 1
            return frame
        index = self._index_of.get(frame.pts)
        if index is None or (self._position is not None and index != self._position + 1):
            raise _Unreliable
        self._position = index
        return frame

    def _needs_seek(self, target: int) -> bool:
        if self._frames_iter is None or self._position is None:
            return True
        if self._pending is not None and target == self._position:
            return False  # the frame just decoded after a seek is the target
        if target <= self._position:
            return True
        if self._counting:
            return False
        k = bisect.bisect_right(self._keyframes, target) - 1
        return k >= 0 and self._keyframes[k] > self._position + 1

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        if not self._counting:
            try:
                return self._read_from(targets)
            except _Unreliable:
                _logger.debug("%s: timestamps unreliable, counting frames instead", self.path)
                self._counting = True
                self._frames_iter = None  # the frame that revealed it is consumed: start over
        return self._read_from(targets)

    def _peek_landing(self, target: int) -> None:
        """Decode the first frame after a seek; if the seek went past ``target`` (the container
        seeks by the other kind of timestamp), seek again by decode timestamps."""
        frame = self._next_frame()
        if frame is not None and self._position > target and self._seek_by == "pts":
            self._seek_by = "dts"
            self._seek(target)
            frame = self._next_frame()
        if frame is None:
            raise VideoDecodeError(self.path, f"no frame decodes after seeking to frame {target}")
        self._pending = frame

    def _read_from(self, targets: list[int]) -> dict[int, np.ndarray]:
        self._budget = int(self._max_decode_factor * self.num_frames) + 64
        height, width = self.size
        out: dict[int, np.ndarray] = {}
        for target in targets:
            if self._needs_seek(target):
                if self._counting:
                    self._rewind()
                else:
                    self._seek(target)
                    self._peek_landing(target)
            frame = self._advance_to(target)
            # one reformatter per reader: PyAV's frame.to_ndarray(format=...) builds a new
            # swscale context per frame, which costs 20x the conversion itself; width/height
            # keep one size for every frame even if the stream changes resolution
            rgb = self._reformatter.reformat(frame, format="rgb24", width=width, height=height)
            out[target] = rgb.to_ndarray()
        return out

    def _advance_to(self, target: int):
        """Decode forward to frame ``target`` and return it."""
        while True:
            if self._pending is not None:
                frame, self._pending = self._pending, None
            else:
                try:
                    frame = self._next_frame()
                except VideoDecodeError:
                    self._stopped_at(target)
                    raise
                self._budget -= 1
                if frame is None or self._budget < 0:
                    why = "decoder stopped" if frame is None else "decoding makes no progress"
                    claimed = self.num_frames
                    if frame is None:
                        self._stopped_at(target)
                    raise VideoDecodeError(
                        self.path,
                        f"{why} at frame {self._position} before reaching frame {target} of "
                        f"{claimed} (truncated or corrupt file?)",
                    )
            if self._position == target:
                return frame
            if self._position > target:
                raise _Unreliable  # even decode timestamps could not land before the target

    def _stopped_at(self, target: int) -> None:
        """Decoding stopped before ``target``: frames from there on do not decode (on this
        path), so the count drops to the frames before; a caller can sample again within it."""
        position = self._position
        if position is not None and 0 <= position < target and position + 1 < self._count:
            _logger.warning(
                "%s: decoding stops after frame %d of %d; using %d frames",
                self.path,
                position,
                self._count,
                position + 1,
            )
            self._count = position + 1
        self._frames_iter = None

    def close(self) -> None:
        self._frames_iter = None
        if self._container is not None:
            self._container.close()


class OpenCVReader(VideoReader):
    """OpenCV reader: forward reads only, so frames are exact even where seeking is not.

    OpenCV's frame count comes from container metadata, which can be wrong, so the true count
    is found by grabbing through the file the first time ``num_frames`` is asked for.

    Args:
        path: video file (a regular file: FIFOs and devices are refused, they would block).
        max_frame_pixels: refuse frames larger than this (``width * height``); ``None``:
            :func:`max_frame_pixels` (environment variable or default).
    """

    backend = "opencv"

    def __init__(self, path, *, max_frame_pixels: int | None = None) -> None:
        super().__init__(path)
        self._cv2 = _require("cv2")
        self._max_pixels = _limit(max_frame_pixels)
        check_regular_file(self.path)
        self._cap = None
        self._open()
        width = int(self._cap.get(self._cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self._cap.get(self._cv2.CAP_PROP_FRAME_HEIGHT))
        try:  # before the first frame is decoded
            check_frame_size(self.path, width, height, self._max_pixels)
        except VideoDecodeError:
            self.close()
            raise
        self._count: int | None = None
        self._fps = float(self._cap.get(self._cv2.CAP_PROP_FPS)) or None
        if not self._cap.grab():
            self.close()
            raise VideoDecodeError(self.path, "no decodable video frames")
        self._position = 0
        ok, first = self._cap.retrieve()
        if not ok:
            self.close()
            raise VideoDecodeError(self.path, "cannot decode the first frame")
        self._size = (first.shape[0], first.shape[1])
        if not width * height:  # no size in the header: the first frame tells
            try:
                check_frame_size(self.path, first.shape[1], first.shape[0], self._max_pixels)
            except VideoDecodeError:
                self.close()
                raise

    def _open(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = self._cv2.VideoCapture(self.path)
        if not self._cap.isOpened():
            raise VideoDecodeError(self.path, "OpenCV cannot open the file")
        self._position = -1

    @property
    def num_frames(self) -> int:
        if self._count is None:
            count = self._position + 1  # frames already passed
            while self._cap.grab():
                count += 1
            self._count = count
            self._open()
        return self._count

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        out = {}
        if targets[0] <= self._position:
            self._open()
        for target in targets:
            while self._position < target:
                if not self._cap.grab():
                    raise VideoDecodeError(
                        self.path, f"decoder stopped at frame {self._position} before {target}"
                    )
                self._position += 1
            ok, bgr = self._cap.retrieve()
            if not ok:
                raise VideoDecodeError(self.path, f"cannot decode frame {target}")
            if bgr.shape[:2] != self._size:
                bgr = self._cv2.resize(bgr, self._size[::-1], interpolation=self._cv2.INTER_AREA)
            out[target] = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
        return out

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderReader(VideoReader):
    """Frames stored as image files in one folder; a subclass sets ``_count`` and reads one
    frame in ``_load(index)`` (RGB frames here, optical flow in
    :class:`~timeshift.data.flow_frames.FlowFolderReader`).

    Args:
        path: the folder.
        fps: frame rate to report, if known.
        max_frame_pixels: refuse images larger than this (``width * height``), checked from
            the image header before decoding; ``None``: :func:`max_frame_pixels`.
    """

    kind = "frame"  # what the folder holds, for messages

    def __init__(
        self, path, *, fps: float | None = None, max_frame_pixels: int | None = None
    ) -> None:
        super().__init__(path)
        if not Path(self.path).is_dir():
            raise VideoDecodeError(self.path, f"{self.kind} folder not found")
        self._max_pixels = _limit(max_frame_pixels)
        self._fps = fps
        self._count = 0
        self._size: tuple[int, int] | None = None

    @abstractmethod
    def _load(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as a uint8 ``(H, W, C)`` array."""

    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            self._size = self._load(0).shape[:2]
        return self._size

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        return {i: self._load(i) for i in targets}


class FrameFolderReader(ImageFolderReader):
    """Frames stored as image files in one folder.

    Args:
        path: the folder.
        template: file name of frame ``k`` (``template.format(k)``).
        start_index: number of the first file (1 in the reference TSM and MMAction2 layouts).
        num_frames: frame count if known (e.g. from a list file); otherwise consecutive files
            are counted.
        fps: frame rate to report, if known.
        max_frame_pixels: refuse images larger than this (``width * height``), checked from
            the image header before decoding; ``None``: :func:`max_frame_pixels`.
    """

    backend = "frames"

    def __init__(
        self,
        path,
        *,
        template: str = DEFAULT_TEMPLATE,
        start_index: int = 1,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frame_pixels: int | None = None,
    ) -> None:
        super().__init__(path, fps=fps, max_frame_pixels=max_frame_pixels)
        self.template = template
        self.start_index = start_index
        self._count = num_frames if num_frames is not None else self._count_files()
        if self._count <= 0:
            raise VideoDecodeError(
                self.path, f"no frames named like {template.format(start_index)!r}"
            )

    def _file(self, index: int) -> Path:
        return Path(self.path) / self.template.format(self.start_index + index)

    def _count_files(self) -> int:
        names = set(os.listdir(self.path))
        count = 0
        while self.template.format(self.start_index + count) in names:
            count += 1
        return count

    def _load(self, index: int) -> np.ndarray:
        return read_image(
            self._file(index), mode="RGB", max_pixels=self._max_pixels, what=f"frame {index}"
        )


def read_image(file: Path, *, mode: str, max_pixels: int, what: str) -> np.ndarray:
    """One image file as a uint8 array in PIL ``mode`` (``"RGB"``: ``(H, W, 3)``, ``"L"``:
    ``(H, W)``); :class:`VideoDecodeError` naming the file when it is missing, not a regular
    file, over ``max_pixels`` or undecodable (``what`` says which frame it is)."""
    from PIL import Image

    if not file.exists():
        raise VideoDecodeError(file, f"{what} missing")
    check_regular_file(file)  # a FIFO named img_00001.jpg would block Image.open
    try:
        with Image.open(file) as image:  # reads the header only
            check_frame_size(file, *image.size, max_pixels)
            return np.asarray(image.convert(mode))
    except FileNotFoundError as exc:
        raise VideoDecodeError(file, f"{what} missing") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(file, f"cannot decode image: {exc}") from exc


def open_video(path: str | os.PathLike, *, backend: str | None = None, **kwargs) -> VideoReader:
    """Open a video file or frame folder for exact random access.

    Args:
        path: a video file (mp4, webm, avi, mkv, ...) or a folder of frame images.
        backend: ``"pyav"`` (default for files), ``"opencv"``, or ``"frames"`` (default for
            folders).
        **kwargs: backend options (``max_frame_pixels`` for all; ``threads`` for pyav;
            ``template``, ``start_index``, ``num_frames``, ``fps`` for frames).

    Raises:
        VideoDecodeError: the file cannot be opened, is not a regular file (a FIFO, socket or
            device), holds no frames, or its frames are over the size limit.
    """
    if backend is None:
        backend = "frames" if Path(path).is_dir() else "pyav"
    if backend == "pyav":
        return PyAVReader(path, **kwargs)
    if backend == "opencv":
        return OpenCVReader(path, **kwargs)
    if backend == "frames":
        return FrameFolderReader(path, **kwargs)
    raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
