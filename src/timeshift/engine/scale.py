"""Batch inference at scale: the top-k classes of every video of a manifest, in one process or
under ``torchrun`` on any number of processes and machines, resumable.

``timeshift predict CHECKPOINT --manifest M --output OUT/`` runs :func:`predict_manifest`.
Every process (rank) takes the manifest paths whose hash falls to it (:func:`shard_of`: a
partition that does not depend on the manifest's order), decodes them in DataLoader workers,
scores them on the best backend for its device and appends one row per video to its own part
file::

    {"path": <as in the manifest>, "top_k": [{"label": ..., "index": ..., "score": ...}, ...]}
    {"path": ..., "error": <why it failed>}                      # the job goes on
    (+ "features": [...] with features=True: the clip embedding before the classifier)

``OUT`` (on a file system every machine sees)::

    parts/part-00000.jsonl          one per rank, appended in flushed batches
    parts/part-00000-000001.parquet  (parquet: one file per flushed batch, written atomically)
    parts/run-<id>/                 this run's progress and end markers
    predictions.jsonl | .parquet    the merge: one row per manifest path, written at the end
    summary.json                    videos done and failed, videos/s, decode and model time

Resume: a rerun reads every part file (whatever world size wrote them; a torn last line is
ignored and redone) and skips the videos already written, so a killed job, a lost node or a
changed number of processes loses and duplicates nothing. ``retry_errors=True`` redoes the
videos whose rows are errors.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from timeshift.data.decode import VideoDecodeError
from timeshift.data.formats import Annotations, SampleRecord
from timeshift.data.manifest import OUTPUT_FORMATS, Manifest, ManifestItem, path_key
from timeshift.engine.backend import Calibration
from timeshift.engine.distributed import DistInfo, cleanup, init_distributed
from timeshift.errors import TimeshiftError

__all__ = [
    "OUTPUT_FORMATS",
    "Decoded",
    "PredictionWriter",
    "ScaleError",
    "VideoScorer",
    "finished_keys",
    "merge_parts",
    "parquet_schema",
    "predict_manifest",
    "read_parts",
]

_logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 2.0  # seconds between progress-file writes and bar refreshes
_DOWNLOAD_LIMIT = 4 << 30  # bytes: a URL larger than this is refused


class ScaleError(TimeshiftError):
    """A batch-inference job cannot go on (its output folder, its part files)."""


# ------------------------------------------------------------------------------------------
# part files


def _part_files(parts: Path) -> list[Path]:
    return sorted(p for p in parts.glob("part-*") if p.suffix in (".jsonl", ".parquet"))


def read_parts(output: str | os.PathLike) -> Iterator[dict]:
    """Every row of the part files under ``output/parts``, streamed; a torn last line (a
    process killed while writing) and temporary files of an unfinished write are skipped."""
    for path in _part_files(Path(output) / "parts"):
        if path.suffix == ".parquet":
            yield from _parquet_rows(path)
            continue
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    _logger.info("%s:%d: a torn last line (redone)", path, number)
                    break
                try:
                    row = json.loads(raw)
                except ValueError:
                    _logger.warning("%s:%d: not a JSON row, ignored (redone)", path, number)
                    continue
                if isinstance(row, dict) and isinstance(row.get("path"), str):
                    yield row


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            yield {k: v for k, v in row.items() if v is not None}


def finished_keys(
    output: str | os.PathLike, *, rank: int = 0, world_size: int = 1, retry_errors: bool = False
) -> np.ndarray:
    """Sorted 64-bit keys (:func:`~timeshift.data.manifest.path_key`) of this rank's share of
    the videos already written under ``output`` (by any earlier run, any world size): what a
    resumed job skips. ``retry_errors``: error rows do not count as written."""
    return _scan_parts(Path(output), rank, world_size, retry_errors)[0]


def _scan_parts(output: Path, rank: int, world_size: int, retry_errors: bool):
    """``(finished keys of this rank's share, rows written by all ranks)``: one pass."""
    keys, rows = set(), 0
    for row in read_parts(output):
        rows += 1
        if retry_errors and "error" in row:
            continue
        key = path_key(row["path"])
        if key % world_size == rank:
            keys.add(key)
    return np.array(sorted(keys), dtype=np.uint64), rows


class PredictionWriter:
    """Appends this rank's rows to its part file, flushed (and fsynced) every ``flush_every``
    rows: JSONL appended to ``part-<rank>.jsonl`` (a torn last line left by a killed process
    is cut off first), or Parquet, one atomically written ``part-<rank>-<n>.parquet`` per flush.
    The part file is locked: a second job writing the same rank into the same folder fails."""

    def __init__(self, parts: Path, rank: int, *, format: str = "jsonl", flush_every: int = 64):
        if format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {format!r}")
        self.parts, self.rank, self.format = Path(parts), rank, format
        self.flush_every = max(1, flush_every)
        self.parts.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict] = []
        self._lock = open(self.parts / f".lock-{rank:05d}", "a")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ScaleError(
                f"{self.parts}: another process is writing rank {rank}'s part file; one job "
                "per output folder at a time"
            ) from None
        if format == "jsonl":
            self.path = self.parts / f"part-{rank:05d}.jsonl"
            _cut_torn_line(self.path)
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        else:
            self._chunk = max((_chunk_number(p) for p in self._chunks()), default=0)

    def _chunks(self) -> list[Path]:
        return list(self.parts.glob(f"part-{self.rank:05d}-*.parquet"))

    def write(self, rows: list[dict]) -> None:
        self._pending += rows
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        if self.format == "jsonl":
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._pending)
            self._file.write(data.encode("utf-8"))
            self._file.flush()
            os.fsync(self._file.fileno())
        else:
            self._chunk += 1
            target = self.parts / f"part-{self.rank:05d}-{self._chunk:06d}.parquet"
            _write_parquet(target, self._pending)
        self._pending = []

    def close(self) -> None:
        self.flush()
        if self.format == "jsonl":
            self._file.close()
        self._lock.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunk_number(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _cut_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a write cut short by a kill) off ``path``."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        position = size
        while position > 0:  # back to the last newline, a block at a time
            start = max(0, position - 65536)
            f.seek(start)
            block = f.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        _logger.info("%s: cutting a torn last line (%d bytes; redone)", path, size - position)
        f.truncate(position)
        f.flush()
        os.fsync(f.fileno())


