"""Score fusion: two-stream RGB + flow (TSN's 1 : 1.5 on logits, the reference TSM's equal
weights, softmax scores), matching an RGB list with its flow list by video, saved scores fused
later, and the ``timeshift test --flow`` / ``timeshift fuse`` command lines end to end."""

import json
import math

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.formats import Annotations, SampleRecord
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints, evaluate_two_stream
from timeshift.engine.fusion import (
    FusionError,
    ScoreSet,
    align_videos,
    fuse_scores,
    load_scores,
    save_scores,
    video_ids,
)

from conftest import constant_flow, palette_frames, write_flow_folder, write_test_video

CLASSES = ["a", "b"]


def _set(ids, labels, scores, modality="rgb", kind="logits"):
    return ScoreSet(
        list(ids), torch.tensor(labels), list(CLASSES), torch.tensor(scores, dtype=torch.float32),
        kind=kind, modality=modality,
    )  # fmt: skip


RGB = _set(["v1", "v2"], [0, 1], [[2.0, 0.0], [0.0, 1.0]])
FLOW = _set(["v1", "v2"], [0, 1], [[0.0, 3.0], [1.0, 0.0]], modality="flow")


def _softmax2(a: float, b: float) -> tuple[float, float]:
    return math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))


def _close(scores: torch.Tensor, expected) -> bool:
    return torch.allclose(scores.double(), torch.tensor(expected, dtype=torch.double), atol=1e-6)


# -- arithmetic --------------------------------------------------------------------------------


def test_tsn_weights_on_logits_by_default():
    fused = fuse_scores([RGB, FLOW])  # TSN: RGB 1, flow 1.5 (from the modalities), logits
    # (1 * [2, 0] + 1.5 * [0, 3]) / 2.5 and (1 * [0, 1] + 1.5 * [1, 0]) / 2.5
    assert _close(fused.scores, [[0.8, 1.8], [0.6, 0.4]])
    assert (fused.kind, fused.modality) == ("logits", "fused")
    assert fused.meta["fusion"] == {"mode": "logits", "weights": [1.0, 1.5], "sources": [None] * 2}
    # the fusion flips the first video to the flow stream's class: RGB alone says 0
    assert fused.scores.argmax(1).tolist() == [1, 0]


def test_equal_weights_and_softmax():
    equal = fuse_scores([RGB, FLOW], weights=[1, 1])  # the reference TSM's --coeff default
    assert _close(equal.scores, [[1.0, 1.5], [0.5, 0.5]])
    soft = fuse_scores([RGB, FLOW], weights=[1, 1.5], mode="softmax")
    r1, f1 = _softmax2(2, 0), _softmax2(0, 3)
    r2, f2 = _softmax2(0, 1), _softmax2(1, 0)
    expected = [
        [(r1[k] + 1.5 * f1[k]) / 2.5 for k in range(2)],
        [(r2[k] + 1.5 * f2[k]) / 2.5 for k in range(2)],
    ]
    assert _close(soft.scores, expected)
    assert soft.kind == "probabilities"
    assert soft.scores.sum(1).tolist() == pytest.approx([1.0, 1.0])  # a weighted mean
    # probabilities fuse in softmax mode as they are, and refuse the logits mode
    assert fuse_scores([soft, RGB], weights=[1, 1], mode="softmax").scores[0, 0].item() == (
        pytest.approx((expected[0][0] + r1[0]) / 2)
    )
    with pytest.raises(FusionError, match=r"holds probabilities, not logits.*--fuse softmax"):
        fuse_scores([soft, RGB])


def test_fusion_matches_videos_in_any_order():
    flipped = _set(["v2", "v1"], [1, 0], [[1.0, 0.0], [0.0, 3.0]], modality="flow")
    assert fuse_scores([RGB, flipped]).scores.tolist() == fuse_scores([RGB, FLOW]).scores.tolist()


def test_fusion_refusals():
    with pytest.raises(FusionError, match=r"set 2, video 'v2': the labels differ \(1 and 0\)"):
        fuse_scores([RGB, _set(["v1", "v2"], [0, 0], [[0, 0], [0, 0]])])
    with pytest.raises(FusionError, match="'v2' is not in score set 2"):
        fuse_scores([RGB, _set(["v1", "v3"], [0, 1], [[0, 0], [0, 0]])])
    other = ScoreSet(["v1", "v2"], torch.tensor([0, 1]), ["a", "c"], torch.zeros(2, 2))
    with pytest.raises(FusionError, match="other classes"):
        fuse_scores([RGB, other])
    with pytest.raises(FusionError, match="3 fusion weights for 2 score sets"):
        fuse_scores([RGB, FLOW], weights=[1, 1, 1])
    with pytest.raises(FusionError, match="positive sum"):
        fuse_scores([RGB, FLOW], weights=[0, 0])
    with pytest.raises(FusionError, match="mode must be one of"):
        fuse_scores([RGB, FLOW], mode="max")


