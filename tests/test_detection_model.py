"""The detector: backbones read at several scales, CenterNet targets and decoding, the online
form (frame by frame == the offline causal model on the whole clip) and its ONNX export."""

import numpy as np
import pytest
import torch

import timeshift
from timeshift.detection.loss import center_loss, center_targets
from timeshift.detection.model import (
    Detector,
    backbone_levels,
    create_detector,
    decode_maps,
    gaussian_radius,
)
from timeshift.detection.online import OnlineDetector
from timeshift.detection.structures import FrameBoxes
from timeshift.export import export_model, read_export_meta
from timeshift.ops.protocol import NotCausalError

T, S, K = 4, 64, 3


def _detector(name="tsm_resnet_tiny", **kwargs):
    torch.manual_seed(0)
    if name.startswith("tsm"):
        kwargs.setdefault("direction", "unidirectional")
    return create_detector(name, num_classes=K, num_segments=T, **kwargs).eval()


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("tsm_resnet_tiny", [(4, 8), (8, 16), (16, 32), (32, 64)]),
        ("tsm_mobilenet_v2_tiny", [(4, 8), (8, 16), (16, 64)]),
    ],
)
def test_backbone_levels_match_the_feature_maps(name, levels):
    detector = _detector(name)
    assert backbone_levels(detector.backbone) == levels
    with torch.no_grad():
        maps = detector.forward_levels(torch.randn(T, 3, S, S))
    assert [(S // m.shape[-1], m.shape[1]) for m in maps] == levels
    assert detector(torch.randn(2, T, 3, S, S)).shape == (2, T, K + 4, S // 4, S // 4)


def test_full_size_detectors_build_on_meta():
    with torch.device("meta"):
        r50 = create_detector("tsm_resnet50", num_classes=30, num_segments=8)
        mbv2 = create_detector("tsm_mobilenet_v2", num_classes=30, num_segments=8)
    assert backbone_levels(r50.backbone)[-1] == (32, 2048)
    assert backbone_levels(mbv2.backbone)[-1] == (32, 1280)
    assert [s for s, _ in backbone_levels(mbv2.backbone)] == [4, 8, 16, 32]


def test_bad_detector_options():
    with pytest.raises(ValueError, match=r"out_stride must be one of the backbone's strides"):
        create_detector("tsm_resnet_tiny", num_classes=K, num_segments=T, out_stride=2)
    with pytest.raises(ValueError, match="at least one class"):
        create_detector("tsm_resnet_tiny", num_classes=0, num_segments=T)
    with pytest.raises(ValueError, match="video backbone"):
        create_detector("blvnet_tam_tiny", num_classes=K, num_segments=T)
    detector = _detector()
    with pytest.raises(ValueError, match=r"expected a clip batch .* got shape \(1, 3, 3, 64, 64\)"):
        detector(torch.randn(1, 3, 3, S, S))


def test_online_detector_equals_the_offline_causal_model():
    detector = _detector()
    clip = torch.randn(1, T, 3, S, S)
    with torch.no_grad():
        offline_maps = detector(clip)[0]
    offline = detector.decode(offline_maps)
    online = OnlineDetector(detector)
    for t in range(T):
        assert torch.allclose(online.step(clip[0, t]), offline_maps[t], atol=1e-5)
    online.reset()
    for t in range(T):
        found = online.detect(clip[0, t])
        assert len(found) == len(offline[t]) > 10  # every peak of an untrained heatmap
        np.testing.assert_allclose(found.boxes, offline[t].boxes, atol=1e-5)
        np.testing.assert_allclose(found.scores, offline[t].scores, atol=1e-5)
        np.testing.assert_array_equal(found.labels, offline[t].labels)
    # the past matters: the same frame after other frames gives other maps
    online.reset()
    first = online.step(clip[0, 1])
    assert not torch.allclose(first, offline_maps[1], atol=1e-3)


def test_bidirectional_detector_does_not_stream():
    detector = _detector(direction="bidirectional")
    with pytest.raises(NotCausalError, match="future"):
        OnlineDetector(detector)
    tsn = _detector("tsn_resnet_tiny")
    assert OnlineDetector(tsn).module.num_caches == 0  # per frame: nothing to cache


def test_online_detector_exports_with_named_caches(tmp_path):
    detector = _detector()
    detector.checkpoint_meta = {"classes": ["a", "b", "c"], "input_size": S}
    result = export_model(detector, tmp_path / "det.onnx", online=True, size=S)
    caches = [f"cache_{i}" for i in range(4)]
    assert result.inputs == ["frame", *caches]
    assert result.outputs == ["maps", *(f"new_{c}" for c in caches)]
    assert result.max_abs_diff < 1e-4
    meta = read_export_meta(tmp_path / "det.onnx")
    assert meta["task"] == "detection" and meta["classes"] == ["a", "b", "c"]
    # the exported graph streamed frame by frame gives the offline maps
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "det.onnx"))
    clip = torch.randn(1, T, 3, S, S)
    with torch.no_grad():
        offline = detector(clip)[0].numpy()
    state = [np.zeros([1, *shape], np.float32) for shape in meta["cache_shapes"]]
    for t in range(T):
        feed = {"frame": clip[:, t].numpy(), **dict(zip(caches, state, strict=True))}
        maps, *state = session.run(None, feed)
        np.testing.assert_allclose(maps[0], offline[t], atol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    detector = _detector(fpn_channels=16, head_channels=16)
    path = timeshift.save_model(detector, tmp_path / "det.pt", meta={"classes": ["a", "b", "c"]})
    loaded = timeshift.load_model(path).eval()
    assert isinstance(loaded, Detector) and loaded.config["task"] == "detection"
    assert loaded.config["kwargs"] == {"direction": "unidirectional", "fpn_channels": 16,
                                       "head_channels": 16}  # fmt: skip
    clip = torch.randn(1, T, 3, S, S)
    with torch.no_grad():
        assert torch.equal(loaded(clip), detector(clip))


def test_gaussian_radius_is_centernets():
    # a 10x10 object, min_overlap 0.7, CenterNet's three cases worked out by hand:
    # r1 = (20 + sqrt(400 - 4 * 30 / 1.7)) / 2 = 19.07, r2 = (40 + sqrt(1600 - 16 * 30)) / 2 =
    # 36.73, r3 = (-28 + sqrt(784 + 4 * 2.8 * 30)) / 2 = 2.733 (the smallest)
    assert gaussian_radius(10, 10) == pytest.approx((-28 + np.sqrt(784 + 336)) / 2)
    assert gaussian_radius(10, 10) == pytest.approx(2.7332, abs=1e-4)
    assert gaussian_radius(4, 20) < gaussian_radius(8, 20)


def test_targets_and_decoding_recover_the_boxes():
    boxes = np.array([[8, 12, 24, 30], [40.5, 4, 60, 20.5]], dtype=np.float32)
    frame = FrameBoxes(boxes, [2, 0], [5, 6])
    t = center_targets([frame], num_classes=K, size=(16, 16), stride=4)
    heat = t["heatmap"][0]
    assert heat[2].max() == 1 and heat[0].max() == 1 and heat[1].max() == 0
    # centre (16, 21) / 4 = (4, 5.25): cell (4, 5), offset (0, 0.25), size (4, 4.5)
    assert t["cell"].tolist()[0] == 5 * 16 + 4 and heat[2, 5, 4] == 1
    assert torch.allclose(t["offset"][0], torch.tensor([0.0, 0.25]))
    assert torch.allclose(t["size"][0], torch.tensor([4.0, 4.5]))
    # maps that are the targets (heatmap as logits: +-10) decode back to the boxes
    maps = torch.full((1, K + 4, 16, 16), -10.0)
    maps[0, :K] = torch.where(t["heatmap"] == 1, 10.0, -10.0)
    for cell, size, offset in zip(t["cell"], t["size"], t["offset"], strict=True):
        maps[0, K : K + 2].view(2, -1)[:, cell] = size
        maps[0, K + 2 :].view(2, -1)[:, cell] = offset
    (found,) = decode_maps(maps, num_classes=K, stride=4, score_threshold=0.5)
    order = np.argsort(found.labels)[::-1]  # label 2 first, as the ground truth
    np.testing.assert_allclose(found.boxes[order], boxes, atol=1e-4)
    assert found.labels[order].tolist() == [2, 0]
    # the loss of maps that are the targets: a perfect regression, a near-zero heatmap loss
    losses = center_loss(maps, [frame], stride=4)
    assert losses["size"] < 1e-6 and losses["offset"] < 1e-6 and losses["heatmap"] < 1e-3


def test_loss_ignores_flagged_objects_and_counts_frames():
    frame = FrameBoxes([[8, 8, 24, 24], [30, 30, 50, 50]], [0, 1], flags={"ignore": [False, True]})
    t = center_targets([frame], num_classes=K, size=(16, 16), stride=4)
    assert len(t["cell"]) == 1 and t["heatmap"][0, 1].max() == 0
    with pytest.raises(ValueError, match="2 frames of maps but 1 frame targets"):
        center_loss(torch.zeros(2, K + 4, 16, 16), [frame], stride=4)
    with pytest.raises(ValueError, match="object class 5 outside the 3 classes"):
        center_targets([FrameBoxes([[0, 0, 8, 8]], [5])], num_classes=K, size=(16, 16), stride=4)


def test_a_detector_learns_a_box():
    """A few steps on one clip with one object: the loss falls and the box is found."""
    detector = _detector().train()
    clip = torch.zeros(1, T, 3, S, S)
    clip[..., 16:40, 20:36] = 1.0
    target = [FrameBoxes([[20, 16, 36, 40]], [1])] * T
    optimizer = torch.optim.Adam(detector.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = detector.loss(detector(clip), target)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3
    detector.eval()
    with torch.no_grad():
        best = detector.decode(detector(clip))[0]
    assert best.labels[0] == 1
    np.testing.assert_allclose(best.boxes[0], [20, 16, 36, 40], atol=4)
