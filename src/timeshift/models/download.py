"""Fetching published weights files into the local cache.

:func:`fetch_weights` returns the local path of a weights file, ``<cache>/weights/<file name>``,
downloading it first when it is not there. A download streams into ``<file>.part`` next to the
final name, is checked (size against ``Content-Length``, sha256 against the prefix the source
publishes, the way ``torch.hub`` checks it) and only then renamed into place, so a reader never
sees a partial file under the final name. A cut download is continued with an HTTP ``Range``
request, within the call and by the next call. Processes on one machine that ask for the same file
at once (``torchrun`` ranks) take turns on ``<file>.lock``: one downloads, the others use its file.

Environment:

* ``TIMESHIFT_CACHE``: the cache folder (default ``$XDG_CACHE_HOME/timeshift``, else
  ``~/.cache/timeshift``).
* ``TIMESHIFT_OFFLINE=1`` (or ``true`` / ``yes``): never use the network; a file missing from the
  cache raises :class:`DownloadError` saying where to put it.
* ``TIMESHIFT_WEIGHTS_URL``: a mirror; each file is fetched from ``<mirror>/<file name>``. An
  http(s) URL, a ``file://`` URL or a local folder (copied from, also when offline).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPException, HTTPResponse
from pathlib import Path

from tqdm.auto import tqdm

from timeshift.errors import TimeshiftError
from timeshift.models.checkpoints import fsync_folder

try:
    import fcntl
except ImportError:  # Windows: first downloads of concurrent processes are not coordinated there
    fcntl = None

__all__ = [
    "ENV_CACHE",
    "ENV_MIRROR",
    "ENV_OFFLINE",
    "DownloadError",
    "cache_dir",
    "fetch_weights",
    "is_offline",
    "weights_path",
]

ENV_CACHE = "TIMESHIFT_CACHE"
ENV_OFFLINE = "TIMESHIFT_OFFLINE"
ENV_MIRROR = "TIMESHIFT_WEIGHTS_URL"

_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")

_logger = logging.getLogger(__name__)


class DownloadError(TimeshiftError):
    """A weights file could not be fetched, or failed its check; the message names the URL or the
    file and says what to do."""


class _Interrupted(Exception):
    """The connection ended before the whole file came; what came is kept in the ``.part`` file."""


def cache_dir() -> Path:
    """The timeshift cache folder: ``$TIMESHIFT_CACHE``, else ``$XDG_CACHE_HOME/timeshift``, else
    ``~/.cache/timeshift`` (an empty variable counts as unset)."""
    explicit = os.environ.get(ENV_CACHE, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "timeshift"


def weights_path(file_name: str) -> Path:
    """Where :func:`fetch_weights` keeps ``file_name``: ``<cache_dir()>/weights/<file_name>``
    (whether it is there yet or not)."""
    if not file_name or file_name != Path(file_name).name or file_name in {".", ".."}:
        raise ValueError(f"a weights file name must be a plain file name, got {file_name!r}")
    return cache_dir() / "weights" / file_name


def is_offline() -> bool:
    """Whether ``TIMESHIFT_OFFLINE`` forbids the network (``1``, ``true`` or ``yes``)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes"}


def fetch_weights(
    url: str | None,
    file_name: str,
    *,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> Path:
    """The local path of ``file_name``, ``<cache_dir()>/weights/<file_name>``, downloaded first if
    it is not in the cache.

    A file already there (downloaded before, or put there by the user) is returned without any
    network access; with a ``sha256_prefix`` it is hashed once and the result remembered in
    ``<file>.sha256.json`` (valid while the file's size and modification time stay the same).

    Args:
        url: where the file is published; ``None`` when there is no public link (the file must
            then be in the cache or the mirror).
        file_name: the file's name in the cache (and on a ``TIMESHIFT_WEIGHTS_URL`` mirror).
        sha256_prefix: the first hex digits of the file's sha256 (MMAction2 puts 8 in its file
            names); the file's sha256 must start with them. ``None``: not checked.
        progress: show a tqdm progress bar (bytes) while downloading.
        timeout: seconds without an answer (connecting, or between two reads) before giving up.
        retries: how many times a cut connection is resumed within this call.
        retry_delay: seconds before the first resumption; the n-th waits n times as long.

    Raises:
        DownloadError: the file is not cached and cannot be fetched (offline, no URL, HTTP error,
            a web page instead of the file, connection failure, cut more than ``retries`` times),
            or it fails the hash check (it is then deleted). The message names the URL or file.
    """
    target = weights_path(file_name)
    prefix = _checked_prefix(sha256_prefix, file_name)
    if target.is_file() and _known_good(target, prefix):
        # no lock, no write: a read-only cache shared by a cluster works
        _logger.info("using cached weights %s", target)
        return target
    with _exclusive(target):
        if target.is_file():  # cached but not yet hashed, or another process just fetched it
            _check_cached(target, prefix, url)
            _logger.info("using cached weights %s", target)
            return target
        source = _source(url, file_name, target)
        try:
            _fetch(source, target, prefix, progress, timeout, retries, retry_delay)
        except OSError as exc:  # a full or read-only cache, an unreadable mirror file
            where = f": {exc.filename}" if exc.filename else ""
            raise DownloadError(
                f"cannot fetch {file_name} to {target} ({exc.strerror or exc}{where}); if the "
                f"cache folder is full or read-only, set {ENV_CACHE} to another folder"
            ) from exc
    return target


def _checked_prefix(prefix: str | None, file_name: str) -> str | None:
    if not prefix:
        return None
    prefix = prefix.lower()
    if not _HEX.fullmatch(prefix):
        raise ValueError(f"sha256_prefix of {file_name} must be hex digits, got {prefix!r}")
    return prefix


# -- the cache ---------------------------------------------------------------------------------


def _known_good(target: Path, prefix: str | None) -> bool:
    return prefix is None or (_remembered_sha256(target) or "").startswith(prefix)


def _check_cached(target: Path, prefix: str | None, url: str | None) -> None:
    if prefix is None:
        return
    digest = _remembered_sha256(target)
    if digest is None:
        digest = _sha256(target)
        _remember_sha256(target, digest)
    if not digest.startswith(prefix):
        try:
            _discard(target)
            done = "deleted it; call again to download it anew, or put the right file there"
        except OSError as exc:  # a read-only shared cache
            done = f"could not delete it ({exc.strerror or exc}): replace it with the right file"
        raise DownloadError(
            f"the cached weights file {target} has sha256 {digest}, expected one starting with "
            f"{prefix} (the file published at {url or 'no public URL'}): {done}"
        )


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".sha256.json")


