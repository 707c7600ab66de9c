"""CenterNet's training targets and losses (Zhou et al., "Objects as Points", 2019).

Each object is a point: its box centre on the output grid. The heatmap target of its class is a
Gaussian around that cell (radius from :func:`~timeshift.detection.model.gaussian_radius`, so a
near miss of the centre is penalised less), trained with the penalty-reduced focal loss
(alpha 2, beta 4); the size ``(w, h)`` and the sub-cell offset of the centre are regressed with
an L1 loss at the centre cell only (weights 0.1 and 1, the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from timeshift.detection.structures import FrameBoxes

__all__ = ["center_loss", "center_targets"]

SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0


def _draw_gaussian(heat: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Max-merge a Gaussian of ``radius`` (sigma = diameter / 6) centred on ``(cx, cy)``."""
    sigma = (2 * radius + 1) / 6
    h, w = heat.shape
    x0, x1 = max(0, cx - radius), min(w, cx + radius + 1)
    y0, y1 = max(0, cy - radius), min(h, cy + radius + 1)
    ys, xs = np.ogrid[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
    gauss = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    np.maximum(heat[y0:y1, x0:x1], gauss, out=heat[y0:y1, x0:x1])


def center_targets(
    targets: Sequence[FrameBoxes], *, num_classes: int, size: tuple[int, int], stride: int
) -> dict[str, torch.Tensor]:
    """Targets of ``M`` frames on an ``(h, w)`` output grid: ``heatmap (M, K, h, w)``, and per
    object ``frame``, ``cell`` (flat index), ``size (n, 2)``, ``offset (n, 2)`` in cells.
    Objects flagged ``ignore`` are left out; two objects on one cell: the later one wins."""
    from timeshift.detection.model import gaussian_radius

    h, w = size
    heat = np.zeros((len(targets), num_classes, h, w), dtype=np.float32)
    frames, cells, sizes, offsets = [], [], [], []
    for i, frame in enumerate(targets):
        keep = ~frame.flag("ignore")
        for box, label in zip(frame.boxes[keep], frame.labels[keep], strict=True):
            bw, bh = (box[2] - box[0]) / stride, (box[3] - box[1]) / stride
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (box[0] + box[2]) / (2 * stride), (box[1] + box[3]) / (2 * stride)
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            if not (0 <= label < num_classes):
                raise ValueError(f"object class {label} outside the {num_classes} classes")
            radius = max(0, int(gaussian_radius(np.ceil(bh), np.ceil(bw))))
            _draw_gaussian(heat[i, label], ix, iy, radius)
            frames.append(i)
            cells.append(iy * w + ix)
            sizes.append((bw, bh))
            offsets.append((cx - ix, cy - iy))
    return {
        "heatmap": torch.from_numpy(heat),
        "frame": torch.tensor(frames, dtype=torch.long),
        "cell": torch.tensor(cells, dtype=torch.long),
        "size": torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2),
        "offset": torch.tensor(offsets, dtype=torch.float32).reshape(-1, 2),
    }


def _focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The penalty-reduced focal loss, summed (positives: target cells equal to 1)."""
    prob = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -torch.log(prob) * (1 - prob) ** 2 * positive
    neg = -torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * (1 - positive)
    return pos.sum() + neg.sum()


def center_loss(
    maps: torch.Tensor, targets: Sequence[FrameBoxes], *, stride: int
) -> dict[str, torch.Tensor]:
    """Losses of maps ``(M, K + 4, h, w)`` against one :class:`FrameBoxes` per frame."""
    if len(targets) != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} frames of maps but {len(targets)} frame targets")
    k = maps.shape[1] - 4
    t = center_targets(targets, num_classes=k, size=tuple(maps.shape[-2:]), stride=stride)
    t = {name: v.to(maps.device) for name, v in t.items()}
    count = max(1, len(t["cell"]))
    heatmap = _focal(maps[:, :k].float(), t["heatmap"]) / count
    regress = maps[:, k:].float().flatten(2)[t["frame"], :, t["cell"]]  # (n, 4)
    size = F.l1_loss(regress[:, :2], t["size"], reduction="sum") / count
    offset = F.l1_loss(regress[:, 2:], t["offset"], reduction="sum") / count
    total = heatmap + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset
    return {"loss": total, "heatmap": heatmap, "size": size, "offset": offset}
