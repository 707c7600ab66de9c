"""Clip transforms on small uint8 clips (V, T, C, H, W) with position-dependent patterns."""

import random

import pytest
import torch
import torch.nn.functional as F

from timeshift.data.flip_maps import FLIP_PAIRS, flip_label_map
from timeshift.data.transforms import (
    FLOW_MEAN,
    FLOW_SCALES,
    FLOW_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB_SCALES,
    CenterCrop,
    Compose,
    MultiScaleCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeShorter,
    TenCrop,
    ThreeCrop,
    eval_transforms,
    fixed_crop_offsets,
    mirrored_views,
    train_transforms,
)

T = 4


def _clip(h: int, w: int, *, frames: int = T, same: bool = False) -> torch.Tensor:
    """(1, T, 3, H, W) uint8. Within a frame and channel every pixel value is unique while
    H * W <= 256 (so a crop at a wrong offset cannot match); frames and channels differ too
    (unless ``same``, which makes all frames identical)."""
    t = torch.zeros(frames) if same else torch.arange(frames)
    c = torch.arange(3)
    y = torch.arange(h)
    x = torch.arange(w)
    value = (
        t.view(-1, 1, 1, 1) * 37
        + c.view(1, -1, 1, 1) * 101
        + y.view(1, 1, -1, 1) * w
        + x.view(1, 1, 1, -1)
    ) % 256
    return value.to(torch.uint8).unsqueeze(0)