# -- matching an RGB list and its flow list ----------------------------------------------------


def _ann(paths, root, lines=None):
    records = [
        SampleRecord(f"{root}/{p}", 0, line=n)
        for n, p in zip(lines or range(1, len(paths) + 1), paths, strict=True)
    ]
    return Annotations(records, CLASSES, root=root)


def test_video_ids_are_paths_below_the_root_without_video_extensions():
    ids = video_ids(_ann(["x/v1.mp4", "v2.MKV", "frames/v.3"], "/data/videos"))
    assert ids == ["x/v1", "v2", "frames/v.3"]  # a frame folder's dot is no extension


def test_align_by_relative_path_then_by_name():
    order = align_videos(["x/v1", "y/v2"], ["y/v2", "x/v1"], reference_name="r", other_name="f")
    assert order == [1, 0]
    # absolute lists in two trees: the relative ids differ, the unique last names match
    order = align_videos(
        ["../rgb/v1", "../rgb/v2"], ["../flow/v2", "../flow/v1"], reference_name="r",
        other_name="f",
    )  # fmt: skip
    assert order == [1, 0]


def test_align_names_the_first_mismatching_line():
    with pytest.raises(FusionError, match=r"rgb.txt:3: video 'v3' is not in flow.txt"):
        align_videos(
            ["v1", "v2", "v3"], ["v1", "v2", "v4"], reference_name="rgb.txt",
            other_name="flow.txt", reference_lines=[1, 2, 3],
        )  # fmt: skip
    with pytest.raises(FusionError, match=r"flow.txt:2: video 'v9' is not in rgb.txt"):
        align_videos(
            ["v1"], ["v1", "v9"], reference_name="rgb.txt", other_name="flow.txt",
            other_lines=[1, 2],
        )  # fmt: skip
    with pytest.raises(FusionError, match=r"rgb.txt:2: video 'v1' is listed twice"):
        align_videos(
            ["v1", "v1"], ["v1", "v2"], reference_name="rgb.txt", other_name="flow.txt",
            reference_lines=[1, 2],
        )  # fmt: skip
    with pytest.raises(FusionError, match=r"flow.txt:2: video 'v1' is listed twice"):
        align_videos(
            ["v1", "v2"], ["v1", "v1", "v2"], reference_name="rgb.txt", other_name="flow.txt",
            other_lines=[1, 2, 3],
        )  # fmt: skip


# -- saved scores ------------------------------------------------------------------------------


def test_saved_scores_round_trip_and_fuse_as_directly(tmp_path):
    for s, name in ((RGB, "rgb.npz"), (FLOW, "flow.npz")):
        s.meta = {"checkpoints": [name]}
        save_scores(s, tmp_path / name)
    rgb, flow = load_scores(tmp_path / "rgb.npz"), load_scores(tmp_path / "flow.npz")
    assert (rgb.video_ids, rgb.classes, rgb.kind, flow.modality) == (
        ["v1", "v2"], CLASSES, "logits", "flow",
    )  # fmt: skip
    assert torch.equal(rgb.scores, RGB.scores) and torch.equal(flow.labels, FLOW.labels)
    assert rgb.meta == {"checkpoints": ["rgb.npz"], "source": str(tmp_path / "rgb.npz")}
    assert torch.equal(fuse_scores([rgb, flow]).scores, fuse_scores([RGB, FLOW]).scores)
    (tmp_path / "run").mkdir()
    save_scores(FLOW, tmp_path / "run" / "scores.npz")
    assert load_scores(tmp_path / "run").video_ids == FLOW.video_ids  # a test's output folder
    # metrics of a score set: RGB says [0, 1] (right), the flow [1, 0] (wrong)
    assert (RGB.report()["top1"], FLOW.report()["top1"]) == (1.0, 0.0)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FusionError, match=r"bad\.npz: not a score file"):
        load_scores(tmp_path / "bad.npz")


# -- end to end on tiny checkpoints ------------------------------------------------------------


