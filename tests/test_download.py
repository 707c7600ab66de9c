"""Fetching weights files into the cache (models/download.py), against a local HTTP server that
serves a real reference-TSM-format checkpoint: cache hits, resumed downloads, hash checks, HTTP
failures, offline mode, mirrors, concurrent callers."""

import hashlib
import io
import logging
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from timeshift.errors import TimeshiftError
from timeshift.models import download
from timeshift.models.download import DownloadError, cache_dir, fetch_weights

NAME = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"


class _State:
    """What the test server serves and how it misbehaves; every request is recorded."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None  # body bytes sent before the connection is cut
        self.cuts_left = 0  # how many more requests are cut
        self.ranges = True  # False: ignore Range headers (answer 200 with the whole file)
        self.html: set[str] = set()  # paths answered with a web page
        self.redirects: dict[str, str] = {}
        self.delay = 0.0  # seconds before answering
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.base = ""

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def ranges_asked(self) -> list[str | None]:
        return [request["range"] for request in self.requests]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        state: _State = self.server.state
        path = urllib.parse.unquote(self.path.lstrip("/"))
        with state.lock:
            state.requests.append(
                {
                    "path": path,
                    "range": self.headers.get("Range"),
                    "agent": self.headers["User-Agent"],
                }
            )
        time.sleep(state.delay)
        if path in state.redirects:
            self.send_response(302)
            self.send_header("Location", state.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in state.html:
            self._send(200, b"<html><body>Sign in to download</body></html>", "text/html")
        elif path not in state.files:
            self.send_error(404)
        else:
            self._send_file(state, state.files[path])

    def _send_file(self, state: _State, data: bytes):
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and state.ranges else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        with state.lock:
            cut = state.cut_after if state.cuts_left > 0 else None
            state.cuts_left -= cut is not None
        self._send(206 if start else 200, data[start:], "application/octet-stream", headers, cut)

    def _send(self, status, body, content_type, headers=None, cut=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:  # the announced length does not come: a cut connection
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up (timeout test) breaks the pipe: nothing to report


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache per test (never ~/.cache), no offline / mirror setting, no proxy."""
    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path / "cache"))
    for variable in (download.ENV_OFFLINE, download.ENV_MIRROR, "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    return tmp_path / "cache"


@pytest.fixture
def server():
    state = _State()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = state
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    """A tiny state dict in the reference TSM key layout."""
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "module.base_model.conv1.weight": (8, 3, 7, 7),
        "module.base_model.layer1.0.conv1.net.weight": (8, 8, 1, 1),
        "module.new_fc.weight": (400, 16),
        "module.new_fc.bias": (400,),
    }
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def checkpoint(state_dict) -> bytes:
    """The bytes of a reference-format checkpoint file (~35 kB)."""
    buffer = io.BytesIO()
    payload = {"epoch": 50, "arch": "resnet50", "state_dict": state_dict, "best_prec1": 70.0}
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.fixture
def served(server, checkpoint) -> _State:
    server.files[NAME] = checkpoint
    return server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wrong_prefix(data: bytes) -> str:
    prefix = sha256(data)[:8]
    return ("1" if prefix[0] == "0" else "0") + prefix[1:]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "weights").glob("*") if p.suffix in {".pth", ".part"})


def fetch(url, **options) -> Path:
    return fetch_weights(url, NAME, progress=False, retry_delay=0.0, **options)


def test_download_then_cache_hit(
    served, checkpoint, state_dict, cache, capsys, caplog, monkeypatch
):
    url = served.url(NAME)
    with caplog.at_level(logging.INFO, logger="timeshift"):
        path = fetch_weights(url, NAME, sha256_prefix=sha256(checkpoint)[:8], progress=True)
    assert path == cache / "weights" / NAME
    assert path.read_bytes() == checkpoint
    assert leftovers(cache) == [NAME]  # no .part left
    loaded = torch.load(path, weights_only=True)["state_dict"]
    assert loaded.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key
    progress = capsys.readouterr().err
    assert NAME in progress and "100%" in progress
    assert url in caplog.text and str(path) in caplog.text and sha256(checkpoint) in caplog.text
    assert served.requests[0]["agent"].startswith("timeshift/")

    # the download's hash is remembered: the second call neither downloads nor hashes
    monkeypatch.setattr(download, "_sha256", lambda path: pytest.fail(f"hashed {path} again"))
    assert fetch(url, sha256_prefix=sha256(checkpoint)[:8]) == path
    assert len(served.requests) == 1


