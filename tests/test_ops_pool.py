import pytest
import torch

from timeshift.ops import TemporalPool, pooled_segments, temporal_pool


@pytest.mark.parametrize("t,expected", [(8, 4), (4, 2), (5, 3), (1, 1)])
def test_pooled_segments(t, expected):
    assert pooled_segments(t) == expected
    x = torch.randn(2 * t, 3, 4, 4)
    assert temporal_pool(x, t).shape == (2 * expected, 3, 4, 4)


def test_values_are_max_over_kernel_3_stride_2():
    x = torch.randn(2 * 8, 3, 2, 2)
    out = temporal_pool(x, 8).view(2, 4, 3, 2, 2)
    x5 = x.view(2, 8, 3, 2, 2)
    for i in range(4):
        window = x5[:, max(2 * i - 1, 0) : 2 * i + 2]
        assert torch.equal(out[:, i], window.amax(dim=1))


def test_channels_last_kept_and_wrapper():
    x = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert temporal_pool(x, 4).is_contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(4, 2, 1)
    module = TemporalPool(conv, 4)
    assert set(module.state_dict()) == {"net.weight", "net.bias"}
    assert torch.allclose(module(x), conv(temporal_pool(x, 4)))


def test_bad_batch_raises():
    with pytest.raises(ValueError, match="multiple of T=4"):
        temporal_pool(torch.randn(6, 4, 2, 2), 4)