def _resized(views, x, y, w, h, height, width):
    """Independent crop + resize of every frame, one frame at a time."""
    frames = [
        F.interpolate(
            views[0, t : t + 1, :, y : y + h, x : x + w],
            size=(height, width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        for t in range(views.shape[1])
    ]
    return torch.cat(frames).unsqueeze(0)


def _frames_identical(views: torch.Tensor) -> bool:
    return all(torch.equal(views[:, 0], views[:, t]) for t in range(1, views.shape[1]))


# -- same random choice for every frame; reproducible per seed ---------------------------------

RANDOM_TRANSFORMS = {
    "multiscale": lambda: MultiScaleCrop(24),
    "multiscale_free": lambda: MultiScaleCrop(24, fix_crop=False),
    "resized": lambda: RandomResizedCrop(24),
    "flip": lambda: RandomHorizontalFlip(0.5),
    "train": lambda: train_transforms(24),
    "train_resized": lambda: train_transforms(24, random_resized=True),
}


@pytest.mark.parametrize("name", sorted(RANDOM_TRANSFORMS))
def test_same_choice_for_all_frames(name):
    transform = RANDOM_TRANSFORMS[name]()
    clip = _clip(12, 20, same=True)
    assert _frames_identical(clip)
    for seed in range(20):
        out, label = transform(clip, 3, random.Random(seed))
        assert out.shape[:3] == (1, T, 3)
        assert label == 3
        assert _frames_identical(out), f"seed {seed}: frames of one clip were treated differently"


@pytest.mark.parametrize("name", sorted(RANDOM_TRANSFORMS))
def test_reproducible_per_seed_and_varies_across_seeds(name):
    transform = RANDOM_TRANSFORMS[name]()
    clip = _clip(12, 20)
    outputs = []
    for seed in range(8):
        a, _ = transform(clip, 0, random.Random(seed))
        b, _ = transform(clip, 0, random.Random(seed))
        assert torch.equal(a, b), f"seed {seed} is not reproducible"
        outputs.append(a)
    distinct = {tuple(o.flatten().tolist()) for o in outputs}
    assert len(distinct) >= 2, "every seed gave the same output"


def test_multiscale_crop_same_offset_for_distinct_frames():
    # scales=(1,) and size == shorter side: no resize, so the crop can be located exactly
    transform = MultiScaleCrop(12, scales=(1.0,))
    clip = _clip(12, 16)
    seen = set()
    for seed in range(40):
        out, _ = transform(clip, 0, random.Random(seed))
        assert out.shape == (1, T, 3, 12, 12)
        # offsets: x in {0, 1, 2, 3, 4} (w_step = (16 - 12) // 4 = 1), y = 0
        matches = [x for x in range(5) if torch.equal(out, clip[..., 0:12, x : x + 12])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("cls", [MultiScaleCrop, RandomResizedCrop])
def test_random_crop_matches_sampled_box(cls):
    transform = cls((10, 14))
    clip = _clip(12, 20)
    for seed in range(10):
        w, h, x, y = transform.sample(20, 12, random.Random(seed))
        assert x >= 0 and y >= 0 and x + w <= 20 and y + h <= 12
        out, _ = transform(clip, 1, random.Random(seed))
        assert out.shape == (1, T, 3, 10, 14)
        assert out.dtype == torch.uint8
        assert torch.equal(out, _resized(clip, x, y, w, h, 10, 14))


def test_random_flip_same_decision_for_distinct_frames():
    clip = _clip(6, 9)
    flips = []
    for seed in range(20):
        out, _ = RandomHorizontalFlip(0.5)(clip, 0, random.Random(seed))
        flipped = torch.equal(out, torch.flip(clip, dims=[-1]))
        assert flipped or torch.equal(out, clip)
        assert flipped == (random.Random(seed).random() < 0.5)
        flips.append(flipped)
    assert any(flips) and not all(flips)


# -- MultiScaleCrop.sample ---------------------------------------------------------------------


def test_fixed_crop_offsets_by_hand():
    # 340x256 image, 224x224 crop: w_step = (340 - 224) // 4 = 29, h_step = (256 - 224) // 4 = 8
    expected = [
        (0, 0),
        (116, 0),
        (0, 32),
        (116, 32),
        (58, 16),
        (0, 16),
        (116, 16),
        (58, 32),
        (58, 0),
        (29, 8),
        (87, 8),
        (29, 24),
        (87, 24),
    ]
    assert fixed_crop_offsets(340, 256, 224, 224) == expected
    assert fixed_crop_offsets(340, 256, 224, 224, more=False) == expected[:5]
    # quarter steps are floored: 341 - 224 = 117 -> 29
    assert fixed_crop_offsets(341, 256, 224, 224)[1] == (116, 0)


def _sample_many(transform, image_w, image_h, n=3000):
    rng = random.Random(1234)
    return [transform.sample(image_w, image_h, rng) for _ in range(n)]


def test_multiscale_sample_sizes_and_offsets():
    samples = _sample_many(MultiScaleCrop(224), 340, 256)
    # base 256: scales (1, .875, .75, .66) -> 256, 224, 192, 168; at most 1 step between w and h
    expected_pairs = {
        (256, 256),
        (224, 256),
        (256, 224),
        (224, 224),
        (192, 224),
        (224, 192),
        (192, 192),
        (168, 192),
        (192, 168),
        (168, 168),
    }
    assert {(w, h) for w, h, _, _ in samples} == expected_pairs
    for w, h, x, y in samples:
        assert (x, y) in fixed_crop_offsets(340, 256, w, h)
    offsets_224 = {(x, y) for w, h, x, y in samples if (w, h) == (224, 224)}
    assert offsets_224 == set(fixed_crop_offsets(340, 256, 224, 224))
    assert len(offsets_224) == 13


def test_multiscale_sample_snaps_within_3px():
    # base 258: int(258 * .875) = 225 is within 3 px of 224 -> 224; 258 / 193 / 170 stay
    sizes = {w for w, _, _, _ in _sample_many(MultiScaleCrop(224), 300, 258, n=500)}
    assert sizes == {258, 224, 193, 170}
    # base 254: int(254 * .875) = 222 -> 224 (2 px); base 260: 227 is 3 px away -> not snapped
    sizes = {w for w, _, _, _ in _sample_many(MultiScaleCrop(224), 300, 254, n=500)}
    assert sizes == {254, 224, 190, 167}
    sizes = {w for w, _, _, _ in _sample_many(MultiScaleCrop(224), 300, 260, n=500)}
    assert sizes == {260, 227, 195, 171}


def test_multiscale_sample_snaps_each_axis_to_its_target():
    # size (height 112, width 126); base 128 -> 128, 112, 96, 84
    # heights snap to 112 (exact already); widths: 128 is 2 px from 126 -> 126
    pairs = {(w, h) for w, h, _, _ in _sample_many(MultiScaleCrop((112, 126)), 200, 128, n=1000)}
    assert pairs == {
        (126, 128),
        (112, 128),
        (126, 112),
        (112, 112),
        (96, 112),
        (112, 96),
        (96, 96),
        (84, 96),
        (96, 84),
        (84, 84),
    }


def test_multiscale_sample_max_distort_and_free_crop():
    squares = _sample_many(MultiScaleCrop(224, max_distort=0), 340, 256, n=500)
    assert {(w, h) for w, h, _, _ in squares} == {(256, 256), (224, 224), (192, 192), (168, 168)}
    free = _sample_many(MultiScaleCrop(224, fix_crop=False), 340, 256, n=2000)
    for w, h, x, y in free:
        assert 0 <= x <= 340 - w and 0 <= y <= 256 - h
    xs = {x for w, h, x, _ in free if (w, h) == (168, 168)}
    assert min(xs) == 0 and max(xs) > 160
    assert len(xs) > 13  # not restricted to the fixed grid


def test_multiscale_sample_reproducible():
    transform = MultiScaleCrop(224)
    a = [transform.sample(340, 256, random.Random(s)) for s in range(30)]
    b = [transform.sample(340, 256, random.Random(s)) for s in range(30)]
    assert a == b
    assert len(set(a)) > 5


# -- deterministic crops -----------------------------------------------------------------------


def test_center_crop_exact():
    clip = _clip(12, 20)
    out, label = CenterCrop(8)(clip, 7, None)
    assert label == 7
    assert torch.equal(out, clip[..., 2:10, 6:14])
    out, _ = CenterCrop((6, 10))(clip, 0, None)  # (height, width)
    assert torch.equal(out, clip[..., 3:9, 5:15])
    out, _ = CenterCrop((12, 20))(clip, 0, None)
    assert torch.equal(out, clip)
    with pytest.raises(ValueError, match="resize first"):
        CenterCrop(14)(clip, 0, None)


def test_three_crop_landscape():
    clip = _clip(12, 16)
    out, label = ThreeCrop(10)(clip, 2, None)
    assert label == 2
    assert out.shape == (3, T, 3, 10, 10)
    # along the width: x = 0, (16 - 10) // 2 = 3, 6; y centred: (12 - 10) // 2 = 1
    for view, x in zip(out, (0, 3, 6), strict=True):
        assert torch.equal(view, clip[0, :, :, 1:11, x : x + 10])


def test_three_crop_portrait():
    clip = _clip(16, 10)
    out, _ = ThreeCrop(10)(clip, 0, None)
    assert out.shape == (3, T, 3, 10, 10)
    for view, y in zip(out, (0, 3, 6), strict=True):
        assert torch.equal(view, clip[0, :, :, y : y + 10, 0:10])
    with pytest.raises(ValueError, match="resize first"):
        ThreeCrop(11)(clip, 0, None)


def test_ten_crop():
    clip = _clip(12, 16)
    out, label = TenCrop(8)(clip, 4, None)
    assert label == 4
    assert out.shape == (10, T, 3, 8, 8)
    # corners and centre: differences 8 and 4 are multiples of 4, so the corners are exact
    spots = [(0, 0), (8, 0), (0, 4), (8, 4), (4, 2)]
    for i, (x, y) in enumerate(spots):
        crop = clip[0, :, :, y : y + 8, x : x + 8]
        assert torch.equal(out[i], crop), f"crop {i}"
        assert torch.equal(out[5 + i], torch.flip(crop, dims=[-1])), f"mirror {i}"


@pytest.mark.parametrize("crops", [1, 3, 10])
@pytest.mark.parametrize("clips", [1, 2])
def test_mirrored_views_names_the_mirrored_outputs(crops, clips):
    # left-right asymmetric content, different per clip: a view is mirrored iff it equals the
    # horizontal flip of an unmirrored view (and no unmirrored view is a flip of another)
    views = _clip(16, 24).repeat(clips, 1, 1, 1, 1)
    views += torch.arange(clips, dtype=torch.uint8).view(-1, 1, 1, 1, 1) * 50
    transform = eval_transforms(8, crops=crops, scale_size=16, mean=(0,) * 3, std=(1,) * 3)
    out, _ = transform(views, 0, random.Random(0))
    flags = mirrored_views(crops, clips)
    assert len(flags) == out.shape[0] == crops * clips
    plain = [out[k] for k, m in enumerate(flags) if not m]
    for k, mirrored in enumerate(flags):
        is_flip = any(torch.equal(out[k], p.flip(-1)) for p in plain)
        assert is_flip == mirrored, k
    with pytest.raises(ValueError, match="crops must be"):
        mirrored_views(5)


def test_resize_shorter():
    clip = _clip(12, 20)
    out, label = ResizeShorter(6)(clip, 5, None)
    assert label == 5
    assert out.shape == (1, T, 3, 6, 10)
    assert out.dtype == torch.uint8
    ref = F.interpolate(
        clip[0].float(), size=(6, 10), mode="bilinear", antialias=True, align_corners=False
    )
    assert (out[0].float() - ref).abs().max() <= 1.0  # frames stay in order, uint8 rounding
    portrait = _clip(30, 8)
    assert ResizeShorter(4)(portrait, 0, None)[0].shape == (1, T, 3, 15, 4)
    assert ResizeShorter(16)(_clip(10, 15), 0, None)[0].shape == (1, T, 3, 16, 24)
    same, _ = ResizeShorter(12)(clip, 0, None)
    assert torch.equal(same, clip)


def test_resize_constant_clip_stays_constant():
    clip = torch.full((1, T, 3, 9, 13), 77, dtype=torch.uint8)
    out, _ = ResizeShorter(20)(clip, 0, None)
    assert out.shape == (1, T, 3, 20, 29)
    assert torch.equal(out, torch.full_like(out, 77))


def test_normalize():
    clip = _clip(16, 16)  # every byte value appears
    out, label = Normalize()(clip, 9, None)
    assert label == 9
    assert out.dtype == torch.float32
    assert out.shape == clip.shape
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    expected = (clip.float() / 255 - mean) / std
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    out, _ = Normalize(mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 2.0))(clip, 0, None)
    x = clip.float() / 255
    torch.testing.assert_close(out[:, :, 0], (x[:, :, 0] - 0.5) / 0.5, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 1], x[:, :, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 2], (x[:, :, 2] - 1.0) / 2.0, atol=1e-6, rtol=0)


# -- flips and label maps ----------------------------------------------------------------------


def test_flip_always_and_never():
    clip = _clip(8, 12)
    swap = {3: 5, 5: 3}
    out, label = RandomHorizontalFlip(1.0, label_map=swap)(clip, 3, random.Random(0))
    assert torch.equal(out, torch.flip(clip, dims=[-1]))
    assert torch.equal(out[..., 0], clip[..., 11])
    assert label == 5
    _, label = RandomHorizontalFlip(1.0, label_map=swap)(clip, 5, random.Random(0))
    assert label == 3
    _, label = RandomHorizontalFlip(1.0, label_map=swap)(clip, 1, random.Random(0))
    assert label == 1  # not in the map
    for seed in range(10):
        out, label = RandomHorizontalFlip(0.0, label_map=swap)(clip, 3, random.Random(seed))
        assert torch.equal(out, clip)
        assert label == 3


def test_flip_label_map_sthv2():
    classes = [
        "Pushing something from right to left",  # 0
        "Putting something onto something",  # 1
        "  pushing something from LEFT to right ",  # 2: case and whitespace are ignored
        "Pulling something from left to right",  # 3
        "Turning the camera right while filming something",  # 4
        "Pulling something from right to left",  # 5
        "Turning the camera left while filming something",  # 6
        "Moving something up",  # 7
    ]
    expected = {0: 2, 2: 0, 3: 5, 5: 3, 4: 6, 6: 4}
    assert flip_label_map(classes, "sthv2") == expected
    assert flip_label_map(classes, "sthv1") == expected
    flip = RandomHorizontalFlip(1.0, label_map=flip_label_map(classes, "sthv2"))
    assert [flip(_clip(2, 2), i, random.Random(0))[1] for i in range(8)] == [
        2,
        1,
        0,
        5,
        6,
        3,
        4,
        7,
    ]


def test_flip_label_map_jester():
    classes = [
        "Swiping Left",
        "Turning Hand Counterclockwise",
        "Sliding Two Fingers Right",
        "Swiping Right",
        "Thumb Up",
        "Turning Hand Clockwise",
        "Sliding Two Fingers Left",
    ]
    assert flip_label_map(classes, "jester") == {0: 3, 3: 0, 1: 5, 5: 1, 2: 6, 6: 2}
    names = {name for pair in FLIP_PAIRS["jester"] for name in pair}
    assert {"Turning Hand Clockwise", "Turning Hand Counterclockwise"} <= names


def test_flip_label_map_errors():
    with pytest.raises(ValueError, match="no flip map for 'kinetics'"):
        flip_label_map(["a"], "kinetics")
    classes = ["Pushing something from left to right", "Pushing something from right to left"]
    with pytest.raises(ValueError, match="not in the class list") as exc_info:
        flip_label_map(classes, "sthv2")
    assert "Pulling something from left to right" in str(exc_info.value)


def test_flip_label_map_class_subset():
    # a subset of the synthetic classes (some families): pairs absent as a whole are skipped
    classes = ["moving up", "moving down", "rotating anticlockwise", "rotating clockwise"]
    with pytest.raises(ValueError, match="not in the class list"):
        flip_label_map(classes, "synthetic")
    assert flip_label_map(classes, "synthetic", allow_absent=True) == {2: 3, 3: 2}
    # half a pair: a mirrored "moving left" would need "moving right", which the list lacks
    with pytest.raises(ValueError, match="moving right"):
        flip_label_map(["moving left", "growing"], "synthetic", allow_absent=True)


def test_train_transforms_flip_swaps_label():
    classes = ["Swiping Right", "Swiping Left", "Sliding Two Fingers Left"]
    classes += ["Sliding Two Fingers Right", "Turning Hand Clockwise"]
    classes += ["Turning Hand Counterclockwise"]
    transform = train_transforms(16, flip_map=flip_label_map(classes, "jester"))
    labels = {transform(_clip(12, 20), 0, random.Random(seed))[1] for seed in range(30)}
    assert labels == {0, 1}  # some seeds flip (label swapped), some do not
    no_flip = train_transforms(16, flip=False, flip_map=flip_label_map(classes, "jester"))
    assert {no_flip(_clip(12, 20), 0, random.Random(s))[1] for s in range(30)} == {0}


# -- pipelines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crops", "full_res", "shape"),
    [
        (1, False, (1, T, 3, 224, 224)),
        (1, True, (1, T, 3, 256, 256)),
        (3, False, (3, T, 3, 224, 224)),
        (3, True, (3, T, 3, 256, 256)),
        (10, False, (10, T, 3, 224, 224)),
        (10, True, (10, T, 3, 256, 256)),
    ],
)
def test_eval_transforms_shapes(crops, full_res, shape):
    clip = _clip(48, 64)
    out, label = eval_transforms(224, crops=crops, full_res=full_res)(clip, 6, random.Random(0))
    assert out.shape == shape
    assert out.dtype == torch.float32
    assert label == 6


