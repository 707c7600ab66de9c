"""What a bad input gets at inference: predict/test/export/stream and checkpoint loading.

Every test here reproduces a defect of issue 13 (a missing input abandoning the others, a raw
PyTorch error, a silently dropped classifier, an ignored flag, a corrupt cache trusted, NaN in
JSON, a lost evaluation) and checks the class of fault, not only the instance.
"""

import json
import logging
import os
import re
import zipfile

import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.engine import backend as runtime
from timeshift.engine.evaluate import evaluate_checkpoints
from timeshift.engine.metrics import json_dumps
from timeshift.engine.predict import predict_videos
from timeshift.export import read_export_meta
from timeshift.models.checkpoints import CheckpointError, load_model, read_checkpoint

from conftest import palette_frames, to_reference_tsm, write_test_video

T, S = 4, 32
CLASSES = ["red", "green", "blue"]
EAGER = ["--backend", "eager", "--workers", "0", "--no-progress"]


def _tiny(name="tsm_resnet_tiny", classes=3, **kwargs):
    return timeshift.create_model(name, num_classes=classes, num_segments=T, **kwargs).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint of ours (with class names), two good videos and one bad one."""
    d = tmp_path_factory.mktemp("inference")
    meta = {"classes": CLASSES, "input_size": S, "scale_size": S}
    ckpt = timeshift.save_model(_tiny(), d / "m.pt", meta=meta)
    good = [write_test_video(d / f"v{i}.mkv", palette_frames(8, S, S)) for i in range(2)]
    bad = d / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 20)
    return {"dir": d, "ckpt": str(ckpt), "good": good, "bad": str(bad)}


def _write_list(path, entries):
    path.write_text("".join(f"{p} {label}\n" for p, label in entries))
    return str(path)


# -- item 1: predict / test on missing or unreadable inputs --------------------------------------
def test_predict_reports_each_bad_input_and_predicts_the_rest(files, tmp_path):
    missing = str(tmp_path / "missing.mp4")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)  # opening it to decode would block forever
    inputs = [files["good"][0], missing, files["bad"], str(empty_dir), files["good"][1], str(fifo)]
    results = predict_videos(files["ckpt"], inputs, workers=0, backend="eager", progress=False)
    assert [r["path"] for r in results] == inputs
    assert "top" in results[0] and "top" in results[4]
    assert "not a regular file" in results[5]["error"]
    assert "not found" in results[1]["error"] and "missing.mp4" in results[1]["error"]
    # the cause, not only "cannot be decoded"
    assert results[2]["error"] != "cannot be decoded" and "bad.mp4" in results[2]["error"]
    assert "no videos or frames" in results[3]["error"]


def test_predict_cli_exit_status(files, tmp_path, capsys):
    missing = str(tmp_path / "missing.mp4")
    assert main(["predict", files["ckpt"], files["good"][0], missing, *EAGER, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "top" in out[0] and "error" in out[1]
    assert main(["predict", files["ckpt"], missing, files["bad"], *EAGER, "--json"]) == 1
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2 and "no input could be predicted" in captured.err


def test_test_with_no_readable_video_fails_clearly(files, tmp_path, capsys):
    data = _write_list(tmp_path / "val.txt", [(files["bad"], 0), (files["bad"], 1)])
    with pytest.raises(ValueError, match=r"no video .* could be read"):
        evaluate_checkpoints([files["ckpt"]], data, options=_eager_options(), progress=False)
    code = main(["test", files["ckpt"], "--data", data, *EAGER])
    captured = capsys.readouterr()
    assert code != 0 and "could be read" in captured.err and "nan" not in captured.out


def _eager_options(**kwargs):
    from timeshift.engine.evaluate import EvalOptions

    return EvalOptions(workers=0, backend="eager", **kwargs)


# -- item 7: output folders, NaN in JSON ---------------------------------------------------------
def test_json_dumps_writes_null_for_nan():
    text = json_dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": torch.tensor(0.5).item()})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 0.5}


def test_test_outputs_are_valid_json_and_survive_a_failed_write(
    files, tmp_path, monkeypatch, capsys
):
    # one class has no video: its accuracy is NaN and must be written as null
    data = _write_list(tmp_path / "val.txt", [(files["good"][0], 0), (files["good"][1], 0)])
    out = tmp_path / "out"
    summary = evaluate_checkpoints(
        [files["ckpt"]], data, options=_eager_options(), output_dir=out, progress=False
    )
    for name in ("metrics.json", "predictions.json"):
        json.loads((out / name).read_text(), parse_constant=_no_constants)
    assert summary["samples"] == 2
    assert main(["test", files["ckpt"], "--data", data, "--json", *EAGER]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=_no_constants)
    assert printed["per_class"][1] is None  # no video of that class: null, not NaN

    # the folder becomes unwritable after the check: the result is still returned and printed
    from timeshift.engine import evaluate

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot_confusion", full_disk)
    summary = evaluate_checkpoints(
        [files["ckpt"]], data, options=_eager_options(), output_dir=out, progress=False
    )
    assert summary["samples"] == 2 and "No space left" in summary["output_error"]


def _no_constants(name):
    raise AssertionError(f"invalid JSON constant {name}")


def test_unwritable_output_folder_is_refused_before_the_work(files, tmp_path, capsys):
    data = _write_list(tmp_path / "val.txt", [(files["good"][0], 0)])
    # a folder that cannot be created (under a file): fails for root too, unlike chmod
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    code = main(["test", files["ckpt"], "--data", data, "--output", str(blocker / "o"), *EAGER])
    captured = capsys.readouterr()
    assert code == 2 and "cannot write" in captured.err and str(blocker) in captured.err
    assert "top-1" not in captured.out  # refused before the evaluation
    code = main(["export", files["ckpt"], "--output", str(blocker / "m.onnx"), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err and str(blocker) in err


def test_cli_test_keeps_the_result_when_the_outputs_cannot_be_written(
    files, tmp_path, monkeypatch, capsys
):
    from timeshift.engine import evaluate

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot_confusion", full_disk)
    data = _write_list(tmp_path / "val.txt", [(files["good"][0], 0)])
    code = main(["test", files["ckpt"], "--data", data, "--output", str(tmp_path / "o"), *EAGER])
    captured = capsys.readouterr()
    assert code == 1 and "top-1" in captured.out and "No space left" in captured.err


# -- item 2: input validation --------------------------------------------------------------------
def test_recognizer_empty_batch_gives_empty_logits():
    model = _tiny()
    with torch.no_grad():
        assert model(torch.zeros(0, T, 3, S, S)).shape == (0, 3)
        assert model.forward_segments(torch.zeros(0, T, 3, S, S)).shape[0] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8, torch.int64])
def test_recognizer_refuses_other_dtypes_clearly(dtype):
    x = torch.zeros(1, T, 3, S, S, dtype=dtype)
    with pytest.raises(TypeError, match=r"float32"):
        _tiny()(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8])
def test_online_recognizer_refuses_other_dtypes_clearly(dtype):
    from timeshift import OnlineRecognizer

    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=T, direction="unidirectional"
    )
    online = OnlineRecognizer(model.eval())
    with pytest.raises(TypeError, match=r"expected float32 frames .* got "):
        online.step(torch.zeros(3, S, S, dtype=dtype))
    assert online.step(torch.zeros(3, S, S)).shape == (3,)  # nothing was cached by the refusal


def test_recognizer_shape_errors_name_the_expected_shape():
    model = _tiny()
    for shape in [(T, 3, S, S), (1, T + 1, 3, S, S), (1, T, 1, S, S)]:
        with pytest.raises(ValueError, match=rf"\(N, T, C, H, W\) with T={T}.*C=3"):
            model(torch.zeros(shape))


def test_onnx_runner_validates_input(tmp_path):
    from timeshift.export import OnnxRecognizer, export_model

    model = _tiny()
    model.checkpoint_meta = {"input_size": S}
    export_model(model, tmp_path / "m.onnx", dynamic_batch=True, exporter="legacy")
    runner = OnnxRecognizer(tmp_path / "m.onnx")
    assert runner(torch.zeros(0, T, 3, S, S)).shape == (0, 3)
    with pytest.raises(TypeError, match="float"):
        runner(torch.zeros(1, T, 3, S, S, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"T={T}"):
        runner(torch.zeros(1, T + 1, 3, S, S))
    # float64 is converted (documented): same logits as float32
    x = torch.randn(2, T, 3, S, S)
    torch.testing.assert_close(runner(x.double()), runner(x))


# -- item 3: DataParallel prefixes, class-count mismatches --------------------------------------
@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module.module."])
def test_wrapper_prefixed_state_dicts_load(prefix):
    source = _tiny()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    target = _tiny()
    report = timeshift.load_checkpoint(target, state)
    assert report.source == "timeshift" and not report.dropped
    # and a prefixed MMAction2 / reference TSM checkpoint is still recognised as such
    ref = to_reference_tsm(source.state_dict())["state_dict"]
    assert timeshift.load_checkpoint(_tiny(), {prefix + k: v for k, v in ref.items()}).source == (
        "tsm"
    )


def test_class_count_mismatch_is_an_error_for_inference(tmp_path, caplog):
    source = _tiny(classes=7)
    torch.save(to_reference_tsm(source.state_dict()), tmp_path / "ref.pth")
    with pytest.raises(CheckpointError, match=r"7 classes.*3 classes|3 classes.*7 classes"):
        load_model(tmp_path / "ref.pth", name="tsm_resnet_tiny", num_classes=3, num_segments=T)
    # fine-tuning initialisation may drop it, and says both counts
    with caplog.at_level(logging.WARNING):
        report = timeshift.load_checkpoint(_tiny(), tmp_path / "ref.pth", head_mismatch="drop")
    assert report.dropped and "7 classes" in caplog.text and "3 classes" in caplog.text
    with pytest.raises(CheckpointError, match="7 classes"):
        timeshift.load_checkpoint(_tiny(), tmp_path / "ref.pth", head_mismatch="error")
    with pytest.raises(ValueError, match="head_mismatch"):
        timeshift.load_checkpoint(_tiny(), tmp_path / "ref.pth", head_mismatch="ignore")


def test_cli_export_refuses_a_classifier_that_does_not_fit(tmp_path, capsys):
    torch.save(to_reference_tsm(_tiny(classes=7).state_dict()), tmp_path / "ref.pth")
    args = ["export", str(tmp_path / "ref.pth"), "--output", str(tmp_path / "m.onnx")]
    code = main([*args, "--model", "tsm_resnet_tiny", "--num-classes", "3", "--frames", str(T)])
    captured = capsys.readouterr()
    assert code == 2 and "verified" not in captured.out and "7 classes" in captured.err
    assert not (tmp_path / "m.onnx").exists()


# -- item 4: --frames ----------------------------------------------------------------------------
def test_export_frames_overrides_the_checkpoint(files, tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["export", files["ckpt"], "--format", "torchscript", "--output", str(out)]
    assert main([*args, "--frames", "6"]) == 0
    assert read_export_meta(out)["num_segments"] == 6
    torch.jit.load(str(out))(torch.zeros(1, 6, 3, S, S))
    assert main([*args, "--no-verify"]) == 0  # default: the checkpoint's
    assert read_export_meta(out)["num_segments"] == T
    assert load_model(files["ckpt"], num_segments=6).num_segments == 6
    with pytest.raises(ValueError, match="name= only"):  # never silently ignored
        load_model(files["ckpt"], direction="unidirectional")


def test_flags_that_would_be_ignored_are_refused(files, tmp_path, capsys):
    code = main(["stream", files["good"][0], files["ckpt"], "--frames", "6", "--backend", "eager"])
    assert code == 2 and "--frames" in capsys.readouterr().err
    export = ["export", files["ckpt"], "--output", str(tmp_path / "m.onnx"), "--no-verify"]
    for flag in (["--num-classes", "5"], ["--direction", "unidirectional"]):
        assert main([*export, *flag]) == 2
        assert f"{flag[0]} applies with --model only" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# -- item 5: what a file that is not a checkpoint gets -------------------------------------------
def _export(folder, fmt):
    from timeshift.export import export_model

    model = _tiny()
    model.checkpoint_meta = {"input_size": S}
    suffix = ".onnx" if fmt == "onnx" else ".ts"
    return export_model(model, folder / f"m{suffix}", format=fmt, exporter="legacy").path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    return {fmt: _export(folder, fmt) for fmt in ("onnx", "torchscript")}


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("onnx", "ONNX model"),
        ("torchscript", "TorchScript"),
        ("text", "text file"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("pickle", "pickle"),
        ("random", "not a PyTorch checkpoint"),
    ],
)
def test_non_checkpoints_say_what_they_are(tmp_path, exports, kind, expected):
    if kind in ("onnx", "torchscript"):
        path = exports[kind]
    else:
        path = tmp_path / "file.pt"
        if kind == "text":
            path.write_text("epoch 1 loss 0.5\nsome notes\n")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            timeshift.save_model(_tiny(), path)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "pickle":
            import pickle

            path.write_bytes(pickle.dumps(zipfile.ZipInfo("x"), protocol=2))
        else:
            path.write_bytes(bytes(range(7, 250)) * 3)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert expected in message and str(path) in message
    assert not _pytorch_advice(message) and "101" not in message
    assert "checkpoint" in message  # says what was expected


def _pytorch_advice(text: str) -> bool:
    """PyTorch's text suggesting weights_only=False (in any of its spellings)."""
    return bool(re.search(r"weights_only.{0,20}False|arbitrary code|Weights only load", text))


