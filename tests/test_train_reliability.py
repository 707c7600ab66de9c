"""Training state under faults: kills at any instant, divergence, full disks, changed configs.

Every test starts from a copy of one small run stopped after epoch 0 (``epoch0``) and resumes
it, so that each fault costs one epoch of a tiny model.
"""

import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import timeshift
from timeshift.cli import main
from timeshift.data.synthetic import SyntheticSpec, make_synthetic
from timeshift.engine import trainer
from timeshift.engine.config import ConfigError, check_resume_config, load_config, to_dict
from timeshift.engine.optim import build_optimizer, build_scheduler
from timeshift.engine.run_directory import RunDirectory
from timeshift.engine.train_state import Best, TrainState
from timeshift.engine.trainer import NonFiniteLossError, NonFiniteModelError, fit
from timeshift.models import checkpoints
from timeshift.models.checkpoints import CheckpointWriteError, atomic_save, read_checkpoint

STEPS_PER_EPOCH = 2  # 4 training videos, batches of 2


class Killed(BaseException):
    """Stands for the process dying: nothing in the library may catch it."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module trains tiny models: one thread is 3x faster on a busy machine."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = SyntheticSpec(
        videos_per_class=2, val_videos_per_class=1, size=32, frames=8, families=("horizontal",)
    )
    return make_synthetic(tmp_path_factory.mktemp("synth"), spec, progress=False)


def _overrides(dataset, **extra) -> list[str]:
    base = {
        "model.name": "tsm_resnet_tiny",
        "model.num_segments": 4,
        "data.format": "videos",
        "data.train": str(dataset["train"]),
        "data.val": str(dataset["val"]),
        "data.root": str(dataset["root"]),
        "data.classes": str(dataset["classes"]),
        "data.size": 32,
        "data.scale_size": 32,
        "data.workers": 0,
        "train.epochs": 2,
        "train.batch_size": 2,
        "train.lr": 0.01,
        "train.schedule": "cosine",
        "eval.batch_size": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(dataset, **extra):
    return load_config(None, _overrides(dataset, **extra))


def _script_top1(mp, values):
    """Validation top-1 follows ``values`` (whether an epoch improves is then known)."""
    real = trainer.evaluate
    scripted = iter(values)

    def evaluate(*args, **kwargs):
        ev = real(*args, **kwargs)
        ev.report["top1"] = next(scripted)
        return ev

    mp.setattr(trainer, "evaluate", evaluate)


@pytest.fixture(scope="module")
def epoch0(tmp_path_factory, dataset):
    """A 2-epoch run (val top-1 0.5 at epoch 0) stopped right after epoch 0 was committed."""
    run = tmp_path_factory.mktemp("epoch0") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _script_top1(mp, [0.5])
        real_end = trainer._end_of_epoch

        def stop(*args, **kwargs):
            real_end(*args, **kwargs)
            raise KeyboardInterrupt

        mp.setattr(trainer, "_end_of_epoch", stop)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(dataset), run, progress=False)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _hidden_leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def _assert_consistent(run: Path, *, epochs: int, best_epoch: int) -> None:
    """The run directory describes the same run in last.pt, best.pt and metrics.jsonl."""
    last = read_checkpoint(run / "last.pt")
    state = last["train_state"]
    assert state["epoch"] == epochs - 1
    best = read_checkpoint(run / "best.pt")
    assert best["meta"]["epoch"] == best_epoch
    assert best["meta"]["top1"] == state["best_top1"]
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert rows == json.loads(json.dumps(state["history"]))
    assert _hidden_leftovers(run) == []
    for name in ("last.pt", "best.pt"):
        model = timeshift.load_model(run / name)
        assert all(
            torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
        )


# -- item 1: a kill at any write leaves a run that resume completes consistently ---------------
@pytest.mark.parametrize(
    ("kill_before", "top1", "best_epoch"),
    [
        ("best.pt", [0.75, 0.75], 1),
        # the re-run epoch no longer improves: the uncommitted best.pt must be rolled back
        ("last.pt", [0.75, 0.25], 0),
        ("metrics.jsonl", [0.75], 1),
    ],
)
def test_kill_at_any_write_is_repaired_on_resume(
    tmp_path, dataset, epoch0, monkeypatch, kill_before, top1, best_epoch
):
    run = _copy(epoch0, tmp_path)
    cfg = _cfg(dataset)
    _script_top1(monkeypatch, top1)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == kill_before:
            raise Killed
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        fit(cfg, run, resume=run / "last.pt", progress=False)
    monkeypatch.setattr(os, "replace", real_replace)

    # at the instant of the kill: both checkpoints load, metrics never run ahead of last.pt
    committed = read_checkpoint(run / "last.pt")["train_state"]["epoch"]
    timeshift.load_model(run / "best.pt")
    assert all(r["epoch"] <= committed for r in _rows(run))

    fit(cfg, run, resume=run / "last.pt", progress=False)
    _assert_consistent(run, epochs=2, best_epoch=best_epoch)


_DYING_RUN = """
import io, json, os, sys, torch
from timeshift.engine.config import load_config
from timeshift.engine.trainer import fit
real_save = torch.save

