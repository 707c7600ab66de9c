"""``timeshift predict --manifest``: batch inference at scale (issue 19).

One tiny model and a dozen tiny videos per module. Several ranks are simulated in one process
by calling :func:`predict_manifest` with ``info=DistInfo(rank, world_size)`` for the other
ranks first, then rank 0 (which waits for their end markers, then merges); one test runs a
real ``torchrun`` with two gloo processes on the loopback, and one kills a real job.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.manifest import shard_of
from timeshift.data.sampling import segment_indices
from timeshift.data.transforms import eval_transforms
from timeshift.engine.distributed import DistInfo
from timeshift.engine.predict import predict_videos
from timeshift.engine.scale import PredictionWriter, ScaleError, merge_parts, predict_manifest

from conftest import http_folder, randomise, write_test_video

CLASSES = ["red", "green", "blue", "still"]
T, SIZE, FRAMES = 4, 32, 12
GOOD = 10  # decodable videos of the module's manifest
TIMEOUT = 180  # seconds: the most a subprocess of these tests may run


@pytest.fixture(scope="module")
def job(tmp_path_factory, one_thread):
    """A checkpoint, ``GOOD`` lossless videos (their frames kept), a missing and a corrupt
    file, and a paths manifest of them all."""
    folder = tmp_path_factory.mktemp("scale")
    torch.manual_seed(0)
    model = randomise(timeshift.create_model("tsm_resnet_tiny", num_classes=4, num_segments=T))
    model.eval()
    checkpoint = timeshift.save_model(
        model, folder / "tiny.pt", meta={"classes": CLASSES, "input_size": SIZE, "scale_size": 36}
    )
    rng = np.random.default_rng(0)
    videos = folder / "videos"
    videos.mkdir()
    frames = {}
    for i in range(GOOD):
        clip = rng.integers(0, 255, (FRAMES, 40, 48, 3), dtype=np.uint8)
        frames[write_test_video(videos / f"v{i:02d}.mkv", clip)] = clip  # lossless
    corrupt = videos / "corrupt.mkv"
    corrupt.write_bytes(b"not a video at all " * 20)
    bad = [str(videos / "missing.mkv"), str(corrupt)]
    paths = [*list(frames)[:5], bad[0], *list(frames)[5:], bad[1]]
    manifest = folder / "manifest.txt"
    manifest.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return {
        "folder": folder,
        "model": model,
        "checkpoint": str(checkpoint),
        "frames": frames,
        "bad": bad,
        "paths": paths,
        "manifest": manifest,
    }


def _predict(job, output, *, manifest=None, **options):
    """:func:`predict_manifest` as the tests run it: eager PyTorch, decoding in-process."""
    options = {"backend": "eager", "workers": 0, "progress": False, **options}
    return predict_manifest(job["checkpoint"], manifest or job["manifest"], output, **options)


def _run_ranks(job, output, world_size: int, **options) -> dict:
    """Every rank of ``world_size`` in turn in this process, rank 0 last (it waits for the
    others' end markers under the run id they share, then merges); rank 0's result."""
    result = None
    for rank in reversed(range(world_size)):
        info = DistInfo(rank=rank, local_rank=rank, world_size=world_size)
        # the run id torchrun's ranks share (rank 0's, broadcast), given
        result = _predict(job, output, info=info, run_id="simulated", **options)
    return result


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _by_path(rows: list[dict]) -> dict[str, dict]:
    found = {}
    for row in rows:
        assert row["path"] not in found, f"{row['path']} twice"
        found[row["path"]] = row
    return found


def _assert_same_rows(got: dict[str, dict], want: dict[str, dict]) -> None:
    """Same paths, same failures, same classes with scores within 1e-5."""
    assert sorted(got) == sorted(want)
    for path, expected in want.items():
        row = got[path]
        assert ("error" in row) == ("error" in expected), (row, expected)
        if "error" in expected:
            continue
        assert [e["label"] for e in row["top_k"]] == [e["label"] for e in expected["top_k"]]
        assert [e["index"] for e in row["top_k"]] == [e["index"] for e in expected["top_k"]]
        np.testing.assert_allclose(
            [e["score"] for e in row["top_k"]], [e["score"] for e in expected["top_k"]], atol=1e-5
        )


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """One single-process run over the whole manifest: its output folder and summary."""
    output = tmp_path_factory.mktemp("reference")
    summary = _predict(job, output)
    return {
        "output": output,
        "summary": summary,
        "rows": _by_path(_rows(output / "predictions.jsonl")),
    }


# -- one process -------------------------------------------------------------------------------


def test_one_process_writes_a_row_per_video_and_matches_predict_videos(job, reference):
    output, rows = reference["output"], reference["rows"]
    assert len(_rows(output / "predictions.jsonl")) == len(job["paths"])  # one row per path
    assert sorted(rows) == sorted(job["paths"])
    for path in job["bad"]:  # the run went on past them
        assert set(rows[path]) == {"path", "error"} and rows[path]["error"]
    assert "not found" in rows[job["bad"][0]]["error"]
    good = [p for p in job["paths"] if p not in job["bad"]]
    for path in good:
        assert len(rows[path]["top_k"]) == len(CLASSES)  # top 5 of 4 classes
        assert [set(e) for e in rows[path]["top_k"]] == [{"label", "index", "score"}] * 4
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary == reference["summary"]
    assert (summary["videos"], summary["failed"]) == (GOOD, 2)
    run = summary["this_run"]
    assert (run["processes"], run["videos"], run["failed"]) == (1, len(job["paths"]), 2)
    assert run["skipped_already_written"] == 0
    assert run["decode_seconds"] > 0 and run["model_seconds"] > 0 and run["videos_per_s"] > 0
    assert not list((output / "parts").glob("run-*"))  # the run's markers are cleaned up
    expected = predict_videos(
        job["checkpoint"], good, backend="eager", workers=0, progress=False, top_k=5
    )
    want = {e["path"]: {"path": e["path"], "top_k": e["top"]} for e in expected}
    _assert_same_rows({p: rows[p] for p in good}, want)


# -- several processes ---------------------------------------------------------------------------


def test_ranks_take_disjoint_shares_whose_union_is_the_manifest(
    job, reference, tmp_path, monkeypatch
):
    result = _run_ranks(job, tmp_path, 2, merge=False)
    assert not (tmp_path / "predictions.jsonl").exists()  # merge=False: the parts only
    summary = merge_parts(tmp_path, ranks=result["ranks"])
    shares = [_rows(tmp_path / "parts" / f"part-{r:05d}.jsonl") for r in range(2)]
    paths = [{row["path"] for row in share} for share in shares]
    assert all(len(share) == len(p) for share, p in zip(shares, paths, strict=True))
    assert not paths[0] & paths[1] and paths[0] | paths[1] == set(job["paths"])
    assert all(shard_of(p, 2) == rank for rank in range(2) for p in paths[rank])
    assert all(paths), "a share is empty: the test would not see two ranks"
    _assert_same_rows(_by_path(_rows(tmp_path / "predictions.jsonl")), reference["rows"])
    assert summary["this_run"]["processes"] == 2
    assert [r["done"] + r["failed"] for r in summary["ranks"]] == [len(p) for p in paths]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict:
    # one thread per process: the tiny model gains nothing from more on a 2-core machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_processes_under_torchrun_give_the_rows_of_one(job, reference, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()),
        "-m", "timeshift", "predict", job["checkpoint"],
        "--manifest", str(job["manifest"]),
        "--output", str(tmp_path / "out"),
        "--backend", "eager", "--workers", "0", "--no-progress", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=_environment()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _by_path(_rows(tmp_path / "out" / "predictions.jsonl"))
    _assert_same_rows(rows, reference["rows"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["this_run"]["processes"] == 2
    assert (summary["videos"], summary["failed"]) == (GOOD, 2)
    shares = [
        {r["path"] for r in _rows(tmp_path / "out" / "parts" / f"part-{k:05d}.jsonl")}
        for k in range(2)
    ]
    assert all(shares) and not shares[0] & shares[1]  # each process wrote its own share


# -- resuming ----------------------------------------------------------------------------------

# the real CLI, each decode slowed down so that the kill lands in the middle of the run
_SLOW_JOB = """
import sys, time
from timeshift.engine import scale
decode = scale.VideoScorer.decode
def slow(self, *args, **kwargs):
    time.sleep(0.05)
    return decode(self, *args, **kwargs)
scale.VideoScorer.decode = slow
from timeshift.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_killed_job_resumes_without_losing_or_duplicating_a_video(job, tmp_path, capsys):
    rng = np.random.default_rng(1)
    videos = [
        write_test_video(tmp_path / f"k{i:02d}.mkv", rng.integers(0, 255, (8, 36, 40, 3), np.uint8))
        for i in range(40)
    ]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"{v}\n" for v in videos), encoding="utf-8")
    output = tmp_path / "out"
    arguments = ["predict", job["checkpoint"], "--manifest", str(manifest), "--output", str(output)]
    arguments += ["--backend", "eager", "--workers", "0", "--no-progress", "--flush-every", "1"]
    part = output / "parts" / "part-00000.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_JOB, *arguments],
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while _lines_in(part) < 5 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    kept = _lines_in(part)
    assert 5 <= kept < len(videos), f"{kept} rows before the kill: it did not land mid-run"
    assert not (output / "predictions.jsonl").exists()
    before = part.read_bytes().splitlines()[:kept]
    written = {json.loads(line)["path"] for line in before}
    pending = next(v for v in videos if v not in written)
    torn = json.dumps({"path": pending, "top_k": [{"label": "red", "index": 0, "score": 1.0}]})
    with open(part, "ab") as f:  # a write cut short by the kill
        f.write(torn[: len(torn) // 2].encode())

    assert main([*arguments, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["this_run"]["skipped_already_written"] == kept
    assert summary["this_run"]["videos"] == len(videos) - kept
    rows = _rows(output / "predictions.jsonl")
    assert sorted(r["path"] for r in rows) == sorted(videos)  # each exactly once, none lost
    assert all("top_k" in r for r in rows)
    fake = json.loads(torn)["top_k"]
    assert next(r for r in rows if r["path"] == pending)["top_k"] != fake  # redone
    assert part.read_bytes().splitlines()[:kept] == before  # the rows kept are untouched
    assert _lines_in(part) == len(videos)  # the torn line was cut, nothing redone twice
    assert sorted(r["path"] for r in _rows(part)) == sorted(videos)
    assert not list((output / "parts").glob("run-*"))  # the killed run's markers too


def test_a_job_half_done_under_two_ranks_is_finished_by_one(job, reference, tmp_path, monkeypatch):
    # rank 1 of 2 finishes its share; rank 0 (another node) is lost before writing anything
    info = DistInfo(rank=1, local_rank=1, world_size=2)
    share = _predict(job, tmp_path, info=info, run_id="first")
    written = share["done"] + share["failed"]
    assert 0 < written < len(job["paths"])
    summary = _predict(job, tmp_path)  # the same command, one process
    assert summary["this_run"]["skipped_already_written"] == written
    assert summary["this_run"]["videos"] == len(job["paths"]) - written
    _assert_same_rows(_by_path(_rows(tmp_path / "predictions.jsonl")), reference["rows"])
    parts = [row for path in (tmp_path / "parts").glob("part-*.jsonl") for row in _rows(path)]
    assert len(parts) == len(job["paths"])  # no video predicted twice


def test_a_job_half_done_by_one_process_is_finished_by_three(job, reference, tmp_path, monkeypatch):
    half = tmp_path / "half.txt"
    half.write_text("".join(f"{p}\n" for p in job["paths"][::2]), encoding="utf-8")
    _predict(job, tmp_path, manifest=half)
    summary = _run_ranks(job, tmp_path, 3)
    first = len(job["paths"][::2])
    assert summary["this_run"]["processes"] == 3
    assert summary["this_run"]["skipped_already_written"] == first
    assert summary["this_run"]["videos"] == len(job["paths"]) - first
    _assert_same_rows(_by_path(_rows(tmp_path / "predictions.jsonl")), reference["rows"])
    parts = [row for path in (tmp_path / "parts").glob("part-*.jsonl") for row in _rows(path)]
    assert sorted(r["path"] for r in parts) == sorted(job["paths"])  # each written once


def test_retry_errors_redoes_failed_videos(job, tmp_path):
    good = next(iter(job["frames"]))
    broken = tmp_path / "later.mkv"
    broken.write_bytes(b"\x00" * 512)  # an upload not finished yet
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{good}\n{broken}\n", encoding="utf-8")
    output = tmp_path / "out"
    first = _predict(job, output, manifest=manifest)
    assert (first["videos"], first["failed"]) == (1, 1)
    write_test_video(broken, job["frames"][good])  # the upload completes
    again = _predict(job, output, manifest=manifest)  # without retry_errors: nothing to do
    assert (again["failed"], again["this_run"]["skipped_already_written"]) == (1, 2)
    retried = _predict(job, output, manifest=manifest, retry_errors=True)
    assert (retried["videos"], retried["failed"]) == (2, 0)
    assert retried["this_run"]["skipped_already_written"] == 1
    rows = _by_path(_rows(output / "predictions.jsonl"))
    assert "error" not in rows[str(broken)]
    same = {str(broken): {**rows[good], "path": str(broken)}}  # the same frames, the same scores
    _assert_same_rows({str(broken): rows[str(broken)]}, same)


# -- outputs -----------------------------------------------------------------------------------


def test_parquet_output_reads_back_as_the_jsonl_rows(job, reference, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="--output-format parquet needs pyarrow")
    summary = _predict(job, tmp_path, output_format="parquet", flush_every=3)
    assert summary["predictions"] == "predictions.parquet"
    assert len(list((tmp_path / "parts").glob("part-00000-*.parquet"))) > 1  # one per flush
    table = pq.read_table(tmp_path / "predictions.parquet")
    rows = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
    assert len(rows) == len(job["paths"])
    _assert_same_rows(_by_path(rows), reference["rows"])
    # the jsonl merge of the same parts gives the same rows: the formats differ only on disk
    merge_parts(tmp_path, output_format="jsonl")
    _assert_same_rows(_by_path(_rows(tmp_path / "predictions.jsonl")), reference["rows"])


def _protocol_clip(frames: np.ndarray) -> torch.Tensor:
    """The test protocol by hand: centre-of-segment frames, resize 36, centre crop 32."""
    (indices,) = segment_indices(len(frames), T, mode="test")
    views = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2)[None]
    clip, _ = eval_transforms(SIZE, scale_size=36)(views, -1, None)
    return clip


def test_features_are_the_embedding_before_the_classifier(job, reference, tmp_path):
    videos = list(job["frames"])[:3]
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{v}\n" for v in [*videos, job["bad"][0]]), encoding="utf-8")
    _predict(job, tmp_path, manifest=manifest, features=True)
    rows = _by_path(_rows(tmp_path / "predictions.jsonl"))
    model = job["model"]
    assert "features" not in rows[job["bad"][0]]
    for video in videos:
        clip = _protocol_clip(job["frames"][video])
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(clip), pre_logits=True)[0]
        assert len(rows[video]["features"]) == model.num_features
        np.testing.assert_allclose(rows[video]["features"], expected.numpy(), atol=1e-5)
    without = {v: {k: x for k, x in rows[v].items() if k != "features"} for v in videos}
    _assert_same_rows(without, {v: reference["rows"][v] for v in videos})


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{_free_port()}/gone.mkv"  # nothing listens there any more


def test_urls_give_the_rows_of_the_local_files(job, reference, tmp_path):
    videos = list(job["frames"])[:3]
    folder = Path(videos[0]).parent
    with http_folder(folder) as base:
        urls = {f"{base}/{Path(v).name}": v for v in videos}
        absent, closed = f"{base}/absent.mkv", _closed_port_url()
        manifest = tmp_path / "urls.txt"
        manifest.write_text("".join(f"{u}\n" for u in [*urls, absent, closed]), encoding="utf-8")
        _predict(job, tmp_path / "out", manifest=manifest)
    rows = _by_path(_rows(tmp_path / "out" / "predictions.jsonl"))
    _assert_same_rows(
        {u: rows[u] for u in urls},
        {u: {**reference["rows"][v], "path": u} for u, v in urls.items()},
    )
    assert "cannot be downloaded" in rows[absent]["error"]  # 404
    assert "cannot be downloaded" in rows[closed]["error"]  # connection refused


# -- misuse ------------------------------------------------------------------------------------


def test_bad_cli_use_is_refused_before_any_part_file(job, tmp_path, capsys):
    output = tmp_path / "out"
    video, manifest = job["paths"][0], str(job["manifest"])
    options = ["--backend", "eager", "--workers", "0", "--no-progress"]

    def predict(*arguments: str) -> int:
        return main(["predict", job["checkpoint"], *arguments, *options])

    assert predict("--manifest", manifest) == 2
    assert "--manifest needs --output" in capsys.readouterr().err
    assert predict(video, "--manifest", manifest, "--output", str(output)) == 2
    assert "not both" in capsys.readouterr().err
    assert predict(video, "--retry-errors") == 2
    assert "--retry-errors: for --manifest only" in capsys.readouterr().err

    malformed = tmp_path / "m.jsonl"
    malformed.write_text('{"path": "a.mkv"}\n\n{"path": "b.mkv"\n', encoding="utf-8")
    assert predict("--manifest", str(malformed), "--output", str(output)) == 2
    assert f"{malformed}:3: not JSON" in capsys.readouterr().err
    assert not output.exists()  # checked before any work


def test_a_second_writer_on_the_same_output_and_rank_fails(job, tmp_path):
    parts = tmp_path / "out" / "parts"
    with PredictionWriter(parts, 0) as first:
        with pytest.raises(ScaleError, match="another process is writing rank 0"):
            PredictionWriter(parts, 0)
        with pytest.raises(ScaleError, match="another process is writing rank 0"):
            _predict(job, tmp_path / "out")  # the whole job, as a second command would
        PredictionWriter(parts, 1).close()  # another rank has its own file
        first.write([{"path": "a.mkv", "error": "x"}])
    with PredictionWriter(parts, 0) as again:  # released at the end
        again.write([{"path": "b.mkv", "error": "y"}])
    assert [r["path"] for r in _rows(parts / "part-00000.jsonl")] == ["a.mkv", "b.mkv"]


def test_a_second_job_on_the_same_output_folder_fails_before_any_work(job, tmp_path):
    import fcntl

    parts = tmp_path / "out" / "parts"
    parts.mkdir(parents=True)
    with open(parts / ".lock-job", "a") as held:  # a running job's rank 0 holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ScaleError, match="another job is writing into this output folder"):
            _predict(job, tmp_path / "out")
        assert not list(parts.glob("part-*"))  # nothing written
    summary = _predict(job, tmp_path / "out")  # released: the job runs
    assert summary["videos"] + summary["failed"] == len(job["paths"])


def test_a_video_that_kills_its_decoding_worker_is_an_error_row(
    job, reference, tmp_path, monkeypatch
):
    """A decoder that crashes its process (a segfault in FFmpeg, the OOM killer) on one video:
    that video gets an error row, a new worker goes on with the rest, and a rerun does not try
    it again (it would kill the job again)."""
    import signal

    from torch.utils.data import get_worker_info

    from timeshift.engine.scale import VideoScorer

    poison = job["paths"][2]
    decode = VideoScorer.decode

    def crashing(self, path, location=None, **kwargs):
        if path == poison and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(self, path, location, **kwargs)

    monkeypatch.setattr(VideoScorer, "decode", crashing)  # the forked workers inherit it
    summary = _predict(job, tmp_path, workers=1)
    rows = _by_path(_rows(tmp_path / "predictions.jsonl"))
    assert sorted(rows) == sorted(job["paths"])
    assert "decoding process died" in rows[poison]["error"]
    others = {p: r for p, r in reference["rows"].items() if p != poison}
    _assert_same_rows({p: rows[p] for p in others}, others)
    assert summary["failed"] == len(job["bad"]) + 1
    again = _predict(job, tmp_path, workers=1)  # skipped: written as an error
    assert again["this_run"]["videos"] == 0
