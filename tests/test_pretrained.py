"""Published weights by name: ``load_pretrained``, ``create_model(pretrained=)``, ``load_model``
with a registry name, the metadata the model then carries, and the CLI listing.

Files are served by an HTTP server on 127.0.0.1 (the real download code runs; nothing can reach
the internet here), written in the source's own format: reference TSM (``module.base_model.*``),
the reference online demo's MobileNetV2 layout, MMAction2 (``backbone.*.conv.net``). The
download itself (resume, hash, offline, mirror) is tested in test_download.py; these tests are
about what is loaded and what it carries.
"""

import functools
import hashlib
import json
import logging

import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.engine.evaluate import EvalOptions
from timeshift.models import pretrained as registry
from timeshift.models.download import DownloadError
from timeshift.models.preprocessing import resolve_input_config

from conftest import (
    http_folder,
    palette_frames,
    randomise,
    to_mmaction2,
    to_reference_mobilenet,
    to_reference_tsm,
    write_test_video,
)

CLASSES = ["left", "right", "still"]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """``(folder, base URL)``: files put in the folder are served over HTTP on 127.0.0.1; the
    weights cache is a fresh folder, online."""
    folder = tmp_path / "www"
    folder.mkdir()
    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path / "cache"))
    for name in ("TIMESHIFT_OFFLINE", "TIMESHIFT_WEIGHTS_URL"):
        monkeypatch.delenv(name, raising=False)
    with http_folder(folder) as base:
        yield folder, base


@pytest.fixture
def entries(monkeypatch):
    """Entries registered by a test are forgotten after it."""
    monkeypatch.setattr(registry, "_entries", functools.cache(registry._entries.__wrapped__))
    registry._entries.cache_clear()
    yield
    registry._entries.cache_clear()


def _entry(name: str, file_name: str, url: str, **fields) -> dict:
    model = name.partition(".")[0]
    entry = {
        "name": name,
        "model": model,
        "model_kwargs": {},
        "source": "tests",
        "checkpoint_format": "tsm",
        "files": [{"url": url, "file_name": file_name, "sha256_prefix": None}],
        "dataset": "ucf101",
        "num_classes": 101,
        "classes": "ucf101",
        "num_segments": 4,
        "modality": "rgb",
        "new_length": 1,
        "input_size": 48,
        "scale_size": 56,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "sampling": {"dense": False, "clips": 2, "crops": 1},
        "reported": {"top1": 50.0, "top5": None},
        "license": "MIT",
    }
    entry.update(fields)
    return entry


def _tiny(num_classes: int = 101, **kwargs) -> torch.nn.Module:
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=num_classes, num_segments=4, **kwargs
    )
    return randomise(model).eval()


def _same_outputs(a, b, frames: int = 4, size: int = 48) -> None:
    x = torch.randn(2, frames, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-5)


def _publish(served, name: str, *, sharp: bool = False) -> torch.nn.Module:
    """A random tiny TSM, served as ``name`` in the reference TSM format and registered as
    ``tsm_resnet_tiny.ucf101_4f``; ``sharp``: a large classifier (scores differ per input)."""
    folder, base = served
    source = _tiny()
    if sharp:  # a fresh (unrandomised) model's features depend on the frames; scale them up
        source = timeshift.create_model("tsm_resnet_tiny", num_classes=101, num_segments=4)
        with torch.no_grad():
            source.fc.weight.mul_(1000)
    torch.save(to_reference_tsm(source.state_dict()), folder / name)
    timeshift.models.register_pretrained(
        _entry("tsm_resnet_tiny.ucf101_4f", name, f"{base}/{name}")
    )
    return source


def test_reference_tsm_file_downloads_loads_and_carries_its_metadata(served, entries):
    folder, base = served
    name = "TSM_ucf101_RGB_tiny_shift8_blockres_avg_segment4_e25.pth"
    source = _publish(served, name)
    model = timeshift.create_model("tsm_resnet_tiny", pretrained="ucf101_4f")
    _same_outputs(model, source)
    assert model.load_report.source == "tsm"
    meta = model.checkpoint_meta
    assert meta["classes"] == timeshift.models.class_names("ucf101")
    assert meta["sampling"] == {"dense": False, "clips": 2, "crops": 1}
    assert meta["pretrained"]["url"] == f"{base}/{name}"
    inputs = resolve_input_config(model)
    assert (inputs.input_size, inputs.scale_size) == (48, 56)
    assert (inputs.mean, inputs.std) == ((0.5,) * 3, (0.25,) * 3)
    # the test protocol it was published with, unless told otherwise
    assert EvalOptions().for_checkpoint(meta).clips == 2
    assert EvalOptions(clips=1).for_checkpoint(meta).clips == 1
    # cached: the same weights by the other names, with no server at all
    (folder / name).unlink()
    again = timeshift.load_pretrained("tsm_resnet_tiny.ucf101_4f")
    _same_outputs(again, source)
    by_path = timeshift.load_model("tsm_resnet_tiny.ucf101_4f", num_segments=8)
    assert by_path.num_segments == 8 and by_path.checkpoint_meta["num_segments"] == 8