def dying(obj, f, *args, **kwargs):
    state = obj.get("train_state") if isinstance(obj, dict) else None
    if state and state["epoch"] == 1:  # last.pt of epoch 1: die half-way through the write
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os._exit(9)
    return real_save(obj, f, *args, **kwargs)

torch.save = dying
run = sys.argv[1]
fit(load_config(None, json.loads(sys.argv[2])), run, resume=run + "/last.pt", progress=False)
"""


@pytest.mark.slow  # a real process killed half-way through a write
def test_killed_write_leaks_no_temporary_and_resume_repairs(tmp_path, dataset, epoch0):
    run = _copy(epoch0, tmp_path)
    decoys = ["notes.tmp", ".last.pt.bak", ".mine.pt.12345.abcdefgh.tmp", "last.pt.tmp"]
    for name in decoys:
        (run / name).write_text("not ours")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _DYING_RUN, str(run), json.dumps(_overrides(dataset))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 9, done.stderr[-3000:]
    leaked = [p for p in run.glob(".last.pt.*.tmp")]
    assert leaked and leaked[0].stat().st_size > 0  # the fault is real: a half-written file
    assert read_checkpoint(run / "last.pt")["train_state"]["epoch"] == 0

    fit(_cfg(dataset), run, resume=run / "last.pt", progress=False)
    for name in decoys:  # files that are not our temporaries are left alone
        assert (run / name).read_text() == "not ours"
        (run / name).unlink()
    best_epoch = read_checkpoint(run / "best.pt")["meta"]["epoch"]
    _assert_consistent(run, epochs=2, best_epoch=best_epoch)


# -- item 3: metrics.jsonl is rewritten from the committed history -------------------------------
def test_resume_rewrites_metrics_without_duplicates(tmp_path, dataset, epoch0):
    run = _copy(epoch0, tmp_path)
    rows = (run / "metrics.jsonl").read_text()
    # what an older version (append + kill between the row and last.pt) left behind
    (run / "metrics.jsonl").write_text(rows + rows + rows.replace('"epoch": 0', '"epoch": 1'))
    fit(_cfg(dataset), run, resume=run / "last.pt", progress=False)
    best_epoch = read_checkpoint(run / "best.pt")["meta"]["epoch"]
    _assert_consistent(run, epochs=2, best_epoch=best_epoch)


# -- item 2: a diverged model is never saved ----------------------------------------------------
def _blow_up_on_last_step(mp, kind: str):
    """After the last optimiser step of the resumed epoch the weights are NaN or 1e30 (finite,
    but the outputs are not); that step's loss was computed before, so it is finite."""
    real = trainer.build_optimizer

    def build(model, **kwargs):
        optimizer = real(model, **kwargs)
        steps = {"n": 0}

        def hook(opt, args, kw):
            steps["n"] += 1
            if steps["n"] == STEPS_PER_EPOCH:
                with torch.no_grad():
                    if kind == "nan":
                        model.fc.weight[0, 0] = float("nan")
                    else:
                        for p in model.parameters():
                            p.mul_(1e30)

        optimizer.register_step_post_hook(hook)
        return optimizer

    mp.setattr(trainer, "build_optimizer", build)