def test_eval_transforms_single_crop_values():
    # a 256x320 clip is already at scale 256: the pipeline is then centre crop + normalise
    clip = torch.randint(0, 256, (1, T, 3, 256, 320), dtype=torch.uint8)
    out, _ = eval_transforms(224)(clip, 0, random.Random(0))
    expected, _ = Normalize()(clip[..., 16:240, 48:272], 0, None)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    small = eval_transforms(112, scale_size=128, crops=3)(clip, 0, random.Random(0))[0]
    assert small.shape == (3, T, 3, 112, 112)


def test_eval_transforms_invalid():
    with pytest.raises(ValueError, match="crops must be 1, 3 or 10, got 5"):
        eval_transforms(224, crops=5)
    with pytest.raises(ValueError, match=r"expected views \(V, T, C, H, W\)"):
        eval_transforms(224)(torch.zeros(T, 3, 8, 8, dtype=torch.uint8), 0, random.Random(0))


def test_train_transforms_output():
    clip = _clip(48, 64)
    for transform in (train_transforms(224), train_transforms(224, random_resized=True)):
        out, label = transform(clip, 2, random.Random(0))
        assert out.shape == (1, T, 3, 224, 224)
        assert out.dtype == torch.float32
        assert label == 2
        # normalised uint8: within [(0 - mean) / std, (1 - mean) / std] per channel
        assert out.min() >= -0.485 / 0.229 - 1e-5
        assert out.max() <= (1 - 0.406) / 0.225 + 1e-5
    assert isinstance(train_transforms(224), Compose)
    assert [type(t).__name__ for t in train_transforms(224).transforms] == [
        "MultiScaleCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    assert [type(t).__name__ for t in train_transforms(224, flip=False).transforms] == [
        "MultiScaleCrop",
        "Normalize",
    ]


