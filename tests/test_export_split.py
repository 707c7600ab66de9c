"""The split-stream graphs (online and offline): the same function as the model with no channel
slicing or concatenation of the residual stream, and the exporter's choice of them."""

import onnx
import pytest
import torch

import timeshift
from timeshift.export import ExportError, OnnxOnlineRecognizer, OnnxRecognizer, export_model
from timeshift.export.split import split_clips, split_stream
from timeshift.online import OnlineModule

from conftest import randomise

T, S = 4, 32

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name, **kwargs):
    kwargs.setdefault("direction", "unidirectional")
    model = timeshift.create_model(name, num_classes=5, num_segments=T, **kwargs)
    return randomise(model).eval()


def _detector(name, **kwargs):
    from timeshift.detection import create_detector

    model = create_detector(name, num_classes=3, num_segments=T, direction="unidirectional",
                            fpn_channels=8, head_channels=8, **kwargs)  # fmt: skip
    return randomise(model).eval()


CASES = {  # basic blocks; bottlenecks with a downsample in every stage; inverted residuals
    "basic": lambda: _model("tsm_resnet_tiny"),
    "bottleneck": lambda: _model("tsm_resnet_nl_tiny", non_local=False),
    "mobilenet_v2": lambda: _model("tsm_mobilenet_v2_tiny"),
    # detectors: the pyramid reads the split outputs of several stages
    "detector": lambda: _detector("tsm_resnet_tiny"),
    "detector_stride8": lambda: _detector("tsm_resnet_nl_tiny", non_local=False, out_stride=8),
    "detector_mobilenet_v2": lambda: _detector("tsm_mobilenet_v2_tiny"),
}
RECOGNIZERS = [case for case in CASES if not case.startswith("detector")]


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_split_stream_computes_the_online_module(case):
    online = OnlineModule(CASES[case]())
    split = split_stream(online, align=1)
    assert split is not None
    expected = online.init_caches(2, S, S)
    got = [c.clone() for c in expected]
    for _ in range(3):  # chained: the split graph's caches feed its next frame
        frame = torch.randn(2, 3, S, S)
        logits, *expected = online(frame, *expected)
        split_logits, *got = split(frame, *got)
        assert (split_logits - logits).abs().max().item() < 1e-5
        assert len(got) == len(expected)
        for e, g in zip(expected, got, strict=True):
            assert g.shape == e.shape
            assert (g - e).abs().max().item() <= 1e-5 * max(1.0, e.abs().max().item())


