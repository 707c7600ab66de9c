"""Online video object detection: a detector with a uni-directional TSM backbone streamed one
frame at a time, each shift's cache carrying the channels of the previous frame (TSM Appendix A:
the detector uses the past at almost no cost)."""

from __future__ import annotations

import torch
from torch import nn

from timeshift.detection.structures import Detections
from timeshift.online import OnlineRecognizer

__all__ = ["OnlineDetector"]


class OnlineDetector(OnlineRecognizer):
    """Frame-by-frame detection with the per-layer caches.

    ``step(frame)`` gives the frame's dense maps (as the offline model's ``model(clip)[:, t]``,
    the same to float precision for a causal model); ``detect(frame)`` decodes them into boxes.

    Args:
        model: a :class:`~timeshift.detection.model.Detector` whose temporal ops are causal
            (uni-directional TSM; TSN has none); bi-directional only with ``drop_future``.
        max_detections, score_threshold: as :meth:`Detector.decode`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        drop_future: bool = False,
        max_detections: int = 100,
        score_threshold: float = 0.01,
    ) -> None:
        super().__init__(model, drop_future=drop_future)
        self.detector = self.module.model
        self.max_detections = max_detections
        self.score_threshold = score_threshold

    @torch.no_grad()
    def detect(self, frame: torch.Tensor) -> Detections | list[Detections]:
        """Boxes of ``frame`` ``(C, H, W)`` (one stream: one :class:`Detections`) or
        ``(N, C, H, W)`` (N streams: a list), in the frame's input pixels."""
        maps = self.step(frame)
        detections = self.detector.decode(
            maps.unsqueeze(0) if frame.dim() == 3 else maps,
            max_detections=self.max_detections,
            score_threshold=self.score_threshold,
        )
        return detections[0] if frame.dim() == 3 else detections
