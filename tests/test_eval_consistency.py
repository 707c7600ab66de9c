"""Evaluation does not depend on the batch size (reference TSM issue #134: 63.3 -> 43.5 top-1
from a smaller evaluation batch): every score of a checkpoint tested with batch sizes 1 and 7
is the same, on each inference backend and with several views per video."""

import numpy as np
import pytest
import torch

import timeshift
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints
from timeshift.engine.fusion import load_scores

from conftest import palette_frames, write_test_video

T, S = 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("consistency")
    torch.manual_seed(0)
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=T).eval()
    with torch.no_grad():  # a large classifier: every video gets its own logits
        model.fc.weight.mul_(3000)
    meta = {"classes": ["a", "b", "c"], "input_size": S, "scale_size": 36}
    checkpoint = timeshift.save_model(model, root / "m.pt", meta=meta)
    lines = []
    rng = np.random.default_rng(0)
    for i in range(9):  # every video its own frames: a mix-up between videos would show
        noise = rng.integers(-60, 61, size=(10, 40, 48, 3))
        frames = np.clip(palette_frames(10, 40, 48).astype(int) + noise, 0, 255)
        write_test_video(root / f"v{i}.mkv", frames.astype(np.uint8))
        lines.append(f"v{i}.mkv {i % 3}\n")
    (root / "val.txt").write_text("".join(lines))
    return root, checkpoint


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_scores_do_not_depend_on_the_batch_size(data, tmp_path, backend):
    root, checkpoint = data
    scores = {}
    for batch in (1, 7):
        options = EvalOptions(batch_size=batch, workers=0, backend=backend, clips=2, crops=3)
        out = tmp_path / f"b{batch}"
        evaluate_checkpoints([checkpoint], root / "val.txt", options=options, output_dir=out,
                             progress=False)  # fmt: skip
        scores[batch] = load_scores(out / "scores.npz")
    one, seven = scores[1], scores[7]
    assert one.video_ids == seven.video_ids and len(one.video_ids) == 9
    assert one.scores.std(dim=0).min() > 1e-3  # the videos' scores differ from each other
    torch.testing.assert_close(one.scores, seven.scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(one.scores.argmax(1), seven.scores.argmax(1))


def test_test_uses_the_checkpoints_recorded_protocol_unless_told(data, tmp_path, capsys):
    """`test` of a checkpoint that records 2 clips x 3 full-res crops runs that protocol (the
    same scores as asking for it), and any flag overrides it."""
    import json

    from timeshift.cli import main

    root, checkpoint = data
    model = timeshift.load_model(checkpoint)
    meta = {**model.checkpoint_meta, "sampling": {"clips": 2, "crops": 3, "full_res": True}}
    recorded = timeshift.save_model(model, tmp_path / "recorded.pt", meta=meta)
    common = ["--data", str(root / "val.txt"), "--workers", "0", "--backend", "eager", "--json"]
    runs = {}
    for name, path, flags in (
        ("recorded", recorded, []),
        ("asked", checkpoint, ["--clips", "2", "--crops", "3", "--full-res"]),
        ("overridden", recorded, ["--clips", "1", "--crops", "1", "--no-full-res"]),
    ):
        out = tmp_path / name
        assert main(["test", str(path), *common, *flags, "--output", str(out)]) == 0
        summary = json.loads(capsys.readouterr().out.splitlines()[0])
        runs[name] = (summary["protocol"], load_scores(out / "scores.npz").scores)
    protocol, scores = runs["recorded"]
    assert (protocol["clips"], protocol["crops"], protocol["full_res"]) == (2, 3, True)
    torch.testing.assert_close(scores, runs["asked"][1])
    protocol, scores = runs["overridden"]
    assert (protocol["clips"], protocol["crops"], protocol["full_res"]) == (1, 1, False)
    assert not torch.allclose(scores, runs["recorded"][1])
