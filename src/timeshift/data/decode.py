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
"""

from __future__ import annotations

import bisect
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BACKENDS",
    "FrameFolderReader",
    "OpenCVReader",
    "PyAVReader",
    "VideoDecodeError",
    "VideoReader",
    "open_video",
]

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "img_{:05d}.jpg"
BACKENDS = ("pyav", "opencv", "frames")


class VideoDecodeError(RuntimeError):
    """A video (or frame folder) cannot be read. The message names the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str | None = None) -> None:
        # one-argument form: a full message (how DataLoader re-raises a worker's exception)
        self.path = str(path)
        self.cause = cause
        super().__init__(self.path if cause is None else f"{self.path}: {cause}")

    def __reduce__(self):
        # rebuilt with both arguments in the main process when raised in a DataLoader worker
        return (type(self), (self.path, self.cause))


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
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {n})")
        frames = self._read(sorted(set(indices)))
        return np.stack([frames[i] for i in indices])

    def close(self) -> None:  # noqa: B027 - readers without handles need nothing
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


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

    Args:
        path: video file.
        threads: decoder threads; 0 lets FFmpeg choose (slice threading, which keeps no frames
            in flight across seeks).
        max_decode_factor: a ``get_frames`` call that decodes more than this many times the
            video's frame count (plus a margin) without reaching its targets is stuck and fails.
    """

    backend = "pyav"

    def __init__(self, path, *, threads: int = 0, max_decode_factor: float = 3.0) -> None:
        super().__init__(path)
        self._av = _require("av")
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
        self._stream.thread_type = "SLICE"
        if self._threads:
            self._stream.thread_count = self._threads
        self._frames_iter = None
        self._pending = None  # a frame decoded (after a seek) but not consumed yet
        self._position = -1  # index of the last decoded frame; -1: before the first

    def _build_index(self) -> None:
        packets = []  # (pts, dts, keyframe)
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # flush packets; packets an MP4 edit list drops
                packets.append((packet.pts, packet.dts, packet.is_keyframe))
        except self._av.FFmpegError as exc:
            if not packets:
                raise VideoDecodeError(self.path, f"cannot read packets: {exc}") from exc
            _logger.warning(
                "%s: stream ends early (%s); using %d frames", self.path, exc, len(packets)
            )
        if not packets:
            raise VideoDecodeError(self.path, "no video frames")
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

    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def fps(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

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
                frame = self._next_frame()
                self._budget -= 1
                if frame is None or self._budget < 0:
                    why = "decoder stopped" if frame is None else "decoding makes no progress"
                    raise VideoDecodeError(
                        self.path,
                        f"{why} at frame {self._position} before reaching frame {target} of "
                        f"{self.num_frames} (truncated or corrupt file?)",
                    )
            if self._position == target:
                return frame
            if self._position > target:
                raise _Unreliable  # even decode timestamps could not land before the target

    def close(self) -> None:
        self._frames_iter = None
        if self._container is not None:
            self._container.close()


class OpenCVReader(VideoReader):
    """OpenCV reader: forward reads only, so frames are exact even where seeking is not.

    OpenCV's frame count comes from container metadata, which can be wrong, so the true count
    is found by grabbing through the file the first time ``num_frames`` is asked for.
    """

    backend = "opencv"

    def __init__(self, path) -> None:
        super().__init__(path)
        self._cv2 = _require("cv2")
        if not Path(self.path).is_file():
            raise VideoDecodeError(self.path, "file not found")
        self._cap = None
        self._open()
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


class FrameFolderReader(VideoReader):
    """Frames stored as image files in one folder.

    Args:
        path: the folder.
        template: file name of frame ``k`` (``template.format(k)``).
        start_index: number of the first file (1 in the reference TSM and MMAction2 layouts).
        num_frames: frame count if known (e.g. from a list file); otherwise consecutive files
            are counted.
        fps: frame rate to report, if known.
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
    ) -> None:
        super().__init__(path)
        if not Path(self.path).is_dir():
            raise VideoDecodeError(self.path, "frame folder not found")
        self.template = template
        self.start_index = start_index
        self._fps = fps
        self._count = num_frames if num_frames is not None else self._count_files()
        if self._count <= 0:
            raise VideoDecodeError(
                self.path, f"no frames named like {template.format(start_index)!r}"
            )
        self._size: tuple[int, int] | None = None

    def _file(self, index: int) -> Path:
        return Path(self.path) / self.template.format(self.start_index + index)

    def _count_files(self) -> int:
        names = set(os.listdir(self.path))
        count = 0
        while self.template.format(self.start_index + count) in names:
            count += 1
        return count

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

    def _load(self, index: int) -> np.ndarray:
        from PIL import Image

        file = self._file(index)
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except FileNotFoundError as exc:
            raise VideoDecodeError(file, f"frame {index} missing") from exc
        except OSError as exc:
            raise VideoDecodeError(file, f"cannot decode image: {exc}") from exc

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        return {i: self._load(i) for i in targets}


def open_video(path: str | os.PathLike, *, backend: str | None = None, **kwargs) -> VideoReader:
    """Open a video file or frame folder for exact random access.

    Args:
        path: a video file (mp4, webm, avi, mkv, ...) or a folder of frame images.
        backend: ``"pyav"`` (default for files), ``"opencv"``, or ``"frames"`` (default for
            folders).
        **kwargs: backend options (``threads`` for pyav; ``template``, ``start_index``,
            ``num_frames``, ``fps`` for frames).

    Raises:
        VideoDecodeError: the file cannot be opened or holds no frames.
    """
    if backend is None:
        backend = "frames" if Path(path).is_dir() else "pyav"
    if backend == "pyav":
        if not Path(path).exists():
            raise VideoDecodeError(path, "file not found")
        return PyAVReader(path, **kwargs)
    if backend == "opencv":
        return OpenCVReader(path, **kwargs)
    if backend == "frames":
        return FrameFolderReader(path, **kwargs)
    raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