def test_cli_never_gives_pytorchs_unsafe_advice(exports, files, capsys):
    onnx, script = exports["onnx"], exports["torchscript"]
    # predict and test run an ONNX export (its metadata stands for the checkpoint's): this one
    # has no class names, which is said; commands that need the PyTorch model say what it is
    assert main(["predict", str(onnx), files["good"][0], *EAGER]) == 2
    err = capsys.readouterr().err
    assert "stores no class names" in err and not _pytorch_advice(err)
    assert main(["export", str(onnx), "--output", str(onnx.with_suffix(".again.onnx"))]) == 2
    err = capsys.readouterr().err
    assert "ONNX model" in err and not _pytorch_advice(err)
    assert main(["stream", files["good"][0], str(script), "--backend", "eager"]) == 2
    err = capsys.readouterr().err
    assert "TorchScript" in err and not _pytorch_advice(err)


def test_architecture_mismatch_is_summarised(tmp_path):
    r18 = timeshift.create_model("tsn_resnet18", num_classes=14, num_segments=T)
    timeshift.save_model(r18, tmp_path / "r18.pt")
    payload = read_checkpoint(tmp_path / "r18.pt")
    target = timeshift.create_model("tsn_resnet34", num_classes=14, num_segments=T)
    with pytest.raises(CheckpointError) as info:
        timeshift.load_checkpoint(target, payload)
    message = str(info.value)
    assert len(message) < 800, message
    assert "tsn_resnet18" in message and "tsn_resnet34" in message
    assert re.search(r"missing in checkpoint \(\d+\)", message)
    assert "14 classes" not in message or "classifier" not in message


