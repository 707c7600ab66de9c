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

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


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


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader with an exact timestamp index built by demuxing on open.

    Args:
        path: video file.
        threads: decoder threads; 0 lets FFmpeg choose.
        max_decode_factor: a ``get_frames`` call that decodes more than this many times the
            video's frame count (plus a margin) without reaching its targets is stuck and fails.
    """

    backend = "pyav"

    def __init__(self, path, *, threads: int = 0, max_decode_factor: float = 3.0) -> None:
        super().__init__(path)
        self._av = _require("av")
        self._max_decode_factor = max_decode_factor
        try:
            self._container = self._av.open(self.path)
        except (OSError, self._av.FFmpegError) as exc:
            raise VideoDecodeError(self.path, f"cannot open: {exc}") from exc
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(self.path, "no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            if threads:
                self._stream.thread_count = threads
            self._build_index()
        except BaseException:
            self._container.close()
            raise

    def _build_index(self) -> None:
        stamps, keys = [], []
        try:
            for packet in self._container.demux(self._stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:
                    continue  # flush packets
                stamps.append(stamp)
                if packet.is_keyframe:
                    keys.append(stamp)
        except self._av.FFmpegError as exc:
            if not stamps:
                raise VideoDecodeError(self.path, f"cannot read packets: {exc}") from exc
            _logger.warning(
                "%s: stream ends early (%s); using %d frames", self.path, exc, len(stamps)
            )
        if not stamps:
            raise VideoDecodeError(self.path, "no video frames")
        self._pts = sorted(stamps)
        self._index_of = {pts: i for i, pts in enumerate(self._pts)}
        keyframes = sorted({self._index_of[k] for k in keys}) or [0]
        if keyframes[0] != 0:
            keyframes.insert(0, 0)  # decoding from the very start is always possible
        self._keyframes = keyframes
        self._container.seek(self._pts[0], stream=self._stream, backward=True)
        self._position = -1  # index of the last decoded frame; -1: before the first
        self._frames_iter = None

    @property
    def num_frames(self) -> int:
        return len(self._pts)

    @property
    def fps(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def size(self) -> tuple[int, int]:
        return (self._stream.codec_context.height, self._stream.codec_context.width)

    def _keyframe_before(self, index: int) -> int:
        return self._keyframes[bisect.bisect_right(self._keyframes, index) - 1]

    def _seek(self, index: int) -> None:
        """Position the decoder so that the next frame decoded is ``index`` or earlier."""
        keyframe = self._keyframe_before(index)
        self._container.seek(self._pts[keyframe], stream=self._stream, backward=True)
        self._frames_iter = self._container.decode(self._stream)
        self._position = keyframe - 1

    def _next_frame(self):
        try:
            frame = next(self._frames_iter)
        except StopIteration:
            return None
        except self._av.FFmpegError as exc:
            raise VideoDecodeError(
                self.path, f"decoding failed after frame {self._position}: {exc}"
            ) from exc
        index = self._index_of.get(frame.pts)
        self._position = index if index is not None else self._position + 1
        return frame

    def _read(self, targets: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        budget = int(self._max_decode_factor * self.num_frames) + 64
        restarted = False
        for target in targets:
            if (
                self._frames_iter is None
                or target <= self._position
                or self._keyframe_before(target) > self._position + 1
            ):
                self._seek(target)
            while self._position < target:
                frame = self._next_frame()
                budget -= 1
                if frame is None or budget < 0:
                    why = "decoder stopped" if frame is None else "decoding makes no progress"
                    raise VideoDecodeError(
                        self.path,
                        f"{why} at frame {self._position} before reaching frame {target} of "
                        f"{self.num_frames} (truncated or corrupt file?)",
                    )
                if self._position == target:
                    out[target] = frame.to_ndarray(format="rgb24")
                elif self._position > target:
                    if restarted:
                        raise VideoDecodeError(self.path, f"cannot position on frame {target}")
                    # the container's seek landed after the keyframe: decode from the start
                    restarted = True
                    self._container.seek(self._pts[0], stream=self._stream, backward=True)
                    self._frames_iter = self._container.decode(self._stream)
                    self._position = -1
        return out

    def close(self) -> None:
        self._frames_iter = None
        self._container.close()


class OpenCVReader(VideoReader):
    """OpenCV reader: forward reads only, so frames are exact even where seeking is not."""

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
        ok, first = self._cap.read()
        if not ok:
            self.close()
            raise VideoDecodeError(self.path, "no decodable video frames")
        self._size = (first.shape[0], first.shape[1])
        self._open()

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
            # container metadata is often wrong: count by reading through the file once
            self._open()
            count = 0
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
