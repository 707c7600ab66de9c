"""The compiled shift kernel (_kernels.c) against the PyTorch implementation and the equations."""

import os

import pytest
import torch

from timeshift.ops import native_kernel_available, temporal_shift
from timeshift.ops.shift import native_kernel

from conftest import reference_shift

needs_native = pytest.mark.skipif(
    os.environ.get("TIMESHIFT_NATIVE") == "0", reason="TIMESHIFT_NATIVE=0 switches the kernel off"
)


@needs_native
def test_kernel_is_built():
    # `make test` compiles it; a broken build must not go unnoticed behind the fallback
    assert native_kernel_available()


def _layouts(x):
    return [x.contiguous(), x.contiguous(memory_format=torch.channels_last)]


@needs_native
@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize(
    "shape,t,fold_div",
    [
        ((8, 16, 5, 4), 4, 8),  # small: serial path
        ((12, 13, 3, 3), 3, 4),  # C not divisible by fold_div
        ((6, 24, 2, 7), 6, 3),
        ((5, 8, 2, 2), 1, 8),  # T = 1: shifted channels become zero
        ((6, 4, 3, 3), 3, 2),  # no unshifted channels left (bidirectional)
        ((16, 64, 28, 28), 8, 8),  # large enough for the parallel path
        ((3, 96, 40, 40), 3, 8),  # single video, parallel
    ],
)
def test_matches_pytorch_path_and_equations(direction, shape, t, fold_div):
    for x in _layouts(torch.randn(shape)):
        native = temporal_shift(x, t, fold_div=fold_div, direction=direction)
        with native_kernel(False):
            pytorch = temporal_shift(x, t, fold_div=fold_div, direction=direction)
        assert torch.equal(native, pytorch)
        assert torch.equal(native, reference_shift(x, t, fold_div, direction))
        assert native.stride() == x.stride()


@needs_native
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8]
)
def test_any_dtype(dtype):
    x = (torch.randn(8, 16, 6, 6) * 100).to(dtype)
    for v in _layouts(x):
        assert torch.equal(temporal_shift(v, 4), reference_shift(v, 4, 8, "bidirectional"))


@needs_native
def test_views_with_storage_offset():
    big = torch.randn(10, 16, 4, 4)
    x = big[2:]  # contiguous view that does not start at the storage's beginning
    assert x.storage_offset() > 0
    assert torch.equal(temporal_shift(x, 4), reference_shift(x, 4, 8, "bidirectional"))


@needs_native
@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_gradients_through_kernel(direction):
    for x in _layouts(torch.randn(6, 8, 3, 3, dtype=torch.double)):
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda v: temporal_shift(v, 3, fold_div=4, direction=direction), (x,)
        )


def test_switch_restores_state():
    before = native_kernel_available()
    with native_kernel(False):
        assert not native_kernel_available()
    assert native_kernel_available() == before