def _spread(model):
    """A classifier large enough that every video gets its own logits (the init's 0.001 std
    makes them all alike), so a video matched to the wrong one shows."""
    with torch.no_grad():
        fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        fc.weight.mul_(3000)
    return model.eval()


@pytest.fixture(scope="module")
def two_stream(tmp_path_factory, one_thread):
    """An RGB and a flow tsm_resnet_tiny, 4 videos (class = index % 2) and their flow folders."""
    root = tmp_path_factory.mktemp("two_stream")
    meta = {"classes": CLASSES, "input_size": 32, "scale_size": 36}
    torch.manual_seed(1)
    rgb = _spread(timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4))
    flow = _spread(
        timeshift.create_model(
            "tsm_resnet_tiny", num_classes=2, num_segments=4, modality="flow", new_length=2
        )
    )
    paths = {
        "rgb": timeshift.save_model(rgb, root / "rgb.pt", meta=meta),
        "flow": timeshift.save_model(flow, root / "flow.pt", meta=meta),
    }
    frames = palette_frames(9, 36, 36)
    rgb_lines, flow_lines = [], []
    (root / "videos").mkdir()
    for i in range(4):
        write_test_video(root / "videos" / f"v{i}.mkv", np.roll(frames, i, axis=0))
        write_flow_folder(root / "flow" / f"v{i}", np.roll(constant_flow(8, 36, 36), i, axis=0))
        rgb_lines.append(f"v{i}.mkv {i % 2}\n")
        flow_lines.append(f"v{3 - i} 8 {(3 - i) % 2}\n")  # another order: matched by name
    (root / "videos" / "val.txt").write_text("".join(rgb_lines))
    (root / "flow" / "val_flow.txt").write_text("".join(flow_lines))
    return root, paths


