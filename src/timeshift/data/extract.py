"""Extract JPEG frame folders from videos, for frame-based pipelines (reference TSM layout)."""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from timeshift.data.decode import DEFAULT_TEMPLATE, VideoDecodeError
from timeshift.data.formats import SampleRecord, read_annotations, write_rawframe_list

__all__ = ["ExtractResult", "extract_frames", "extract_video"]

_logger = logging.getLogger(__name__)

DONE_MARKER = ".done"


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
) -> int:
    """Decode every frame of ``video`` into ``out_dir/img_00001.jpg`` ... and return the count.

    Frames go to a temporary folder renamed into place at the end, with a ``.done`` marker,
    so an interrupted run never leaves a half folder that looks finished.
    """
    import av

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise VideoDecodeError(video, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
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
    (tmp / DONE_MARKER).write_text(f"{count}\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return count


def _done_count(folder: Path) -> int | None:
    marker = folder / DONE_MARKER
    if not marker.is_file():
        return None
    try:
        return int(marker.read_text().strip())
    except ValueError:
        return None


def _job(args):
    video, folder, short_side, template = args
    try:
        return video, extract_video(video, folder, short_side=short_side, template=template), None
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
    **_unused,
) -> ExtractResult:
    """Extract frames of every video in ``video_list`` (a video list or class-folder tree).

    Writes ``out_dir/<video stem>/img_00001.jpg ...`` and a reference-format list
    (``frame_dir num_frames label``, paths relative to ``out_dir``). Resumable: videos whose
    folder carries a ``.done`` marker are skipped. Videos that fail are logged and listed in
    ``failed.txt``; the others go on.
    """
    from tqdm.auto import tqdm

    annotations = read_annotations(video_list, root=root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = _folder_names(annotations.records)
    done: dict[str, int] = {}
    todo = []
    for record, folder in zip(annotations.records, folders, strict=True):
        count = _done_count(out / folder)
        if count is not None:
            done[record.path] = count
        else:
            todo.append((record.path, out / folder, short_side, template))
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
    records = [
        SampleRecord(str(out / folder), r.label, done[r.path])
        for r, folder in zip(annotations.records, folders, strict=True)
        if r.path in done
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


def _folder_names(records: list[SampleRecord]) -> list[str]:
    """A unique folder per video: the file stem, prefixed by the parent folder when stems
    repeat (e.g. the same clip name in two class folders)."""
    stems = [Path(r.path).stem for r in records]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    return [
        f"{Path(r.path).parent.name}_{s}" if s in repeated else s
        for r, s in zip(records, stems, strict=True)
    ]
