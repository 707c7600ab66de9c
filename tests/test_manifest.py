"""Manifests of batch inference: every format gives the paths as written and the locations to
read; a malformed line stops the job naming its file and line; ``shard_of`` partitions paths;
a manifest of a million lines streams in flat memory."""

import json
import os
import random
import time
from pathlib import Path

import pytest

from timeshift.data.manifest import Manifest, ManifestError, ManifestItem, shard_of
from timeshift.errors import TimeshiftError


def _items(manifest: Manifest) -> list[tuple[str, str]]:
    return [(item.path, item.location) for item in manifest]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- formats -----------------------------------------------------------------------------------


def test_list_files_with_two_three_and_four_fields(tmp_path):
    source = _write(
        tmp_path / "test.txt",
        "# a comment, then a blank line\n\nvideos/a.mp4 3\nframes/b 120 1\nc.mkv 0 64 2\n",
    )
    manifest = Manifest(source)
    assert manifest.format == "list"
    assert manifest.count() == 3
    assert _items(manifest) == [
        ("videos/a.mp4", str(tmp_path / "videos/a.mp4")),  # against the manifest's folder
        ("frames/b", str(tmp_path / "frames/b")),
        ("c.mkv", str(tmp_path / "c.mkv")),
    ]
    rooted = Manifest(source, root=tmp_path / "data")
    assert [loc for _, loc in _items(rooted)] == [
        str(tmp_path / "data" / p) for p in ("videos/a.mp4", "frames/b", "c.mkv")
    ]


def test_paths_with_spaces_urls_and_absolute_paths(tmp_path):
    lines = [
        "my videos/clip one.mp4",
        "http://127.0.0.1:8000/a%20b.mp4",
        "https://example.org/v.webm",
        "file:///srv/videos/x.mkv",
        "/abs/path/y.avi",
    ]
    source = _write(tmp_path / "paths.txt", "\n".join(lines) + "\n\n# done\n")
    manifest = Manifest(source)
    assert manifest.format == "paths"
    assert manifest.count() == len(lines)
    items = _items(manifest)
    assert items[0] == ("my videos/clip one.mp4", str(tmp_path / "my videos/clip one.mp4"))
    assert items[1:] == [(p, p) for p in lines[1:]]  # URLs, absolute paths: as written


def test_explicit_paths_format_keeps_a_name_auto_would_read_as_a_list_line(tmp_path):
    source = _write(tmp_path / "names.txt", "holiday 2\ntake 10 3\n")
    assert Manifest(source).format == "list"  # 'PATH LABEL' is the list format's first guess
    manifest = Manifest(source, format="paths")
    assert [p for p, _ in _items(manifest)] == ["holiday 2", "take 10 3"]


def test_jsonl_with_extra_fields_and_a_guessed_format(tmp_path):
    rows = [{"path": "a.mp4", "label": 1}, {"id": 7, "path": "sub/b é.mkv"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    for name in ("m.jsonl", "m.ndjson", "m.txt"):  # .txt: guessed from the first line's "{"
        manifest = Manifest(_write(tmp_path / name, text))
        assert manifest.format == "jsonl"
        assert manifest.count() == 2
        assert _items(manifest) == [
            ("a.mp4", str(tmp_path / "a.mp4")),
            ("sub/b é.mkv", str(tmp_path / "sub/b é.mkv")),
        ]


def test_csv_with_a_path_column_quotes_and_a_bom(tmp_path):
    source = tmp_path / "m.csv"
    source.write_bytes(
        '\ufefflabel,path\n3,a.mp4\n1,"with, comma.mp4"\n2,http://127.0.0.1/x.mp4\n'.encode()
    )
    manifest = Manifest(source)
    assert manifest.format == "csv"
    assert manifest.count() == 3
    assert _items(manifest) == [
        ("a.mp4", str(tmp_path / "a.mp4")),
        ("with, comma.mp4", str(tmp_path / "with, comma.mp4")),
        ("http://127.0.0.1/x.mp4", "http://127.0.0.1/x.mp4"),
    ]


def test_parquet_with_a_path_column(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet manifests need the parquet extra")
    import pyarrow.parquet as pq

    paths = [f"v{i}.mp4" for i in range(5)] + ["/abs/z.mp4"]
    table = pa.table({"label": list(range(len(paths))), "path": paths})
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=2)  # several row groups
    manifest = Manifest(tmp_path / "m.parquet", root=tmp_path / "r")
    assert manifest.format == "parquet"
    assert manifest.count() == len(paths)
    expected = [(p, str(tmp_path / "r" / p)) for p in paths[:-1]] + [("/abs/z.mp4", "/abs/z.mp4")]
    assert _items(manifest) == expected


def test_parquet_errors_name_the_file(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet manifests need the parquet extra")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": ["a.mp4"]}), tmp_path / "nopath.parquet")
    with pytest.raises(ManifestError, match=r"nopath\.parquet.*'path' column"):
        Manifest(tmp_path / "nopath.parquet").count()
    pq.write_table(pa.table({"path": ["a.mp4", None]}), tmp_path / "null.parquet")
    with pytest.raises(ManifestError, match=r"null\.parquet: row 2"):
        list(Manifest(tmp_path / "null.parquet"))
    _write(tmp_path / "broken.parquet", "not parquet at all")
    with pytest.raises(ManifestError, match=r"broken\.parquet: not a readable Parquet"):
        Manifest(tmp_path / "broken.parquet").count()


