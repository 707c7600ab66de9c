import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_shift(x: torch.Tensor, num_segments: int, fold_div: int, direction: str):
    """Independent slow implementation written straight from DESIGN.md's equations."""
    nt, c, h, w = x.shape
    n = nt // num_segments
    x5 = x.reshape(n, num_segments, c, h, w)
    out = x5.clone()
    fold = c // fold_div
    for t in range(num_segments):
        if direction == "bidirectional":
            out[:, t, :fold] = x5[:, t + 1, :fold] if t + 1 < num_segments else 0
            out[:, t, fold : 2 * fold] = x5[:, t - 1, fold : 2 * fold] if t > 0 else 0
        else:
            out[:, t, :fold] = x5[:, t - 1, :fold] if t > 0 else 0
    return out.reshape(nt, c, h, w)