def test_two_stream_test_reports_each_stream_and_the_fusion(two_stream, tmp_path):
    root, paths = two_stream
    options = EvalOptions(batch_size=4, workers=0, backend="eager")
    rgb_list, flow_list = root / "videos" / "val.txt", root / "flow" / "val_flow.txt"
    summary = evaluate_two_stream(
        paths["rgb"], rgb_list, paths["flow"], flow_list, options=options,
        output_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    alone = {
        name: evaluate_checkpoints(
            [paths[name]], data, options=options, output_dir=tmp_path / name, progress=False
        )
        for name, data in (("rgb", rgb_list), ("flow", flow_list))
    }
    for name in ("rgb", "flow"):  # each stream as if tested alone
        assert summary["streams"][name]["top1"] == alone[name]["top1"]
    # the fused scores: TSN's weighted mean of the logits saved by the single tests
    rgb, flow = (load_scores(tmp_path / name / "scores.npz") for name in ("rgb", "flow"))
    order = [flow.video_ids.index(v) for v in rgb.video_ids]
    expected = (rgb.scores + 1.5 * flow.scores[order]) / 2.5
    fused = load_scores(tmp_path / "out" / "scores.npz")
    assert fused.video_ids == ["v0", "v1", "v2", "v3"] == rgb.video_ids
    assert torch.allclose(fused.scores, expected, atol=1e-6)
    labels = torch.tensor([0, 1, 0, 1])
    assert summary["top1"] == (expected.argmax(1) == labels).float().mean().item()
    assert summary["fusion"]["weights"] == [1.0, 1.5] and summary["fusion"]["mode"] == "logits"
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["streams"] == summary["streams"] and written["top1"] == summary["top1"]
    for name in ("confusion.png", "predictions.json", "scores_rgb.npz", "scores_flow.npz"):
        assert (tmp_path / "out" / name).is_file()
    assert torch.equal(load_scores(tmp_path / "out" / "scores_rgb.npz").scores, rgb.scores)
    paired_flow = load_scores(tmp_path / "out" / "scores_flow.npz")  # in the RGB list's order
    assert paired_flow.video_ids == rgb.video_ids
    assert torch.equal(paired_flow.scores, flow.scores[order])


def test_two_stream_refuses_lists_that_disagree(two_stream, tmp_path):
    root, paths = two_stream
    lines = (root / "flow" / "val_flow.txt").read_text().splitlines()
    bad = tmp_path / "flow_labels.txt"
    bad.write_text("\n".join([*lines[:2], lines[2].replace(" 1", " 0"), *lines[3:]]) + "\n")
    with pytest.raises(FusionError, match=r"val.txt:2 and .*flow_labels.txt:3 \(video 'v1'\)"):
        evaluate_two_stream(paths["rgb"], root / "videos" / "val.txt", paths["flow"], bad,
                            flow_root=root / "flow", progress=False)  # fmt: skip
    missing = tmp_path / "flow_missing.txt"
    missing.write_text("\n".join(line for line in lines if not line.startswith("v2 ")) + "\n")
    with pytest.raises(FusionError, match=r"val.txt:3: video 'v2' is not in .*flow_missing.txt"):
        evaluate_two_stream(paths["rgb"], root / "videos" / "val.txt", paths["flow"], missing,
                            flow_root=root / "flow", progress=False)  # fmt: skip
    with pytest.raises(
        FusionError, match=r"rgb\.pt is a model of modality 'rgb' where the flow stream"
    ):
        evaluate_two_stream(paths["rgb"], root / "videos" / "val.txt", paths["rgb"],
                            root / "flow" / "val_flow.txt", progress=False)  # fmt: skip


def test_cli_two_stream_then_fuse_saved_scores(two_stream, tmp_path, capsys):
    root, paths = two_stream
    common = ["--workers", "0", "--backend", "eager", "--no-progress"]
    out = tmp_path / "pair"
    status = main([
        "test", str(paths["rgb"]), "--data", str(root / "videos" / "val.txt"),
        "--flow", str(paths["flow"]), "--flow-data", str(root / "flow" / "val_flow.txt"),
        "--output", str(out), "--json", *common,
    ])  # fmt: skip
    assert status == 0
    pair = json.loads(capsys.readouterr().out)
    # the saved streams fused later give the direct fusion, with equal weights what 1 1 gives
    assert main(["fuse", str(out / "scores_rgb.npz"), str(out / "scores_flow.npz"), "--json",
                 "--output", str(tmp_path / "later")]) == 0  # fmt: skip
    later = json.loads(capsys.readouterr().out)
    assert (later["top1"], later["top5"]) == (pair["top1"], pair["top5"])
    assert later["fusion"]["weights"] == [1.0, 1.5]  # from the files' modalities
    assert torch.allclose(
        load_scores(tmp_path / "later" / "scores.npz").scores,
        load_scores(out / "scores.npz").scores,
    )
    assert main(["fuse", str(out / "scores_rgb.npz"), str(out / "scores_flow.npz"),
                 "--fusion-weights", "1", "1", "--fuse", "softmax"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "fused (softmax, 1 : 1)" in text and "scores_flow.npz" in text
    # a half-given pair is refused before any work
    assert main(["test", str(paths["rgb"]), "--data", "x.txt", "--flow", str(paths["flow"])]) == 2
    assert "needs both --flow CHECKPOINT and --flow-data LIST" in capsys.readouterr().err
    # wrong weights are refused before any work (x.txt does not exist: never read)
    assert main(["test", str(paths["rgb"]), "--data", "x.txt", "--flow", str(paths["flow"]),
                 "--flow-data", "y.txt", "--fusion-weights", "1", "2", "3"]) == 2  # fmt: skip
    assert "3 fusion weights for 2 score sets" in capsys.readouterr().err
    assert main(["test", str(paths["rgb"]), "--data", "x.txt", "--fuse", "logits"]) == 2
    assert "need several checkpoints" in capsys.readouterr().err
    assert main(["test", str(paths["rgb"]), "--data", "x.txt", "--early", "--fuse", "logits"]) == 2
    assert "--fuse cannot be combined with --early" in capsys.readouterr().err


def test_cli_ensemble_keeps_softmax_and_takes_fusion_options(two_stream, tmp_path, capsys):
    root, paths = two_stream
    data = str(root / "videos" / "val.txt")
    common = ["--workers", "0", "--backend", "eager", "--no-progress", "--json"]
    assert main(["test", str(paths["rgb"]), "--data", data, "--ensemble", str(paths["rgb"]),
                 "--output", str(tmp_path / "e"), *common]) == 0  # fmt: skip
    capsys.readouterr()
    single = load_scores(tmp_path / "e" / "scores.npz")
    assert single.kind == "probabilities"  # softmax averaged, as before
    assert main(["test", str(paths["rgb"]), "--data", data, "--ensemble", str(paths["rgb"]),
                 "--fuse", "logits", "--fusion-weights", "1", "3",
                 "--output", str(tmp_path / "l"), *common]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["fusion"]["weights"] == [1.0, 3.0]
    logits = load_scores(tmp_path / "l" / "scores.npz")
    assert logits.kind == "logits"
    # the same model twice: the weighted mean of its logits is its logits
    assert torch.allclose(logits.scores.softmax(1), single.scores, atol=1e-6)
