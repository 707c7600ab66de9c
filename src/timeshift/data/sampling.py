"""Which frames of a video make a clip: the TSN segment-sampling rules of the reference code.

All indices are 0-based. With ``n`` frames and ``T`` segments:

* ``train``: the video is cut into ``T`` equal segments of ``avg = n // T`` frames and one frame
  is drawn at random in each (``i * avg + randint(avg)``).
* ``val`` / ``test``: segment centres ``int(tick / 2 + tick * i)`` with ``tick = n / T``;
  ``clips=K`` gives ``K`` clips at evenly spaced phases inside the segments (``K=1``: centres);
  ``twice`` adds the clip at segment starts ``int(tick * i)`` (the reference's twice sampling).
* ``dense``: ``T`` frames with stride ``64 // T`` in a 64-frame window (I3D-style), the window
  drawn at random for ``train``, centred for ``val`` and at 10 evenly spaced starts for ``test``
  (``clips`` overrides). ``dense=True`` (or ``"wrap"``) is the reference: a window past the end
  of a short video wraps around modulo the frame count, so frames come out of temporal order.
  ``dense="ordered"`` (what direction-sensitive data uses) shrinks the window to the video
  instead: a window that would wrap becomes the segment centres of the whole video, so indices
  never decrease.

Snippets (``new_length = L > 1``, e.g. 5 stacked flow frames per segment): the indices are the
first frames of ``L`` consecutive ones (:func:`snippet_indices`), so the rules above run over
the ``n - L + 1`` possible starts -- the reference TSN/TSM ``TSNDataSet``: train
``avg = (n - L + 1) // T``, ``offsets = i * avg + randint(avg)``; val/test
``tick = (n - L + 1) / T``, ``int(tick / 2 + tick * i)``. Dense sampling ignores ``L`` as the
reference does. A snippet running past the last frame repeats it (the reference's
``if p < num_frames: p += 1``).

Short videos (``n < T``) repeat frames in order: ``int(tick / 2 + tick * i)`` with ``tick < 1``
spreads the ``n`` frames evenly over the ``T`` slots (6 frames, 8 segments -> ``[0, 1, 1, 2, 3,
4, 4, 5]``), and training draws sorted random frames, so no clip is ever all one frame unless the
video is. With snippets, "short" means fewer than ``T`` starts (``n - L + 1 < T``; at least one
start is always used). This differs from the reference only where the reference degenerates to
the first frame for every segment (train with ``n <= T``, val with ``n - L + 1 <= T``) or fails
(``n < L``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

__all__ = [
    "DENSE_MODES",
    "DENSE_TEST_CLIPS",
    "DENSE_WINDOW",
    "MODES",
    "segment_indices",
    "snippet_indices",
]

MODES = ("train", "val", "test")
DENSE_MODES = ("wrap", "ordered")
DENSE_WINDOW = 64
DENSE_TEST_CLIPS = 10


class _Rng:
    """``randint(k)`` in ``[0, k)`` over ``random.Random``, ``numpy.random.Generator`` or None."""

    def __init__(self, rng: Any) -> None:
        if rng is None:
            rng = random.Random()
        if isinstance(rng, random.Random):
            self.randint = lambda k: rng.randrange(k)
        elif isinstance(rng, np.random.Generator):
            self.randint = lambda k: int(rng.integers(k))
        else:
            raise TypeError(
                f"rng must be random.Random or numpy.random.Generator, got {type(rng).__name__}"
            )


def _centres(n: int, t: int, phase: float) -> list[int]:
    # written as the reference does (tick / 2 + tick * i for phase 0.5): the float rounding of
    # int(...) then agrees with it for every n and T
    tick = n / t
    return [min(int(tick * phase + tick * i), n - 1) for i in range(t)]


def _dense(n: int, t: int, start: int, ordered: bool = False) -> list[int]:
    stride = DENSE_WINDOW // t
    if ordered and start + (t - 1) * stride >= n:
        # the window does not fit: shrink it to the whole video rather than wrap (a wrapped
        # clip plays the end before the start, i.e. partly backwards)
        return _centres(n, t, 0.5)
    return [(start + i * stride) % n for i in range(t)]


def _dense_mode(dense: bool | str) -> str | None:
    """``None`` (not dense), ``"wrap"`` or ``"ordered"``."""
    if dense is False or dense is None:
        return None
    if dense is True:
        return "wrap"
    if dense in DENSE_MODES:
        return dense
    raise ValueError(f"dense must be a bool or one of {DENSE_MODES}, got {dense!r}")


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    mode: str = "train",
    clips: int = 1,
    dense: bool | str = False,
    twice: bool = False,
    new_length: int = 1,
    rng: random.Random | np.random.Generator | None = None,
) -> list[list[int]]:
    """Frame indices of the clips to take from a video (the first frame of each segment's
    snippet when ``new_length > 1``: expand them with :func:`snippet_indices`).

    Args:
        num_frames: frames in the video (``>= 1``).
        num_segments: frames per clip ``T``.
        mode: ``"train"`` (random), ``"val"`` or ``"test"`` (deterministic).
        clips: clips per video in val/test (``dense`` test default: 10).
        dense: I3D-style dense sampling in a 64-frame window: ``True``/``"wrap"`` wraps past
            the end of a short video as the reference does, ``"ordered"`` never lets indices
            decrease (direction-sensitive data).
        twice: val/test only: add the clip at segment starts (reference ``twice_sample``).
        new_length: consecutive frames per segment (reference ``new_length``; 5 for flow):
            segments are placed over the ``num_frames - new_length + 1`` possible starts.
        rng: source of randomness for ``train``; deterministic given its state.

    Returns:
        One list of ``T`` indices per clip.
    """
    n, t = int(num_frames), int(num_segments)
    if n < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if t < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if new_length < 1:
        raise ValueError(f"new_length must be >= 1, got {new_length}")
    dense_mode = _dense_mode(dense)
    if not dense_mode:
        # the possible snippet starts (the reference's num_frames - new_length + 1); one at
        # least: a video shorter than a snippet repeats its last frame
        n = max(1, n - int(new_length) + 1)
    if mode == "train":
        if twice or clips != 1:
            raise ValueError("train mode samples one clip (clips=1, twice=False)")
        return [_train(n, t, dense_mode, _Rng(rng))]
    if dense_mode:
        return _dense_eval(n, t, mode, clips, ordered=dense_mode == "ordered")
    out = [_centres(n, t, (k + 0.5) / clips) for k in range(clips)]
    if twice:
        out.append(_centres(n, t, 0.0))
    return out


def _train(n: int, t: int, dense: str | None, rng: _Rng) -> list[int]:
    if dense:
        positions = max(1, n - DENSE_WINDOW + 1)
        # the reference draws randint(0, positions - 1): the last window is never chosen
        start = 0 if positions == 1 else rng.randint(positions - 1)
        return _dense(n, t, start, ordered=dense == "ordered")
    average = n // t
    if average > 0:
        return [i * average + rng.randint(average) for i in range(t)]
    # fewer frames than segments: sorted random frames, repeats unavoidable
    return sorted(rng.randint(n) for _ in range(t))


def _dense_eval(n: int, t: int, mode: str, clips: int, ordered: bool) -> list[list[int]]:
    positions = max(1, n - DENSE_WINDOW + 1)
    if mode == "val" and clips == 1:
        return [_dense(n, t, (positions - 1) // 2, ordered)]
    count = clips if clips != 1 else DENSE_TEST_CLIPS
    starts = np.linspace(0, positions - 1, num=count, dtype=int)
    return [_dense(n, t, int(s), ordered) for s in starts]


def snippet_indices(starts: list[int], *, new_length: int, num_frames: int) -> list[int]:
    """The ``new_length`` consecutive frames from each start, flattened in order (segment 1's
    frames, then segment 2's, ...), the last frame repeated past the end of the video as the
    reference does."""
    last = int(num_frames) - 1
    return [min(start + k, last) for start in starts for k in range(new_length)]
