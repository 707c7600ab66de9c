"""Reading optical flow stored as folders of greyscale images, in the namings other tools write.

One flow frame is a pair of uint8 greyscale images, the horizontal (``x``) and vertical (``y``)
components quantised so that zero motion is 128 (TSN's dense_flow and MMAction2's denseflow;
``timeshift data extract-flow`` writes the same). Flow frame ``i`` is the motion from video
frame ``i`` to ``i + 1``. The namings read, each 1-based as the tools write them or 0-based:

* ``dense_flow``: ``flow_x_00001.jpg``, ``flow_y_00001.jpg`` -- TSN's dense_flow and
  ``timeshift data extract-flow`` (the reference TSM template ``flow_{}_{:05d}.jpg``);
* ``mmaction2``: ``x_00001.jpg``, ``y_00001.jpg`` -- MMAction2's denseflow (``{}_{:05d}.jpg``);
* ``sthv1``: ``000123-x_00001.jpg`` in folder ``000123`` -- the Something-Something V1 flow
  release (the reference TSM template ``{:06d}-{}_{:05d}.jpg``, the folder's number first).

The naming and the first index are detected from the folder's file names
(:func:`detect_flow_naming`); the frame count is the number of flow frames the folder spans
(up to the highest index present), so a file missing in the middle is an error naming it, never
a silently shorter video. ``png`` and ``jpeg`` files are read as well as ``jpg``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timeshift.data.decode import ImageFolderReader, VideoDecodeError, read_image

__all__ = [
    "FLOW_NAMINGS",
    "FlowFolderReader",
    "FlowNaming",
    "detect_flow_naming",
    "flow_frame_files",
]

_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


@dataclass(frozen=True)
class FlowNaming:
    """How the files of flow frame ``index`` of a folder are named.

    Attributes:
        name: ``"dense_flow"``, ``"mmaction2"`` or ``"sthv1"``.
        template: ``str.format`` template with fields ``axis`` (``"x"``/``"y"``), ``index``
            and, for ``sthv1``, ``video``.
        start_index: index of the first flow frame's files (1 as the tools write them, or 0).
        extension: file extension (``jpg`` unless the folder holds another).
        video: ``sthv1`` only: the video number the file names start with.
    """

    name: str
    template: str
    start_index: int = 1
    extension: str = "jpg"
    video: int | None = None

    def file_name(self, axis: str, frame: int) -> str:
        """File name of component ``axis`` of 0-based flow frame ``frame``."""
        video = 123 if self.video is None else self.video  # an example number when unknown
        stem = self.template.format(axis=axis, index=self.start_index + frame, video=video)
        return f"{stem}.{self.extension}"

    def describe(self) -> str:
        return f"{self.name} ({self.file_name('x', 0)}, {self.start_index}-based)"


# the patterns, in detection order; ``stem`` of a file name -> (axis, index), and the template
_PATTERNS: dict[str, tuple[re.Pattern, str]] = {
    "dense_flow": (re.compile(r"flow_([xy])_(\d+)"), "flow_{axis}_{index:05d}"),
    "mmaction2": (re.compile(r"([xy])_(\d+)"), "{axis}_{index:05d}"),
    "sthv1": (re.compile(r"(\d{6})-([xy])_(\d+)"), "{video:06d}-{axis}_{index:05d}"),
}
FLOW_NAMINGS = tuple(_PATTERNS)


def _video_number(folder: str | os.PathLike) -> int | None:
    name = Path(folder).name
    return int(name) if name.isdigit() else None


def _indices(
    names: Iterable[str], naming: str, video: int | None
) -> dict[tuple[str, int | None], set[int]]:
    """The flow frame numbers in the file names of ``naming``, grouped by ``(extension,
    video number)`` (``None`` but for ``sthv1``)."""
    pattern = _PATTERNS[naming][0]
    found: dict[tuple[str, int | None], set[int]] = {}
    for file in names:
        stem, _, extension = file.rpartition(".")
        match = pattern.fullmatch(stem)
        if match is None or extension.lower() not in _IMAGE_EXTENSIONS:
            continue
        number = int(match.group(1)) if naming == "sthv1" else None
        if video is not None and number is not None and number != video:
            continue  # another video's flow: the reference reads the folder number's only
        found.setdefault((extension, number), set()).add(int(match.group(match.lastindex)))
    return found


def _naming(name: str) -> FlowNaming:
    if name not in _PATTERNS:
        raise ValueError(f"unknown flow naming {name!r}; expected one of {FLOW_NAMINGS}")
    return FlowNaming(name, _PATTERNS[name][1])


def _tried(candidates: Iterable[str]) -> str:
    return ", ".join(_naming(name).describe() for name in candidates)


def detect_flow_naming(
    folder: str | os.PathLike,
    *,
    names: Iterable[str] | None = None,
    candidates: Iterable[str] = FLOW_NAMINGS,
) -> tuple[FlowNaming, int]:
    """The naming of a flow folder and the number of flow frames it spans.

    Args:
        folder: the folder of one video's flow.
        names: its file names (read from the folder when not given).
        candidates: the namings to try (of :data:`FLOW_NAMINGS`).

    Returns:
        ``(naming, num_frames)``: the count starts at index 0 when a file of index 0 is
        there (0-based), else at 1, and ends at the highest index present.

    Raises:
        VideoDecodeError: the folder is missing, holds no file of any naming (the message
            lists the namings tried), or matches several.
    """
    if names is None:
        if not Path(folder).is_dir():
            raise VideoDecodeError(folder, "flow folder not found")
        names = os.listdir(folder)
    names = list(names)
    video = _video_number(folder)
    matches = []
    for name in candidates:
        template = _naming(name).template
        for (extension, number), indices in _indices(names, name, video).items():
            # 0-based when a frame 0 is there; else 1-based, even if frame 1 is missing (then
            # reading it is an error naming the file, not a silently shorter video)
            start = 0 if 0 in indices else 1
            naming = FlowNaming(name, template, start, extension=extension, video=number)
            matches.append((naming, max(indices) - start + 1))
    if not matches:
        raise VideoDecodeError(
            folder,
            f"no optical flow files found; namings tried: {_tried(candidates)} (extract flow with "
            "'timeshift data extract-flow', or pass flow_naming= for another naming)",
        )
    if len(matches) > 1:
        found = ", ".join(naming.describe() for naming, _ in matches)
        raise VideoDecodeError(
            folder, f"flow files of several namings: {found}; pass flow_naming= to choose one"
        )
    return matches[0]


def flow_frame_files(
    folder: str | os.PathLike, frame: int, *, naming: FlowNaming
) -> tuple[Path, Path]:
    """The ``x`` and ``y`` files of 0-based flow frame ``frame`` of ``folder``."""
    return Path(folder) / naming.file_name("x", frame), Path(folder) / naming.file_name("y", frame)


class FlowFolderReader(ImageFolderReader):
    """The flow frames of one folder: ``get_frames`` gives ``(len, H, W, 2)`` uint8, the ``x``
    and ``y`` images of each flow frame as two channels.

    Args:
        path: the folder.
        naming: ``None`` (detected from the file names), a name of :data:`FLOW_NAMINGS`
            (its start index is still detected) or a :class:`FlowNaming`.
        max_frame_pixels: refuse images larger than this (``width * height``).
    """

    backend = "flow"
    kind = "flow"

    def __init__(
        self,
        path,
        *,
        naming: str | FlowNaming | None = None,
        max_frame_pixels: int | None = None,
    ) -> None:
        super().__init__(path, max_frame_pixels=max_frame_pixels)
        names = os.listdir(self.path)
        if isinstance(naming, FlowNaming):
            self.naming = naming
            self._count = self._span(names)
        elif naming is None:
            self.naming, self._count = detect_flow_naming(self.path, names=names)
        else:
            self.naming, self._count = detect_flow_naming(
                self.path, names=names, candidates=(_naming(naming).name,)
            )

    def _span(self, names: list[str]) -> int:
        indices = _indices(names, self.naming.name, self.naming.video)
        present = indices.get((self.naming.extension, self.naming.video), set())
        count = max(present, default=self.naming.start_index - 1) - self.naming.start_index + 1
        if count <= 0:
            raise VideoDecodeError(self.path, f"no flow files named like {self.naming.describe()}")
        return count

    def _load(self, index: int) -> np.ndarray:
        x_file, y_file = flow_frame_files(self.path, index, naming=self.naming)
        what = f"flow frame {index}"
        x = read_image(x_file, mode="L", max_pixels=self._max_pixels, what=f"{what} (x)")
        y = read_image(y_file, mode="L", max_pixels=self._max_pixels, what=f"{what} (y)")
        if x.shape != y.shape:
            raise VideoDecodeError(
                y_file,
                f"{y.shape[1]}x{y.shape[0]} but its x image {x_file.name} is "
                f"{x.shape[1]}x{x.shape[0]}: the two components of a flow frame must match",
            )
        return np.stack([x, y], axis=-1)