def test_folder_walks_videos_and_frame_folders_skipping_hidden_entries_and_link_loops(tmp_path):
    root = tmp_path / "archive"
    for name in ("b.mp4", "a.MKV", "notes.txt", ".hidden.mp4", "sub/c.webm", "sub/deep/d.avi"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    for name in ("frames/x/img_00001.jpg", "frames/x/img_00002.jpg", "frames/x/inner/e.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / ".cache").mkdir()
    (root / ".cache" / "f.mp4").touch()
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "link.mp4").symlink_to(root / "b.mp4")  # a link to a file is a video
    manifest = Manifest(root)
    assert manifest.format == "folder"
    assert manifest.count() is None
    expected = [
        root / "a.MKV",
        root / "b.mp4",
        root / "link.mp4",
        root / "frames/x",  # images and no video: a frame folder, not walked further
        root / "sub/c.webm",
        root / "sub/deep/d.avi",
    ]
    assert _items(manifest) == [(str(p), str(p)) for p in expected]


def test_items_are_plain_values(tmp_path):
    source = _write(tmp_path / "p.txt", "a.mp4\n")
    assert list(Manifest(source)) == [ManifestItem("a.mp4", str(tmp_path / "a.mp4"))]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "line", "says"),
    [
        ("bad.jsonl", b'{"path": "a.mp4"}\n\n{"path": "b.mp4"\n', 3, "not JSON"),
        ("nopath.jsonl", b'{"path": "a.mp4"}\n{"label": 3}\n', 2, "'path' string"),
        ("notobject.jsonl", b'{"path": "a.mp4"}\n["b.mp4"]\n', 2, "'path' string"),
        ("fields.txt", b"a.mp4 1\n# c\nb.mp4 1 2 3 4\n", 3, "PATH LABEL"),
        ("label.txt", b"a.mp4 1\nb.mp4 one\n", 2, "PATH LABEL"),
        ("latin1.txt", "a.mp4\nvid\u00e9o.mp4\n".encode("latin-1"), 2, "not UTF-8"),
        ("empty.csv", b"path,label\na.mp4,1\n,2\n", 3, "empty 'path'"),
        ("header.csv", b"file,label\na.mp4,1\n", 1, "'path' column"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(tmp_path, name, content, line, says):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(ManifestError, match=rf"{source}:{line}: .*{says}") as error:
        Manifest(source).count()
    assert isinstance(error.value, TimeshiftError)
    with pytest.raises(ManifestError, match=rf"{source}:{line}:"):
        list(Manifest(source))  # streaming checks the lines too


def test_a_missing_manifest_or_a_wrong_format_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest(tmp_path / "absent.txt")
    source = _write(tmp_path / "p.txt", "a.mp4\n")
    with pytest.raises(ManifestError, match="'auto' or one of"):
        Manifest(source, format="yaml")
    with pytest.raises(ManifestError, match="'folder' does not fit a file"):
        Manifest(source, format="folder")
    with pytest.raises(ManifestError, match="'jsonl' does not fit a folder"):
        Manifest(tmp_path, format="jsonl")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(ManifestError, match="not a regular file"):
        Manifest(tmp_path / "fifo.txt")


# -- sharding ----------------------------------------------------------------------------------


def _paths(count: int) -> list[str]:
    rng = random.Random(0)
    names = [f"videos/{rng.getrandbits(40):010x}.mp4" for _ in range(count - 3)]
    return [*names, "http://127.0.0.1/a b.mp4", "vidéo/été.mkv", "/abs/x.avi"]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_shard_of_is_a_partition_independent_of_order(world_size):
    paths = _paths(500)
    shards = [[p for p in paths if shard_of(p, world_size) == r] for r in range(world_size)]
    assert sorted(p for shard in shards for p in shard) == sorted(paths)  # each exactly once
    # balanced enough that no process idles: every share within 40% of the mean
    mean = len(paths) / world_size
    assert all(abs(len(s) - mean) < 0.4 * mean for s in shards), [len(s) for s in shards]
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    again = [{p for p in shuffled if shard_of(p, world_size) == r} for r in range(world_size)]
    assert again == [set(s) for s in shards]


# -- scale -------------------------------------------------------------------------------------


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_a_million_line_manifest_streams_in_flat_memory(tmp_path):
    """Counting (every line checked) and iterating keep no line: the resident memory sampled
    along the way stays flat, where holding the million items would take over 100 MB.
    (Resident memory rather than tracemalloc, which triples the time of a million items.)"""
    lines = 1_000_000
    source = tmp_path / "million.txt"
    with open(source, "w", encoding="utf-8") as f:
        f.writelines(f"/data/videos/clip_{i:07d}.mp4\n" for i in range(lines))
    manifest = Manifest(source)
    start, peak = _resident_bytes(), 0
    began = time.perf_counter()
    assert manifest.count() == lines
    seen = 0
    for seen, item in enumerate(manifest, start=1):  # noqa: B007 (the count is the check)
        if seen % 50_000 == 0:
            peak = max(peak, _resident_bytes() - start)
    seconds = time.perf_counter() - began
    assert seen == lines and item.path == f"/data/videos/clip_{lines - 1:07d}.mp4"
    assert peak < 5 << 20, f"resident memory grew by {peak / 2**20:.1f} MB while streaming"
    assert seconds < 60, f"{seconds:.1f} s to count and stream {lines} lines"
