"""The README is followed as written: its Python snippets run, its commands exist, its links
resolve."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from timeshift.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE_CHECKPOINT = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def _reference_tsm_checkpoint(path: Path) -> None:
    """What the reference TSM code saves for TSM-ResNet50 on Kinetics (random weights)."""
    import timeshift

    model = timeshift.create_model("tsm_resnet50", num_classes=400, num_segments=8)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            state["module.new_fc." + key[3:]] = value
        else:
            state["module.base_model." + key.removeprefix("backbone.")] = value
    torch.save({"epoch": 50, "arch": "resnet50", "state_dict": state, "best_prec1": 0.0}, path)


def _synthetic_dataset(root: Path) -> None:
    """What `timeshift data synth data/synth` writes, a smaller one."""
    from timeshift.data.synthetic import SyntheticSpec, make_synthetic

    make_synthetic(
        root,
        SyntheticSpec(videos_per_class=1, val_videos_per_class=1, families=("horizontal",)),
        progress=False,
    )


def test_python_snippets_run(tmp_path, monkeypatch):
    import numpy as np

    from conftest import write_test_video

    blocks = _blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    _reference_tsm_checkpoint(tmp_path / REFERENCE_CHECKPOINT)
    _synthetic_dataset(tmp_path / "data" / "synth")
    # published weights by name: the file above, its registry name's, from a local mirror
    monkeypatch.setenv("TIMESHIFT_WEIGHTS_URL", str(tmp_path))
    monkeypatch.setenv("TIMESHIFT_OFFLINE", "1")
    rng = np.random.default_rng(0)
    for name in ("video.mp4", "a.mp4", "b.mp4"):
        write_test_video(tmp_path / name, rng.integers(0, 255, (24, 96, 128, 3), dtype=np.uint8))
    for number, block in enumerate(blocks, start=1):
        namespace: dict = {"__name__": f"readme_block_{number}"}
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if "timeshift " in line and not line.startswith("make"):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_commands_parse(line):
    words = shlex.split(line)
    args = words[words.index("timeshift") + 1 :]
    parsed = build_parser().parse_args(args)
    assert callable(parsed.func)


# files of other projects that the docs name on purpose
EXTERNAL = {
    "train.py",  # the official bLVNet-TAM training script (docs/blvnet.md)
    "run_on_device.py",  # written by `timeshift compile` into its output (docs/deployment.md)
}


def test_links_and_cited_files_exist():
    """Every relative link, and every .md/.py/.yaml file a document names, is in the repository."""
    documents = [README, *sorted((ROOT / "docs").glob("*.md"))]
    names = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    missing = []
    for doc in documents:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.name}: link {target}")
        for name in set(re.findall(r"\b[\w./-]+\.(?:md|py|yaml)\b", text)):
            if "/" not in name and name not in EXTERNAL | names:
                missing.append(f"{doc.name}: cites {name}")
    assert not missing, missing


def test_reliability_page_cites_tests_that_exist():
    """docs/reliability.md says which tests check each guarantee: they must exist."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    files = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    cited = set(re.findall(r"\btest_\w+", text)) - files
    missing = sorted(name for name in cited if f"def {name}(" not in tests)
    assert len(cited) > 40 and not missing, missing