_SCHEMA = None


def parquet_schema():
    """The Arrow schema of result rows (part files, the merge, Ray's output): ``path``,
    ``top_k`` (list of ``{label, index, score}``), ``features``, ``timeline``, ``error``."""
    global _SCHEMA
    import pyarrow as pa

    if _SCHEMA is None:
        top = pa.struct([("label", pa.string()), ("index", pa.int64()), ("score", pa.float64())])
        segment = pa.struct(
            [
                ("label", pa.string()),
                ("score", pa.float64()),
                ("start", pa.float64()),
                ("end", pa.float64()),
            ]
        )
        _SCHEMA = pa.schema(
            [
                ("path", pa.string()),
                ("top_k", pa.list_(top)),
                ("features", pa.list_(pa.float32())),
                ("timeline", pa.list_(segment)),
                ("error", pa.string()),
            ]
        )
    return _SCHEMA


def _require_pyarrow() -> None:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ScaleError(
            "--output-format parquet needs pyarrow: pip install 'timeshift[parquet]'"
        ) from None


def _write_parquet(target: Path, rows: list[dict]) -> None:
    """``rows`` as a Parquet file, written to a temporary name, fsynced and renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------------
# decoding: a stream of this rank's pending videos, split between DataLoader workers


@dataclass
class Decoded:
    """One video decoded for :class:`VideoScorer`: its views, or why it could not be read."""

    path: str
    views: torch.Tensor | None = None
    error: str | None = None
    decode_seconds: float = 0.0
    location: str | None = None  # what was read (a URL as given), for the timeline


class _PendingVideos(IterableDataset):
    """This rank's share of the manifest minus the videos already written, each decoded into
    its test-protocol views; worker ``w`` of ``n`` takes every ``n``-th pending video."""

    def __init__(
        self,
        manifest: Manifest,
        scorer: VideoScorer,
        info: DistInfo,
        done: np.ndarray,
        journal: Path | None = None,
    ):
        self.manifest, self.scorer, self.info, self.done = manifest, scorer, info, done
        self.journal = journal  # where workers note the video they are decoding

    def pending(self) -> Iterator[ManifestItem]:
        for item in self.manifest:
            key = path_key(item.path)
            if key % self.info.world_size != self.info.rank:
                continue
            at = np.searchsorted(self.done, np.uint64(key))
            if at < len(self.done) and self.done[at] == key:
                continue
            yield item

    def __iter__(self) -> Iterator[Decoded]:
        worker = get_worker_info()
        index, count = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        note = None
        if worker is not None and self.journal is not None:
            note = self.journal / f"decoding-{self.info.rank:05d}-{os.getpid()}.txt"
        with tempfile.TemporaryDirectory(prefix="timeshift-fetch-") as scratch:
            for n, item in enumerate(self.pending()):
                if n % count != index:
                    continue
                if note is not None:  # a decoder that kills its process leaves its path here
                    note.write_text(item.path, encoding="utf-8")
                decoded = self.scorer.decode(item.path, item.location, scratch=Path(scratch))
                if note is not None:
                    note.write_text("", encoding="utf-8")
                yield decoded


_MAX_WORKER_DEATHS = 100  # per run and rank: beyond, something else is wrong


def _dead_workers_videos(journal: Path, rank: int, error: Exception) -> list[str]:
    """The videos the DataLoader workers named in ``error`` (they died: a crash in a decoder,
    the kernel's OOM killer) were decoding, from their notes under ``journal``; the notes of
    this rank's workers are then removed (a new loader starts new workers)."""
    # torch says "DataLoader worker (pid 12) is killed by signal" or "(pid(s) 12, 13) exited"
    found = re.search(r"pid(?:\(s\))? ([\d, ]+)\)", str(error))
    pids = {int(p) for p in re.findall(r"\d+", found.group(1))} if found else set()
    culprits = []
    for note in journal.glob(f"decoding-{rank:05d}-*.txt"):
        pid = int(note.stem.rsplit("-", 1)[1])
        with contextlib.suppress(OSError):
            path = note.read_text(encoding="utf-8")
            if pid in pids and path:
                culprits.append(path)
        note.unlink(missing_ok=True)
    return culprits


def _download(url: str, scratch: Path, timeout: float = 60.0) -> Path:
    """``url`` into a file under ``scratch`` (its name keeps the URL's extension, which FFmpeg
    may need); refused above :data:`_DOWNLOAD_LIMIT` bytes."""
    suffix = Path(urllib.parse.urlparse(url).path).suffix[:16]
    handle, name = tempfile.mkstemp(dir=scratch, suffix=suffix)
    target = Path(name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            copied = 0
            while chunk := r.read(1 << 20):
                copied += len(chunk)
                if copied > _DOWNLOAD_LIMIT:
                    raise VideoDecodeError(url, f"larger than {_DOWNLOAD_LIMIT} bytes")
                out.write(chunk)
    except OSError as exc:  # URLError, HTTPError, timeouts
        target.unlink(missing_ok=True)
        raise VideoDecodeError(url, f"cannot be downloaded ({exc})") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _as_list(items: list) -> list:
    return items


# ------------------------------------------------------------------------------------------
# the model


class _WithFeatures(nn.Module):
    """Logits and the clip embedding (the pooled features the classifier reads, averaged over
    segments) side by side: ``(N, T, C, H, W)`` -> ``(N, K + F)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "forward_features") or not hasattr(model, "num_features"):
            raise ScaleError(f"--features needs a recognition model, got {type(model).__name__}")
        self.model = model
        self.num_segments = model.num_segments
        self.num_classes = model.num_classes + model.num_features
        self.config = getattr(model, "config", None)
        self.checkpoint_meta = model.checkpoint_meta
        self.modality = getattr(model, "modality", "rgb")
        self.new_length = getattr(model, "new_length", 1)

    def set_channels_last(self, enabled: bool) -> None:
        self.model.set_channels_last(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        head = self.model.forward_head
        return torch.cat([head(feats), head(feats, pre_logits=True)], dim=1)


# ------------------------------------------------------------------------------------------
# the job


@dataclass
class _Stats:
    rank: int = 0
    done: int = 0
    failed: int = 0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    seconds: float = 0.0
    skipped: int = 0  # already written by an earlier run


class VideoScorer:
    """A checkpoint (or registry name) with its test protocol: videos in, result rows out.

    The one scoring path of batch inference, shared by :func:`predict_manifest` (decoding in
    DataLoader workers) and :class:`timeshift.integrations.ray.RayPredictor` (in Ray actors):
    :meth:`decode` reads a path or URL into its views (clips x crops, the checkpoint's own
    preprocessing), :meth:`decode_frames` does the same for frames already in memory, and
    :meth:`rows` scores a batch of them into ``{"path", "top_k"[, "features"]}`` rows, or
    ``{"path", "error"}`` for a video that could not be read. The other arguments are
    :func:`~timeshift.engine.predict.predict_videos`'s; ``features`` adds the clip embedding
    (the pooled features the classifier reads; runs PyTorch); ``timeline`` (``{"window",
    "stride", "fps"}``, any of them) adds each video's labelled segments
    (:func:`~timeshift.engine.timeline.video_timeline`, one more sequential decode of it).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | nn.Module,
        *,
        top_k: int = 5,
        features: bool = False,
        device: str = "cpu",
        backend: str = "auto",
        memory_format: str = "auto",
        precision: str = "fp32",
        calibration: Calibration | None = None,
        clips: int | None = None,
        crops: int | None = None,
        full_res: bool | None = None,
        dense: bool | None = None,
        twice: bool = False,
        batch_size: int = 4,
        workers: int = 0,
        timeline: dict | None = None,
    ) -> None:
        from timeshift.engine.evaluate import EvalOptions, scoring_setup
        from timeshift.engine.predict import _streams

        if features and backend not in ("auto", "eager", "compile"):
            raise ValueError(
                f"--features runs PyTorch (backend eager or compile), not {backend}: the "
                "exported graphs output logits only"
            )
        self.device = torch.device(device)
        if isinstance(checkpoint, nn.Module):  # a model already loaded (serve, notebooks)
            stream = _loaded_stream(checkpoint.to(self.device).eval())
        else:
            stream = _streams(checkpoint, None, self.device, None)[0]
        model, self.meta = stream.model, stream.meta
        self.classes = list(self.meta["classes"])
        self.top_k, self.features = top_k, features
        # timelines run the plain model over each whole video (video_timeline's options)
        self.timeline = dict(timeline) if timeline is not None else None
        self._model = model
        self._runtime = {
            "backend": "eager" if features and backend == "auto" else backend,
            "memory_format": memory_format,
            "precision": precision,
            "calibration": calibration,
        }
        if features:
            model = _WithFeatures(model)
            backend = "eager" if backend == "auto" else backend
        self.options = EvalOptions(
            clips=clips,
            crops=crops,
            full_res=full_res,
            dense=dense,
            twice=twice,
            batch_size=batch_size,
            workers=workers,
            backend=backend,
            memory_format=memory_format,
            precision=precision,
            calibration=calibration,
        ).for_checkpoint(self.meta)
        placeholder = Annotations([SampleRecord(stream.checkpoint, -1)], self.classes)
        self.dataset, self.runnable = scoring_setup(
            model, self.meta, placeholder, self.options, self.device, stream.flow_settings
        )

    @property
    def num_segments(self) -> int:
        return self.dataset.num_segments

    def decode(self, path: str, location: str | None = None, *, scratch: Path | None = None):
        """:class:`Decoded` views of the video at ``location`` (default: ``path``; a file,
        frame folder, ``file://`` or ``http(s)://`` URL, downloaded into ``scratch``)."""
        start = time.perf_counter()
        local = None
        try:
            location = source = path if location is None else location
            if location.startswith(("http://", "https://")):
                local = _download(location, scratch or Path(tempfile.gettempdir()))
                location = str(local)
            elif location.startswith("file://"):
                location = urllib.request.url2pathname(urllib.parse.urlparse(location).path)
            elif "://" in location[:16]:
                scheme = location.split("://", 1)[0]
                raise VideoDecodeError(
                    path, f"unsupported URL scheme {scheme!r} (http, https and file are read)"
                )
            views, _ = self.dataset.load_record(SampleRecord(location, -1), random.Random(0))
            return self._decoded(path, views, start, source)
        except Exception as exc:  # any failure of one video is its row, never the job's end
            return Decoded(path, None, str(exc) or type(exc).__name__, time.perf_counter() - start)
        finally:
            if local is not None:
                local.unlink(missing_ok=True)

    def decode_frames(self, path: str, frames: np.ndarray) -> Decoded:
        """:class:`Decoded` views of a video given as its frames ``(F, H, W, 3)`` uint8."""
        start = time.perf_counter()
        try:
            single = copy.copy(self.dataset)
            single.arrays = {path: np.asarray(frames)}
            views, _ = single.load_record(SampleRecord(path, -1), random.Random(0))
            return self._decoded(path, views, start)
        except Exception as exc:  # one bad video is its row
            return Decoded(path, None, str(exc) or type(exc).__name__, time.perf_counter() - start)

    @staticmethod
    def _decoded(path: str, views: torch.Tensor, start: float, location=None) -> Decoded:
        if views.dim() == 4:  # one view: (T, C, H, W)
            views = views.unsqueeze(0)
        return Decoded(path, views, None, time.perf_counter() - start, location)

    @torch.no_grad()
    def rows(self, batch: list[Decoded], stats: _Stats | None = None) -> list[dict]:
        """The result row of every decoded video of ``batch``, in order."""
        from timeshift.engine.evaluate import mixed_precision

        stats = stats if stats is not None else _Stats()
        ok = [item for item in batch if item.error is None]
        stats.decode_seconds += sum(item.decode_seconds for item in batch)
        outputs = []
        if ok:
            start = time.perf_counter()
            views = torch.cat([item.views for item in ok]).to(self.device)
            with mixed_precision(self.device, True):
                scores = self.runnable(views).float().cpu()
            counts = [item.views.shape[0] for item in ok]
            outputs = [chunk.mean(dim=0) for chunk in scores.split(counts)]  # over the views
            stats.model_seconds += time.perf_counter() - start
        scored = iter(outputs)
        rows = []
        for item in batch:
            if item.error is not None:
                stats.failed += 1
                rows.append({"path": item.path, "error": item.error})
            else:
                row = self._row(item.path, next(scored))
                if self.timeline is not None:
                    row = self._with_timeline(row, item)
                stats.done += "error" not in row
                stats.failed += "error" in row
                rows.append(row)
        return rows

    def _with_timeline(self, row: dict, item: Decoded) -> dict:
        """``row`` with the video's labelled segments (``{"label", "score", "start", "end"}``,
        seconds), or an error row when its timeline cannot be made."""
        from timeshift.engine.timeline import video_timeline

        if item.location is None:
            return {"path": item.path, "error": "timeline: the video's file is not known"}
        try:
            timeline = video_timeline(
                self._model,
                item.location,
                top_k=self.top_k,
                device=str(self.device),
                progress=False,
                **self._runtime,
                **self.timeline,
            )
        except Exception as exc:  # one video's failure is its row
            return {"path": item.path, "error": f"timeline: {exc or type(exc).__name__}"}
        keys = ("label", "score", "start", "end")
        return row | {"timeline": [{k: s[k] for k in keys} for s in timeline.segments]}

    def _row(self, path: str, scores: torch.Tensor) -> dict:
        k = len(self.classes)
        row = {"path": path, "top_k": _top_k(scores[:k].softmax(dim=0), self.classes, self.top_k)}
        if self.features:
            row["features"] = [float(x) for x in scores[k:].tolist()]
        return row


def _top_k(probabilities: torch.Tensor, classes: list[str], k: int) -> list[dict]:
    """``[{"label", "index", "score"}, ...]``: the ``k`` most probable classes, best first."""
    values, indices = probabilities.topk(min(k, len(classes)))
    return [
        {"label": classes[c], "index": int(c), "score": float(v)}
        for c, v in zip(indices.tolist(), values.tolist(), strict=True)
    ]


def _loaded_stream(model: nn.Module):
    from timeshift.engine.evaluate import _meta
    from timeshift.engine.predict import _Stream, flow_settings_of
    from timeshift.models.preprocessing import resolve_input_config

    meta = _meta(model, type(model).__name__)
    flow = None
    if resolve_input_config(model, meta=meta).modality == "flow":
        flow = flow_settings_of(meta)
    return _Stream("", type(model).__name__, model, meta, flow)


def predict_manifest(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike | Manifest,
    output: str | os.PathLike,
    *,
    output_format: str = "jsonl",
    manifest_format: str = "auto",
    root: str | os.PathLike | None = None,
    top_k: int = 5,
    features: bool = False,
    retry_errors: bool = False,
    flush_every: int = 64,
    batch_size: int = 4,
    workers: int = 2,
    device: str = "cpu",
    backend: str = "auto",
    memory_format: str = "auto",
    precision: str = "fp32",
    calibration: Calibration | None = None,
    clips: int | None = None,
    crops: int | None = None,
    full_res: bool | None = None,
    dense: bool | None = None,
    twice: bool = False,
    progress: bool = True,
    timeline: dict | None = None,
    info: DistInfo | None = None,
    merge: bool = True,
    run_id: str | None = None,
) -> dict:
    """Predict every video of ``manifest`` into ``output`` (see the module doc); returns the
    summary (on rank 0, after the merge) or this rank's statistics (other ranks).

    Under ``torchrun`` every process runs this with the same arguments (``info``: taken from
    torchrun's environment). ``merge=False`` leaves the part files unmerged (call
    :func:`merge_parts` later). ``run_id``: the id every rank of this run shares, for its
    marker files (default: rank 0's, broadcast); given, ranks can also be run one after the
    other in one process (rank 0 last: it waits for the others' end markers). The other
    arguments are :class:`VideoScorer`'s.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format == "parquet":
        _require_pyarrow()
    if not isinstance(manifest, Manifest):
        manifest = Manifest(Path(manifest), manifest_format, Path(root) if root else None)
    started = time.perf_counter()
    total = manifest.count()  # every line checked before any work
    joined = info is None
    info = info or init_distributed(torch.device("cpu"))
    if device == "cuda" and info.world_size > 1:
        device = f"cuda:{info.local_rank}"
    output = Path(output)
    parts = output / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    job_lock, refused = _job_lock(parts, info)
    try:
        run = run_id or _run_id(info, refused)
    finally:
        if joined:  # the run id was the one collective: the ranks then end at their own pace
            cleanup()
    if refused is not None:  # ranks run one by one in this process (run_id given)
        raise ScaleError(refused)
    try:
        scorer = VideoScorer(
            checkpoint,
            top_k=top_k,
            features=features,
            device=device,
            backend=backend,
            memory_format=memory_format,
            precision=precision,
            calibration=calibration,
            clips=clips,
            crops=crops,
            full_res=full_res,
            dense=dense,
            twice=twice,
            batch_size=batch_size,
            workers=workers,
            timeline=timeline,
        )
        done, written = _scan_parts(output, info.rank, info.world_size, retry_errors)
        stats = _Stats(info.rank, skipped=len(done))
        _logger.info(
            "rank %d of %d: %d videos of its share already written; predicting the rest",
            info.rank,
            info.world_size,
            len(done),
        )
        board = _ProgressBoard(parts / f"run-{run}", info, total, progress)
        with PredictionWriter(
            parts, info.rank, format=output_format, flush_every=flush_every
        ) as out:
            board.start(written)
            deaths, poisoned = 0, set()
            while True:
                loader = DataLoader(
                    _PendingVideos(manifest, scorer, info, done, journal=board.folder),
                    batch_size=batch_size,
                    num_workers=workers,
                    collate_fn=_as_list,
                    prefetch_factor=2 if workers else None,
                )
                try:
                    for batch in loader:
                        out.write(scorer.rows(batch, stats))
                        board.update(stats)
                    break
                except RuntimeError as exc:  # a worker died: its video is an error row
                    culprits = _dead_workers_videos(board.folder, info.rank, exc)
                    deaths += 1
                    if not culprits or deaths > _MAX_WORKER_DEATHS:
                        raise
                    _logger.warning("a decoding worker died on %s; going on", culprits)
                    message = f"the decoding process died on this video ({exc})"
                    out.write([{"path": path, "error": message} for path in culprits])
                    out.flush()
                    stats.failed += len(culprits)
                    # the new loader's workers skip all this rank has written so far (and the
                    # videos that killed a worker, even when error rows are retried)
                    poisoned.update(path_key(path) for path in culprits)
                    done, _ = _scan_parts(output, info.rank, info.world_size, retry_errors)
                    done = np.union1d(done, np.array(sorted(poisoned), dtype=np.uint64))
        stats.seconds = time.perf_counter() - started
        board.finish(stats)
        if not info.is_main:
            return _stats_dict(stats)
        ranks = board.wait_for_all()
        if not merge:
            return {"ranks": ranks}
        # the job's wall time: until the slowest rank ended
        seconds = time.perf_counter() - started
        return merge_parts(output, output_format=output_format, ranks=ranks, seconds=seconds)
    finally:
        if job_lock is not None:
            job_lock.close()


def _run_id(info: DistInfo, refused: str | None = None) -> str:
    """An id of this run shared by all ranks (rank 0's, broadcast), for its marker files; or,
    when rank 0 could not take the output folder (``refused``), that error on every rank."""
    token = [uuid.uuid4().hex[:12] if refused is None else None, refused]
    if info.enabled:
        import torch.distributed as dist

        dist.broadcast_object_list(token, src=0)
    if token[0] is None:
        raise ScaleError(token[1])
    return token[0]


def _job_lock(parts: Path, info: DistInfo):
    """``(lock, None)``: rank 0 holds ``parts/.lock-job`` for the whole run (one job per
    output folder, whatever its number of processes), or ``(None, why)`` when another job
    holds it. Other ranks take nothing (``(None, None)``)."""
    if not info.is_main:
        return None, None
    lock = open(parts / ".lock-job", "a")  # noqa: SIM115 (held open until the run ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None, (
            f"{parts.parent}: another job is writing into this output folder; one job per "
            "output folder at a time (wait for it, or give another --output)"
        )
    return lock, None


def _stats_dict(stats: _Stats) -> dict:
    return {
        "rank": stats.rank,
        "done": stats.done,
        "failed": stats.failed,
        "skipped": stats.skipped,
        "seconds": round(stats.seconds, 3),
        "decode_seconds": round(stats.decode_seconds, 3),
        "model_seconds": round(stats.model_seconds, 3),
    }


class _ProgressBoard:
    """Progress across ranks through small files under ``parts/run-<id>/``: every rank writes
    its counts now and then (and its statistics at the end); rank 0 shows one bar with the
    global count and waits for the others' end markers before merging."""

    def __init__(self, folder: Path, info: DistInfo, total: int | None, progress: bool):
        self.folder, self.info, self.total = folder, info, total
        self.progress = progress
        self.folder.mkdir(parents=True, exist_ok=True)
        self._last = 0.0
        self._bar = None

    def _write(self, name: str, content: dict) -> None:
        target = self.folder / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(content), encoding="utf-8")
        os.replace(tmp, target)

    def start(self, written: int) -> None:
        self._write(f"progress-{self.info.rank:05d}.json", {"done": 0, "failed": 0})
        if self.info.is_main:
            from tqdm.auto import tqdm

            remaining = None if self.total is None else max(0, self.total - written)
            self._bar = tqdm(
                total=remaining,
                desc=f"predicting ({self.info.world_size} processes)",
                unit="video",
                disable=None if self.progress else True,
            )

    def _global(self) -> int:
        count = 0
        for path in self.folder.glob("progress-*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text(encoding="utf-8"))
                count += data["done"] + data["failed"]
        return count

    def _advance(self) -> None:
        """The bar to the global count (by update, so that tqdm's videos/s stays right)."""
        self._bar.update(max(0, self._global() - self._bar.n))

    def update(self, stats: _Stats, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _PROGRESS_EVERY:
            return
        self._last = now
        counts = {"done": stats.done, "failed": stats.failed}
        self._write(f"progress-{self.info.rank:05d}.json", counts)
        if self._bar is not None:
            self._advance()

    def finish(self, stats: _Stats) -> None:
        self.update(stats, force=True)
        self._write(f"done-{self.info.rank:05d}.json", _stats_dict(stats))

    def wait_for_all(self) -> list[dict]:
        """Rank 0: the end statistics of every rank, waiting for those still running (torchrun
        stops the whole job if one of them fails, this process included)."""
        names = [f"done-{r:05d}.json" for r in range(self.info.world_size)]
        while not all((self.folder / n).exists() for n in names):
            if self._bar is not None:
                self._advance()
            time.sleep(0.5)
        if self._bar is not None:
            self._advance()
            self._bar.close()
        ranks = [json.loads((self.folder / n).read_text(encoding="utf-8")) for n in names]
        # this run's markers, and those of runs killed before their end
        for folder in self.folder.parent.glob("run-*"):
            shutil.rmtree(folder, ignore_errors=True)
        return ranks


# ------------------------------------------------------------------------------------------
# the merge


def merge_parts(
    output: str | os.PathLike,
    *,
    output_format: str = "jsonl",
    ranks: list[dict] | None = None,
    seconds: float | None = None,
) -> dict:
    """Write ``output/predictions.jsonl`` (or ``.parquet``) with one row per path from all the
    part files (a path written twice keeps its first successful row), and
    ``output/summary.json``; returns the summary. Both are written to temporary names and
    renamed, so a kill during the merge leaves the part files and an older merge intact."""
    output = Path(output)
    target = output / f"predictions.{output_format}"
    seen: set[int] = set()
    failed: dict[int, dict] = {}
    count = {"done": 0, "failed": 0}

    def unique() -> Iterator[dict]:
        for row in read_parts(output):
            key = path_key(row["path"])
            if key in seen:
                continue
            if "error" in row:  # kept back: a later part may hold the path's success
                failed.setdefault(key, row)
                continue
            seen.add(key)
            failed.pop(key, None)
            count["done"] += 1
            yield row
        for key, row in failed.items():
            if key not in seen:
                count["failed"] += 1
                yield row

    tmp = target.with_name(f".{target.name}.tmp")
    if output_format == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in unique():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        _merge_parquet(tmp, unique())
    os.replace(tmp, target)
    summary = _summary(count, ranks or [], seconds, target)
    tmp_summary = output / ".summary.json.tmp"
    tmp_summary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_summary, output / "summary.json")
    _logger.info("%d videos predicted, %d failed: %s", summary["videos"], summary["failed"], target)
    return summary


def _merge_parquet(tmp: Path, rows: Iterator[dict], chunk: int = 4096) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    with pq.ParquetWriter(tmp, schema) as writer:
        buffer = []
        for row in rows:
            buffer.append(row)
            if len(buffer) >= chunk:
                writer.write_table(_table(buffer, schema, pa))
                buffer = []
        if buffer:
            writer.write_table(_table(buffer, schema, pa))


def _table(rows: list[dict], schema, pa):
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in schema.names}, schema=schema)


def _summary(count: dict, ranks: list[dict], seconds: float | None, target: Path) -> dict:
    new = sum(r["done"] + r["failed"] for r in ranks)
    summary = {
        "predictions": target.name,
        "videos": count["done"],
        "failed": count["failed"],
        "this_run": {
            "processes": len(ranks),
            "videos": new,
            "failed": sum(r["failed"] for r in ranks),
            "skipped_already_written": sum(r["skipped"] for r in ranks),
            "seconds": round(seconds, 3) if seconds is not None else None,
            "videos_per_s": round(new / seconds, 3) if seconds else None,
            # summed over processes: decoding runs in their DataLoader workers, in parallel
            "decode_seconds": round(sum(r["decode_seconds"] for r in ranks), 3),
            "model_seconds": round(sum(r["model_seconds"] for r in ranks), 3),
        },
        "ranks": ranks,
    }
    return summary
