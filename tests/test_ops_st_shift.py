import pytest
import torch
from torch import nn

from timeshift.ops import temporal_shift
from timeshift.ops.st_shift import (
    DIMS,
    SpatioTemporalShift,
    parse_dims,
    spatiotemporal_shift,
    st_shift_fold,
    st_shift_groups,
)

from conftest import onnx_roundtrip

PLANE = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # one 2 x 3 feature map (H = 2, W = 3)
ZERO = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def _planes(t: int, c: int) -> torch.Tensor:
    # frame f, channel ch holds PLANE + 100 * f + 10 * ch
    base = torch.tensor(PLANE)
    return torch.stack(
        [torch.stack([base + 100 * f + 10 * ch for ch in range(c)]) for f in range(t)]
    )


def _reference(x: torch.Tensor, t: int, alpha: float, dims: str) -> torch.Tensor:
    """Slow implementation from the definition: out[t, c, h, w] = x[t+dt, c, h+dh, w+dw]."""
    nt, c, h, w = x.shape
    x5 = x.reshape(nt // t, t, c, h, w)
    out = x5.clone()
    for start, stop, offsets in st_shift_groups(c, alpha, dims):
        dt, dh, dw = (offsets.get(a, 0) for a in "THW")
        for f in range(t):
            for i in range(h):
                for j in range(w):
                    src = (f + dt, i + dh, j + dw)
                    inside = 0 <= src[0] < t and 0 <= src[1] < h and 0 <= src[2] < w
                    out[:, f, start:stop, i, j] = (
                        x5[:, src[0], start:stop, src[1], src[2]] if inside else 0
                    )
    return out.reshape(nt, c, h, w)


def test_h_shift_hand_example():
    out = spatiotemporal_shift(_planes(1, 2), 1, alpha=1, dims="H")
    assert out[0, 0].tolist() == [[4, 5, 6], [0, 0, 0]]  # first half reads row h + 1
    assert out[0, 1].tolist() == [[0, 0, 0], [11, 12, 13]]  # second half reads row h - 1


def test_w_shift_hand_example():
    out = spatiotemporal_shift(_planes(1, 2), 1, alpha=1, dims="W")
    assert out[0, 0].tolist() == [[2, 3, 0], [5, 6, 0]]  # column w + 1
    assert out[0, 1].tolist() == [[0, 11, 12], [0, 14, 15]]  # column w - 1


def test_hw_is_a_diagonal_2d_shift():
    out = spatiotemporal_shift(_planes(1, 2), 1, alpha=1, dims="HW")
    assert out[0, 0].tolist() == [[5, 6, 0], [0, 0, 0]]  # (h + 1, w + 1)
    assert out[0, 1].tolist() == [[0, 0, 0], [0, 11, 12]]  # (h - 1, w - 1)
    # the composition of the two 1-D shifts on the same channels
    x = torch.randn(3, 4, 5, 6)
    both = spatiotemporal_shift(spatiotemporal_shift(x, 3, alpha=1, dims="H"), 3, alpha=1, dims="W")
    assert torch.equal(spatiotemporal_shift(x, 3, alpha=1, dims="HW"), both)


def test_t_shift_hand_example_is_tsm():
    out = spatiotemporal_shift(_planes(3, 2), 3, alpha=1, dims="T")
    assert out[0, 0].tolist() == (torch.tensor(PLANE) + 100).tolist()  # frame 1, channel 0
    assert out[2, 0].tolist() == ZERO  # past the last frame
    assert out[0, 1].tolist() == ZERO  # before the first frame
    assert out[1, 1].tolist() == (torch.tensor(PLANE) + 10).tolist()  # frame 0, channel 1


@pytest.mark.parametrize("c", [8, 16, 20, 64, 7])
def test_t_with_alpha_quarter_equals_temporal_shift(c):
    x = torch.randn(8, c, 3, 3)
    assert torch.equal(spatiotemporal_shift(x, 4, alpha=1 / 4, dims="T"), temporal_shift(x, 4))


def test_t_h_w_layout_and_untouched_channels():
    # STSM: alpha = 3/8 of C = 16 -> 6 channels: T (0, 1), H (2, 3), W (4, 5); 6.. unchanged
    x = _planes(2, 16)
    out = spatiotemporal_shift(x, 2)
    plane = torch.tensor(PLANE)
    assert out[0, 0].tolist() == (plane + 100).tolist() and out[1, 0].tolist() == ZERO
    assert out[0, 1].tolist() == ZERO and out[1, 1].tolist() == (plane + 10).tolist()
    assert out[1, 2].tolist() == [[124, 125, 126], [0, 0, 0]]
    assert out[1, 3].tolist() == [[0, 0, 0], [131, 132, 133]]
    assert out[0, 4].tolist() == [[42, 43, 0], [45, 46, 0]]
    assert out[0, 5].tolist() == [[0, 51, 52], [0, 54, 55]]
    assert torch.equal(out[:, 6:], x[:, 6:])


def test_h_plus_w_splits_the_shifted_channels_between_parts():
    out = spatiotemporal_shift(_planes(1, 4), 1, alpha=1, dims="H+W")
    assert out[0, 0].tolist() == [[4, 5, 6], [0, 0, 0]]
    assert out[0, 1].tolist() == [[0, 0, 0], [11, 12, 13]]
    assert out[0, 2].tolist() == [[22, 23, 0], [25, 26, 0]]
    assert out[0, 3].tolist() == [[0, 31, 32], [0, 34, 35]]


def test_th_part_moves_time_and_rows_together():
    out = spatiotemporal_shift(_planes(2, 6), 2, alpha=1, dims="TH+TW+HW")
    assert out[0, 0].tolist() == [[104, 105, 106], [0, 0, 0]]  # (t + 1, h + 1)
    assert out[1, 0].tolist() == ZERO
    assert out[1, 3].tolist() == [[0, 31, 32], [0, 34, 35]]  # TW, second half: (t - 1, w - 1)
    assert out[0, 3].tolist() == ZERO


def test_groups_for_each_setting():
    assert st_shift_groups(64) == [
        (0, 4, {"T": 1}),
        (4, 8, {"T": -1}),
        (8, 12, {"H": 1}),
        (12, 16, {"H": -1}),
        (16, 20, {"W": 1}),
        (20, 24, {"W": -1}),
    ]
    assert st_shift_groups(32, 1 / 4, "T+HW") == [
        (0, 2, {"T": 1}),
        (2, 4, {"T": -1}),
        (4, 6, {"H": 1, "W": 1}),
        (6, 8, {"H": -1, "W": -1}),
    ]
    layout = st_shift_groups(96, 3 / 8, "T+H+W+TH+TW+HW")
    assert [sorted(o) for _, _, o in layout[::2]] == [
        ["T"],
        ["H"],
        ["W"],
        *map(sorted, ["TH", "TW", "HW"]),
    ]
    assert layout[-1][1] == 36  # 6 parts x 2 halves x 3 channels


@pytest.mark.parametrize(
    "channels,alpha,dims,fold",
    [
        (64, 3 / 8, "T+H+W", 4),
        (256, 3 / 8, "T+H+W", 16),
        (24, 3 / 8, "T+H+W", 1),  # 9 channels asked, 6 shifted: rounds down per half-part
        (48, 1 / 3, "T", 8),  # 1/3 taken as an exact fraction
        (12, 1.0, "T+H+W", 2),  # everything shifts
        (64, 0.0, "T+H+W", 0),
        (8, 3 / 8, "T+H+W", 0),  # fewer than one channel per half-part: nothing shifts
        (64, 1 / 4, "HW", 8),
    ],
)
def test_alpha_split(channels, alpha, dims, fold):
    assert st_shift_fold(channels, alpha, dims) == fold
    groups = st_shift_groups(channels, alpha, dims)
    assert sum(stop - start for start, stop, _ in groups) == 2 * len(parse_dims(dims)) * fold


def test_nothing_to_shift_returns_a_copy():
    x = torch.randn(4, 8, 3, 3)
    out = spatiotemporal_shift(x, 2)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("shape,t", [((8, 48, 4, 5), 4), ((3, 24, 1, 3), 1)])
def test_every_setting_matches_the_definition(dims, shape, t):
    x = torch.randn(shape)
    assert torch.equal(
        spatiotemporal_shift(x, t, alpha=1 / 2, dims=dims), _reference(x, t, 1 / 2, dims)
    )


def test_channels_last_is_kept():
    x = torch.randn(8, 32, 4, 4)
    out = spatiotemporal_shift(x.contiguous(memory_format=torch.channels_last), 4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, spatiotemporal_shift(x, 4))


def test_gradients():
    x = torch.randn(4, 16, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: spatiotemporal_shift(v, 2, dims="T+H+W"), (x,))
    y = torch.randn(4, 16, 3, 3, requires_grad=True)
    spatiotemporal_shift(y, 2).sum().backward()
    assert torch.equal(y.grad[:, 6:], torch.ones_like(y.grad[:, 6:]))  # untouched channels
    # channel 0 reads frame t + 1: the first frame's values are never used
    assert torch.equal(y.grad.view(2, 2, 16, 3, 3)[:, 0, 0], torch.zeros(2, 3, 3))


def test_dims_parsing_and_errors():
    assert parse_dims("t + h + w") == ("T", "H", "W")
    with pytest.raises(ValueError, match=r"unknown shift dims 'T\+X'; expected one of \['T', 'H'"):
        spatiotemporal_shift(torch.randn(4, 16, 2, 2), 2, dims="T+X")
    with pytest.raises(ValueError, match="TH\\+TW\\+HW"):
        SpatioTemporalShift(None, 2, dims="THW")
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\], got 1.5"):
        spatiotemporal_shift(torch.randn(4, 16, 2, 2), 2, alpha=1.5)
    with pytest.raises(ValueError, match="batch dimension 6 is not a multiple of num_segments=4"):
        spatiotemporal_shift(torch.randn(6, 16, 2, 2), 4)
    with pytest.raises(ValueError, match=r"\(N\*T, C, H, W\)"):
        spatiotemporal_shift(torch.randn(6, 16, 2), 2)