def test_resume_after_a_cut_within_one_call(served, checkpoint):
    served.cut_after, served.cuts_left = 10_000, 2
    path = fetch(served.url(NAME), retries=2)
    assert path.read_bytes() == checkpoint
    assert served.ranges_asked() == [None, "bytes=10000-", "bytes=20000-"]


def test_resume_from_a_part_left_by_an_earlier_call(served, checkpoint, cache):
    url = served.url(NAME)
    served.cut_after, served.cuts_left = 12_345, 1
    with pytest.raises(DownloadError, match=rf"{re.escape(url)} \(0 retries\): got 12345 bytes"):
        fetch(url, retries=0)
    part = cache / "weights" / f"{NAME}.part"
    assert part.read_bytes() == checkpoint[:12_345]
    assert not (cache / "weights" / NAME).exists()  # never a partial file under the final name

    assert fetch(url).read_bytes() == checkpoint
    assert served.ranges_asked() == [None, "bytes=12345-"]
    assert not part.exists()


def test_server_ignoring_ranges_restarts(served, checkpoint, cache):
    served.ranges = False
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / f"{NAME}.part").write_bytes(b"x" * 5000)  # appending would corrupt
    path = fetch(served.url(NAME), sha256_prefix=sha256(checkpoint)[:8])
    assert path.read_bytes() == checkpoint
    assert served.ranges_asked() == ["bytes=5000-"]


@pytest.mark.parametrize("extra", [b"", b"junk"])
def test_416_verifies_a_complete_part_or_starts_over(served, checkpoint, cache, extra):
    # the part already holds the whole file (416: nothing left to send), or more than the file
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / f"{NAME}.part").write_bytes(checkpoint + extra)
    path = fetch(served.url(NAME), sha256_prefix=sha256(checkpoint)[:8])
    assert path.read_bytes() == checkpoint
    asked = [f"bytes={len(checkpoint + extra)}-"] + ([None] if extra else [])
    assert served.ranges_asked() == asked


def test_hash_mismatch_deletes_and_raises(served, checkpoint, cache):
    url, prefix = served.url(NAME), wrong_prefix(checkpoint)
    with pytest.raises(DownloadError) as error:
        fetch(url, sha256_prefix=prefix)
    assert url in str(error.value) and prefix in str(error.value)
    assert sha256(checkpoint) in str(error.value)
    assert leftovers(cache) == []

    # a file in the cache that fails the check is refused and deleted the same way
    (cache / "weights" / NAME).write_bytes(checkpoint)
    with pytest.raises(DownloadError, match=f"{prefix}.*deleted"):
        fetch(url, sha256_prefix=prefix)
    assert leftovers(cache) == []
    assert len(served.requests) == 1


def test_cached_file_is_hashed_once(served, checkpoint, cache, monkeypatch):
    weights = cache / "weights"
    weights.mkdir(parents=True)
    (weights / NAME).write_bytes(checkpoint)  # put there by the user
    hashed = []
    monkeypatch.setattr(download, "_sha256", lambda path: hashed.append(path) or sha256(checkpoint))
    for _ in range(3):
        assert fetch(served.url(NAME), sha256_prefix=sha256(checkpoint)[:8]) == weights / NAME
    assert hashed == [weights / NAME]
    (weights / NAME).write_bytes(checkpoint)  # replaced: a new modification time
    fetch(served.url(NAME), sha256_prefix=sha256(checkpoint)[:8])
    assert len(hashed) == 2
    assert served.requests == []


def test_http_errors_name_the_url_and_the_cause(server, cache):
    url = server.url("missing.pth")
    with pytest.raises(DownloadError, match=rf"{re.escape(url)}: HTTP 404"):
        fetch(url)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"127\.0\.0\.1:{port}/x\.pth: .*refused"):
        fetch(f"http://127.0.0.1:{port}/x.pth")
    server.files[NAME], server.delay = b"late", 1.0
    with pytest.raises(DownloadError, match=r"timed out"):
        fetch(server.url(NAME), timeout=0.2)
    assert leftovers(cache) == []