def test_another_class_count_reinitialises_only_the_classifier(served, entries, caplog):
    source = _publish(served, "tiny_reference.pth")
    with caplog.at_level(logging.INFO, logger="timeshift"):
        model = timeshift.create_model("tsm_resnet_tiny", pretrained="ucf101_4f", num_classes=5)
    assert model.fc.out_features == 5
    ours, theirs = model.state_dict(), source.state_dict()
    for key, value in theirs.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(ours[key], value, msg=key)
    assert "classifier re-initialised for 5 classes (the weights have 101)" in caplog.text
    assert "classes" not in model.checkpoint_meta  # the names of 101 classes would be wrong


def test_online_demo_mobilenet_entry_from_a_mirror(served, monkeypatch):
    """The real registry entry of the reference online demo (Jester, 27 classes, sorted names),
    its file in the demo's own MobileNetV2 layout, fetched from a mirror of file names."""
    folder, base = served
    entry = timeshift.models.pretrained_entry("tsm_mobilenet_v2.jester_8f_online")
    source = randomise(
        timeshift.create_model(
            "tsm_mobilenet_v2", num_classes=27, num_segments=8, **entry.model_kwargs
        )
    ).eval()
    state = {k.removeprefix("backbone."): v for k, v in source.state_dict().items()}
    state = to_reference_mobilenet({"backbone." + k: v for k, v in state.items()})
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    state = {("classifier." + k[3:] if k.startswith("fc.") else k): v for k, v in state.items()}
    torch.save(state, folder / entry.file.file_name)
    monkeypatch.setenv("TIMESHIFT_WEIGHTS_URL", base + "/")
    model = timeshift.load_pretrained(entry.name, progress=False)
    _same_outputs(model, source, frames=8, size=64)
    assert model.checkpoint_meta["classes"][:3] == [
        "Doing other things",
        "Drumming Fingers",
        "No gesture",
    ]


