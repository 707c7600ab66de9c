import pytest
import torch

from timeshift.ops.shuffle import (
    VideoShuffle,
    VideoUnshuffle,
    check_shuffle_channels,
    video_shuffle,
    video_unshuffle,
)

from conftest import onnx_roundtrip


def _clip(t: int, c: int, n: int = 1) -> torch.Tensor:
    # value = 100 * clip + 10 * frame + channel, so every output entry names its source
    values = [[[100.0 * b + 10.0 * f + ch for ch in range(c)] for f in range(t)] for b in range(n)]
    return torch.tensor(values).view(n * t, c, 1, 1)


def _eq1(x: torch.Tensor, t: int) -> torch.Tensor:
    """The paper's Eq. 1 written with loops: new frame i = [x_1^(i), ..., x_T^(i)]."""
    nt, c, h, w = x.shape
    eta = c // t
    x5 = x.reshape(nt // t, t, c, h, w)
    out = torch.empty_like(x5)
    for i in range(t):
        for j in range(t):
            out[:, i, j * eta : (j + 1) * eta] = x5[:, j, i * eta : (i + 1) * eta]
    return out.reshape(nt, c, h, w)


def test_hand_example_four_frames():
    # T = 4, C = 8: groups of eta = 2 channels; new frame i = group i of frames 0, 1, 2, 3
    out = video_shuffle(_clip(4, 8), 4).view(4, 8)
    assert out[0].tolist() == [0, 1, 10, 11, 20, 21, 30, 31]
    assert out[1].tolist() == [2, 3, 12, 13, 22, 23, 32, 33]
    assert out[2].tolist() == [4, 5, 14, 15, 24, 25, 34, 35]
    assert out[3].tolist() == [6, 7, 16, 17, 26, 27, 36, 37]


def test_clips_of_a_batch_do_not_mix():
    out = video_shuffle(_clip(2, 4, n=2), 2).view(2, 2, 4)
    assert out[0].tolist() == [[0, 1, 10, 11], [2, 3, 12, 13]]
    assert out[1].tolist() == [[100, 101, 110, 111], [102, 103, 112, 113]]


def test_other_group_counts():
    # groups = 2T: every new frame takes two groups (of C / 2T channels) from every frame
    out = video_shuffle(_clip(2, 4), 2, groups=4).view(2, 4)
    assert out.tolist() == [[0, 10, 1, 11], [2, 12, 3, 13]]
    # groups < T: group-major read-out, each new frame mixes `groups` consecutive frames
    out = video_shuffle(_clip(4, 2), 4, groups=2).view(4, 2)
    assert out.tolist() == [[0, 10], [20, 30], [1, 11], [21, 31]]
    # groups = 1: nothing moves
    assert torch.equal(video_shuffle(_clip(3, 6), 3, groups=1), _clip(3, 6))


@pytest.mark.parametrize("shape,t", [((8, 16, 3, 5), 4), ((6, 12, 2, 2), 3), ((16, 8, 1, 4), 8)])
def test_matches_eq1_with_spatial_positions_untouched(shape, t):
    x = torch.randn(shape)
    assert torch.equal(video_shuffle(x, t), _eq1(x, t))


@pytest.mark.parametrize(
    "shape,t,groups",
    [((8, 16, 3, 5), 4, None), ((8, 16, 3, 5), 4, 8), ((6, 12, 2, 2), 3, 2), ((4, 6, 2, 3), 1, 3)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_unshuffle_inverts_shuffle(shape, t, groups, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = video_shuffle(x, t, groups)
    assert not torch.equal(y, x) or groups == 1 or t == 1
    assert torch.equal(video_unshuffle(y, t, groups), x)
    assert torch.equal(video_shuffle(video_unshuffle(x, t, groups), t, groups), x)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_default_groups_shuffle_is_its_own_inverse():
    x = torch.randn(8, 12, 2, 2)
    assert torch.equal(video_shuffle(video_shuffle(x, 4), 4), x)
    assert torch.equal(video_unshuffle(x, 4), video_shuffle(x, 4))
    # ... but not for other group counts
    assert not torch.equal(video_unshuffle(x, 4, groups=2), video_shuffle(x, 4, groups=2))


def test_gradient_is_the_inverse_shuffle():
    x = torch.randn(8, 8, 2, 3, requires_grad=True)
    weight = torch.randn(8, 8, 2, 3)
    (video_shuffle(x, 4, groups=8) * weight).sum().backward()
    assert torch.equal(x.grad, video_unshuffle(weight, 4, groups=8))
    small = torch.randn(4, 4, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: video_unshuffle(v, 2, groups=4), (small,))


def test_modules_match_functions_and_have_no_parameters():
    x = torch.randn(8, 8, 3, 3)
    shuffle, unshuffle = VideoShuffle(4), VideoUnshuffle(4, groups=8)
    assert torch.equal(shuffle(x), video_shuffle(x, 4))
    assert torch.equal(unshuffle(x), video_unshuffle(x, 4, groups=8))
    assert not list(shuffle.parameters()) and not list(unshuffle.parameters())
    assert "groups=4" in repr(shuffle) and "groups=8" in repr(unshuffle)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_shuffle_follows_new_batch_sizes():
    traced = torch.jit.trace(VideoShuffle(4), torch.randn(8, 8, 2, 2))
    x = torch.randn(12, 8, 2, 2)
    assert torch.equal(traced(x), video_shuffle(x, 4))


def test_errors_name_channels_groups_and_frames():
    with pytest.raises(ValueError, match=r"C=6 .* 4 equal groups \(T=4\)"):
        video_shuffle(torch.randn(8, 6, 2, 2), 4)
    with pytest.raises(ValueError, match=r"C=8 .* 3 equal groups \(T=4\)"):
        video_unshuffle(torch.randn(8, 8, 2, 2), 4, groups=3)
    with pytest.raises(ValueError, match=r"batch dimension 6 is not a multiple of num_segments=4"):
        video_shuffle(torch.randn(6, 8, 2, 2), 4)
    with pytest.raises(ValueError, match=r"\(N\*T, C, H, W\)"):
        video_shuffle(torch.randn(4, 8, 2), 4)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        check_shuffle_channels(8, 4, groups=0)
    with pytest.raises(ValueError, match="num_segments must be >= 1"):
        VideoShuffle(0)
    assert check_shuffle_channels(64, 8) == 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_onnx_export_follows_new_batch_sizes(tmp_path):
    fresh = torch.randn(12, 8, 2, 2)
    got = onnx_roundtrip(VideoShuffle(4), torch.randn(8, 8, 2, 2), fresh, tmp_path)
    assert torch.equal(got, video_shuffle(fresh, 4))
