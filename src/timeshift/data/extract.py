"""Extract JPEG frame folders from videos, for frame-based pipelines (reference TSM layout)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

from timeshift.data.decode import (
    DEFAULT_TEMPLATE,
    VideoDecodeError,
    check_frame_size,
    check_regular_file,
)
from timeshift.data.decode import max_frame_pixels as max_frame_pixels_limit
from timeshift.data.formats import SampleRecord, read_annotations, write_rawframe_list

__all__ = ["DEFAULT_MAX_FRAMES", "ExtractResult", "extract_frames", "extract_video"]

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


def _resized(image, short_side: int | None):
    if not short_side:
        return image
    w, h = image.size
    scale = short_side / min(w, h)
    if scale == 1:
        return image
    from PIL import Image

    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


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

    Frames go to a temporary folder renamed into place at the end, with a ``.done`` marker
    naming the video, so an interrupted run never leaves a half folder that looks finished.

    Args:
        max_frames: refuse videos with more frames (nothing is kept).
        max_frame_pixels: refuse frames larger than this (``width * height``) before decoding;
            ``None``: ``TIMESHIFT_MAX_FRAME_PIXELS`` or 4096x4096.

    Raises:
        VideoDecodeError: not a regular file, not decodable, or over a limit.
    """
    import av

    limit = max_frame_pixels_limit(max_frame_pixels)
    check_regular_file(video)  # a FIFO named *.mp4 would block av.open forever
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
                image = _resized(frame.to_image(), short_side)
                count += 1
                image.save(tmp / template.format(count), quality=quality)
    except av.FFmpegError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VideoDecodeError(video, f"decoding failed after {count} frames: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VideoDecodeError(video, "no video frames")
    (tmp / DONE_MARKER).write_text(f"{count}\n{_identity(video)}\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return count


def _identity(video) -> str:
    """The key of a video: its absolute, normalised path (``a/./v.mp4`` is ``a/v.mp4``)."""
    return os.path.abspath(video)


def _done_count(folder: Path, video: str) -> int | None:
    """Frames of a finished earlier extraction of ``video`` into ``folder``; ``None`` when
    there is none, or when the folder holds another video's frames (or names none)."""
    marker = folder / DONE_MARKER
    if not marker.is_file():
        return None
    lines = marker.read_text(errors="replace").splitlines()
    if len(lines) < 2 or lines[1] != _identity(video):
        return None
    try:
        return int(lines[0])
    except ValueError:
        return None


def _job(args):
    video, folder, options = args
    try:
        return video, extract_video(video, folder, **options), None
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

    Writes ``out_dir/<video path>/img_00001.jpg ...``, where ``<video path>`` is the video's
    path relative to the list's root without its extension (so two ``v.mp4`` in different
    folders never share a folder), and a reference-format list (``frame_dir num_frames
    label``, paths relative to ``out_dir``) with one line per list entry. A video listed
    several times is extracted once. Resumable: videos whose folder carries a ``.done``
    marker naming the same video are skipped. Videos that fail are logged and listed in
    ``failed.txt``; the others go on.

    Args:
        root: the folder relative list paths are relative to (default: the list's folder).
        max_frames, max_frame_pixels: limits per video (see :func:`extract_video`).
    """
    from tqdm.auto import tqdm

    # fails here, before any work, when most paths do not exist (a wrong --root)
    annotations = read_annotations(video_list, root=root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = _folder_names(annotations.records, annotations.root)
    options = dict(
        short_side=short_side,
        template=template,
        max_frames=max_frames,
        max_frame_pixels=max_frame_pixels_limit(max_frame_pixels),
    )
    done: dict[str, int] = {}
    todo = []
    for video, folder in folders.items():  # each distinct video once, by its absolute path
        count = _done_count(out / folder, video)
        if count is not None:
            done[video] = count
        else:
            todo.append((video, out / folder, options))
    skipped = len(done)
    failed: list[tuple[str, str]] = []
    bar = tqdm(
        total=len(todo), desc="extracting frames", unit="video", disable=None if progress else True
    )
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_job, todo, chunksize=1)
            _collect(results, done, failed, bar)
    else:
        _collect(map(_job, todo), done, failed, bar)
    bar.close()
    identity = {r.path: _identity(r.path) for r in annotations.records}
    records = [  # one line per list entry: duplicates share their video's frames
        SampleRecord(str(out / folders[identity[r.path]]), r.label, done[identity[r.path]])
        for r in annotations.records
        if identity[r.path] in done
    ]
    list_file = out / (list_name or f"{Path(video_list).stem}_rawframes.txt")
    write_rawframe_list(list_file, records, root=out)
    if annotations.classes:
        (out / "classes.txt").write_text("\n".join(annotations.classes) + "\n")
    if failed:
        (out / "failed.txt").write_text("".join(f"{v}\t{why}\n" for v, why in failed))
        _logger.warning("%d videos could not be decoded; see %s", len(failed), out / "failed.txt")
    return ExtractResult(list_file, len(todo) - len(failed), skipped, failed)


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