def test_mmaction2_file_is_checked_against_its_published_hash(served, entries):
    folder, base = served
    source = _tiny(num_classes=51)
    path = folder / "payload.pth"
    torch.save(to_mmaction2(source.state_dict()), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = f"tsm_tiny_hmdb51-{digest[:8]}.pth"
    bad = "tsm_tiny_hmdb51-00000000.pth" if not digest.startswith("0" * 8) else "x-11111111.pth"
    for file_name in (good, bad):
        (folder / file_name).write_bytes(path.read_bytes())
    common = {"checkpoint_format": "mmaction2", "dataset": "hmdb51", "num_classes": 51}
    for tag, file_name in (("hmdb51_4f", good), ("hmdb51_4f_bad", bad)):
        fields = {**common, "classes": "hmdb51"}
        fields["files"] = [
            {
                "url": f"{base}/{file_name}",
                "file_name": file_name,
                "sha256_prefix": file_name[-12:-4],
            }
        ]
        timeshift.models.register_pretrained(
            _entry(f"tsm_resnet_tiny.{tag}", file_name, f"{base}/{file_name}", **fields)
        )
    model = timeshift.load_pretrained("tsm_resnet_tiny.hmdb51_4f", progress=False)
    _same_outputs(model, source)
    assert model.load_report.source == "mmaction2"
    with pytest.raises(DownloadError, match="sha256"):
        timeshift.load_pretrained("tsm_resnet_tiny.hmdb51_4f_bad", progress=False)
    assert not (timeshift.models.download.cache_dir() / "weights" / bad).exists()


def test_offline_without_the_file_says_where_to_put_it(served, entries, monkeypatch):
    _, base = served
    timeshift.models.register_pretrained(
        _entry("tsm_resnet_tiny.ucf101_4f", "absent.pth", f"{base}/absent.pth")
    )
    monkeypatch.setenv("TIMESHIFT_OFFLINE", "1")
    with pytest.raises(DownloadError) as error:
        timeshift.load_pretrained("tsm_resnet_tiny.ucf101_4f")
    where = timeshift.models.download.cache_dir() / "weights" / "absent.pth"
    assert str(where) in str(error.value) and "absent.pth" in str(error.value)


def test_unknown_names_and_bad_entries(entries):
    with pytest.raises(KeyError, match=r"did you mean tsm_resnet50\.kinetics400_8f"):
        timeshift.load_pretrained("tsm_resnet50.kinetic400_8f")
    with pytest.raises(KeyError, match="give a tag"):
        timeshift.models.pretrained_entry("tsm_resnet50")
    with pytest.raises(ValueError, match="already registered"):
        timeshift.models.register_pretrained(
            timeshift.models.pretrained_entry("tsm_resnet50.kinetics400_8f").as_dict()
        )
    with pytest.raises(ValueError, match=r"<model>\.<tag>"):
        timeshift.models.register_pretrained(_entry("tsm_resnet_tiny", "x.pth", None))
    with pytest.raises(ValueError, match="3 class names for num_classes=101"):
        timeshift.models.register_pretrained(
            _entry("tsm_resnet_tiny.own_4f", "x.pth", None, classes=["a", "b", "c"])
        )
    own = timeshift.models.register_pretrained(
        _entry("tsm_resnet_tiny.own_4f", "x.pth", None, classes=["a", "b"], num_classes=2)
    )
    assert own.checkpoint_meta()["classes"] == ["a", "b"]
    assert registry.PretrainedEntry.from_dict(own.as_dict()) == own
    with pytest.raises(TypeError, match="num_classes and num_segments"):
        timeshift.create_model("tsm_resnet_tiny")


def test_class_lists_in_both_orders():
    names = timeshift.models.class_names("sthv1")
    assert timeshift.models.class_names("sthv1:sorted") == sorted(names) != names
    with pytest.raises(ValueError, match="only be 'sorted'"):
        timeshift.models.class_names("sthv1:reversed")
    with pytest.raises(KeyError, match="shipped: hmdb51"):
        timeshift.models.class_names("kinetics700")


def test_entries_round_trip_through_as_dict():
    for name in timeshift.list_pretrained():
        entry = timeshift.models.pretrained_entry(name)
        assert registry.PretrainedEntry.from_dict(entry.as_dict()) == entry


def test_cli_lists_and_describes_published_weights(capsys):
    assert main(["models", "--pretrained", "tsm_resnet50.sthv2*", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == timeshift.list_pretrained("tsm_resnet50.sthv2*")
    assert {e["reported"]["top1"] for e in listed} >= {61.2, 63.1}
    assert main(["models", "--pretrained"]) == 0
    text = capsys.readouterr().out
    assert "tsm_resnet50.kinetics400_8f " in text and "71.2" in text
    assert main(["info", "tsm_resnet50.kinetics400_8f", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 24_327_632  # the reference number for TSM-R50 on 400 classes
    assert info["pretrained"]["files"][0]["file_name"] == (
        "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
    )
    assert main(["info", "tsm_resnet50.kinetics400_8f"]) == 0
    text = capsys.readouterr().out
    assert "file.lzhu.me" in text and "top-1 71.2" in text and "abseiling" in text
    assert main(["info", "tsm_resnet50.kinetic"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_predict_takes_a_registry_name(served, entries, tmp_path, capsys):
    _publish(served, "tiny.pth")
    frames = torch.randint(0, 255, (12, 48, 64, 3), dtype=torch.uint8).numpy()
    video = write_test_video(tmp_path / "clip.mp4", frames)
    argv = ["predict", "tsm_resnet_tiny.ucf101_4f", video, "--json", "--no-progress"]
    assert main([*argv, "--backend", "eager", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["top"][0]["label"] in timeshift.models.class_names("ucf101")
    # the pipeline takes the name too, and gives the same answer
    piped = timeshift.pipeline("tsm_resnet_tiny.ucf101_4f", backend="eager", workers=0)(video)
    assert [r["label"] for r in piped] == [r["label"] for r in result[0]["top"]]
    assert [r["score"] for r in piped] == pytest.approx([r["score"] for r in result[0]["top"]])


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        # the reference's V2 protocol: twice_sample (2 clips) x 3 full-resolution crops
        ("tsm_resnet50.sthv2_8f", {}, (1, 3, True, False, True)),
        ("tsm_resnet50.sthv2_8f", {"clips": 1}, (1, 3, True, False, False)),
        # the reference's dense Kinetics protocol: 10 dense clips x 3 full-resolution crops
        ("tsm_resnet50.kinetics400_8f_dense", {}, (10, 3, True, True, False)),
        (
            "tsm_resnet50.kinetics400_8f_dense",
            {"crops": 1, "full_res": False},
            (10, 1, False, True, False),
        ),
        # MMAction2 does not say: one centre crop of one uniform clip
        ("tsm_resnet50.kinetics400_8f_mmaction2", {}, (1, 1, False, False, False)),
        ("tsm_resnet50.kinetics400_8f_dense_mmaction2", {}, (1, 1, False, True, False)),
    ],
)
def test_the_published_test_protocol_applies_unless_told(name, given, expected):
    meta = timeshift.models.pretrained_entry(name).checkpoint_meta()
    o = EvalOptions(**given).for_checkpoint(meta)
    assert (o.clips, o.crops, o.full_res, o.dense, o.twice) == expected


def test_training_initialises_from_a_registry_name(served, entries):
    from timeshift.engine.trainer import initialise_from

    source = _publish(served, "tiny.pth")
    model = _tiny(num_classes=7)  # fine-tuning on another dataset: a new classifier
    initialise_from(model, "tsm_resnet_tiny.ucf101_4f")
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_cli_fetch_prefetches_into_the_cache(served, entries, capsys, monkeypatch):
    _, base = served
    _publish(served, "tiny.pth")
    timeshift.models.register_pretrained(
        _entry("tsm_resnet_tiny.gone_4f", "gone.pth", f"{base}/gone.pth")
    )
    assert (
        main(["fetch", "tsm_resnet_tiny.ucf101_4f", "tsm_resnet_tiny.gone_4f", "--no-progress"])
        == 2
    )
    out, err = capsys.readouterr()
    cached = timeshift.models.download.weights_path("tiny.pth")
    assert out.split() == ["tsm_resnet_tiny.ucf101_4f", str(cached)] and cached.is_file()
    assert "tsm_resnet_tiny.gone_4f  error:" in err and "404" in err
    monkeypatch.setenv("TIMESHIFT_OFFLINE", "1")  # the fetched file serves offline runs
    assert main(["info", "tsm_resnet_tiny.ucf101_4f"]) == 0
    assert f"{cached} (downloaded)" in capsys.readouterr().out
    assert main(["fetch", "tsm_resnet_tiny.nope"]) == 2


def test_predict_follows_the_published_protocol_unless_told(served, entries, tmp_path, capsys):
    """An entry published with 2 clips: predict runs 2 clips (the same scores as asking for
    them on a model without a recorded protocol), and --clips 1 overrides it."""
    _publish(served, "tiny.pth", sharp=True)
    video = write_test_video(tmp_path / "clip.mkv", palette_frames(30, 48, 64))  # each its own
    common = ["--json", "--no-progress", "--backend", "eager", "--workers", "0"]
    runs = {}
    for name, flags in (("published", []), ("one", ["--clips", "1"])):
        assert main(["predict", "tsm_resnet_tiny.ucf101_4f", video, *common, *flags]) == 0
        runs[name] = json.loads(capsys.readouterr().out)[0]["top"]
    model = timeshift.load_pretrained("tsm_resnet_tiny.ucf101_4f")
    bare = tmp_path / "bare.pt"
    meta = {k: v for k, v in model.checkpoint_meta.items() if k != "sampling"}
    timeshift.save_model(model, bare, meta=meta)
    for name, clips in (("published", "2"), ("one", "1")):
        assert main(["predict", str(bare), video, *common, "--clips", clips]) == 0
        asked = json.loads(capsys.readouterr().out)[0]["top"]
        assert [r["score"] for r in asked] == pytest.approx([r["score"] for r in runs[name]])
    assert [r["score"] for r in runs["published"]] != pytest.approx(
        [r["score"] for r in runs["one"]], rel=1e-3
    )
    assert main(["predict", str(bare), video, "--timeline", "--crops", "3"]) == 2
    assert "--crops: a timeline scores one centre-cropped clip" in capsys.readouterr().err