def _remembered_sha256(target: Path) -> str | None:
    """The sha256 recorded for ``target``, if the file has not changed since (size, mtime)."""
    try:
        record = json.loads(_marker(target).read_text(encoding="utf-8"))
        stat = target.stat()
        if record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
            return str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record, a torn one, or an unreadable file: hash again
    return None


def _remember_sha256(target: Path, digest: str) -> None:
    # hashing reads the whole file (0.2 s per 256 MiB on a local disk, much longer on a cluster's
    # network file system) at every load; the record makes it once per file version
    stat = target.stat()
    record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        _marker(target).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as exc:  # a read-only cache: hash again next time
        _logger.debug("cannot record the sha256 of %s (%s)", target, exc)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _discard(target: Path) -> None:
    for path in (target, _marker(target), _part(target)):
        path.unlink(missing_ok=True)


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<file>.lock``: one process fetches, the others wait and
    then find the file. The lock file stays (removing it would race a process opening it)."""
    lock = target.with_name(target.name + ".lock")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:  # a read-only cache: the fetch itself will say why it cannot write
        _logger.debug("cannot create %s (%s): going on without a lock", lock, exc)
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _logger.info("waiting for another process fetching %s", target.name)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock, also when the holder dies


# -- where a file comes from -------------------------------------------------------------------


def _source(url: str | None, file_name: str, target: Path) -> str | Path:
    """The URL (``str``) or local file (``Path``) to fetch ``file_name`` from."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    source: str | Path | None = _mirror_source(mirror, file_name) if mirror else url
    if mirror:
        _logger.info("%s is set: fetching %s from %s", ENV_MIRROR, file_name, source)
    if isinstance(source, Path):
        if not source.is_file():
            raise DownloadError(
                f"{file_name} is not in the mirror folder {source.parent} ({ENV_MIRROR}="
                f"{mirror}): put it there{_from(url)}, or put it at {target}"
            )
        return source  # a local copy is allowed offline
    if source is None:
        raise DownloadError(
            f"no public download link is known for {file_name}: put the file at {target}, "
            f"or in a folder that {ENV_MIRROR} names"
        )
    if is_offline():
        raise DownloadError(
            f"{ENV_OFFLINE} is set and {file_name} is not in the cache: put the file at {target}"
            f"{_from(source)}, or set {ENV_MIRROR} to a folder holding it"
        )
    if urllib.parse.urlsplit(source).scheme.lower() not in {"http", "https"}:
        raise DownloadError(f"cannot download {file_name} from {source}: not an http(s) URL")
    return source


def _from(url: str | None) -> str:
    return f" (download it from {url} on a machine with internet access)" if url else ""


def _mirror_source(mirror: str, file_name: str) -> str | Path:
    parts = urllib.parse.urlsplit(mirror)
    scheme = parts.scheme.lower()
    if scheme in {"http", "https"}:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)
    if scheme == "file":
        return Path(urllib.request.url2pathname(parts.path)) / file_name
    if len(scheme) <= 1 or Path(mirror).expanduser().is_dir():  # a path (or a drive letter)
        return Path(mirror).expanduser() / file_name
    raise DownloadError(
        f"{ENV_MIRROR}={mirror} is neither an http(s) URL, a file:// URL nor a local folder"
    )


# -- fetching ----------------------------------------------------------------------------------


