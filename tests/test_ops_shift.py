import pytest
import torch
from torch import nn

from timeshift.ops import TemporalShift, temporal_shift
from timeshift.ops.shift import _shift_functional

from conftest import reference_shift


def _frames(t: int, c: int) -> torch.Tensor:
    # value = 10 * frame + channel, so every output entry names its source
    return torch.tensor([[10.0 * f + ch for ch in range(c)] for f in range(t)]).view(t, c, 1, 1)


def test_bidirectional_hand_example():
    out = temporal_shift(_frames(3, 8), 3, fold_div=8).view(3, 8)
    # fold = 1: channel 0 comes from the next frame, channel 1 from the previous one
    assert out[0].tolist() == [10, 0, 2, 3, 4, 5, 6, 7]  # [x1c0, 0, x0c2, ...]
    assert out[1].tolist() == [20, 1, 12, 13, 14, 15, 16, 17]
    assert out[2].tolist() == [0, 11, 22, 23, 24, 25, 26, 27]


def test_unidirectional_hand_example():
    out = temporal_shift(_frames(3, 8), 3, fold_div=8, direction="unidirectional").view(3, 8)
    assert out[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert out[1].tolist() == [0, 11, 12, 13, 14, 15, 16, 17]
    assert out[2].tolist() == [10, 21, 22, 23, 24, 25, 26, 27]


def test_channels_not_divisible_by_fold_div():
    # C = 10, fold_div = 4 -> fold = 2; channels 4.. unchanged
    out = temporal_shift(_frames(2, 10), 2, fold_div=4).view(2, 10)
    assert out[0].tolist() == [10, 11, 0, 0, 4, 5, 6, 7, 8, 9]
    assert out[1].tolist() == [0, 0, 2, 3, 14, 15, 16, 17, 18, 19]


def test_fold_zero_is_identity_copy():
    x = torch.randn(6, 4, 3, 3)
    out = temporal_shift(x, 3, fold_div=8)  # 4 // 8 == 0
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize(
    "shape,t,fold_div",
    [((8, 16, 5, 4), 4, 8), ((12, 13, 3, 3), 3, 4), ((6, 24, 2, 7), 6, 3), ((5, 8, 2, 2), 1, 8)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_reference_equations(direction, shape, t, fold_div, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = temporal_shift(x, t, fold_div=fold_div, direction=direction)
    assert torch.equal(out, reference_shift(x, t, fold_div, direction))
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_functional_path_matches_fast_path(direction):
    x = torch.randn(8, 16, 3, 3)
    from timeshift.ops.shift import shift_offsets

    expected = temporal_shift(x, 4, fold_div=8, direction=direction)
    assert torch.equal(_shift_functional(x, 4, 2, shift_offsets(direction)), expected)


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_gradcheck(direction):
    x = torch.randn(6, 8, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: temporal_shift(v, 3, fold_div=4, direction=direction), (x,)
    )
    assert torch.autograd.gradgradcheck(
        lambda v: temporal_shift(v, 3, fold_div=4, direction=direction), (x,)
    )


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_inplace_forward_and_gradients_match_out_of_place(direction):
    base = torch.randn(8, 16, 4, 4, requires_grad=True)
    weight = torch.randn(8, 16, 4, 4)

    out_ref = temporal_shift(base * 2, 4, direction=direction)
    (out_ref * weight).sum().backward()
    grad_ref = base.grad.clone()
    base.grad = None

    y = base * 2  # a non-leaf tensor nothing else needs
    out = temporal_shift(y, 4, direction=direction, inplace=True)
    assert out.data_ptr() == y.data_ptr()
    assert torch.equal(out, out_ref)
    (out * weight).sum().backward()
    assert torch.allclose(base.grad, grad_ref)


def test_inplace_refuses_to_corrupt_saved_tensors():
    x = torch.randn(4, 8, 2, 2, requires_grad=True)
    y = torch.sigmoid(x)  # sigmoid saves its output for backward
    temporal_shift(y, 2, inplace=True)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_inplace_without_grad():
    x = torch.randn(4, 8, 2, 2)
    expected = temporal_shift(x, 2)
    with torch.no_grad():
        out = temporal_shift(x, 2, inplace=True)
    assert out is x and torch.equal(x, expected)


@pytest.mark.parametrize(
    "x,t,kwargs,match",
    [
        (torch.randn(4, 8, 2), 2, {}, r"\(N\*T, C, H, W\)"),
        (torch.randn(6, 8, 2, 2), 4, {}, "not a multiple of num_segments=4"),
        (torch.randn(4, 8, 2, 2), 2, {"direction": "sideways"}, "unknown shift direction"),
        (torch.randn(4, 8, 2, 2), 2, {"fold_div": 0}, "fold_div must be >= 1"),
        (torch.randn(4, 8, 2, 2), 2, {"fold_div": 1}, "use fold_div >= 2"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, t, kwargs, match):
    with pytest.raises(ValueError, match=match):
        temporal_shift(x, t, **kwargs)


def test_module_keeps_weights_under_net():
    conv = nn.Conv2d(8, 4, 1)
    module = TemporalShift(conv, 2, fold_div=4)
    assert set(module.state_dict()) == {"net.weight", "net.bias"}
    x = torch.randn(4, 8, 3, 3)
    assert torch.allclose(module(x), conv(temporal_shift(x, 2, fold_div=4)))
    assert "direction=bidirectional" in repr(module)


class _ShiftNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = TemporalShift(nn.Conv2d(8, 8, 3, padding=1), 4, fold_div=4)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_jit_trace_stays_correct_on_new_inputs():
    net = _ShiftNet().eval()
    traced = torch.jit.trace(net, torch.randn(4, 8, 5, 5))
    fresh = torch.randn(8, 8, 5, 5)  # another batch size, new values
    assert torch.allclose(traced(fresh), net(fresh), atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_matches_eager_on_new_inputs(tmp_path, dynamo):
    import onnxruntime as ort

    net = _ShiftNet().eval()
    path = tmp_path / "shift.onnx"
    dynamic = (
        {"dynamic_shapes": {"x": {0: torch.export.Dim("nt", min=4, max=64)}}}
        if dynamo
        else {"dynamic_axes": {"x": {0: "nt"}, "y": {0: "nt"}}}
    )
    torch.onnx.export(
        net,
        (torch.randn(4, 8, 5, 5),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamo=dynamo,
        **dynamic,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (4, 8):
        fresh = torch.randn(batch, 8, 5, 5)
        (got,) = session.run(None, {"x": fresh.numpy()})
        assert torch.allclose(torch.from_numpy(got), net(fresh), atol=1e-5)


# -- the inference restore path: shift the moved channels in place, run net, put them back ----


@pytest.fixture
def restore_small(monkeypatch):
    """Take the restore path on the small test tensors too (normally it starts at 2M elements)."""
    monkeypatch.setattr(TemporalShift, "restore_min_elements", 0)


class _Recorder(nn.Module):
    """Returns a function of its input and keeps a copy of what it saw."""

    def forward(self, x):
        self.seen = x.clone()
        return x * 2 + 1


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_restore_path_equals_copy_and_leaves_input_intact(direction, channels_last, restore_small):
    x = torch.randn(6, 16, 5, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    module = TemporalShift(_Recorder(), 3, fold_div=8, direction=direction).eval()
    assert module._restorable_fold(x) == 2
    with torch.no_grad():
        fast = module(x)
        seen = module.net.seen
        module.fast_inference = False
        copied = module(x)
    assert torch.equal(x, before)  # the shortcut reads the block input after the conv
    assert torch.equal(seen, temporal_shift(before, 3, fold_div=8, direction=direction))
    assert torch.equal(fast, copied)


def test_restore_path_with_identity_net_returns_shifted_copy(restore_small):
    x = torch.randn(4, 16, 2, 2)
    with torch.no_grad():
        out = TemporalShift(None, 2, fold_div=8)(x)
    assert torch.equal(out, temporal_shift(x, 2, fold_div=8))
    assert out.data_ptr() != x.data_ptr()


def test_restore_path_only_while_it_pays(restore_small):
    """Three passes over the moved channels beat one copy of all only up to a third moving."""
    x = torch.randn(4, 48, 2, 2)
    assert TemporalShift(None, 2, fold_div=8)._restorable_fold(x) == 6  # 1/4 moves
    assert TemporalShift(None, 2, fold_div=6)._restorable_fold(x) == 8  # 1/3
    assert TemporalShift(None, 2, fold_div=4)._restorable_fold(x) == 0  # 1/2: copy
    assert TemporalShift(None, 2, fold_div=4, direction="unidirectional")._restorable_fold(x)
    TemporalShift.restore_min_elements = x.numel() + 1  # and only on big tensors
    assert TemporalShift(None, 2, fold_div=8)._restorable_fold(x) == 0


def test_restore_path_only_at_inference():
    """While autograd records, the out-of-place shift runs (gradients as before)."""
    conv = nn.Conv2d(8, 4, 1)
    module = TemporalShift(conv, 2, fold_div=4)
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    module(x).sum().backward()
    expected = torch.autograd.grad(conv(temporal_shift(x, 2, fold_div=4)).sum(), x)[0]
    assert torch.allclose(x.grad, expected)
    # inference with a bad batch still gets the shift's clear error
    with torch.no_grad(), pytest.raises(ValueError, match="multiple of num_segments"):
        module(torch.randn(3, 8, 3, 3))


def test_restore_path_whole_model_bit_identical(restore_small):
    from timeshift.models.registry import create_model
    from timeshift.ops.shift import set_fast_inference

    model = create_model("tsm_resnet_tiny", num_classes=5, num_segments=4).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    for channels_last in (False, True):
        model.set_channels_last(channels_last)
        with torch.no_grad():
            assert set_fast_inference(model, False) > 0
            copied = model(x)
            set_fast_inference(model, True)
            assert torch.equal(model(x), copied)