# -- item 6: a checkpoint that asks for a huge model ---------------------------------------------
def test_huge_model_is_refused_before_allocation(tmp_path, monkeypatch):
    model = _tiny()
    path = timeshift.save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_classes"] = 10**10  # a 10**10 x 64 classifier: 2.5 TB
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="parameters"):
        load_model(path)
    monkeypatch.setenv("TIMESHIFT_MAX_MODEL_PARAMS", "1000")
    with pytest.raises(CheckpointError, match="TIMESHIFT_MAX_MODEL_PARAMS"):
        load_model(timeshift.save_model(model, tmp_path / "small.pt"))


def test_config_that_does_not_match_the_weights_is_refused_before_allocation(tmp_path, monkeypatch):
    path = timeshift.save_model(_tiny(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["kwargs"] = {"stem_width": 16}  # the stored weights have 8
    torch.save(payload, path)
    devices = []
    from timeshift.models import registry

    real = registry.create_model

    def spy(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "create_model", spy)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(path)
    assert devices == ["meta"]  # built on the meta device only, never allocated


# -- item 7: the export cache --------------------------------------------------------------------
def test_auto_backend_falls_back_when_the_cache_cannot_be_written(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TIMESHIFT_CACHE", str(blocker / "cache"))
    model = _tiny()
    with caplog.at_level(logging.WARNING):
        runner = runtime.inference_model(model, backend="auto", size=S)
    assert runner is model and "PyTorch" in caplog.text

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("timeshift.export.export_model", full_disk)
    assert runtime.inference_model(_tiny(), backend="auto", size=S) is not None
    with pytest.raises(OSError, match="No space"):
        runtime.inference_model(_tiny(), backend="onnxruntime", size=S)


def test_a_damaged_cached_export_is_rebuilt(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path))
    exports = []

    def fake_export(model, path, **kwargs):  # the real export is tested in test_engine_runtime
        exports.append(path)
        path.write_bytes(b"an onnx graph %d" % len(exports))

    monkeypatch.setattr("timeshift.export.export_model", fake_export)
    model = _tiny()
    path = runtime.exported_onnx(model, size=S)
    assert runtime.exported_onnx(model, size=S) == path and len(exports) == 1  # trusted
    damages = {
        "empty": lambda: path.write_bytes(b""),
        "corrupt": lambda: path.write_bytes(b"an onnx graph X"),  # same size, other bytes
        "no hash": lambda: path.with_name(path.name + ".sha256").unlink(),
    }
    for count, (name, damage) in enumerate(damages.items(), start=2):
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert runtime.exported_onnx(model, size=S) == path
        assert len(exports) == count and "rebuild" in caplog.text, name
        assert path.read_bytes() == b"an onnx graph %d" % count
        assert runtime.exported_onnx(model, size=S) == path and len(exports) == count


def test_exports_are_flushed_before_the_rename(monkeypatch, tmp_path):
    from timeshift.export import exporter

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(exporter.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(
        exporter.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b)
    )
    _export(tmp_path, "onnx")
    assert "fsync" in events and events.index("fsync") < events.index("replace")
