"""Extract JPEG frame folders from videos, for frame-based pipelines (reference TSM layout)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from timeshift.data.decode import (
    DEFAULT_TEMPLATE,
    VideoDecodeError,
    check_frame_size,
    check_regular_file,
    open_video,
)
from timeshift.data.decode import max_frame_pixels as max_frame_pixels_limit
from timeshift.data.formats import SampleRecord, read_annotations, write_rawframe_list
from timeshift.errors import TimeshiftError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "ExtractJob",
    "ExtractResult",
    "OutputFolderError",
    "extract_frames",
    "extract_list",
    "extract_video",
    "iter_video_images",
    "write_atomically",
]

_logger = logging.getLogger(__name__)

DONE_MARKER = ".done"
# frames written per video at most (one hour at 30 fps): a small file can hold millions of
# tiny frames, each of which becomes a JPEG on disk
DEFAULT_MAX_FRAMES = 108_000


@dataclass
class ExtractResult:
    list_file: Path
    extracted: int
    skipped: int  # already done by an earlier run
    failed: list[tuple[str, str]]  # (video, reason)


def resized_image(image, short_side: int | None):
    """``image`` (PIL) resized bilinearly so its short side is ``short_side`` (``None``: as is)."""
    if not short_side:
        return image
    w, h = image.size
    scale = short_side / min(w, h)
    if scale == 1:
        return image
    from PIL import Image

    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def iter_video_images(
    video: str | os.PathLike,
    *,
    short_side: int | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int | None = None,
) -> Iterator[Image.Image]:
    """Every frame of ``video`` as an RGB PIL image, resized to ``short_side`` when given.

    ``video`` may be a frame folder (``img_00001.jpg`` ..., what a rawframe list names).

    Raises:
        VideoDecodeError: not a regular file, not decodable, no frames, or over a limit.
    """
    limit = max_frame_pixels_limit(max_frame_pixels)
    if os.path.isdir(video):
        yield from _folder_images(video, short_side, max_frames, limit)
        return
    import av

    check_regular_file(video)  # a FIFO named *.mp4 would block av.open forever
    count = 0
    try:
        with av.open(str(video), metadata_errors="replace") as container:
            if not container.streams.video:
                raise VideoDecodeError(video, "no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            check_frame_size(video, context.width, context.height, limit)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                check_frame_size(video, frame.width, frame.height, limit)
                if count >= max_frames:
                    raise VideoDecodeError(
                        video,
                        f"more than {max_frames} frames; raise the limit (max_frames=..., "
                        "--max-frames) if this video is expected",
                    )
                count += 1
                yield resized_image(frame.to_image(), short_side)
    except av.FFmpegError as exc:
        raise VideoDecodeError(video, f"decoding failed after {count} frames: {exc}") from exc
    if count == 0:
        raise VideoDecodeError(video, "no video frames")


def _folder_images(folder, short_side: int | None, max_frames: int, limit: int):
    from PIL import Image

    with open_video(folder, backend="frames", max_frame_pixels=limit) as reader:
        if reader.num_frames > max_frames:
            raise VideoDecodeError(folder, f"more than {max_frames} frames (--max-frames)")
        for index in range(reader.num_frames):  # one at a time: a folder can be long
            yield resized_image(Image.fromarray(reader.get_frames([index])[0]), short_side)


def write_atomically(
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    write: Callable[[Path], int],
    *,
    kind: str = "",
) -> int:
    """Run ``write(folder)`` (returning a count) into a temporary folder renamed to ``out_dir``
    at the end, with a ``.done`` marker naming the video (and ``kind``, what was extracted with
    which settings), so an interrupted run never leaves a half folder that looks finished."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        count = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # older markers have two lines: frames, whose kind is ""
    (tmp / DONE_MARKER).write_text(f"{count}\n{_identity(video)}\n" + (kind and f"{kind}\n"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return count


def extract_video(
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    short_side: int | None = 256,
    template: str = DEFAULT_TEMPLATE,
    quality: int = 95,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int | None = None,
) -> int:
    """Decode every frame of ``video`` into ``out_dir/img_00001.jpg`` ... and return the count.

    Written atomically (see :func:`write_atomically`).

    Args:
        max_frames: refuse videos with more frames (nothing is kept).
        max_frame_pixels: refuse frames larger than this (``width * height``) before decoding;
            ``None``: ``TIMESHIFT_MAX_FRAME_PIXELS`` or 4096x4096.

    Raises:
        VideoDecodeError: not a regular file, not decodable, or over a limit.
    """
    images = iter_video_images(
        video, short_side=short_side, max_frames=max_frames, max_frame_pixels=max_frame_pixels
    )

    def write(folder: Path) -> int:
        count = 0
        for count, image in enumerate(images, 1):
            image.save(folder / template.format(count), quality=quality)
        return count

    return write_atomically(video, out_dir, write)


def _identity(video) -> str:
    """The key of a video: its absolute, normalised path (``a/./v.mp4`` is ``a/v.mp4``)."""
    return os.path.abspath(video)


class OutputFolderError(TimeshiftError):
    """An output folder holds files this extraction did not write; replacing it would lose them."""


@dataclass(frozen=True)
class ExtractJob:
    """What an extraction of a list does per video: the hook frames and flow extraction differ in.

    Args:
        extract: ``extract(video, folder, **options) -> count``, writing ``folder`` atomically
            with :func:`write_atomically` and ``kind``; a module-level function (it is sent to
            worker processes).
        kind: recorded in the ``.done`` marker: a folder is finished for the same video and
            kind only; its first word (``""`` is ``frames``) names what the folder holds.
        what: the progress bar's and messages' name of the output (``frames``, ``flow``).
        list_suffix: the list is ``out_dir/<list stem>_<list_suffix>.txt``.
    """

    extract: Callable[..., int]
    options: dict = field(default_factory=dict)
    kind: str = ""
    what: str = "frames"
    list_suffix: str = "rawframes"


def read_marker(folder: Path) -> list[str] | None:
    """The lines of ``folder``'s ``.done`` marker: count, video, kind (absent in older ones)."""
    marker = folder / DONE_MARKER
    if not marker.is_file():
        return None
    lines = marker.read_text(errors="replace").splitlines()
    return lines if len(lines) >= 2 else None


def _done_count(folder: Path, video: str, kind: str = "") -> int | None:
    """Frames of a finished earlier extraction of ``video`` (of the same ``kind``) into
    ``folder``; ``None`` when there is none, or when the folder holds another video's frames,
    another kind or settings, or names none."""
    lines = read_marker(folder)
    if lines is None or lines[1] != _identity(video) or (lines[2:3] or [""])[0] != kind:
        return None
    try:
        return int(lines[0])
    except ValueError:
        return None


def _foreign(folder: Path, kind: str) -> str | None:
    """Why replacing ``folder`` would lose files this kind of extraction did not write (a
    folder without a marker, e.g. dense_flow output or frames beside it, or RGB frames when
    extracting flow); ``None`` when it is absent, empty or of the same kind."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    lines = read_marker(folder)
    if lines is None:
        return "holds files not written by timeshift (no .done marker)"
    family = ((lines[2:3] or [""])[0] or "frames").split()[0]
    if family != ((kind or "frames").split()[0]):
        return f"holds {family} extracted by timeshift"
    return None


def _job(args):
    extract, video, folder, options = args
    try:
        return video, extract(video, folder, **options), None
    except (VideoDecodeError, OSError) as exc:
        return video, 0, str(exc)


def extract_frames(
    video_list: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    short_side: int | None = 256,
    workers: int = 1,
    template: str = DEFAULT_TEMPLATE,
    list_name: str | None = None,
    progress: bool = True,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int | None = None,
) -> ExtractResult:
    """Extract frames of every video in ``video_list`` (a video list or class-folder tree).

    Writes ``out_dir/<video path>/img_00001.jpg ...`` and ``<list stem>_rawframes.txt``; see
    :func:`extract_list` for the naming, resuming and failures.

    Args:
        root: the folder relative list paths are relative to (default: the list's folder).
        max_frames, max_frame_pixels: limits per video (see :func:`extract_video`).
    """
    options = dict(
        short_side=short_side,
        template=template,
        max_frames=max_frames,
        max_frame_pixels=max_frame_pixels_limit(max_frame_pixels),
    )
    job = ExtractJob(extract=extract_video, options=options)
    return extract_list(
        video_list, out_dir, job=job, root=root, workers=workers, list_name=list_name,
        progress=progress,
    )  # fmt: skip


def extract_list(
    video_list: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    job: ExtractJob,
    root: str | os.PathLike | None = None,
    workers: int = 1,
    list_name: str | None = None,
    progress: bool = True,
) -> ExtractResult:
    """Run ``job`` on every video in ``video_list`` (any list format :func:`read_annotations`
    reads), into one folder per video under ``out_dir``.

    The folder is ``out_dir/<video path>``, the video's path relative to the list's root
    without its extension (so two ``v.mp4`` in different folders never share a folder); the
    list (reference format ``folder count label``, paths relative to ``out_dir``) has one line
    per list entry. A video listed several times is extracted once. Resumable: videos whose
    folder carries a ``.done`` marker naming the same video and ``job.kind`` are skipped.
    Videos that fail are logged and listed in ``failed.txt``; the others go on.

    Raises:
        OutputFolderError: before any work, when an output folder holds files this job did
            not write: no ``.done`` marker (another tool's output), or another kind's
            (RGB frames when extracting flow).
    """
    from tqdm.auto import tqdm

    # fails here, before any work, when most paths do not exist (a wrong --root)
    annotations = read_annotations(video_list, root=root)
    out = Path(out_dir)
    folders = _folder_names(annotations.records, annotations.root)
    _check_foreign(out, folders.values(), job)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, int] = {}
    todo = []
    for video, folder in folders.items():  # each distinct video once, by its absolute path
        count = _done_count(out / folder, video, job.kind)
        if count is not None:
            done[video] = count
        else:
            todo.append((job.extract, video, out / folder, job.options))
    skipped = len(done)
    failed: list[tuple[str, str]] = []
    bar = tqdm(
        total=len(todo), desc=f"extracting {job.what}", unit="video",
        disable=None if progress else True,
    )  # fmt: skip
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_job, todo, chunksize=1)
            _collect(results, done, failed, bar)
    else:
        _collect(map(_job, todo), done, failed, bar)
    bar.close()
    identity = {r.path: _identity(r.path) for r in annotations.records}
    records = [  # one line per list entry: duplicates share their video's output
        SampleRecord(str(out / folders[identity[r.path]]), r.label, done[identity[r.path]])
        for r in annotations.records
        if identity[r.path] in done
    ]
    list_file = out / (list_name or f"{Path(video_list).stem}_{job.list_suffix}.txt")
    write_rawframe_list(list_file, records, root=out)
    if annotations.classes:
        (out / "classes.txt").write_text("\n".join(annotations.classes) + "\n")
    if failed:
        (out / "failed.txt").write_text("".join(f"{v}\t{why}\n" for v, why in failed))
        _logger.warning("%d videos could not be decoded; see %s", len(failed), out / "failed.txt")
    return ExtractResult(list_file, len(todo) - len(failed), skipped, failed)


def _check_foreign(out: Path, folders, job: ExtractJob) -> None:
    foreign = [(f, why) for f in folders if (why := _foreign(out / f, job.kind))]
    if foreign:
        folder, why = foreign[0]
        raise OutputFolderError(
            f"{out / folder} {why}; extracting {job.what} would replace it ({len(foreign)} "
            f"such folders in {out}): write to another output folder, or remove them first"
        )


def _collect(results, done, failed, bar) -> None:
    for video, count, error in results:
        if error is None:
            done[video] = count
        else:
            failed.append((video, error))
            _logger.warning("cannot extract %s", error)
        bar.update(1)


def _folder_names(records: list[SampleRecord], root: str | None) -> dict[str, str]:
    """A distinct folder (relative to the output) for every distinct video (by absolute path),
    unique by construction: the video's path below ``root`` without its extension
    (``x/v.mp4`` -> ``x/v``). A video outside ``root``, two whose names would still meet
    (``v.mp4`` and ``v.avi``), and a name that is another's parent folder (``x.mp4`` and
    ``x/v.mp4``: replacing ``x`` would delete ``x/v``) get a suffix from a hash of the path."""
    videos = list(dict.fromkeys(_identity(r.path) for r in records))
    base = root if root is not None else _common_folder(videos)
    names = {video: _relative_stem(video, base) for video in videos}
    counts = Counter(name for name in names.values() if name is not None)
    parents = {str(q) for name in counts for q in PurePath(name).parents}
    for video, name in names.items():
        if name is None or counts[name] > 1 or name in parents:
            digest = hashlib.sha1(video.encode()).hexdigest()[:12]
            names[video] = f"{name or Path(video).stem}-{digest}"
    return names


def _common_folder(videos: list[str]) -> str | None:
    try:
        return os.path.commonpath([os.path.dirname(os.path.abspath(v)) for v in videos])
    except ValueError:  # no videos, or paths on different drives
        return None


def _relative_stem(video: str, base: str | None) -> str | None:
    """``video`` below ``base`` without its extension, as a POSIX path; ``None`` outside."""
    if base is None:
        return None
    try:
        rel = os.path.relpath(os.path.abspath(video), os.path.abspath(base))
    except ValueError:  # another drive
        return None
    parts = PurePath(rel).parts
    if not parts or os.path.isabs(rel) or ".." in parts:
        return None
    stem = PurePath(*parts).with_suffix("").as_posix()
    # a leading dot would hide the folder (and meet the ".<name>.partial" temporaries)
    return "/".join(p if not p.startswith(".") else f"_{p}" for p in stem.split("/"))
