"""Streaming recognition: every tiny causal model of the registry streams exactly like its offline
model (in PyTorch and exported to ONNX), the others are refused naming the op; caches, errors."""

import functools

import pytest
import torch

import timeshift
from timeshift.export import OnnxOnlineRecognizer, export_model
from timeshift.online import OnlineModule, online_step
from timeshift.ops import NotCausalError, TemporalOp, TemporalShift

from conftest import randomise, to_reference_mobilenet

T, S = 4, 32
CAUSAL = timeshift.list_models(tags=["tiny", "causal"])
NOT_CAUSAL = sorted(set(timeshift.list_models(tags=["tiny"])) - set(CAUSAL))

pytestmark = pytest.mark.usefixtures("one_thread")


def _uni(name, **kwargs):
    return timeshift.create_model(name, num_classes=5, num_segments=T, direction="unidirectional",
                                  **kwargs).eval()  # fmt: skip


@functools.cache
def _causal(name):
    """``name`` built causal: uni-directional where the model takes a direction (TSN has no
    temporal op to direct); one randomised model per name for the whole module."""
    try:
        model = _uni(name)
    except TypeError as exc:  # the option does not apply to this model
        if "direction" not in str(exc):
            raise
        model = timeshift.create_model(name, num_classes=5, num_segments=T).eval()
    return randomise(model)


def _has_shift(model):
    return any(isinstance(m, TemporalShift) for m in model.modules())


def test_the_registry_has_tiny_causal_and_non_causal_models():
    # the parametrised tests below iterate these lists: they must not be empty
    assert {"tsm_resnet_tiny", "tsm_mobilenet_v2_tiny"} <= set(CAUSAL)
    assert "tsm_resnet_nl_tiny" in NOT_CAUSAL and len(NOT_CAUSAL) >= 5


@pytest.mark.parametrize("name", CAUSAL)
def test_frame_by_frame_equals_forward_segments(name):
    model = _causal(name)
    clip = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        offline = model.forward_segments(clip)
    online = timeshift.OnlineRecognizer(model)
    streamed = torch.stack([online.step(clip[:, t]) for t in range(T)], dim=1)
    assert (streamed - offline).abs().max().item() <= 1e-5
    assert (online.cache_floats > 0) == _has_shift(model)


