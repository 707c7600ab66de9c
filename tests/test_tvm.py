"""TVM compilation (``timeshift compile``): host builds of tiny models checked against eager
PyTorch, the target forms TVM 0.27 accepts and refuses, the standalone runner script, the CLI."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("tvm", reason="the tvm extra is not installed")

import timeshift
from timeshift import cli
from timeshift.cli import compile as compile_cli
from timeshift.export import tvm_compile
from timeshift.export.tvm_compile import (
    TargetError,
    TvmCompileError,
    compile_model,
    resolve_target,
    tvm_runner,
)
from timeshift.online.online_model import OnlineModule

from conftest import randomise

T, S = 4, 32
CLASSES = list("abcde")
FILES = {"model.so", "model.onnx", "meta.json", "run_on_device.py", "README.txt"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name, direction="unidirectional"):
    model = timeshift.create_model(name, num_classes=5, num_segments=T, direction=direction)
    model = randomise(model).eval()
    model.checkpoint_meta = {"classes": CLASSES, "input_size": S}
    return model


def _compile(model, folder, **kwargs):
    # the legacy ONNX exporter: the same graph for TVM, a few seconds faster to make
    return compile_model(model, folder, exporter="legacy", progress=False, **kwargs)


@pytest.fixture(scope="module")
def online_build(tmp_path_factory):
    model = _model("tsm_mobilenet_v2_tiny")
    folder = tmp_path_factory.mktemp("tvm") / "online"
    return model, _compile(model, folder, online=True, size=S)


def test_online_host_build_steps_like_the_streaming_model(online_build):
    model, result = online_build
    assert result.host_check["steps"] == 3 and result.host_check["max_abs_diff"] < 1e-4
    meta = json.loads((result.directory / "meta.json").read_text())
    assert meta["mode"] == "online" and meta["classes"] == CLASSES
    assert meta["check"] == result.host_check and meta["resolved_target"]["kind"] == "llvm"
    assert list(meta["input_shapes"]) == ["frame", *(f"cache_{i}" for i in range(3))]
    module = OnlineModule(model).eval()
    run = tvm_runner(result.library)
    caches = [c.numpy() for c in module.init_caches(1, S, S)]
    eager_caches = module.init_caches(1, S, S)
    for _ in range(4):  # each side carries its own caches
        frame = torch.randn(1, 3, S, S)
        logits, *caches = run([frame.numpy(), *caches])
        with torch.no_grad():
            expected, *eager_caches = module(frame, *eager_caches)
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-3)


def test_the_runner_script_runs_the_library_standalone(online_build, tmp_path):
    model, result = online_build
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    script = result.directory / "run_on_device.py"
    # -I: no PYTHONPATH, user site or current folder; the script imports only tvm and numpy
    done = subprocess.run(
        [sys.executable, "-I", str(script), "--input", str(tmp_path / "frames.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("frame 0: ") and lines[1].startswith("frame 1: ")
    assert re.match(r"latency: [\d.]+ ms per frame", lines[2])
    # its top-5 are the streaming model's on the same normalised frames
    module = OnlineModule(model).eval()
    caches = module.init_caches(1, S, S)
    mean, std = torch.tensor(result.meta["mean"]), torch.tensor(result.meta["std"])
    for line, frame in zip(lines[:2], frames, strict=True):
        x = (torch.from_numpy(frame).float() / 255 - mean) / std
        with torch.no_grad():
            logits, *caches = module(x.permute(2, 0, 1)[None], *caches)
        printed = dict(pair.rsplit(" ", 1) for pair in line.split(": ", 1)[1].split(", "))
        assert list(printed) == [CLASSES[i] for i in logits[0].argsort(descending=True)]
        got = torch.tensor([float(printed[c]) for c in CLASSES])
        torch.testing.assert_close(got, logits[0], atol=2e-3, rtol=0)


def test_targets_tvm_accepts():
    host = resolve_target("llvm")
    assert host.kind.name == "llvm" and tvm_compile._runs_here(host, tvm_compile.import_tvm())
    pi = resolve_target("raspberry-pi/4b-aarch64")
    assert str(pi.attrs["mtriple"]).startswith("aarch64") and pi.attrs["mcpu"] == "cortex-a72"
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"}
    assert resolve_target(spec).attrs["mcpu"] == "cortex-a53"
    assert resolve_target(json.dumps(spec)).attrs["mcpu"] == "cortex-a53"  # as --target gives it
    assert set(tvm_compile.example_tags()) <= set(tvm_compile.import_tvm().target.list_tags())


@pytest.mark.parametrize(
    "target, message",
    [
        # TVM 0.27 refuses the command-line form; the message gives the dict to use instead
        ("llvm -mcpu=cortex-a72 -mattr=+neon", '{"kind": "llvm", "mcpu": "cortex-a72", "mattr"'),
        ("raspberry-pi/9", "raspberry-pi/4b-aarch64"),
        ("cuda", "CPUs only"),
        ("nvidia/jetson-orin-nano", "CPUs only"),
        ('{"kind": "llvm",', "not valid JSON"),
    ],
)
def test_targets_refused_with_what_to_do(target, message, tmp_path):
    with pytest.raises(TargetError, match=re.escape(message)):
        compile_model(_model("tsm_resnet_tiny"), tmp_path / "out", target=target, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_cross_build_without_a_cross_compiler_writes_nothing(tmp_path, monkeypatch):
    host_compiler = shutil.which("g++")
    monkeypatch.setattr(tvm_compile.shutil, "which", lambda name: None)
    with pytest.raises(TvmCompileError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        _compile(_model("tsm_resnet_tiny"), tmp_path / "out", target="raspberry-pi/4b-aarch64")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tvm_compile.shutil, "which", lambda name: host_compiler)
    assert tvm_compile._cross_compiler(resolve_target("arm/rasp4b64"), None) == host_compiler


def test_without_tvm_the_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'timeshift[tvm]'")):
        tvm_compile.import_tvm()


def test_cli_offline_host_build_matches_eager(tmp_path, capsys, monkeypatch):
    if compile_cli.add_parser not in cli.COMMANDS:  # until the command is listed in cli
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, compile_cli.add_parser))
    model = _model("tsm_resnet_tiny")
    timeshift.save_model(model, tmp_path / "m.pt", meta={"classes": CLASSES, "input_size": S})
    args = ["compile", str(tmp_path / "m.pt"), "--output", str(tmp_path / "out"), "--no-progress"]
    assert cli.main([*args, "--target", "llvm -mcpu=znver3"]) == 2
    assert '{"kind": "llvm", "mcpu": "znver3"}' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.main([*args, "--exporter", "legacy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["host_check"]["max_abs_diff"] < 1e-4 and not report["cross_compiled"]
    assert report["meta"]["mode"] == "offline" and report["meta"]["tvm_version"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    # the build happens in a temporary folder next to the output, removed afterwards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out"]
    clip = torch.randn(2, T, 3, S, S)
    run = tvm_runner(tmp_path / "out" / "model.so")
    with torch.no_grad():
        expected = model(clip)
    for one, logits in zip(clip, expected, strict=True):  # the graph's batch is 1
        (got,) = run([one[None].numpy()])
        torch.testing.assert_close(torch.from_numpy(got[0]), logits, atol=1e-4, rtol=1e-3)


def test_aarch64_cross_build_is_an_arm64_library(tmp_path):
    """The Raspberry Pi 4 target linked by the cross compiler (CI installs Debian's
    g++-aarch64-linux-gnu): an aarch64 ELF shared library, with the runner and metadata."""
    if not (shutil.which("aarch64-linux-gnu-g++") or shutil.which("g++-aarch64-linux-gnu")):
        pytest.skip("no aarch64 cross compiler: apt-get install g++-aarch64-linux-gnu")
    model = _model("tsm_mobilenet_v2_tiny")
    result = _compile(
        model, tmp_path / "pi4", target="raspberry-pi/4b-aarch64", online=True, size=S
    )
    assert result.cross_compiled and result.host_check is None  # it cannot run here
    header = result.library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # 64-bit ELF
    assert int.from_bytes(header[18:20], "little") == 183  # e_machine EM_AARCH64
    assert {p.name for p in result.directory.iterdir()} == FILES
