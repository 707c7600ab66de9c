"""The test / validation protocol gives the right number or refuses: labels follow the model's
classes, list paths resolve against the list, unlabelled lists never reach training, and
direction-sensitive labels survive mirrored views and dense sampling.

The models here are stand-ins whose prediction is a known function of the clip (brightness,
left-right gradient, brightness trend over time), so a score says exactly whether the protocol
fed the right frames and labels: the real models are not needed to test the protocol.
"""

import logging
import os
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from timeshift.data.formats import (
    AnnotationError,
    check_paths,
    read_annotations,
    read_folder_tree,
    read_video_list,
)
from timeshift.engine import evaluate as evaluate_module
from timeshift.engine.config import Config
from timeshift.engine.distributed import DistInfo
from timeshift.engine.loaders import (
    UnmirroredViews,
    build_eval_dataset,
    build_train_loader,
    checkpoint_direction,
    direction_meta,
    direction_protocol,
    load_split,
)

from conftest import write_test_video

SIZE = 32


# -- stand-in models ---------------------------------------------------------------------------


class StandIn(nn.Module):
    """A "trained" model whose logits are a fixed function of the clip ``(N, T, C, H, W)``."""

    def __init__(self, kind: str, classes: list[str], num_segments: int = 4, **meta) -> None:
        super().__init__()
        self.kind, self.num_classes, self.num_segments = kind, len(classes), num_segments
        self.anchor = nn.Parameter(torch.zeros(()))  # something for .to() to move
        self.checkpoint_meta = {
            "classes": classes,
            "input_size": 24,
            "scale_size": SIZE,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            **meta,
        }

    def set_channels_last(self, enabled: bool) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "brightness":  # class k <-> grey level of LEVELS[k]
            level = x.mean(dim=(1, 2, 3, 4)) * 255
            return -(level[:, None] - torch.tensor(LEVELS[: self.num_classes])[None]).abs()
        if self.kind == "gradient":  # "moving right" <-> brighter to the right
            w = x.shape[-1]
            d = x[..., w // 2 :].mean(dim=(1, 2, 3, 4)) - x[..., : w // 2].mean(dim=(1, 2, 3, 4))
            return torch.stack([-d, d], dim=1) * 100
        if self.kind == "trend":  # "fading in" <-> more frames brighter than the one before
            steps = torch.sign(x.mean(dim=(2, 3, 4)).diff(dim=1)).sum(dim=1)
            return torch.stack([steps, -steps], dim=1)
        raise AssertionError(self.kind)


LEVELS = [30.0, 110.0, 190.0, 250.0]


@pytest.fixture
def stand_in(monkeypatch):
    """``evaluate_checkpoints`` loads the given stand-in instead of reading the checkpoint."""
    chosen = {}

    def fake_load_model(path, **kwargs):
        return chosen["model"]

    monkeypatch.setattr(evaluate_module, "load_for_inference", fake_load_model)

    def use(model):
        chosen["model"] = model
        return "stand-in.pt"

    return use


run_test = evaluate_module.evaluate_checkpoints


def _options(**kwargs):
    return evaluate_module.EvalOptions(
        batch_size=2, workers=0, backend="eager", memory_format="contiguous", **kwargs
    )


def _grey_video(path, level: float, frames: int = 6):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_test_video(path, np.full((frames, SIZE, SIZE, 3), int(level), dtype=np.uint8))


def _gradient_video(path, rightwards: bool, frames: int = 6):
    ramp = np.linspace(20, 230, SIZE)
    image = np.broadcast_to((ramp if rightwards else ramp[::-1])[None, :, None], (SIZE, SIZE, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_test_video(path, np.repeat(image[None], frames, axis=0).astype(np.uint8))


def _trend_video(path, fading_in: bool, frames: int = 10):
    levels = [20 + 20 * k for k in range(frames)]
    levels = levels if fading_in else levels[::-1]
    clip = np.stack([np.full((SIZE, SIZE, 3), v, dtype=np.uint8) for v in levels])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_test_video(path, clip)


# -- item 4: labels come from the model's classes ----------------------------------------------


CLASSES = ["dark", "dim", "bright", "white"]


def _class_folder(root, names, per_class=2):
    """``root/<folder>/v<k>.mkv`` whose brightness is that of the class the folder names."""
    for folder in names:
        label = [c.replace(" ", "_") for c in CLASSES].index(folder.lower().replace(" ", "_"))
        for k in range(per_class):
            _grey_video(root / folder / f"v{k}.mkv", LEVELS[label])
    return root


def test_class_folder_is_labelled_by_the_checkpoint_classes(tmp_path, stand_in):
    # a folder without the first class: its own sorted names would relabel every video
    folder = _class_folder(tmp_path / "val", ["dim", "white", "bright"])
    path = stand_in(StandIn("brightness", CLASSES))
    summary = run_test([path], folder, options=_options(), progress=False)
    assert summary["top1"] == 1.0
    assert summary["support"] == [0, 2, 2, 2]
    assert summary["classes"] == CLASSES


def test_class_folder_unknown_to_the_model_is_an_error(tmp_path, stand_in):
    folder = _class_folder(tmp_path / "val", ["dim", "bright"])
    _grey_video(folder / "purple" / "p.mkv", 10)
    path = stand_in(StandIn("brightness", CLASSES))
    with pytest.raises(AnnotationError, match="'purple'") as exc_info:
        run_test([path], folder, options=_options(), progress=False)
    message = str(exc_info.value)
    assert str(folder) in message and "'dark', 'dim', 'bright', 'white'" in message


def test_folder_tree_maps_folder_names_to_given_classes(tmp_path):
    root = tmp_path / "videos" / "val"
    for folder in ("moving_right", "Moving Left", ".ipynb_checkpoints"):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.mp4").touch()
    classes = ["moving left", "moving right", "growing"]
    ann = read_folder_tree(root, classes=classes)
    assert ann.classes == classes
    assert [(os.path.basename(os.path.dirname(r.path)), r.label) for r in ann.records] == [
        ("Moving Left", 0),
        ("moving_right", 1),
    ]
    # without classes: the sorted sub-folder names, as before (hidden folders are not classes)
    assert read_folder_tree(root).classes == ["Moving Left", "moving_right"]
    # an exact name wins over a looser match
    exact = read_folder_tree(root, classes=["moving_right", "Moving Left", "moving right"])
    assert {os.path.basename(os.path.dirname(r.path)): r.label for r in exact.records} == {
        "moving_right": 0,
        "Moving Left": 1,
    }


def _config(**data):
    cfg = OmegaConf.structured(Config)
    cfg.model.name = "tsm_resnet_tiny"
    cfg.model.num_segments = 4
    cfg.data.size, cfg.data.scale_size, cfg.data.workers = 24, SIZE, 0
    cfg.train.batch_size = 1
    for key, value in data.items():
        OmegaConf.update(cfg, f"data.{key}", value, force_add=True)
    return cfg


def test_validation_folder_uses_the_training_classes(tmp_path):
    _class_folder(tmp_path / "train", ["dark", "dim", "bright", "white"], per_class=1)
    _class_folder(tmp_path / "val", ["bright", "white"], per_class=1)
    cfg = _config(format="folder", train=str(tmp_path / "train"), val=str(tmp_path / "val"))
    train = load_split(cfg.data, "train")
    val = load_split(cfg.data, "val", classes=train.classes)
    assert val.classes == train.classes == ["bright", "dark", "dim", "white"]
    assert sorted({r.label for r in val.records}) == [0, 3]  # not [0, 1]


def test_validation_csv_uses_the_training_classes(tmp_path):
    # Kinetics without a class file: the classes are the CSV's sorted labels, so a validation
    # CSV missing a class must not renumber the others
    for label, name in (("abseiling", "a"), ("bowling", "b"), ("cycling", "c")):
        (tmp_path / "v" / label).mkdir(parents=True)
        (tmp_path / "v" / label / f"{name}_000001_000011.mp4").touch()
    header = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "train.csv").write_text(
        header + "abseiling,a,1,11,train\nbowling,b,1,11,train\ncycling,c,1,11,train\n"
    )
    (tmp_path / "val.csv").write_text(header + "cycling,c,1,11,val\n")
    cfg = _config(
        format="kinetics",
        train=str(tmp_path / "train.csv"),
        val=str(tmp_path / "val.csv"),
        root=str(tmp_path / "v"),
    )
    train = load_split(cfg.data, "train")
    val = load_split(cfg.data, "val", classes=train.classes)
    assert [r.label for r in val.records] == [2]


def test_validation_list_label_outside_the_training_classes(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").touch()
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "val.txt").write_text("a.mp4 0\nc.mp4 2\n")
    cfg = _config(format="videos", train=str(tmp_path / "train.txt"), val=str(tmp_path / "val.txt"))
    train = load_split(cfg.data, "train")
    with pytest.raises(AnnotationError, match=re.escape(f"{tmp_path / 'val.txt'}:2:")):
        load_split(cfg.data, "val", classes=train.classes)


# -- item 1: unlabelled lines never reach training ---------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_unlabelled_line_fails_before_training(tmp_path, split):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").touch()
    good = tmp_path / "good.txt"
    good.write_text("a.mp4 0\nb.mp4 1\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\na.mp4 0\nc.mp4 -1\nb.mp4 1\n")
    lists = {"train": str(good), "val": str(good), split: str(bad)}
    cfg = _config(format="videos", train=lists["train"], val=lists["val"])
    with pytest.raises(AnnotationError) as exc_info:
        load_split(cfg.data, split, classes=None if split == "train" else ["x", "y"])
    message = str(exc_info.value)
    assert f"{bad}:3:" in message and "-1" in message and "1 of 3" in message
    # a test list may keep -1 (predict / test-set lists)
    assert [r.label for r in read_annotations(bad).records] == [0, -1, 1]
    with pytest.raises(AnnotationError, match=re.escape(f"{bad}:3:")):
        read_annotations(bad, labelled=True)


def test_unlabelled_sthv2_entry_fails_before_training(tmp_path):
    import json

    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    entries = [{"id": "1", "template": "Holding [something]"}, {"id": "2"}]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    for name in ("1", "2"):
        (tmp_path / f"{name}.webm").touch()
    cfg = _config(format="sthv2", train=str(tmp_path / "train.json"))
    OmegaConf.update(cfg, "data.classes", str(tmp_path / "labels.json"))
    with pytest.raises(AnnotationError, match=re.escape("train.json, entry 2: label -1")):
        load_split(cfg.data, "train")


# -- item 3: list paths resolve against the list, and fail early when missing ------------------


def _list_dataset(root, per_class=1):
    """A list ``root/val.txt`` with paths relative to ``root`` (as ``data synth`` writes)."""
    lines = []
    for label in range(2):
        for k in range(per_class):
            rel = f"videos/c{label}/v{k}.mkv"
            _grey_video(root / rel, LEVELS[label])
            lines.append(f"{rel} {label}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root / "val.txt"


def test_list_paths_resolve_against_the_list_folder(tmp_path, monkeypatch, stand_in):
    listing = _list_dataset(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = stand_in(StandIn("brightness", CLASSES[:2]))
    summary = run_test([path], listing, options=_options(), progress=False)
    assert summary["samples"] == 2 and summary["unreadable"] == 0
    assert summary["top1"] == 1.0
    # a relative list path from yet another directory resolves the same way
    monkeypatch.chdir(tmp_path)
    ann = read_annotations("data/val.txt")
    assert [r.path for r in ann.records] == [
        os.path.join("data", "videos", "c0", "v0.mkv"),
        os.path.join("data", "videos", "c1", "v0.mkv"),
    ]
    assert all(os.path.isfile(r.path) for r in ann.records)


def test_most_paths_missing_fails_before_any_work(tmp_path, stand_in, monkeypatch):
    listing = _list_dataset(tmp_path / "data", per_class=2)
    path = stand_in(StandIn("brightness", CLASSES[:2]))

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation started")

    monkeypatch.setattr(evaluate_module, "_model_scores", no_work)
    wrong_root = tmp_path / "data" / "videos"  # the README's --root videos/: videos/videos/...
    with pytest.raises(AnnotationError) as exc_info:
        run_test([path], listing, root=wrong_root, options=_options(), progress=False)
    message = str(exc_info.value)
    assert str(listing) in message and "4 of 4 listed paths do not exist" in message
    assert str(wrong_root / "videos" / "c0" / "v0.mkv") in message  # the resolved path
    assert "--root" in message


def test_most_paths_missing_fails_before_training(tmp_path):
    listing = _list_dataset(tmp_path / "data", per_class=2)
    cfg = _config(format="videos", train=str(listing), root=str(tmp_path))
    with pytest.raises(AnnotationError, match="4 of 4 listed paths do not exist"):
        load_split(cfg.data, "train")
    cfg.data.root = None  # the default: the list's folder
    assert len(load_split(cfg.data, "train")) == 4


def test_most_paths_missing_fails_before_extracting(tmp_path):
    from timeshift.data.extract import extract_frames

    listing = _list_dataset(tmp_path / "data", per_class=2)
    with pytest.raises(AnnotationError, match="4 of 4 listed paths do not exist"):
        extract_frames(listing, tmp_path / "frames", root=tmp_path / "data" / "videos")
    assert not (tmp_path / "frames").exists()


def test_few_paths_missing_warns(tmp_path, caplog):
    listing = _list_dataset(tmp_path / "data", per_class=2)
    with open(listing, "a") as f:
        f.write("videos/gone.mkv 1\n")
    with caplog.at_level(logging.WARNING, logger="timeshift.data.formats"):
        ann = read_annotations(listing)
    assert len(ann) == 5
    assert "1 of 5 listed paths do not exist" in caplog.text
    assert str(tmp_path / "data" / "videos" / "gone.mkv") in caplog.text
    assert check_paths(read_video_list(listing)) == 1


# -- item 5: direction-sensitive labels --------------------------------------------------------


MOTION = ["moving left", "moving right"]


def _gradient_folder(root):
    for label, name in enumerate(MOTION):
        for k in range(2):
            _gradient_video(root / name.replace(" ", "_") / f"v{k}.mkv", rightwards=bool(label))
    return root


def test_ten_crops_swap_mirrored_views_of_direction_sensitive_classes(tmp_path, stand_in):
    folder = _gradient_folder(tmp_path / "val")
    model = StandIn("gradient", MOTION, direction_sensitive=True, flip_map="synthetic")
    path = stand_in(model)
    for crops in (1, 3, 10):
        summary = run_test([path], folder, options=_options(crops=crops), progress=False)
        assert summary["top1"] == 1.0, crops
    # two clips x 10 crops: the mirrored half is still found
    summary = run_test([path], folder, options=_options(crops=10, clips=2), progress=False)
    assert summary["top1"] == 1.0


def test_ten_crops_refused_without_a_flip_map(tmp_path, stand_in, monkeypatch):
    folder = _gradient_folder(tmp_path / "val")
    path = stand_in(StandIn("gradient", MOTION, direction_sensitive=True, flip_map=None))
    with pytest.raises(ValueError, match=r"direction-sensitive.*--crops 1 or --crops 3"):
        run_test([path], folder, options=_options(crops=10), progress=False)
    assert run_test([path], folder, options=_options(crops=3), progress=False)["top1"] == 1


def test_order_blind_checkpoint_keeps_the_reference_ten_crops(tmp_path, stand_in):
    # a checkpoint that does not say it is direction-sensitive averages mirrored views as the
    # reference does: for these classes that is the wrong number the guard above prevents
    folder = _gradient_folder(tmp_path / "val")
    path = stand_in(StandIn("gradient", MOTION, direction_sensitive=False))
    summary = run_test([path], folder, options=_options(crops=10), progress=False)
    assert summary["top1"] < 1.0


def test_dense_short_videos_stay_in_order_for_direction_sensitive_classes(tmp_path, stand_in):
    # 10-frame videos, 8 segments: the 64-frame dense window would wrap out of order
    classes = ["fading in", "fading out"]
    for label in range(2):
        for k in range(2):
            _trend_video(tmp_path / "val" / f"c{label}" / f"v{k}.mkv", fading_in=label == 0)
    lines = [f"{tmp_path}/val/c{label}/v{k}.mkv {label}" for label in range(2) for k in range(2)]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    sensitive = StandIn("trend", classes, num_segments=8, direction_sensitive=True)
    path = stand_in(sensitive)
    for clips in (1, 3):
        options = _options(dense=True, clips=clips)
        summary = run_test([path], tmp_path / "val.txt", options=options, progress=False)
        assert summary["top1"] == 1.0
    # the reference wrap, kept for order-blind checkpoints, plays these clips backwards
    path = stand_in(StandIn("trend", classes, num_segments=8, direction_sensitive=False))
    summary = run_test([path], tmp_path / "val.txt", options=_options(dense=True), progress=False)
    assert summary["top1"] == 0.0


def test_unmirrored_views_permutes_only_mirrored_views():
    class Fixed(nn.Module):
        num_classes, num_segments = 3, 1

        def forward(self, x):
            return x[:, 0, 0, 0, :3]  # the logits are written into the "views"

    views = torch.arange(2 * 4 * 3, dtype=torch.float32).view(8, 1, 1, 1, 3)
    model = UnmirroredViews(Fixed(), mirrored=[False, False, True, True], flip_map={0: 2, 2: 0})
    out = model(views).view(2, 4, 3)
    expected = views.view(2, 4, 3).clone()
    expected[:, 2:] = expected[:, 2:, [2, 1, 0]]
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="whole samples"):
        model(views[:6])


def test_direction_protocol_decisions():
    meta = {"classes": MOTION, "direction_sensitive": True, "flip_map": "synthetic"}
    assert direction_protocol(meta, num_segments=8, crops=1, dense=True)[:2] == ("ordered", None)
    dense, flip, mirrored = direction_protocol(meta, num_segments=8, crops=10, clips=2)
    assert (dense, flip, mirrored) == (False, {0: 1, 1: 0}, [False] * 10 + [True] * 10)
    # dense test sampling takes 10 clips: 100 views, the last 50 mirrored
    assert sum(direction_protocol(meta, num_segments=8, crops=10, dense=True)[2]) == 50
    blind = {"classes": MOTION, "direction_sensitive": False}
    assert direction_protocol(blind, num_segments=8, crops=10, dense=True) == (True, None, [])
    # a flip map that does not fit the classes counts as none
    half = {
        "classes": ["moving left", "growing"],
        "direction_sensitive": True,
        "flip_map": "synthetic",
    }
    with pytest.raises(ValueError, match="does not fit its classes"):
        direction_protocol(half, num_segments=8, crops=10)


def test_checkpoints_record_direction_sensitivity():
    assert direction_meta(_config(format="synthetic").data) == {
        "direction_sensitive": True,
        "flip_map": "synthetic",
    }
    assert direction_meta(_config(format="sthv2").data)["flip_map"] == "sthv2"
    assert direction_meta(_config(format="videos", flip_map="jester").data) == {
        "direction_sensitive": True,
        "flip_map": "jester",
    }
    assert direction_meta(_config(format="videos").data)["direction_sensitive"] is False
    assert direction_meta(_config(format="videos", direction_sensitive=True).data) == {
        "direction_sensitive": True,
        "flip_map": None,
    }
    assert direction_meta(_config(format="synthetic", direction_sensitive=False).data) == {
        "direction_sensitive": False,
        "flip_map": None,
    }
    # checkpoints saved before the key: inferred from their stored training config
    old = {"classes": MOTION, "config": {"data": {"format": "synthetic", "flip_map": None}}}
    assert checkpoint_direction(old) == (True, "synthetic")
    assert checkpoint_direction({"classes": MOTION}) == (False, None)


def test_training_refuses_mirrors_of_direction_sensitive_data(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.mp4").touch()
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    cfg = _config(format="videos", train=str(tmp_path / "train.txt"), direction_sensitive=True)
    ann = load_split(cfg.data, "train")
    cfg.data.flip = True
    with pytest.raises(ValueError, match=re.escape("data.flip=true mirrors")):
        build_train_loader(cfg, ann, DistInfo())
    cfg.data.flip = False
    build_train_loader(cfg, ann, DistInfo())
    cfg.eval.crops = 10
    with pytest.raises(ValueError, match=re.escape("eval.crops=10")):
        build_eval_dataset(cfg, ann)
    cfg.eval.crops = 3
    build_eval_dataset(cfg, ann)
    # a flip map makes training flips correct: labels are swapped with the clip
    (tmp_path / "motion.txt").write_text("moving left\nmoving right\n")
    cfg.data.classes, cfg.data.flip, cfg.data.flip_map = (
        str(tmp_path / "motion.txt"),
        True,
        "synthetic",
    )
    dataset = build_train_loader(cfg, load_split(cfg.data, "train"), DistInfo())[0]
    flip = [t for t in dataset.transform.transforms if hasattr(t, "label_map")]
    assert flip[0].label_map == {0: 1, 1: 0}
    # half a pair: a mirrored "moving left" would need a class the model does not have
    (tmp_path / "half.txt").write_text("moving left\ngrowing\n")
    cfg.data.classes = str(tmp_path / "half.txt")
    with pytest.raises(ValueError, match="moving right"):
        build_train_loader(cfg, load_split(cfg.data, "train"), DistInfo())
