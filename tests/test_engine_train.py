"""End to end on a tiny generated dataset: train -> test -> predict, resume, errors, DDP.

One 2-epoch run (``trained``) is shared by every test that only reads a finished run; the tests
that need another configuration or a fault train their own short run.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.synthetic import SyntheticSpec, make_synthetic
from timeshift.engine import trainer
from timeshift.engine.config import load_config
from timeshift.engine.trainer import NonFiniteLossError, fit, train_one_epoch


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module trains tiny models: one thread is 3x faster on a busy machine."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = SyntheticSpec(
        videos_per_class=4,
        val_videos_per_class=2,
        size=32,
        frames=8,
        families=("horizontal", "fade"),
    )
    return make_synthetic(tmp_path_factory.mktemp("synth"), spec, progress=False)


def _overrides(dataset, **extra):
    base = {
        "model.name": "tsm_resnet_tiny",
        "model.num_segments": 4,
        "model.dropout": 0.5,
        "data.format": "videos",
        "data.train": str(dataset["train"]),
        "data.val": str(dataset["val"]),
        "data.root": str(dataset["root"]),
        "data.classes": str(dataset["classes"]),
        "data.size": 32,
        "data.scale_size": 32,
        "data.workers": 0,
        "train.epochs": 2,
        "train.batch_size": 4,
        "train.lr": 0.01,
        "train.schedule": "cosine",
        "eval.batch_size": 4,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _fit(dataset, run: Path, **overrides) -> dict:
    return fit(load_config(None, _overrides(dataset, **overrides)), run, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    """A finished 2-epoch run of the default configuration: ``(run directory, fit's result)``."""
    run = tmp_path_factory.mktemp("trained") / "run"
    return run, _fit(dataset, run)


# the split run of test_resume_is_exact: loader worker processes, which must not change a thing
_SPLIT = {"data.workers": 1}


@pytest.fixture(scope="module")
def epoch0(tmp_path_factory, dataset):
    """The run of ``trained`` (with a loader worker) interrupted right after epoch 0 committed."""
    run = tmp_path_factory.mktemp("epoch0") / "run"
    real_end = trainer._end_of_epoch

    def interrupted(*args, **kwargs):
        real_end(*args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_end_of_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(dataset, run, **_SPLIT)
    assert timeshift.load_model(run / "last.pt").checkpoint_meta["epoch"] == 0
    return run


def _test_args(run: Path, dataset, *extra) -> list[str]:
    """``timeshift test`` of ``run``'s last.pt on the validation list, quietly, in-process."""
    return [
        "test",
        str(run / "last.pt"),
        "--data",
        str(dataset["val"]),
        "--root",
        str(dataset["root"]),
        "--no-progress",
        "--workers",
        "0",
        *extra,
    ]


def test_train_test_predict(tmp_path, dataset, trained, capsys):
    run, result = trained
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and "val_top1" in rows[-1]
    assert result["best_val_top1"] == max(r["val_top1"] for r in rows)
    model = timeshift.load_model(run / "best.pt")
    assert model.checkpoint_meta["classes"] == [
        "moving left",
        "moving right",
        "fading in",
        "fading out",
    ]

    out = tmp_path / "test"
    protocol = ["--output", str(out), "--crops", "3", "--clips", "2"]
    assert main(_test_args(run, dataset, *protocol)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples"] == 8 and 0 <= metrics["top1"] <= 1
    # 2 clips x 3 crops is not the 1-view validation of training: its top-1 may differ, but it
    # must be the top-1 of the predictions it wrote
    assert (metrics["protocol"]["clips"], metrics["protocol"]["crops"]) == (2, 3)
    for name in ("per_class.csv", "confusion.csv", "confusion.png", "predictions.json"):
        assert (out / name).is_file()
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 8 and len(predictions[0]["top5"]) == 4
    hits = [p["prediction"] == p["label"] for p in predictions]
    assert metrics["top1"] == pytest.approx(sum(hits) / len(hits))

    capsys.readouterr()
    video_dir = dataset["root"] / "videos" / "val" / "fading_in"
    assert (
        main(
            [
                "predict",
                str(run / "best.pt"),
                str(video_dir),
                "--json",
                "--top-k",
                "2",
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    predicted = json.loads(capsys.readouterr().out)
    assert len(predicted) == 2 and len(predicted[0]["top"]) == 2
    assert abs(sum(e["score"] for e in predicted[0]["top"])) <= 1.0 + 1e-6
    # the default backend (onnxruntime here) and plain PyTorch give the same scores
    common = [str(run / "best.pt"), str(video_dir), "--json", "--no-progress", "--workers", "0"]
    assert main(["predict", *common, "--backend", "eager", "--format", "contiguous"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main(["predict", *common, "--backend", "onnxruntime"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    for e, o in zip(eager, onnx, strict=True):
        assert [t["index"] for t in e["top"]] == [t["index"] for t in o["top"]]
        assert [t["score"] for t in e["top"]] == pytest.approx(
            [t["score"] for t in o["top"]], abs=1e-4
        )


def test_ensemble_matches_single_model_when_duplicated(tmp_path, dataset, trained):
    run, _ = trained
    args = _test_args(run, dataset)
    single = main([*args, "--output", str(tmp_path / "a")])
    double = main([*args, "--output", str(tmp_path / "b"), "--ensemble", str(run / "last.pt")])
    assert single == double == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["top1"] == b["top1"] and len(b["checkpoints"]) == 2


def test_early_recognition(tmp_path, dataset, trained, capsys):
    args = _test_args(trained[0], dataset)
    assert main([*args, "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args, "--early", "--early-steps", "4", "--output", str(tmp_path / "e")]) == 0
    assert "early.csv" in capsys.readouterr().out
    rows = json.loads((tmp_path / "e" / "early.json").read_text())
    assert [r["observed"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert rows[-1]["top1"] == full["top1"]  # all of the video: the ordinary test
    csv_lines = (tmp_path / "e" / "early.csv").read_text().splitlines()
    assert csv_lines[0].startswith("observed,top1") and len(csv_lines) == 5
    assert (tmp_path / "e" / "early.png").stat().st_size > 1000


def test_online_test_of_uni_and_bidirectional_models(tmp_path, dataset, trained, capsys):
    _fit(
        dataset, tmp_path / "uni", **{"train.epochs": 1, "model.kwargs.direction": "unidirectional"}
    )
    uni = _test_args(tmp_path / "uni", dataset, "--json")
    assert main(uni) == 0
    offline = json.loads(capsys.readouterr().out)
    assert main([*uni, "--online"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == offline["top1"]
    bi = _test_args(trained[0], dataset, "--json")  # the default direction: bidirectional
    assert main([*bi, "--online"]) == 2
    assert "drop_future" in capsys.readouterr().err
    assert main([*bi, "--drop-future"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["top1"] <= 1


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_resume_is_exact(tmp_path, dataset, trained, epoch0):
    # the 2-epoch run of ``trained``, interrupted right after epoch 0's checkpoint, resumed
    split = _copy(epoch0, tmp_path)
    cfg = load_config(None, _overrides(dataset, **_SPLIT))
    fit(cfg, split, resume=split / "last.pt", progress=False)

    a = timeshift.load_model(trained[0] / "last.pt").state_dict()
    b = timeshift.load_model(split / "last.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (split / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path, dataset, epoch0, monkeypatch
):
    real = trainer.F.cross_entropy

    def exploding(logits, labels):
        return real(logits, labels) * float("nan")  # from the first step of the resumed epoch 1

    monkeypatch.setattr(trainer.F, "cross_entropy", exploding)
    run = _copy(epoch0, tmp_path)
    cfg = load_config(None, _overrides(dataset, **_SPLIT))
    with pytest.raises(NonFiniteLossError, match="epoch 1, iteration 0"):
        fit(cfg, run, resume=run / "last.pt", progress=False)
    assert timeshift.load_model(run / "last.pt").checkpoint_meta["epoch"] == 0


class _Batches(list):
    """A loader: a list of ``(clips, labels)`` batches."""


def _batches(sizes, *, classes=3):
    return _Batches((torch.randn(n, 4, 3, 32, 32), torch.randint(classes, (n,))) for n in sizes)


def _tiny_training(sizes):
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return (model, _batches(sizes), optimizer, scheduler, scaler)


def test_epoch_loss_is_the_mean_of_the_step_losses(monkeypatch):
    """The loss is summed on the device and read at log steps only; the epoch's loss is still
    exactly the batch-weighted mean of every step's ``loss.item()``."""
    real, steps = trainer.F.cross_entropy, []

    def recording(logits, labels):
        loss = real(logits, labels)
        steps.append((loss.detach().clone(), labels.shape[0]))
        return loss

    monkeypatch.setattr(trainer.F, "cross_entropy", recording)
    sizes = [3, 2, 3, 1, 3]  # uneven batches: a plain mean of the losses would differ
    stats = train_one_epoch(
        *_tiny_training(sizes), device=torch.device("cpu"), epoch=0, log_every=2, progress=False
    )
    total = 0.0
    for loss, batch in steps:
        total += loss.item() * batch  # what the loop did before, step by step
    assert len(steps) == len(sizes)
    assert stats.loss == total / sum(sizes)


def _host_reads(monkeypatch, sizes, *, log_every: int) -> int:
    """``Tensor.item`` / ``Tensor.__bool__`` calls (host syncs on a GPU) in one epoch."""
    training = _tiny_training(sizes)
    counted = {"n": 0}
    for name in ("item", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            counted["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    train_one_epoch(
        *training, device=torch.device("cpu"), epoch=0, log_every=log_every, progress=False
    )
    monkeypatch.undo()
    return counted["n"]


def test_loss_is_read_only_at_log_steps(monkeypatch):
    # log steps: the first and the last, whatever the length of the epoch
    short = _host_reads(monkeypatch, [2] * 2, log_every=100)
    long = _host_reads(monkeypatch, [2] * 6, log_every=100)
    assert long == short


def test_training_survives_bad_samples(tmp_path, dataset):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 30)
    listing = tmp_path / "train.txt"
    listing.write_text(dataset["train"].read_text() + f"{broken} 0\n")
    _fit(dataset, tmp_path / "run", **{"data.train": str(listing), "train.epochs": 1})
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["skipped_samples"] >= 1


def test_cli_errors(tmp_path, dataset, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  format: videos\n")
    assert main(["train", str(config), "--output", str(tmp_path / "x")]) == 2
    assert "missing config key(s) ['model.name']" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(config),
                "--set",
                "model.name=tsm_resnet_tiny",
                "model.colour=red",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "colour" in capsys.readouterr().err
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"\x00" * 64)
    assert main(["test", str(bad_ckpt), "--data", str(dataset["val"]), "--no-progress"]) == 2
    assert "bad.pt" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert (
        main(
            [
                "train",
                "synthetic-tsm",
                "--output",
                str(tmp_path / "y"),
                "--set",
                *_overrides(dataset, **{"data.train": str(empty)}),
            ]
        )
        == 2
    )
    assert "empty" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, dataset):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "timeshift",
        "train",
        "synthetic-tsm",
        "--output",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        *_overrides(dataset, **{"train.batch_size": 2}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # written by rank 0 only
    model = timeshift.load_model(out / "last.pt")
    assert model.checkpoint_meta["epoch"] == 1
    # only rank 0 reports, with the real best score (rank 1 used to print -1.0000)
    summaries = [line for line in done.stdout.splitlines() if line.startswith("done:")]
    best = max(json.loads(r).get("val_top1", -1.0) for r in rows)
    assert summaries == [f"done: best top-1 {best:.4f}; checkpoints in {out} (last.pt, best.pt)"]
    # channels_last weights and DDP's gradient buckets agree (no copy per step, no warning)
    assert "Grad strides do not match bucket view strides" not in done.stderr


@pytest.mark.slow
def test_demo_writes_the_comparison(tmp_path):
    from timeshift.engine.demo import run_demo

    overrides = [
        "train.epochs=1",
        "data.synthetic.videos_per_class=2",
        "data.synthetic.val_videos_per_class=1",
        "data.synthetic.size=32",
        "data.synthetic.frames=8",
        "data.synthetic.families=[horizontal,fade]",
        f"data.synthetic.cache_dir={tmp_path / 'cache'}",
        "data.workers=0",
        "train.batch_size=2",
        "eval.batch_size=2",
    ]
    results = run_demo(tmp_path / "demo", progress=False, overrides=overrides)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [m["name"] for m in saved["models"]] == ["TSN", "TSM"]
    tsn, tsm = saved["models"]
    assert tsn["params"] == tsm["params"] and tsn["macs"] == tsm["macs"]  # the shift is free
    for m in saved["models"]:
        assert 0 <= m["top1"] <= 1 and m["latency_ms"] > 0
    for name in ("results.png", "curves_tsn.png", "curves_tsm.png", "confusion_tsm.png"):
        assert (tmp_path / "demo" / name).is_file()
    from timeshift.engine.demo import format_results

    table = format_results(results)
    assert "TSN vs TSM" in table and f"{tsm['top1']:7.3f}" in table
    assert results["models"][1]["top1"] == tsm["top1"]