@pytest.mark.parametrize("name", CAUSAL)
def test_online_onnx_streams_like_the_pytorch_model(tmp_path, name):
    model = _causal(name)
    result = export_model(model, tmp_path / "online.onnx", online=True, exporter="legacy", size=S)
    names = [f"cache_{i}" for i in range(len(result.meta["cache_shapes"]))]
    assert result.inputs == ["frame", *names] and result.outputs[0] == "logits"
    assert result.outputs[1:] == [f"new_{n}" for n in names]
    onnx_online = OnnxOnlineRecognizer(tmp_path / "online.onnx")
    torch_online = timeshift.OnlineRecognizer(model)
    clip = torch.randn(1, T, 3, S, S)
    with torch.no_grad():
        offline = model.forward_segments(clip)[0]
    for t in range(T):
        got = onnx_online.step(clip[0, t])
        assert (got - torch_online.step(clip[0, t])).abs().max().item() < 1e-4
        assert (got - offline[t]).abs().max().item() < 1e-4
    assert onnx_online.cache_floats == torch_online.cache_floats
    assert (onnx_online.cache_floats > 0) == _has_shift(model)
    assert onnx_online.cache_bytes == torch_online.cache_bytes
    onnx_online.reset()
    assert (onnx_online.step(clip[0, 0]) - offline[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NOT_CAUSAL)
def test_models_that_read_the_future_are_refused_naming_the_op(name):
    model = _causal(name)  # even built causal where it can be, some op reads the future
    op = next(m for m in model.modules() if isinstance(m, TemporalOp) and not m.causal)
    with pytest.raises(NotCausalError) as refused:
        timeshift.OnlineRecognizer(model)
    message = str(refused.value)
    assert message.startswith(op.not_causal_reason()) and type(op).__name__ in message
    assert "(at backbone." in message  # where the op is


def test_streams_are_independent_and_reset_starts_over():
    model = _causal("tsm_resnet_tiny")
    a, b = torch.randn(T, 3, S, S), torch.randn(T, 3, S, S)
    together = timeshift.OnlineRecognizer(model)
    both = [together.step(torch.stack([a[t], b[t]])) for t in range(T)]
    alone = timeshift.OnlineRecognizer(model)
    single = [alone.step(a[t]) for t in range(T)]
    assert all(torch.allclose(x[0], y, atol=1e-5) for x, y in zip(both, single, strict=True))
    alone.reset()
    assert torch.allclose(alone.step(a[0]), single[0], atol=1e-6)
    with pytest.raises(ValueError, match="reset"):
        alone.step(torch.randn(2, 3, S, S))


def test_cache_size_of_the_online_mobilenet():
    model = timeshift.create_model("tsm_mobilenet_v2", num_classes=27, num_segments=1,
                                   direction="unidirectional").eval()  # fmt: skip
    online = timeshift.OnlineRecognizer(model)
    assert online.cache_floats == 0
    online.step(torch.zeros(3, 224, 224))
    assert (len(online.cache), online.cache_floats) == (10, 27_048)  # DESIGN.md
    assert online.cache_bytes == 27_048 * 4


def test_functional_core_and_explicit_caches():
    model = _causal("tsm_mobilenet_v2_tiny")
    module = OnlineModule(model)
    cache = module.init_caches(1, S, S)
    assert len(cache) == module.num_caches > 0 and all(not c.any() for c in cache)
    clip = torch.randn(1, T, 3, S, S)
    outputs = []
    with torch.no_grad():
        for t in range(T):
            logits, cache = online_step(module, clip[:, t], cache)
            outputs.append(logits)
        offline = model.forward_segments(clip)
    assert torch.allclose(torch.stack(outputs, 1), offline, atol=1e-5)


def test_the_online_module_calls_the_models_own_head():
    # the head is the model's: another per-frame head (a detector's) streams the same way
    model = _causal("tsm_resnet_tiny")
    module = OnlineModule(model)
    calls = []
    module.model.forward_frame_head = lambda feats: calls.append(feats.shape) or feats.sum((2, 3))
    with torch.no_grad():
        out, *_ = module(torch.randn(2, 3, S, S))
    assert calls == [(2, model.num_features, 1, 1)] and out.shape == (2, model.num_features)
    with pytest.raises(TypeError, match="forward_frames"):
        OnlineModule(torch.nn.Conv2d(3, 3, 1))


def test_reference_online_demo_checkpoint_streams_the_same():
    source = randomise(_uni("tsm_mobilenet_v2_tiny"))
    demo = {}  # the online demo's bare MobileNetV2 state dict: features.N.conv.K.*, classifier.*
    for k, v in to_reference_mobilenet(source.state_dict()).items():
        k = k.replace(".net.", ".")
        demo["classifier." + k[3:] if k.startswith("fc.") else k.removeprefix("backbone.")] = v
    model = _uni("tsm_mobilenet_v2_tiny")
    timeshift.load_checkpoint(model, demo)
    clip = torch.randn(1, T, 3, S, S)
    with torch.no_grad():
        expected = source.forward_segments(clip)[0]
    online = timeshift.OnlineRecognizer(model)
    got = torch.stack([online.step(clip[0, t]) for t in range(T)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_models_that_need_the_future_are_refused():
    with pytest.raises(ValueError, match="unidirectional"):
        timeshift.OnlineRecognizer(timeshift.create_model("tsm_resnet_tiny", num_classes=3,
                                                          num_segments=4).eval())  # fmt: skip
    bi = timeshift.OnlineRecognizer(
        timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=4).eval(),
        drop_future=True,
    )
    assert bi.step(torch.randn(3, S, S)).shape == (3,)
    with pytest.raises(ValueError, match="temporal pooling"):
        timeshift.OnlineRecognizer(_uni("tsm_resnet_tiny", temporal_pool=True))
    with pytest.raises(ValueError, match="non-local"):
        timeshift.OnlineRecognizer(_uni("tsm_resnet_nl_tiny"))


def test_inference_path_equals_the_traceable_path():
    # at inference the shift writes into the block input and restores it; with autograd on
    # (and under tracing/export) it concatenates; both give the same logits and caches
    module = OnlineModule(_causal("tsm_resnet_tiny"))
    frame = torch.randn(2, 3, S, S)
    cache = [torch.randn_like(c) for c in module.init_caches(2, S, S)]
    before = frame.clone()
    with torch.no_grad():
        fast = module(frame, *cache)
    with torch.enable_grad():
        plain = module(frame, *cache)
    assert all(torch.equal(a, b.detach()) for a, b in zip(fast, plain, strict=True))
    assert torch.equal(frame, before)


def test_streamed_clips_equal_the_offline_model_and_drop_future_differs():
    from timeshift.online import StreamedClips

    clip = torch.randn(3, T, 3, S, S)
    uni = _causal("tsm_resnet_tiny")
    with torch.no_grad():
        assert torch.allclose(StreamedClips(uni)(clip), uni(clip), atol=1e-5)
    bi = randomise(timeshift.create_model("tsm_resnet_tiny", num_classes=5, num_segments=T))
    with pytest.raises(ValueError, match="drop_future"):
        StreamedClips(bi.eval())
    with torch.no_grad():
        streamed = StreamedClips(bi.eval(), drop_future=True)(clip)
        assert not torch.allclose(streamed, bi(clip), atol=1e-5)  # future channels missing
