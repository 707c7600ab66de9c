"""``VideoDataset``: records -> sampled, decoded, transformed clips."""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from timeshift.data.decode import DEFAULT_TEMPLATE, ArrayReader, VideoDecodeError, open_video
from timeshift.data.decode import max_frame_pixels as max_frame_pixels_limit
from timeshift.data.flow import FlowSettings, VideoFlowReader
from timeshift.data.flow_frames import FLOW_NAMINGS, FlowFolderReader, FlowNaming
from timeshift.data.formats import Annotations, SampleRecord
from timeshift.data.sampling import segment_indices, snippet_indices
from timeshift.errors import TimeshiftError

__all__ = [
    "MODALITIES",
    "ON_ERROR",
    "VideoDataset",
    "default_new_length",
    "sample_seed",
    "seed_worker",
]

_logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
MODALITIES = ("rgb", "flow")
# channels of one frame, and frames per segment when not given (reference TSN: 1 RGB, 5 flow)
_CHANNELS = {"rgb": 3, "flow": 2}
_NEW_LENGTH = {"rgb": 1, "flow": 5}
_MAX_WORKER_SLOTS = 256
# decoded frames kept by ``cache=True``, per process: beyond it videos are decoded every time
DEFAULT_CACHE_BYTES = 2 * 1024**3


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random choices: a pure function of (seed, epoch, index), so
    draws differ per sample and per epoch and do not depend on which worker loads them."""
    return ((seed * 0x9E3779B1 + epoch) * 0x85EBCA77 + index) & 0xFFFFFFFFFFFF


def default_new_length(modality: str) -> int:
    """Consecutive frames per segment when not given: 1 for RGB, 5 for flow (reference TSN)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return _NEW_LENGTH[modality]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds ``random``, NumPy and torch from the worker's base seed
    (for user code that draws from the global generators; the dataset itself does not)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class VideoDataset(Dataset):
    """Clips of ``num_segments`` frames from video files or frame folders, or of
    ``num_segments`` stacks of optical flow from flow folders.

    Args:
        records: sample records (or :class:`Annotations`).
        num_segments: frames per clip ``T``.
        mode: ``"train"`` (random sampling) or ``"val"``/``"test"`` (fixed sampling).
        transform: ``transform(views, label, rng) -> (views, label)`` on uint8
            ``(V, T, C, H, W)``, e.g. :func:`~timeshift.data.transforms.train_transforms`;
            ``None`` returns uint8 frames.
        backend: decoding backend (``None``: frames for folders, PyAV for files).
        on_error: ``"raise"``, or ``"skip"``: a sample that cannot be decoded is replaced by
            another one, counted (:attr:`skipped`) and logged once with its path.
        clips, dense, twice: sampling options (see :func:`~timeshift.data.segment_indices`).
        seed: base seed of the random choices; call :meth:`set_epoch` every epoch.
        frame_template, start_index: file names inside frame folders.
        max_retries: replacement attempts before giving up on a sample.
        observed: sample the clip from the first ``observed`` fraction of each video only
            (early recognition: what a model can say after seeing part of the video).
        cache: keep every decoded video in memory (all its frames) so that later epochs skip
            decoding; for small datasets of short videos (the synthetic one). Each DataLoader
            worker holds its own cache: use persistent workers.
        cache_bytes: most bytes of decoded frames the cache holds (per process); a video that
            does not fit is decoded every time instead (logged once), never cut.
        max_frame_pixels: refuse videos whose frames are larger (``width * height``): a small
            file can ask for gigabytes. ``None``: ``TIMESHIFT_MAX_FRAME_PIXELS`` or 4096x4096.
        modality: ``"rgb"``, or ``"flow"``: records are flow folders
            (:class:`~timeshift.data.flow_frames.FlowFolderReader`; their frame count is the
            number of flow frames) and each frame has two channels, ``x`` and ``y``.
        new_length: consecutive frames stacked along channels per segment (``None``: 1 for
            RGB, 5 for flow, the reference TSN's); sampling places the segments over the
            ``num_frames - new_length + 1`` possible starts (see
            :func:`~timeshift.data.segment_indices`).
        flow_naming: flow file naming (``None``: detected per folder; see
            :data:`~timeshift.data.flow_frames.FLOW_NAMINGS`).
        flow_settings: with ``modality="flow"``, records may also be videos (or RGB frame
            folders): their flow is computed on the fly with these settings
            (:class:`~timeshift.data.flow.VideoFlowReader`; those of the flow model's
            training data). ``None``: flow folders only.
        arrays: videos already in memory, ``(T, H, W, 3)`` uint8 arrays by record path: those
            records are read from them (:class:`~timeshift.data.decode.ArrayReader`).

    Returns (per item):
        ``(clip, label)``: ``clip`` is ``(T, C, H, W)``, or ``(V, T, C, H, W)`` when several
        clips or crops make several views; ``C = 3 * new_length`` for RGB (frames in order)
        and ``2 * new_length`` for flow, stacked ``x1, y1, x2, y2, ...``.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord] | Annotations,
        *,
        num_segments: int,
        mode: str = "train",
        transform: Callable | None = None,
        backend: str | None = None,
        on_error: str = "raise",
        clips: int = 1,
        dense: bool = False,
        twice: bool = False,
        seed: int = 0,
        frame_template: str = DEFAULT_TEMPLATE,
        start_index: int = 1,
        max_retries: int = 20,
        observed: float = 1.0,
        cache: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_frame_pixels: int | None = None,
        modality: str = "rgb",
        new_length: int | None = None,
        flow_naming: str | FlowNaming | None = None,
        flow_settings: FlowSettings | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.modality = modality
        # videos in memory by record path, read instead of a file (the pipeline's inputs)
        self.arrays = dict(arrays or {})
        if flow_settings is not None and modality != "flow":
            raise ValueError(f"flow_settings is for modality='flow', not {modality!r}")
        self.flow_settings = flow_settings
        default = default_new_length(modality)  # also checks the modality
        self.new_length = default if new_length is None else int(new_length)
        if isinstance(flow_naming, str) and flow_naming not in FLOW_NAMINGS:
            raise ValueError(f"flow_naming must be one of {FLOW_NAMINGS}, got {flow_naming!r}")
        self.flow_naming = flow_naming
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not 0 < observed <= 1:
            raise ValueError(f"observed must be a fraction in (0, 1], got {observed}")
        self.observed = observed
        if isinstance(records, Annotations):
            self.classes = list(records.classes)
            records = records.records
        else:
            self.classes = []
        self.records = list(records)
        if not self.records:
            raise ValueError("VideoDataset needs at least one record")
        self.num_segments = num_segments
        self.mode = mode
        self.transform = transform
        self.backend = backend
        self.on_error = on_error
        self.clips, self.dense, self.twice = clips, dense, twice
        self.seed = seed
        # shared memory, so that set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.frame_template = frame_template
        self.start_index = start_index
        self.max_retries = max_retries
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._cache_full_reported = False
        # checked now: a bad value is a configuration error, not an unreadable sample
        self.max_frame_pixels = max_frame_pixels_limit(max_frame_pixels)
        # one counter slot per worker process (slot 0: the main process), in shared memory
        self._skips = torch.zeros(_MAX_WORKER_SLOTS, dtype=torch.int64).share_memory_()
        # which records were already reported as unreadable, shared by all workers
        self._reported = torch.zeros(len(self.records), dtype=torch.bool).share_memory_()
        segment_indices(
            1,
            num_segments,
            mode=mode,
            clips=clips,
            dense=dense,
            twice=twice,
            new_length=self.new_length,
        )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (reproducible, different for every epoch)."""
        self._epoch[0] = epoch

    @property
    def skipped(self) -> int:
        """Samples replaced because they could not be read, over all worker processes."""
        return int(self._skips.sum())

    def _open(self, record: SampleRecord):
        if self.modality == "flow":
            return self._open_flow(record)
        return self._open_video(record)

    def _open_video(self, record: SampleRecord):
        if record.path in self.arrays:
            return ArrayReader(record.path, self.arrays[record.path])
        kwargs = {"max_frame_pixels": self.max_frame_pixels}
        backend = self.backend or ("frames" if Path(record.path).is_dir() else "pyav")
        if backend == "pyav" and get_worker_info() is not None:
            kwargs["threads"] = 1  # workers already use every core
        if backend == "frames":
            kwargs.update(template=self.frame_template, start_index=self.start_index)
            if record.num_frames is not None:
                kwargs["num_frames"] = record.offset + record.num_frames
        return open_video(record.path, backend=backend, **kwargs)

    def _open_flow(self, record: SampleRecord) -> FlowFolderReader | VideoFlowReader:
        path = Path(record.path)
        if self.flow_settings is None and not path.is_dir():
            kind = "a file" if path.exists() else "not found"
            raise VideoDecodeError(
                record.path,
                f"{kind}; modality='flow' reads flow folders: extract them with "
                "'timeshift data extract-flow' and use the flow list it writes (or pass "
                "flow_settings= to compute the flow of videos on the fly)",
            )
        if path.is_dir():
            try:
                return FlowFolderReader(
                    record.path, naming=self.flow_naming, max_frame_pixels=self.max_frame_pixels
                )
            except VideoDecodeError:
                if self.flow_settings is None:
                    raise
                # no flow files: a folder of RGB frames, whose flow is computed below
        video = self._open_video(record)
        try:
            return VideoFlowReader(video, self.flow_settings)
        except BaseException:
            video.close()
            raise

    def _sample(self, count: int, rng: random.Random) -> list[list[int]]:
        """Frame indices of each clip: ``T * new_length`` of them, segment by segment."""
        if self.observed < 1:  # the first frames only; at least one
            count = max(1, math.ceil(count * self.observed - 1e-9))
        starts = segment_indices(
            count,
            self.num_segments,
            mode=self.mode,
            clips=self.clips,
            dense=self.dense,
            twice=self.twice,
            new_length=self.new_length,
            rng=rng,
        )
        if self.new_length == 1:
            return starts
        return [snippet_indices(s, new_length=self.new_length, num_frames=count) for s in starts]

    def _decode(self, index: int, rng: random.Random):
        """``(frames (F, H, W, C) uint8, position of each wanted index, clips)``."""
        record = self.records[index]
        cached = self._cache.get(index) if self._cache is not None else None
        if cached is not None:
            clips = self._sample(len(cached), rng)
            return cached, {i: i for i in range(len(cached))}, clips
        with self._open(record) as reader:
            while True:
                listed = reader.num_frames
                try:
                    return self._decode_from(reader, index, rng)
                except VideoDecodeError:
                    # the reader found that the last frames do not decode (a damaged tail)
                    # and lowered its count: sample again within the frames that do
                    if reader.num_frames >= listed:
                        raise

    def _decode_from(self, reader, index: int, rng: random.Random):
        record = self.records[index]
        available = reader.num_frames - record.offset
        count = min(record.num_frames or available, available)
        if count < 1:
            raise VideoDecodeError(record.path, f"no frames after offset {record.offset}")
        clips = self._sample(count, rng)
        if self._cache is not None and self._fits_cache(record, reader, count):
            # keep the whole (short) video: later epochs sample from memory
            frames = reader.get_frames(range(record.offset, record.offset + count))
            self._cache[index] = frames
            self._cached_bytes += frames.nbytes
            return frames, {i: i for i in range(count)}, clips
        wanted = sorted({i for clip in clips for i in clip})
        frames = reader.get_frames([record.offset + i for i in wanted])
        return frames, {i: k for k, i in enumerate(wanted)}, clips

    def _fits_cache(self, record: SampleRecord, reader, count: int) -> bool:
        height, width = reader.size
        size = count * height * width * _CHANNELS[self.modality]
        if self._cached_bytes + size <= self.cache_bytes:
            return True
        if not self._cache_full_reported:
            self._cache_full_reported = True
            _logger.warning(
                "the decoded-frame cache is full (%d of %d bytes; %s needs %d): videos that "
                "do not fit are decoded every time (raise cache_bytes to keep more)",
                self._cached_bytes,
                self.cache_bytes,
                record.path,
                size,
            )
        return False

    def load(self, index: int, rng: random.Random):
        """Decode and transform one record (no error handling): ``(views, label)``."""
        frames, position, clips = self._decode(index, rng)
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (F, C, H, W) uint8
        order = torch.tensor([[position[i] for i in clip] for clip in clips])
        views = frames[order]  # (clips, T * new_length, C, H, W)
        if self.new_length > 1:  # each segment's frames stacked along channels
            v, _, c, h, w = views.shape
            views = views.reshape(v, self.num_segments, self.new_length * c, h, w)
        label = self.records[index].label
        if self.transform is not None:
            # all clips in one call: the same crop (and flip, and label) for every view
            views, label = self.transform(views, label, rng)
        return (views[0] if views.shape[0] == 1 else views), label

    def load_record(self, record: SampleRecord, rng: random.Random | None = None):
        """:meth:`load` of a record that need not be one of :attr:`records` (a streamed input,
        e.g. a manifest's): ``(views, label)``, decoded the same way; nothing is cached."""
        single = copy.copy(self)
        single.records, single._cache = [record], None
        return single.load(0, rng or random.Random(self.seed))

    def __getitem__(self, index: int):
        rng = random.Random(sample_seed(self.seed, self.epoch, index))
        attempts = 0
        while True:
            try:
                return self.load(index, rng)
            except (VideoDecodeError, OSError) as exc:
                if self.on_error == "raise":
                    raise
                self._count_skip(exc, index)
                attempts += 1
                if attempts > self.max_retries:
                    raise TimeshiftError(
                        f"{attempts} samples in a row could not be read (last: {exc}); "
                        "check the dataset paths"
                    ) from exc
                index = rng.randrange(len(self.records))

    def _count_skip(self, exc: Exception, index: int) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_MAX_WORKER_SLOTS - 1)
        self._skips[slot] += 1
        path = self.records[index].path
        if not self._reported[index]:
            self._reported[index] = True
            message = str(exc) if path in str(exc) else f"{path}: {exc}"
            _logger.warning("skipping unreadable sample (reported once): %s", message)
