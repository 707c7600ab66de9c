"""The pretrained-weights registry (``timeshift/models/zoo/registry.json``) as data: every entry is
well formed, names a model timeshift has, builds with its options, and says where its facts came
from. No download here: nothing can reach the internet in the tests."""

import json
import re
from pathlib import Path

import pytest
import torch

import timeshift

REGISTRY = Path(timeshift.__file__).parent / "models" / "zoo" / "registry.json"

REQUIRED = {
    "name",
    "model",
    "model_kwargs",
    "source",
    "checkpoint_format",
    "files",
    "dataset",
    "num_classes",
    "classes",
    "num_segments",
    "modality",
    "new_length",
    "input_size",
    "scale_size",
    "mean",
    "std",
    "sampling",
    "reported",
    "license",
    "provenance",
    "notes",
}
NUM_CLASSES = {
    "kinetics400": 400,
    "sthv1": 174,
    "sthv2": 174,
    "jester": 27,
    "ucf101": 101,
    "hmdb51": 51,
}
FORMATS = {"tsm", "mmaction2", "blvnet", "torchvision"}
# <dataset>_<frames>f[_variant...]
TAG = re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<frames>\d+)f(?:_[a-z0-9]+)*$")
HASH_SUFFIX = re.compile(r"-([0-9a-f]{8})\.pth(?:\.tar)?$")


def _load() -> dict:
    with REGISTRY.open(encoding="utf-8") as fh:
        return json.load(fh)


DATA = _load()
ENTRIES = DATA["entries"]


def _ids(entries):
    return [e.get("name", "?") for e in entries]


def test_format_and_not_empty():
    assert DATA["format"] == 1
    assert len(ENTRIES) > 0


def test_names_are_unique():
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_reference_kinetics_model_is_named_as_in_the_issue():
    (entry,) = [e for e in ENTRIES if e["name"] == "tsm_resnet50.kinetics400_8f"]
    assert entry["files"][0]["file_name"] == (
        "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
    )


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_entry_is_well_formed(entry):
    assert set(entry) >= REQUIRED, sorted(REQUIRED - set(entry))
    model, _, tag = entry["name"].partition(".")
    assert model == entry["model"]
    m = TAG.match(tag)
    assert m, f"tag {tag!r} is not <dataset>_<frames>f[_variant]"
    assert m["dataset"] == entry["dataset"]
    assert int(m["frames"]) == entry["num_segments"]
    assert entry["checkpoint_format"] in FORMATS
    assert entry["dataset"] in NUM_CLASSES
    assert entry["num_classes"] == NUM_CLASSES[entry["dataset"]]
    assert entry["classes"] in (entry["dataset"], entry["dataset"] + ":sorted")
    assert entry["modality"] in ("rgb", "flow")
    assert isinstance(entry["new_length"], int) and entry["new_length"] >= 1
    assert isinstance(entry["model_kwargs"], dict)
    assert set(entry["sampling"]) == {"dense", "clips", "crops", "full_res", "twice"}
    if entry["sampling"]["twice"]:  # the reference's twice_sample: 2 clips
        assert entry["sampling"]["clips"] == 2
    for size in ("input_size", "scale_size"):
        assert entry[size] is None or isinstance(entry[size], int)
    for stats in ("mean", "std"):
        assert entry[stats] is None or len(entry[stats]) == 3


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_model_exists_and_builds_on_meta(entry):
    assert entry["model"] in timeshift.list_models()
    with torch.device("meta"):
        model = timeshift.create_model(
            entry["model"],
            num_classes=entry["num_classes"],
            num_segments=entry["num_segments"],
            **entry["model_kwargs"],
        )
    assert model.modality == entry["modality"]
    assert model.new_length == entry["new_length"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_files_urls_and_hashes(entry):
    assert entry["files"], "an entry needs at least one file"
    for f in entry["files"]:
        assert set(f) == {"url", "file_name", "sha256_prefix"}
        assert f["file_name"] and "/" not in f["file_name"]
        if f["url"] is None:  # not published: must be said
            assert entry["notes"]
        else:
            assert f["url"].startswith("https://")
        prefix = f["sha256_prefix"]
        assert prefix is None or re.fullmatch(r"[0-9a-f]{8}", prefix), prefix
        suffix = HASH_SUFFIX.search(f["file_name"])
        if entry["checkpoint_format"] == "mmaction2":
            assert suffix, f"MMAction2 file names end with -<sha256[:8]>: {f['file_name']}"
        if suffix:
            assert prefix == suffix.group(1)
        elif prefix is not None:
            pytest.fail(f"sha256_prefix {prefix} but no hash in {f['file_name']}")


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_reported_accuracy_and_license(entry):
    top1, top5 = entry["reported"]["top1"], entry["reported"]["top5"]
    if top1 is None:  # never invented: an entry without a number says why
        assert entry["notes"]
    else:
        assert 0 < top1 <= 100
    if top5 is not None:
        assert 0 < top5 <= 100 and (top1 is None or top5 >= top1)
    if entry["license"] is None:
        assert entry["notes"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_provenance(entry):
    prov = entry["provenance"]
    assert isinstance(prov, dict)
    assert {"url", "reported", "license"} <= set(prov)
    if any(f["url"] for f in entry["files"]):
        assert prov["url"] and ":" in prov["url"]  # <repo>:<path>
    if entry["reported"]["top1"] is not None:
        assert prov["reported"] and ":" in prov["reported"]
    if entry["license"] is not None:
        assert prov["license"]


def test_the_docs_list_every_entry():
    """docs/pretrained.md's tables name every entry, with its reported top-1."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(\w+\.\w+)` \|(.*)$", docs, re.M)}
    assert set(rows) == {e["name"] for e in ENTRIES}
    for entry in ENTRIES:
        top1 = entry["reported"]["top1"]
        if top1 is not None:
            assert f"| {top1:g} |" in rows[entry["name"]], entry["name"]