def test_module_wraps_net_under_net():
    conv = nn.Conv2d(16, 4, 1)
    module = SpatioTemporalShift(conv, 2, alpha=1 / 4, dims="t+hw")
    assert set(module.state_dict()) == {"net.weight", "net.bias"}
    assert module.dims == "T+HW" and "alpha=0.25, dims=T+HW" in repr(module)
    x = torch.randn(4, 16, 3, 3)
    assert torch.equal(module(x), conv(spatiotemporal_shift(x, 2, alpha=1 / 4, dims="T+HW")))
    assert torch.equal(SpatioTemporalShift(None, 2)(x), spatiotemporal_shift(x, 2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_shift_follows_new_batch_sizes():
    traced = torch.jit.trace(SpatioTemporalShift(None, 4), torch.randn(8, 32, 4, 4))
    x = torch.randn(12, 32, 4, 4)
    assert torch.equal(traced(x), spatiotemporal_shift(x, 4))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_onnx_export_follows_new_batch_sizes(tmp_path):
    fresh = torch.randn(12, 32, 4, 4)
    got = onnx_roundtrip(SpatioTemporalShift(None, 4), torch.randn(8, 32, 4, 4), fresh, tmp_path)
    assert torch.equal(got, spatiotemporal_shift(fresh, 4))
