"""Running exported ONNX models with onnxruntime, with the API of the PyTorch classes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from timeshift.export.exporter import _onnx_session, read_export_meta

__all__ = ["OnnxOnlineRecognizer", "OnnxRecognizer"]


def _as_numpy(x) -> np.ndarray:
    """float32 frames for the graph. Other float types are converted (documented); integer
    input is refused: it is raw pixels, which the model cannot use before normalisation."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"expected float frames normalised with the model's mean and std (float32; other "
            f"float types are converted), got {x.dtype}: raw pixels? normalise them first"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def checked_frames(
    frame, size: int, channels: int, error: type[Exception] = ValueError
) -> tuple[np.ndarray, bool]:
    """``(frames (N, C, S, S) float32, whether one frame (C, S, S) was given)``: what an online
    runner's ``step`` takes, checked against the exported size."""
    frames = _as_numpy(frame)
    single = frames.ndim == 3
    if single:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[1:] != (channels, size, size):
        raise error(
            f"expected a frame ({channels}, {size}, {size}) or frames (N, {channels}, {size}, "
            f"{size}) (the exported size), got {tuple(np.shape(frame))}"
        )
    return frames, single


class OnlineCaches:
    """The cache sizes of an online runner (``cache``, ``cache_shapes``), as
    :class:`timeshift.OnlineRecognizer` reports them."""

    @property
    def cache_floats(self) -> int:
        """Floats held per stream (0 before the first frame)."""
        if not self.cache:
            return 0
        return sum(int(np.prod(s)) for s in self.cache_shapes)

    @property
    def cache_bytes(self) -> int:
        return self.cache_floats * 4


class _OnnxModel:
    mode = ""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        self.meta = read_export_meta(self.path)
        if self.meta.get("mode") != self.mode:
            raise ValueError(
                f"{self.path} is an {self.meta.get('mode')} export; this class runs "
                f"{self.mode} exports (export with{'' if self.mode == 'online' else 'out'} "
                "--online)"
            )
        self.session = _onnx_session(self.path, threads, providers, spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def in_chans(self) -> int:
        """Channels of a frame, read from the graph's input: 3 for RGB, ``2 * new_length`` for
        a flow model."""
        shape = self.session.get_inputs()[0].shape  # (N, T, C, H, W) or (N, C, H, W)
        return int(shape[-3])


class OnnxRecognizer(_OnnxModel):
    """An offline export: ``recognizer(video)`` with ``video (N, T, C, H, W)`` -> logits (C = 3
    for RGB, ``2 * new_length`` for flow)."""

    mode = "offline"

    def __call__(self, video) -> torch.Tensor:
        clips = _as_numpy(video)
        frames, size = self.meta["num_segments"], self.meta["input_size"]
        expected = (frames, self.in_chans, size, size)
        if clips.ndim != 5 or clips.shape[1:] != expected:
            raise ValueError(
                f"expected clips (N, T, C, H, W) with T={frames} (num_segments), "
                f"C={self.in_chans}, "
                f"H=W={size} (the exported size), got {tuple(clips.shape)}"
            )
        if clips.shape[0] == 0:  # onnxruntime cannot run an empty batch: nothing to compute
            return torch.zeros(0, self.num_classes)
        fixed = self.meta.get("batch")
        if fixed is not None and clips.shape[0] != fixed:
            raise ValueError(
                f"{self.path} was exported for batches of {fixed} clip(s), got "
                f"{clips.shape[0]}; export with --dynamic-batch to vary it"
            )
        (logits,) = self.session.run(None, {self.input_names[0]: clips})
        return torch.from_numpy(logits)


class OnnxOnlineRecognizer(OnlineCaches, _OnnxModel):
    """An online export run frame by frame: the same ``step``/``reset`` API and cache sizes as
    :class:`timeshift.OnlineRecognizer`.

    ``step(frame)`` takes ``(C, H, W)`` or ``(N, C, H, W)`` (torch or numpy, float) and returns
    torch logits ``(K,)`` or ``(N, K)``; H and W are the exported size.
    """

    mode = "online"

    def __init__(self, path, *, threads=None, providers=None, spinning=True) -> None:
        super().__init__(path, threads=threads, providers=providers, spinning=spinning)
        self.cache_shapes = [tuple(s) for s in self.meta["cache_shapes"]]
        self.cache: list[np.ndarray] | None = None
        self._batch: int | None = None

    def reset(self) -> None:
        """Forget the past: the next frame starts new streams."""
        self.cache = None
        self._batch = None

    def step(self, frame) -> torch.Tensor:
        frames, single = checked_frames(frame, self.meta["input_size"], self.in_chans)
        n = frames.shape[0]
        if n == 0:  # no stream: nothing to compute, the caches stay as they are
            return torch.zeros(0, self.num_classes)
        fixed = self.meta.get("batch")
        if fixed is not None and n != fixed:
            raise ValueError(
                f"{self.path} was exported for {fixed} stream(s), got {n}; export with "
                "--dynamic-batch to vary it"
            )
        if self.cache is None:
            self._start(n)
        elif n != self._batch:
            raise ValueError(
                f"{n} frames do not continue the {self._batch} streams; call reset() to start "
                "new streams"
            )
        # two preallocated buffer sets stay bound to the session: a frame reads the caches of
        # one and writes its outputs into the other, so nothing is allocated between frames
        (_, current), (arrays, following) = self._buffers
        binding = self._binding
        binding.bind_cpu_input(self.input_names[0], frames)
        for name, value in zip(self.input_names[1:], current[1:], strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.output_names, following, strict=True):
            binding.bind_ortvalue_output(name, value)
        self.session.run_with_iobinding(binding)
        self._buffers.reverse()
        self.cache = arrays[1:]
        out = torch.from_numpy(arrays[0].copy())
        return out[0] if single else out

    def _start(self, n: int) -> None:
        import onnxruntime as ort

        # the output per stream: a recognizer's (K,) logits, a detector's (K + 4, h, w) maps
        # (online graphs have a fixed frame size, so the shape is static but for the batch)
        shape = self.session.get_outputs()[0].shape[1:]
        if not all(isinstance(s, int) for s in shape):
            shape = [self.num_classes]

        def buffers():
            arrays = [np.zeros((n, *shape), np.float32)]
            arrays += [np.zeros((n, *s), np.float32) for s in self.cache_shapes]
            return arrays, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]

        self._buffers = [buffers(), buffers()]
        self._binding = self.session.io_binding()
        self._batch = n
