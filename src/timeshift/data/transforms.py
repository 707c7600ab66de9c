"""Clip transforms: the same random choice for every frame of a clip.

Frames travel as one uint8 tensor of views ``(V, T, C, H, W)`` (``V = 1`` until a multi-crop
test transform makes more), so a crop or resize is one tensor operation over all frames, not a
per-frame PIL loop. A transform is called as ``transform(views, label, rng) -> (views, label)``;
the label passes through so that a horizontal flip can swap direction-sensitive classes.
:class:`Normalize` ends a pipeline, turning uint8 into normalised float.

Optical flow (``modality="flow"``) travels the same way with ``C = 2 * new_length`` channels
``x1, y1, x2, y2, ...`` (uint8, zero motion 128): crops and resizes treat every channel alike, a
horizontal flip also inverts the ``x`` channels (``255 - v``: mirrored motion runs the other way,
the reference's ``ImageOps.invert``), and normalisation is the reference TSM's for flow, mean 0.5
and std 0.226 (the mean of the ImageNet stds) on every channel.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "FLOW_MEAN",
    "FLOW_SCALES",
    "FLOW_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RGB_SCALES",
    "CenterCrop",
    "Compose",
    "MultiScaleCrop",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "ResizeShorter",
    "TenCrop",
    "ThreeCrop",
    "eval_transforms",
    "fixed_crop_offsets",
    "mirrored_views",
    "train_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RGB_SCALES = (1.0, 0.875, 0.75, 0.66)
# reference TSM (ops/models.py) for flow: input_mean [0.5], input_std [np.mean(ImageNet std)],
# repeated over the 2 * new_length channels; GroupMultiScaleCrop scales [1, .875, .75]
FLOW_MEAN = (0.5,)
FLOW_STD = (0.226,)
FLOW_SCALES = (1.0, 0.875, 0.75)
_MODALITY_DEFAULTS = {
    "rgb": (IMAGENET_MEAN, IMAGENET_STD, RGB_SCALES),
    "flow": (FLOW_MEAN, FLOW_STD, FLOW_SCALES),
}


def _check(views: torch.Tensor) -> None:
    if views.dim() != 5:
        raise ValueError(f"expected views (V, T, C, H, W), got shape {tuple(views.shape)}")


def _resize(views: torch.Tensor, height: int, width: int) -> torch.Tensor:
    v, t, c, h, w = views.shape
    if (h, w) == (height, width):
        return views
    frames = views.reshape(v * t, c, h, w)
    out = F.interpolate(
        frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return out.reshape(v, t, c, height, width)


def _crop(views: torch.Tensor, x: int, y: int, w: int, h: int) -> torch.Tensor:
    return views[..., y : y + h, x : x + w]


def _invert_flow_x(views: torch.Tensor) -> torch.Tensor:
    """Mirrored flow: ``255 - v`` on the ``x`` channels (0, 2, 4, ...), ``y`` unchanged."""
    if views.dtype != torch.uint8:
        raise TypeError(
            f"flipping flow inverts uint8 x images (255 - v), got {views.dtype}: flip before "
            "Normalize"
        )
    out = views.clone()
    out[..., 0::2, :, :] = 255 - views[..., 0::2, :, :]
    return out


def _defaults(modality: str, *given):
    """``(mean, std, scales)``: those given, the modality's reference values for ``None``."""
    if modality not in _MODALITY_DEFAULTS:
        raise ValueError(f"modality must be one of {tuple(_MODALITY_DEFAULTS)}, got {modality!r}")
    defaults = _MODALITY_DEFAULTS[modality]
    return tuple(d if g is None else g for g, d in zip(given, defaults, strict=True))


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, views, label: int, rng: random.Random):
        _check(views)
        for t in self.transforms:
            views, label = t(views, label, rng)
        return views, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ResizeShorter:
    """Resize so that the shorter side is ``size`` (bilinear, antialiased), keeping the aspect."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, views, label, rng):
        h, w = views.shape[-2:]
        if h <= w:
            new_h, new_w = self.size, max(1, round(w * self.size / h))
        else:
            new_h, new_w = max(1, round(h * self.size / w)), self.size
        return _resize(views, new_h, new_w), label

    def __repr__(self) -> str:
        return f"ResizeShorter({self.size})"


def fixed_crop_offsets(
    image_w: int, image_h: int, crop_w: int, crop_h: int, *, more: bool = True
) -> list[tuple[int, int]]:
    """The TSN fixed crop positions ``(x, y)``: 4 corners and centre, plus (``more``) 4 edge
    centres and 4 quarter points -- 13 in all, on a grid of quarter steps.

    As in the reference, positions are multiples of ``(image - crop) // 4``, so the "right" and
    "bottom" crops stop up to 3 px short of the edge when ``image - crop`` is not divisible by 4.
    """
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


class MultiScaleCrop:
    """TSN's multi-scale crop: a crop whose sides are each one of ``scales`` x the shorter
    image side (at most ``max_distort`` scale steps apart), snapped to the target size when
    within 3 px, at one of the 13 fixed positions (or anywhere with ``fix_crop=False``), then
    resized to ``size``."""

    def __init__(
        self,
        size: int | Sequence[int],
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        *,
        max_distort: int = 1,
        fix_crop: bool = True,
        more_fix_crop: bool = True,
    ) -> None:
        self.height, self.width = _size(size)
        self.scales = tuple(scales)
        self.max_distort = max_distort
        self.fix_crop = fix_crop
        self.more_fix_crop = more_fix_crop

    def sample(self, image_w: int, image_h: int, rng: random.Random) -> tuple[int, int, int, int]:
        """``(crop_w, crop_h, x, y)`` for an image of the given size."""
        base = min(image_w, image_h)
        sizes = [int(base * s) for s in self.scales]
        crop_h = [self.height if abs(s - self.height) < 3 else s for s in sizes]
        crop_w = [self.width if abs(s - self.width) < 3 else s for s in sizes]
        pairs = [
            (w, h)
            for i, h in enumerate(crop_h)
            for j, w in enumerate(crop_w)
            if abs(i - j) <= self.max_distort
        ]
        w, h = rng.choice(pairs)
        w, h = min(w, image_w), min(h, image_h)
        if self.fix_crop:
            x, y = rng.choice(fixed_crop_offsets(image_w, image_h, w, h, more=self.more_fix_crop))
        else:
            x, y = rng.randint(0, image_w - w), rng.randint(0, image_h - h)
        return w, h, x, y

    def __call__(self, views, label, rng):
        image_h, image_w = views.shape[-2:]
        w, h, x, y = self.sample(image_w, image_h, rng)
        return _resize(_crop(views, x, y, w, h), self.height, self.width), label

    def __repr__(self) -> str:
        return f"MultiScaleCrop({(self.height, self.width)}, scales={self.scales})"


class RandomResizedCrop:
    """Inception-style crop: random area fraction and aspect ratio, resized to ``size``."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.height, self.width = _size(size)
        self.scale, self.ratio = scale, ratio

    def sample(self, image_w: int, image_h: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = image_w * image_h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= image_w and 0 < h <= image_h:
                return w, h, rng.randint(0, image_w - w), rng.randint(0, image_h - h)
        side = min(image_w, image_h)  # fall back to a centre square
        return side, side, (image_w - side) // 2, (image_h - side) // 2

    def __call__(self, views, label, rng):
        image_h, image_w = views.shape[-2:]
        w, h, x, y = self.sample(image_w, image_h, rng)
        return _resize(_crop(views, x, y, w, h), self.height, self.width), label

    def __repr__(self) -> str:
        return f"RandomResizedCrop({(self.height, self.width)}, scale={self.scale})"


class RandomHorizontalFlip:
    """Mirror all frames with probability ``p``; a flipped clip's label goes through
    ``label_map`` (e.g. "pushing left to right" <-> "pushing right to left"). ``flow=True``:
    the channels are flow ``x1, y1, x2, ...`` and the ``x`` ones are also inverted
    (``255 - v``), as the reference's ``GroupRandomHorizontalFlip(is_flow=True)``."""

    def __init__(
        self, p: float = 0.5, label_map: Mapping[int, int] | None = None, *, flow: bool = False
    ) -> None:
        self.p = p
        self.label_map = dict(label_map or {})
        self.flow = flow

    def __call__(self, views, label, rng):
        if rng.random() < self.p:
            views = views.flip(-1)
            if self.flow:
                views = _invert_flow_x(views)
            return views, self.label_map.get(label, label)
        return views, label

    def __repr__(self) -> str:
        flow = ", flow" if self.flow else ""
        return f"RandomHorizontalFlip(p={self.p}, swaps={len(self.label_map) // 2} pairs{flow})"


class CenterCrop:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.height, self.width = _size(size)

    def __call__(self, views, label, rng):
        image_h, image_w = views.shape[-2:]
        if image_h < self.height or image_w < self.width:
            raise ValueError(
                f"CenterCrop({self.height}, {self.width}) on a {image_h}x{image_w} image: "
                "resize first"
            )
        x, y = (image_w - self.width) // 2, (image_h - self.height) // 2
        return _crop(views, x, y, self.width, self.height), label

    def __repr__(self) -> str:
        return f"CenterCrop({(self.height, self.width)})"


class ThreeCrop:
    """Three ``size`` crops along the longer side (start, centre, end): the "full resolution"
    test views when the shorter side was resized to ``size``. Multiplies the views by 3."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, views, label, rng):
        image_h, image_w = views.shape[-2:]
        s = self.size
        if min(image_h, image_w) < s:
            raise ValueError(f"ThreeCrop({s}) on a {image_h}x{image_w} image: resize first")
        if image_w >= image_h:
            spots = [(x, (image_h - s) // 2) for x in (0, (image_w - s) // 2, image_w - s)]
        else:
            spots = [((image_w - s) // 2, y) for y in (0, (image_h - s) // 2, image_h - s)]
        return torch.cat([_crop(views, x, y, s, s) for x, y in spots]), label

    def __repr__(self) -> str:
        return f"ThreeCrop({self.size})"


class TenCrop:
    """Four corners and the centre, each also mirrored: 10 views per input view (positions from
    :func:`fixed_crop_offsets`, as the reference's over-sampling). The mirrored views are the
    second half (:func:`mirrored_views`): for direction-sensitive classes their scores must go
    through the flip map before they are averaged with the others. ``flow=True``: mirrored
    views also invert the flow ``x`` channels (the reference's ``GroupOverSample``)."""

    def __init__(self, size: int | Sequence[int], *, flow: bool = False) -> None:
        self.height, self.width = _size(size)
        self.flow = flow

    def __call__(self, views, label, rng):
        image_h, image_w = views.shape[-2:]
        spots = fixed_crop_offsets(image_w, image_h, self.width, self.height, more=False)
        crops = [_crop(views, x, y, self.width, self.height) for x, y in spots]
        mirrored = [c.flip(-1) for c in crops]
        if self.flow:
            mirrored = [_invert_flow_x(c) for c in mirrored]
        return torch.cat(crops + mirrored), label

    def __repr__(self) -> str:
        return f"TenCrop({(self.height, self.width)})"


class Normalize:
    """uint8 -> float in [0, 1] -> ``(x - mean) / std`` per channel; with more channels than
    ``mean`` values (stacked snippets: ``3 * new_length`` RGB or ``2 * new_length`` flow
    channels) the values repeat over them, as the reference's ``GroupNormalize``."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, views, label, rng):
        mean, std = self._repeated(views.shape[-3])
        # one fused pass: x / 255 then standardise == x * (1 / (255 std)) - mean / std
        scale = 1.0 / (255.0 * std)
        return torch.addcmul(-mean / std, views.to(torch.float32), scale), label

    def _repeated(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self.mean)
        if channels == count or count == 1:
            return self.mean, self.std
        if channels % count:
            raise ValueError(
                f"Normalize has {count} mean/std values for {channels} channels: give "
                f"{channels} values or a divisor of {channels}"
            )
        return self.mean.repeat(channels // count, 1, 1), self.std.repeat(channels // count, 1, 1)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transforms(
    size: int = 224,
    *,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    flip_map: Mapping[int, int] | None = None,
    random_resized: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    modality: str = "rgb",
) -> Compose:
    """Training views: TSN multi-scale crop (or random resized crop), optional flip with a
    label swap map, normalisation.

    For datasets whose labels name a horizontal direction (Something-Something, Jester) pass
    ``flip=False`` or ``flip_map=flip_label_map(classes, "sthv2")``. ``modality="flow"``: the
    flip also inverts the flow ``x`` channels; ``scales``, ``mean`` and ``std`` left ``None``
    take the modality's reference values (RGB: ``RGB_SCALES`` and ImageNet; flow:
    ``FLOW_SCALES``, ``FLOW_MEAN``, ``FLOW_STD``).
    """
    mean, std, scales = _defaults(modality, mean, std, scales)
    crop = RandomResizedCrop(size) if random_resized else MultiScaleCrop(size, scales)
    steps = [crop]
    if flip:
        steps.append(RandomHorizontalFlip(label_map=flip_map, flow=modality == "flow"))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def mirrored_views(crops: int, views: int = 1) -> list[bool]:
    """Which of the views made by ``eval_transforms(crops=crops)`` from ``views`` input views
    (clips) are mirrored: :class:`TenCrop`'s second half, none for 1 or 3 crops."""
    if crops not in (1, 3, 10):
        raise ValueError(f"crops must be 1, 3 or 10, got {crops}")
    if crops != 10:
        return [False] * (crops * views)
    return [False] * (5 * views) + [True] * (5 * views)


def eval_transforms(
    size: int = 224,
    *,
    crops: int = 1,
    full_res: bool = False,
    scale_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    modality: str = "rgb",
) -> Compose:
    """Test views: resize the shorter side to ``scale_size`` (``size * 256 // 224`` by default),
    then 1 centre crop, 3 crops or 10 crops of ``size``; ``full_res`` crops at the resized
    size itself (256 x 256 for a 224 model), the papers' accuracy protocol. ``modality="flow"``:
    the mirrored views of 10 crops invert the flow ``x`` channels; ``mean`` / ``std`` left
    ``None`` take the modality's reference values."""
    mean, std, _ = _defaults(modality, mean, std, None)
    scale = scale_size or size * 256 // 224
    crop_size = scale if full_res else size
    if crops == 1:
        crop = CenterCrop(crop_size)
    elif crops == 3:
        crop = ThreeCrop(crop_size)
    elif crops == 10:
        crop = TenCrop(crop_size, flow=modality == "flow")
    else:
        raise ValueError(f"crops must be 1, 3 or 10, got {crops}")
    return Compose([ResizeShorter(scale), crop, Normalize(mean, std)])