@pytest.mark.parametrize(
    ("kind", "val"), [("nan", True), ("huge", True), ("huge", False)], ids=["nan", "huge", "noval"]
)
def test_diverged_weights_are_never_saved(tmp_path, dataset, epoch0, monkeypatch, kind, val):
    run = _copy(epoch0, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    _blow_up_on_last_step(monkeypatch, kind)
    cfg = _cfg(dataset) if val else _cfg(dataset, **{"data.val": "null"})
    with pytest.raises(NonFiniteModelError, match="last good checkpoint") as caught:
        fit(cfg, run, resume=run / "last.pt", progress=False, allow_config_change=not val)
    assert isinstance(caught.value, NonFiniteLossError)  # existing handlers still catch it
    assert "epoch 1" in str(caught.value) and str(run / "last.pt") in str(caught.value)
    for name, data in before.items():
        assert (run / name).read_bytes() == data, name
    assert _hidden_leftovers(run) == []


# -- item 4: resume compares the configuration --------------------------------------------------
def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path, dataset, epoch0):
    run = _copy(epoch0, tmp_path)
    before = (run / "last.pt").read_bytes()
    cfg = _cfg(dataset, **{"train.lr": 0.02, "train.momentum": 0.8})
    with pytest.raises(ConfigError) as caught:
        fit(cfg, run, resume=run / "last.pt", progress=False)
    message = str(caught.value)
    assert "train.lr: 0.01 -> 0.02" in message and "train.momentum: 0.9 -> 0.8" in message
    assert "allow_config_change" in message and "data.train" not in message
    assert (run / "last.pt").read_bytes() == before


def test_resume_with_allowed_change_uses_the_new_values(tmp_path, dataset, epoch0, capsys):
    run = _copy(epoch0, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    OmegaConf.save(_cfg(dataset), recipe)
    args = ["train", str(recipe), "--output", str(run), "--resume", str(run / "last.pt")]
    args += ["--no-progress", "--set", "train.lr=0.02"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.01 -> 0.02" in err and "--allow-config-change" in err
    assert main([*args, "--allow-config-change"]) == 0
    last = read_checkpoint(run / "last.pt")
    assert last["meta"]["config"]["train"]["lr"] == 0.02
    groups = last["train_state"]["optimizer"]["param_groups"]
    normal = next(g for g in groups if g["name"] == "normal_weight")
    assert normal["initial_lr"] == pytest.approx(0.02)  # the new lr is the one trained with
    assert last["train_state"]["scheduler"]["base_lrs"][0] == pytest.approx(0.02)


def test_resume_with_another_optimizer(tmp_path, dataset, epoch0, caplog):
    run = _copy(epoch0, tmp_path)
    cfg = _cfg(dataset, **{"train.optimizer": "adamw"})
    with pytest.raises(ConfigError, match=re.escape("train.optimizer: sgd -> adamw")):
        fit(cfg, run, resume=run / "last.pt", progress=False)
    with caplog.at_level(logging.WARNING, logger="timeshift"):
        fit(cfg, run, resume=run / "last.pt", progress=False, allow_config_change=True)
    assert "fresh" in caplog.text and "optimiser" in caplog.text
    groups = read_checkpoint(run / "last.pt")["train_state"]["optimizer"]["param_groups"]
    assert "betas" in groups[0]  # AdamW's state now


def test_resume_with_another_step_count_per_epoch(tmp_path, dataset, epoch0):
    """The same configuration over a list that grew (or another number of processes) takes
    another number of steps per epoch: the per-iteration schedule would resume elsewhere."""
    run = _copy(epoch0, tmp_path)
    listed = Path(dataset["train"])
    original = listed.read_text()
    try:
        listed.write_text(original * 2)  # 8 entries, batches of 2: 4 steps instead of 2
        with pytest.raises(ConfigError, match=r"steps per epoch: 2 -> 4"):
            fit(_cfg(dataset), run, resume=run / "last.pt", progress=False)
        fit(_cfg(dataset), run, resume=run / "last.pt", progress=False, allow_config_change=True)
    finally:
        listed.write_text(original)
    state = read_checkpoint(run / "last.pt")["train_state"]
    # epoch 1 started at step 1 x 4 and ran 4 steps: the schedule's end, not half-way
    assert state["epoch"] == 1 and state["steps_per_epoch"] == 4
    assert state["scheduler"]["last_epoch"] == 8


def test_resume_config_rules(dataset):
    saved = to_dict(_cfg(dataset))
    # bookkeeping keys may change freely
    assert check_resume_config(saved, _cfg(dataset, **{"data.workers": 3})) == []
    # extending a step schedule continues it exactly (its lr does not depend on the length)
    step = to_dict(_cfg(dataset, **{"train.schedule": "step"}))
    accepted = check_resume_config(
        step, _cfg(dataset, **{"train.schedule": "step", "train.epochs": 5})
    )
    assert accepted == ["train.epochs: 2 -> 5"]
    # a cosine schedule is defined over the whole run: another length is refused ...
    with pytest.raises(ConfigError, match="cosine"):
        check_resume_config(saved, _cfg(dataset, **{"train.epochs": 5}))
    # ... unless asked, and then reported
    assert check_resume_config(saved, _cfg(dataset, **{"train.epochs": 5}), allow_change=True) == [
        "train.epochs: 2 -> 5"
    ]
    # a run saved before the schema gained a key resumes when the key keeps its default ...
    older = {
        **saved,
        "data": {k: v for k, v in saved["data"].items() if k != "direction_sensitive"},
    }
    assert check_resume_config(older, _cfg(dataset)) == []
    # ... and a set value is a change
    with pytest.raises(ConfigError, match=r"data.direction_sensitive: \(absent\) -> true"):
        check_resume_config(older, _cfg(dataset, **{"data.direction_sensitive": True}))


def _train_state(name: str = "sgd") -> TrainState:
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4)
    optimizer = build_optimizer(model, name=name, lr=0.01, weight_decay=1e-4, momentum=0.9)
    scheduler = build_scheduler(optimizer, kind="cosine", epochs=2, steps_per_epoch=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainState(model, optimizer, scheduler, scaler, optimizer_name=name, steps_per_epoch=3)


def test_train_state_round_trip_and_older_checkpoints():
    state = _train_state()
    state.model(torch.randn(2, 4, 3, 32, 32)).sum().backward()
    state.optimizer.step()  # momentum buffers to save
    state.scheduler.step()
    assert state.record({"epoch": 0, "train_top1": 0.5, "val_top1": 0.25})
    assert not state.record({"epoch": 1, "train_top1": 0.75, "val_top1": 0.25})
    saved = state.state_dict()
    restored = _train_state()
    restored.load_state_dict(saved)
    assert (restored.epoch, restored.start_epoch) == (1, 2)
    assert restored.best == Best(0.25, 0)
    assert restored.history == state.history and restored.history is not state.history
    assert restored.scheduler.last_epoch == 1
    buffers = [s["momentum_buffer"] for s in restored.optimizer.state.values()]
    assert buffers and all(
        torch.equal(a, s["momentum_buffer"])
        for a, s in zip(buffers, state.optimizer.state.values(), strict=True)
    )
    # written before best_epoch / optimizer_name / steps_per_epoch were recorded
    older = {
        k: v
        for k, v in saved.items()
        if k not in ("best_epoch", "optimizer_name", "steps_per_epoch", "world_size")
    }
    restored = _train_state()
    restored.load_state_dict(older)
    assert restored.best == Best(0.25, 0)  # the first epoch that reached it
    assert restored.optimizer.state  # recognised as SGD's state: loaded
    adamw = _train_state("adamw")
    adamw.load_state_dict(older)  # another optimiser: a fresh state, never a KeyError
    assert not adamw.optimizer.state


# -- item 5: files get the mode the umask gives -------------------------------------------------
@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_checkpoint_mode_follows_umask(tmp_path, umask):
    path = atomic_save({"x": torch.zeros(2)}, tmp_path / "c.pt")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4)
    saved = checkpoints.save_model(model, tmp_path / "m.pt")
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask


def test_export_mode_follows_umask(tmp_path, umask):
    from timeshift.export import export_model

    model = timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4)
    result = export_model(model, tmp_path / "m.ts", format="torchscript", size=32)
    assert result.path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.ts"]