def _flow_clip(h: int = 8, w: int = 10, new_length: int = 2) -> torch.Tensor:
    """(1, T, 2 * new_length, H, W) uint8 with distinct values per position and channel."""
    value = torch.arange(T * 2 * new_length * h * w).reshape(1, T, 2 * new_length, h, w) * 7
    return (value % 256).to(torch.uint8)


def test_flow_flip_mirrors_every_channel_and_inverts_x_only():
    views = _flow_clip()
    out, label = RandomHorizontalFlip(p=1.0, flow=True)(views, 3, random.Random(0))
    mirrored = views.flip(-1)
    assert label == 3
    assert torch.equal(out[:, :, 0::2], 255 - mirrored[:, :, 0::2])  # x: 255 - v
    assert torch.equal(out[:, :, 1::2], mirrored[:, :, 1::2])  # y: mirrored only
    kept, _ = RandomHorizontalFlip(p=0.0, flow=True)(views, 3, random.Random(0))
    assert torch.equal(kept, views)
    rgb, _ = RandomHorizontalFlip(p=1.0)(views, 3, random.Random(0))
    assert torch.equal(rgb, mirrored)
    with pytest.raises(TypeError, match="before Normalize"):
        RandomHorizontalFlip(p=1.0, flow=True)(views.float(), 3, random.Random(0))