def _op_types(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_split_graph_has_no_channel_slicing(tmp_path, exporter):
    model = CASES["bottleneck"]()
    plain = export_model(
        model, tmp_path / "plain.onnx", online=True, split=False, exporter=exporter, size=S
    )
    split = export_model(
        model, tmp_path / "split.onnx", online=True, split=True, exporter=exporter, size=S
    )
    assert plain.meta["graph"] == "concat" and split.meta["graph"] == "split"
    assert split.inputs == plain.inputs and split.outputs == plain.outputs
    assert split.meta["cache_shapes"] == plain.meta["cache_shapes"]
    plain_ops, split_ops = _op_types(tmp_path / "plain.onnx"), _op_types(tmp_path / "split.onnx")
    assert plain_ops.count("Concat") >= plain.meta["fold_div"].__len__()
    assert not {"Slice", "Split", "Gather"} & set(split_ops)
    assert split_ops.count("Concat") <= 1  # the pooled features of the last stage's two parts


def test_split_graph_streams_like_pytorch(tmp_path):
    model = CASES["bottleneck"]()
    export_model(model, tmp_path / "m.onnx", online=True, split=True, dynamic_batch=True, size=S)
    runner = OnnxOnlineRecognizer(tmp_path / "m.onnx")
    reference = timeshift.OnlineRecognizer(model)
    clip = torch.randn(3, T, 3, S, S)  # three streams at once
    with torch.no_grad():
        offline = model.forward_segments(clip)
    for t in range(T):
        got = runner.step(clip[:, t])
        assert (got - reference.step(clip[:, t])).abs().max().item() < 1e-4
        assert (got - offline[:, t]).abs().max().item() < 1e-4
    runner.reset()
    assert (runner.step(clip[:, 0]) - offline[:, 0]).abs().max().item() < 1e-4


def test_split_is_chosen_only_where_it_pays(tmp_path):
    # 8-channel parts (the runtime's block) are split by default; MobileNetV2-tiny's parts
    # (e.g. 1 + 7 channels) are not, and neither is a bi-directional model streamed
    # with its future dropped (its shifted channels are not all cached)
    wide = timeshift.create_model(
        "tsm_resnet_tiny",
        num_classes=5,
        num_segments=T,
        direction="unidirectional",
        widths=(64, 64, 64, 64),
        stem_width=64,
    )
    assert (
        export_model(wide.eval(), tmp_path / "a.onnx", online=True, size=S).meta["graph"] == "split"
    )
    mbv2 = CASES["mobilenet_v2"]()
    assert export_model(mbv2, tmp_path / "b.onnx", online=True, size=S).meta["graph"] == "concat"
    bidirectional = _model("tsm_resnet_tiny", direction="bidirectional")
    assert split_stream(OnlineModule(bidirectional, drop_future=True), align=1) is None
    with pytest.raises(ExportError, match="split-stream"):
        export_model(
            bidirectional, tmp_path / "c.onnx", online=True, drop_future=True, split=True, size=S
        )
    assert not (tmp_path / "c.onnx").exists()


# -- offline: the whole clip, bi- or uni-directional --------------------------------------------


@pytest.mark.parametrize("case", RECOGNIZERS)
@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@torch.no_grad()
def test_split_clips_computes_the_model(case, direction):
    model = CASES[case]() if direction == "unidirectional" else None
    if model is None:
        name = {"basic": "tsm_resnet_tiny", "bottleneck": "tsm_resnet_nl_tiny",
                "mobilenet_v2": "tsm_mobilenet_v2_tiny"}[case]  # fmt: skip
        kwargs = {"non_local": False} if case == "bottleneck" else {}
        model = _model(name, direction=direction, **kwargs)
    split = split_clips(model, align=1)
    assert split is not None
    clips = torch.randn(2, T, 3, S, S)
    assert (split(clips) - model(clips)).abs().max().item() < 1e-5


def test_split_clips_export(tmp_path):
    model = _model("tsm_resnet_nl_tiny", non_local=False, direction="bidirectional")
    plain = export_model(model, tmp_path / "plain.onnx", split=False, size=S, exporter="legacy")
    split = export_model(model, tmp_path / "split.onnx", split=True, size=S, exporter="legacy")
    assert plain.meta["graph"] == "concat" and split.meta["graph"] == "split"
    export_model(
        model, tmp_path / "dynamic.onnx", split=True, dynamic_batch=True, size=S, exporter="legacy"
    )  # verified against eager PyTorch at another batch size too
    runner = OnnxRecognizer(tmp_path / "dynamic.onnx")
    clips = torch.randn(3, T, 3, S, S)
    with torch.no_grad():
        assert (runner(clips) - model(clips)).abs().max().item() < 1e-4
    # the stream's tails are never sliced: only the shifted heads are
    plain_ops, split_ops = _op_types(tmp_path / "plain.onnx"), _op_types(tmp_path / "split.onnx")
    assert split_ops.count("Concat") < plain_ops.count("Concat")
    # unsupported offline models keep the plain graph, or fail loudly when forced
    pooled = _model("tsm_resnet_tiny", direction="bidirectional", temporal_pool=True)
    assert split_clips(pooled, align=1) is None
    with pytest.raises(ExportError, match="split-stream"):
        export_model(pooled, tmp_path / "p.onnx", split=True, size=S)