# -- item 3/8: temporaries and write failures of atomic_save ------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_export_removes_what_a_killed_export_left(tmp_path):
    """A killed export leaves a full-size temporary next to its target, like a killed save."""
    from timeshift.export import export_model

    stale = tmp_path / f".m.ts.{_dead_pid()}.k1l2.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".m.ts.{os.getpid()}.a1b2.tmp"  # a concurrent export of this process
    live.write_bytes(b"x")
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4)
    export_model(model, tmp_path / "m.ts", format="torchscript", size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.ts", live.name])


def test_atomic_save_removes_only_its_own_stale_temporaries(tmp_path):
    dead = _dead_pid()
    stale = [f".c.pt.{dead}.abcd1234.tmp", ".c.pt.abcd1234.tmp"]  # dead writer; older naming
    kept = [f".d.pt.{dead}.abcd1234.tmp", "c.pt.tmp", ".c.pt.notes", f".c.pt.{os.getpid()}.x.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    # a writer in progress holds a lock on its temporary: it is never removed
    busy = tmp_path / f".c.pt.{dead}.busy0000.tmp"
    busy.write_bytes(b"x")
    with open(busy, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        atomic_save({"x": 1}, tmp_path / "c.pt")
        assert busy.exists()
    for name in stale:
        assert not (tmp_path / name).exists(), name
    for name in kept:
        assert (tmp_path / name).exists(), name


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what torch's zip writer raises when the file system drops a write
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 397248 vs 397140"),
    ],
    ids=["ENOSPC", "zip-writer"],
)
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    target = tmp_path / "c.pt"
    atomic_save({"v": 1}, target)
    real = torch.save

    def full(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real(obj, buffer)
        f.write(buffer.getvalue()[:10])
        raise error

    monkeypatch.setattr(checkpoints.torch, "save", full)
    with pytest.raises(CheckpointWriteError) as caught:
        atomic_save({"v": 2}, target)
    assert str(target) in str(caught.value) and "intact" in str(caught.value)
    assert isinstance(caught.value, OSError)  # what callers caught before
    monkeypatch.undo()
    assert read_checkpoint(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_full_disk_during_training_stops_cleanly(tmp_path, dataset, epoch0, monkeypatch, capsys):
    run = _copy(epoch0, tmp_path)
    before = (run / "last.pt").read_bytes()

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    recipe = tmp_path / "recipe.yaml"
    OmegaConf.save(_cfg(dataset), recipe)
    args = ["train", str(recipe), "--output", str(run), "--resume", str(run / "last.pt")]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err and str(run) in err
    assert (run / "last.pt").read_bytes() == before
    assert _hidden_leftovers(run) == []


def test_unwritable_output_dir_fails_before_training(tmp_path, dataset, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory's parent should be")

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer, "train_one_epoch", never)
    with pytest.raises(trainer.RunDirectoryError, match=str(blocker / "run")):
        fit(_cfg(dataset), blocker / "run", progress=False)
    recipe = tmp_path / "recipe.yaml"
    OmegaConf.save(_cfg(dataset), recipe)
    assert main(["train", str(recipe), "--output", str(blocker / "run"), "--no-progress"]) == 2
    assert "cannot write to the run directory" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoints.tempfile, "TemporaryFile", read_only)
    with pytest.raises(trainer.RunDirectoryError, match="Read-only file system"):
        fit(_cfg(dataset), tmp_path / "run", progress=False)


# -- siblings: strict JSON in metrics.jsonl; a rank-0 failure under torchrun ---------------------
def test_metrics_jsonl_is_strict_json(tmp_path):
    # a validation set whose every video failed gives a NaN top-1: bare NaN is not JSON
    RunDirectory(tmp_path).write_metrics([{"epoch": 0, "val_top1": float("nan"), "loss": 1.5}])

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=refuse) == {"epoch": 0, "val_top1": None, "loss": 1.5}


def _rank(rank: int, init: str, results) -> None:
    import torch.distributed as dist

    from timeshift.engine.distributed import DistInfo, run_on_main

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    info = DistInfo(rank=rank, local_rank=rank, world_size=2)

    def work():
        raise trainer.RunDirectoryError("the run directory /x cannot be written")

    try:
        run_on_main(info, work)
        results.put((rank, "returned"))
    except Exception as exc:
        results.put((rank, f"{type(exc).__name__}: {exc}"))
    dist.destroy_process_group()


def test_rank0_failure_stops_every_rank(tmp_path):
    """Rank 0 prepares the run directory; when that fails the other ranks must stop too, not
    wait for it at the next collective forever."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    workers = [context.Process(target=_rank, args=(r, init, results)) for r in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    hung = [w for w in workers if w.is_alive()]
    for w in hung:
        w.kill()
    assert not hung, "a rank is still waiting"
    outcome = dict(results.get(timeout=5) for _ in workers)
    assert outcome[0] == "RunDirectoryError: the run directory /x cannot be written"
    # a TimeshiftError (a RuntimeError): the CLI prints it as one line
    assert outcome[1].startswith("TimeshiftError: rank 0 failed") and "/x cannot" in outcome[1]


def test_plots_are_replaced_atomically(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from timeshift.engine.figures import plot_curves

    rows = [{"epoch": 0, "train_loss": 1.0, "train_top1": 0.5, "val_top1": 0.5}]
    plot_curves(rows, tmp_path / "curves.png")
    before = (tmp_path / "curves.png").read_bytes()

    def dies_mid_write(self, target, *args, **kwargs):
        with open(target, "wb") if isinstance(target, str | Path) else nullcontext(target) as f:
            f.write(before[:100])
        raise Killed

    monkeypatch.setattr(Figure, "savefig", dies_mid_write)
    with pytest.raises(Killed):
        plot_curves(rows * 2, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == before
