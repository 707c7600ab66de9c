"""Streaming recognition: exact against the offline uni-directional model, caches, errors."""

import pytest
import torch

import timeshift
from timeshift.online import OnlineModule, online_step

from conftest import randomise, to_reference_mobilenet

T = 6


def _uni(name, **kwargs):
    return timeshift.create_model(name, num_classes=5, num_segments=T, direction="unidirectional",
                                  **kwargs).eval()  # fmt: skip


@pytest.mark.parametrize("name", ["tsm_resnet_tiny", "tsm_mobilenet_v2_tiny", "tsm_resnet18"])
def test_frame_by_frame_equals_forward_segments(name):
    model = randomise(_uni(name))
    clip = torch.randn(2, T, 3, 32, 32)
    with torch.no_grad():
        offline = model.forward_segments(clip)
    online = timeshift.OnlineRecognizer(model)
    streamed = torch.stack([online.step(clip[:, t]) for t in range(T)], dim=1)
    assert (streamed - offline).abs().max().item() <= 1e-5


def test_streams_are_independent_and_reset_starts_over():
    model = randomise(_uni("tsm_resnet_tiny"))
    a, b = torch.randn(T, 3, 32, 32), torch.randn(T, 3, 32, 32)
    together = timeshift.OnlineRecognizer(model)
    both = [together.step(torch.stack([a[t], b[t]])) for t in range(T)]
    alone = timeshift.OnlineRecognizer(model)
    single = [alone.step(a[t]) for t in range(T)]
    assert all(torch.allclose(x[0], y, atol=1e-5) for x, y in zip(both, single, strict=True))
    alone.reset()
    assert torch.allclose(alone.step(a[0]), single[0], atol=1e-6)
    with pytest.raises(ValueError, match="reset"):
        alone.step(torch.randn(2, 3, 32, 32))


def test_cache_size_of_the_online_mobilenet():
    model = timeshift.create_model("tsm_mobilenet_v2", num_classes=27, num_segments=1,
                                   direction="unidirectional").eval()  # fmt: skip
    online = timeshift.OnlineRecognizer(model)
    assert online.cache_floats == 0
    online.step(torch.zeros(3, 224, 224))
    assert (len(online.cache), online.cache_floats) == (10, 27_048)  # DESIGN.md
    assert online.cache_bytes == 27_048 * 4


def test_functional_core_and_explicit_caches():
    model = randomise(_uni("tsm_mobilenet_v2_tiny"))
    module = OnlineModule(model)
    cache = module.init_caches(1, 32, 32)
    assert len(cache) == module.num_caches > 0 and all(not c.any() for c in cache)
    clip = torch.randn(1, T, 3, 32, 32)
    outputs = []
    with torch.no_grad():
        for t in range(T):
            logits, cache = online_step(module, clip[:, t], cache)
            outputs.append(logits)
        offline = model.forward_segments(clip)
    assert torch.allclose(torch.stack(outputs, 1), offline, atol=1e-5)


def test_reference_online_demo_checkpoint_streams_the_same():
    source = randomise(_uni("tsm_mobilenet_v2_tiny"))
    demo = {}  # the online demo's bare MobileNetV2 state dict: features.N.conv.K.*, classifier.*
    for k, v in to_reference_mobilenet(source.state_dict()).items():
        k = k.replace(".net.", ".")
        demo["classifier." + k[3:] if k.startswith("fc.") else k.removeprefix("backbone.")] = v
    model = _uni("tsm_mobilenet_v2_tiny")
    timeshift.load_checkpoint(model, demo)
    clip = torch.randn(1, T, 3, 32, 32)
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
    assert bi.step(torch.randn(3, 32, 32)).shape == (3,)
    with pytest.raises(ValueError, match="temporal pooling"):
        timeshift.OnlineRecognizer(_uni("tsm_resnet_tiny", temporal_pool=True))
    with pytest.raises(ValueError, match="non-local"):
        timeshift.OnlineRecognizer(_uni("tsm_resnet_nl_tiny"))


@pytest.mark.parametrize(
    "name,op",
    [
        ("stsm_resnet_tiny", "SpatioTemporalShift"),
        ("tam_resnet_tiny", "TemporalAggregation"),
        ("vsn_resnet_tiny", "VideoShuffle"),
        ("i3d_replace_resnet18", "InflatedConv"),
    ],
)
def test_other_temporal_modules_are_refused_online(name, op):
    model = timeshift.create_model(name, num_classes=3, num_segments=4).eval()
    with pytest.raises(ValueError, match=f"{op} mixes in future frames"):
        timeshift.OnlineRecognizer(model)


def test_inference_path_equals_the_traceable_path():
    # at inference the shift writes into the block input and restores it; with autograd on
    # (and under tracing/export) it concatenates; both give the same logits and caches
    module = OnlineModule(randomise(_uni("tsm_resnet_tiny")))
    frame = torch.randn(2, 3, 32, 32)
    cache = [torch.randn_like(c) for c in module.init_caches(2, 32, 32)]
    before = frame.clone()
    with torch.no_grad():
        fast = module(frame, *cache)
    with torch.enable_grad():
        plain = module(frame, *cache)
    assert all(torch.equal(a, b.detach()) for a, b in zip(fast, plain, strict=True))
    assert torch.equal(frame, before)


def test_streamed_clips_equal_the_offline_model_and_drop_future_differs():
    from timeshift.online import StreamedClips

    clip = torch.randn(3, T, 3, 32, 32)
    uni = randomise(_uni("tsm_resnet_tiny"))
    with torch.no_grad():
        assert torch.allclose(StreamedClips(uni)(clip), uni(clip), atol=1e-5)
    bi = randomise(timeshift.create_model("tsm_resnet_tiny", num_classes=5, num_segments=T))
    with pytest.raises(ValueError, match="drop_future"):
        StreamedClips(bi.eval())
    with torch.no_grad():
        streamed = StreamedClips(bi.eval(), drop_future=True)(clip)
        assert not torch.allclose(streamed, bi(clip), atol=1e-5)  # future channels missing