def _fetch(
    source: str | Path,
    target: Path,
    prefix: str | None,
    progress: bool,
    timeout: float,
    retries: int,
    retry_delay: float,
) -> None:
    part = _part(target)
    if isinstance(source, Path):
        with open(source, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    else:
        _logger.info("downloading %s to %s", source, target)
        _download(source, target, progress, timeout, retries, retry_delay)
    digest = _sha256(part)
    if prefix is not None and not digest.startswith(prefix):
        _discard(target)
        raise DownloadError(
            f"{source} does not match its published hash: sha256 {digest}, expected one starting "
            f"with {prefix}; deleted the file. The source may have changed or the mirror holds "
            "another file: check the URL"
        )
    os.replace(part, target)  # atomic: the final name holds the whole checked file or nothing
    fsync_folder(target.parent)
    _remember_sha256(target, digest)
    size = target.stat().st_size
    _logger.info("saved %s (%.1f MB, sha256 %s) from %s", target, size / 1e6, digest, source)


def _download(
    url: str, target: Path, progress: bool, timeout: float, retries: int, retry_delay: float
) -> None:
    """Download ``url`` into ``<target>.part``, resuming what is there; one request per try."""
    part = _part(target)
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    retries = max(retries, 0)
    for attempt in range(retries + 1):
        try:
            if _request(opener, url, target, progress=progress, timeout=timeout):
                return
        except _Interrupted as exc:
            got, left = _size(part), retries - attempt
            _logger.warning(
                "download of %s cut at %d bytes (%s): %d retries left", url, got, exc, left
            )
            if attempt < retries:
                time.sleep(retry_delay * (attempt + 1))
    raise DownloadError(
        f"could not complete the download of {url} ({retries} retries): got {_size(part)} "
        f"bytes, kept in {part}; call again to resume, or download the file by hand to {target}"
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _request(
    opener: urllib.request.OpenerDirector,
    url: str,
    target: Path,
    *,
    progress: bool,
    timeout: float,
) -> bool:
    """One request: ``True`` when ``.part`` holds the whole file, ``False`` to try again from the
    start; raises :class:`_Interrupted` when the connection ends early."""
    part = _part(target)
    have = _size(part)
    headers = {"User-Agent": _user_agent()}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and have:
                return _part_complete(exc.headers.get("Content-Range"), part, url)
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        kept = f" ({have} bytes kept in {part}: call again to resume)" if have else ""
        cause = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {cause}{kept}") from exc
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(
                f"{url} answered with a web page (text/html), not the weights file (a share page "
                f"that needs a browser?): download {target.name} by hand and put it at {target}"
            )
        offset, total = _resumed_from(response, have, url, part)
        _receive(response, part, offset=offset, total=total, progress=progress)
    got = _size(part)
    if total is not None and got < total:
        raise _Interrupted(f"connection closed after {got} of {total} bytes")
    if total is not None and got > total:
        part.unlink()
        raise DownloadError(f"{url} sent {got} bytes, more than its {total}: call again")
    return True


def _part_complete(content_range: str | None, part: Path, url: str) -> bool:
    # 416: the range starts at or past the end, so the part may be the whole file; only a
    # server that says the length can tell, otherwise start over rather than trust it
    match = _UNSATISFIED_RANGE.fullmatch((content_range or "").strip())
    if match and int(match.group(1)) == _size(part):
        return True
    _logger.info(
        "%s: the %d bytes in %s do not fit the file: starting over", url, _size(part), part
    )
    part.unlink()
    return False


def _resumed_from(
    response: HTTPResponse, have: int, url: str, part: Path
) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's full size (``None``: unknown)."""
    length = response.headers.get("Content-Length", "").strip()
    if response.status != 206:
        if have:
            _logger.info("%s ignores byte ranges: downloading it again from the start", url)
        return 0, int(length) if length.isdigit() else None
    content_range = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if not match or int(match.group(1)) != have:
        part.unlink()  # the body does not continue the part: the next try starts over
        raise _Interrupted(f"asked for bytes {have}-, got the range {content_range!r}")
    return have, None if match.group(2) == "*" else int(match.group(2))


def _receive(
    response: HTTPResponse, part: Path, *, offset: int, total: int | None, progress: bool
) -> None:
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        desc=part.name.removesuffix(".part"),
        disable=not progress,
    )
    with open(part, "ab" if offset else "wb") as f, bar:
        try:
            for chunk in _chunks(response):
                f.write(chunk)
                bar.update(len(chunk))
        finally:  # what came is on disk, for the next try to resume from
            f.flush()
            os.fsync(f.fileno())


def _chunks(response: HTTPResponse) -> Iterator[bytes]:
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, HTTPException) as exc:  # reset, timeout, IncompleteRead
            raise _Interrupted(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        yield chunk


def _user_agent() -> str:
    from timeshift import __version__  # here: timeshift/__init__ imports this package

    return f"timeshift/{__version__}"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib would also follow ``ftp:``, and refuses
    others with a message that does not say what to do)."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI") or ""
        newurl = urllib.parse.urljoin(req.full_url, location)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in {"http", "https"}:
            fp.close()
            raise DownloadError(
                f"{req.full_url} redirects to {newurl}, not an http(s) URL: refused; download "
                "the file by hand if you trust that address"
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302