def test_web_page_is_refused(server, cache):
    server.html.add(NAME)
    with pytest.raises(DownloadError, match="web page") as error:
        fetch(server.url(NAME))
    assert str(cache / "weights" / NAME) in str(error.value)
    assert leftovers(cache) == []


def test_redirect_to_other_scheme_is_refused(served):
    for other in ("file:///etc/passwd", "ftp://127.0.0.1/x.pth"):
        served.redirects["go"] = other
        with pytest.raises(DownloadError, match=f"redirects to {other}, not an http"):
            fetch(served.url("go"))
    served.redirects["ok"] = served.url(NAME)
    assert fetch(served.url("ok")).read_bytes() == served.files[NAME]


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline(served, checkpoint, cache, monkeypatch, value):
    monkeypatch.setenv("TIMESHIFT_OFFLINE", value)
    url, target = served.url(NAME), cache / "weights" / NAME
    with pytest.raises(DownloadError, match="TIMESHIFT_OFFLINE") as error:
        fetch(url)
    assert str(target) in str(error.value) and url in str(error.value)
    with pytest.raises(DownloadError, match="no public download link") as error:
        fetch(None)
    assert str(target) in str(error.value) and "http" not in str(error.value)

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(checkpoint)
    assert fetch(url, sha256_prefix=sha256(checkpoint)[:8]) == target
    assert served.requests == []


@pytest.mark.parametrize("slash", ["", "/"])
def test_mirror_http(served, checkpoint, monkeypatch, slash, caplog):
    served.files[f"mirror/{NAME}"] = served.files.pop(NAME)
    monkeypatch.setenv("TIMESHIFT_WEIGHTS_URL", served.url("mirror") + slash)
    with caplog.at_level(logging.INFO, logger="timeshift"):
        path = fetch("http://127.0.0.1:9/unreachable.pth", sha256_prefix=sha256(checkpoint)[:8])
    assert path.read_bytes() == checkpoint
    assert [request["path"] for request in served.requests] == [f"mirror/{NAME}"]
    assert served.url(f"mirror/{NAME}") in caplog.text


@pytest.mark.parametrize("form", ["path", "file_url"])
def test_mirror_local_folder(checkpoint, cache, tmp_path, monkeypatch, form):
    folder = tmp_path / "shared weights"
    folder.mkdir()
    (folder / NAME).write_bytes(checkpoint)
    monkeypatch.setenv("TIMESHIFT_WEIGHTS_URL", str(folder) if form == "path" else folder.as_uri())
    monkeypatch.setenv("TIMESHIFT_OFFLINE", "1")  # a local copy is no network access
    with pytest.raises(DownloadError, match="does not match"):
        fetch(None, sha256_prefix=wrong_prefix(checkpoint))
    assert leftovers(cache) == []
    path = fetch(None, sha256_prefix=sha256(checkpoint)[:8])
    assert path == cache / "weights" / NAME and path.read_bytes() == checkpoint
    (folder / NAME).unlink()
    with pytest.raises(DownloadError, match="not in the mirror folder"):
        fetch_weights(None, "other.pth", progress=False)


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"  # TIMESHIFT_CACHE (set by the fixture)
    monkeypatch.delenv("TIMESHIFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "timeshift"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "timeshift"
    with pytest.raises(ValueError, match="plain file name"):
        fetch_weights(None, "../escape.pth")


def test_concurrent_callers_download_once(served, checkpoint, caplog):
    served.delay = 0.5  # the first download is still running when the second caller asks
    results, start = [], threading.Barrier(2)

    def call():
        start.wait()
        results.append(fetch(served.url(NAME), sha256_prefix=sha256(checkpoint)[:8]))

    threads = [threading.Thread(target=call) for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="timeshift"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == checkpoint
    assert len(served.requests) == 1
    assert "waiting for another process" in caplog.text


def test_download_error_is_a_timeshift_error():
    assert issubclass(DownloadError, TimeshiftError)