def test_flow_ten_crop_inverts_x_in_the_mirrored_views_only():
    views = _flow_clip(12, 14)
    rgb, _ = TenCrop(8)(views, 0, random.Random(0))
    flow, _ = TenCrop(8, flow=True)(views, 0, random.Random(0))
    assert torch.equal(flow[:5], rgb[:5])
    assert torch.equal(flow[5:, :, 0::2], 255 - rgb[5:, :, 0::2])
    assert torch.equal(flow[5:, :, 1::2], rgb[5:, :, 1::2])
    assert mirrored_views(10) == [False] * 5 + [True] * 5


def test_flow_normalisation_numbers():
    views = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).view(1, 1, 4, 1, 1)
    out, _ = Normalize(FLOW_MEAN, FLOW_STD)(views, 0, None)
    expected = [(v / 255 - 0.5) / 0.226 for v in (0, 64, 128, 255)]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-5)
    flow_eval = eval_transforms(8, scale_size=8, modality="flow")
    out, _ = flow_eval(views.expand(1, 1, 4, 8, 8).contiguous(), 0, None)
    assert out[0, 0, :, 0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_normalize_repeats_its_values_over_stacked_frames():
    views = _clip(8, 8).repeat(1, 1, 2, 1, 1)  # two RGB frames stacked: 6 channels
    out, _ = Normalize()(views, 0, None)
    single, _ = Normalize()(views[:, :, :3], 0, None)
    assert torch.equal(out[:, :, :3], single) and torch.equal(out[:, :, 3:], single)
    with pytest.raises(ValueError, match="4 mean/std values for 6 channels"):
        Normalize((0.5,) * 4, (0.2,) * 4)(views, 0, None)


def test_flow_pipelines_take_the_reference_defaults():
    train = train_transforms(16, modality="flow")
    crop, flip, norm = train.transforms
    assert crop.scales == FLOW_SCALES and flip.flow
    assert norm.mean.flatten().tolist() == pytest.approx(FLOW_MEAN)
    assert norm.std.flatten().tolist() == pytest.approx(FLOW_STD)
    rgb = train_transforms(16)
    assert rgb.transforms[0].scales == RGB_SCALES and not rgb.transforms[1].flow
    assert rgb.transforms[2].std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert eval_transforms(16, crops=10, modality="flow").transforms[1].flow
    with pytest.raises(ValueError, match="modality"):
        train_transforms(16, modality="depth")
